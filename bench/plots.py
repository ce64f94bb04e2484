"""PNG plots of a benchmark run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path


def plot_all(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    m = results["machine"]
    title = (
        f"{results['config']['checkpoint']} ({results['config']['precision']}), "
        f"{m.get('cpu_model') or '?'}, {m['cpus']} CPUs"
    )
    srv = results.get("server", {})
    ref = {r["duration"]: r for r in results.get("reference", {}).get("runs", [])}

    single = srv.get("single", [])
    if single:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        d = [r["duration"] for r in single]
        x = range(len(d))
        w = 0.27
        ax.bar([i - w for i in x], [r["rtf"] for r in single], w, label="ours (unary)")
        ax.bar(list(x), [r["stream_rtf"] for r in single], w, label="ours (streamed)")
        if ref:
            ax.bar([i + w for i in x], [ref.get(k, {}).get("rtf") or 0 for k in d], w, label="transformers generate")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="real time")
        ax.set_xticks(list(x), [f"{k:g} s" for k in d])
        ax.set_xlabel("clip duration")
        ax.set_ylabel("real-time factor (wall s / audio s, lower is better)")
        ax.set_title(f"RTF by duration — {title}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / "rtf_by_duration.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files.append(p)

    levels = srv.get("concurrency", [])
    if levels:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.6, 4.0))
        c = [r["concurrency"] for r in levels]
        a1.plot(c, [r["throughput_audio_s_per_s"] for r in levels], "o-", label="ours")
        if ref:
            clip = levels[0]["clip_s"]
            rr = ref.get(clip) or min(ref.values(), key=lambda r: abs(r["duration"] - clip))
            if rr.get("rtf"):
                a1.axhline(
                    1.0 / rr["rtf"],
                    color="C1",
                    ls="--",
                    label=f"transformers, one at a time ({rr['duration']:g} s clips)",
                )
        a1.set_xlabel("concurrent requests")
        a1.set_ylabel("throughput (audio s per wall s)")
        a1.set_xticks(c)
        a1.legend(fontsize=8)
        a2.plot(c, [r["latency_p50_s"] for r in levels], "o-", label="p50")
        a2.plot(c, [r["latency_p95_s"] for r in levels], "s--", label="p95")
        a2.set_xlabel("concurrent requests")
        a2.set_ylabel(f"latency of a {levels[0]['clip_s']:g} s clip (s)")
        a2.set_xticks(c)
        a2.legend(fontsize=8)
        fig.suptitle(f"Throughput and latency by concurrency — {title}", fontsize=9)
        fig.tight_layout()
        p = out / "concurrency.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files.append(p)
    return files
