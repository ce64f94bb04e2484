"""Monitoring with the real parts: Debian's Prometheus scrapes the real tritonserver of the `triton`
fixture with deploy/monitoring's alert rules; promtool checks and unit-tests the rules; the Grafana
dashboard (Grafana itself is not packaged here) is checked structurally, and every query in it must
run in Prometheus and name only metrics the server exports (Triton's GPU series excepted: this
machine has no GPU and the test server runs with --allow-gpu-metrics=false).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from local_procs import LocalProcs, install_debian_tools, wait_for

ROOT = Path(__file__).resolve().parents[1]
MON = ROOT / "deploy" / "monitoring"
DASHBOARD = MON / "grafana" / "dashboards" / "musicgen.json"
# Triton's GPU metrics: exported only where a GPU is visible (not on this CPU-only machine)
GPU_METRICS = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes"}
ENGINE_METRICS = {
    "musicgen_lm_requests_in_flight",
    "musicgen_lm_queue_depth",
    "musicgen_lm_active_rows",
    "musicgen_lm_requests_finished_total",
    "musicgen_lm_frames_total",
    "musicgen_lm_audio_seconds_total",
    "musicgen_lm_time_to_first_audio_seconds_bucket",
    "musicgen_lm_time_to_first_audio_seconds_sum",
    "musicgen_lm_time_to_first_audio_seconds_count",
}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "le",
    "inf",
    "nan",
}

pytest.importorskip("tritonclient.grpc")


@pytest.fixture(scope="module", autouse=True)
def _debian_tools():
    install_debian_tools()


def _value(samples: dict, name: str, match: str = "") -> float:
    lines = [line for line in samples.get(name, []) if match in line]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def _scrape(url: str) -> dict[str, list[str]]:
    """{sample name: [sample lines]} from a Prometheus text exposition."""
    out: dict[str, list[str]] = {}
    with urllib.request.urlopen(url, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                out.setdefault(re.split(r"[{ ]", line, maxsplit=1)[0], []).append(line)
    return out


@pytest.fixture(scope="module")
def exported(triton):
    """(before, after): the metrics endpoint before and after one streamed 0.5 s generation."""
    from client import MusicGenClient

    before = _scrape(triton.metrics_url)
    with MusicGenClient(f"grpc://{triton.grpc_endpoint}", timeout=120, max_duration=30) as c:
        events = list(c.stream("calm piano", 0.5, seed=3))
    assert events[-1].kind == "final"
    # the engine reports from its own thread, every 0.2 s: wait until it has counted the request as
    # finished (its first audio is counted earlier) and is idle again
    deadline = time.monotonic() + 60
    ok = ("musicgen_lm_requests_finished_total", 'outcome="ok"')
    while True:
        after = _scrape(triton.metrics_url)
        done = _value(after, *ok) > _value(before, *ok) and _value(after, "musicgen_lm_requests_in_flight") == 0
        if done or time.monotonic() > deadline:
            return before, after
        time.sleep(0.3)


def test_engine_series_after_a_generation(exported):
    before, after = exported
    assert ENGINE_METRICS <= set(after), sorted(ENGINE_METRICS - set(after))

    def delta(name, match=""):
        return _value(after, name, match) - _value(before, name, match)

    # ours, and any real-work probe the supervisor ran meanwhile (one frame each): every finished request
    # observed once in the time-to-first-audio histogram, its frames counted as audio seconds
    finished = delta("musicgen_lm_requests_finished_total", 'outcome="ok"')
    assert finished >= 1
    assert delta("musicgen_lm_time_to_first_audio_seconds_count") == finished
    assert delta("musicgen_lm_time_to_first_audio_seconds_sum") > 0
    assert delta("musicgen_lm_time_to_first_audio_seconds_bucket", 'le="+Inf"') == finished
    frames = delta("musicgen_lm_frames_total")
    assert 25 <= frames <= 25 + (finished - 1) * 25  # ours: 0.5 s at 50 frames/s
    assert delta("musicgen_lm_audio_seconds_total") == pytest.approx(frames / 50)
    # idle again: nothing waiting, no rows held
    assert _value(after, "musicgen_lm_queue_depth") == 0 and _value(after, "musicgen_lm_active_rows") == 0


def test_promtool_checks_and_unit_tests_the_rules():
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        r = subprocess.run(["promtool", *args], cwd=MON, check=False, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    names = {r["alert"] for g in yaml.safe_load((MON / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    assert names == {"MusicGenEngineDown", "MusicGenQueueGrowing", "MusicGenErrorRate"}


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]


def test_dashboard_structure():
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    ds = yaml.safe_load((MON / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    uid = ds["datasources"][0]["uid"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        assert p["type"] in ("timeseries", "stat", "gauge") and p["title"] and p["targets"], p
        assert p["datasource"]["uid"] == uid and all(t["datasource"]["uid"] == uid for t in p["targets"])
        assert set(p["gridPos"]) == {"x", "y", "w", "h"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)) and all(t["expr"].strip() for t in p["targets"])
    titles = " ".join(p["title"].lower() for p in d["panels"])
    for topic in (
        "outcome",
        "queue",
        "kv",
        "frames",
        "real-time",
        "first audio",
        "error",
        "gpu utilisation",
        "gpu memory",
    ):
        assert topic in titles, topic
    prov = yaml.safe_load((MON / "grafana" / "provisioning" / "dashboards" / "musicgen.yaml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels, ranges dropped)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        rest = e[m.end() :].lstrip()
        if rest.startswith("(") or m.group(0).lower() in PROMQL_WORDS:
            continue
        names.add(m.group(0))
    return names


def test_metric_name_extraction():
    assert metric_names('sum by (outcome) (rate(a_total{x="y"}[5m])) / b') == {"a_total", "b"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(h_bucket[5m])))") == {"h_bucket"}


def test_every_dashboard_query_names_an_exported_metric(exported):
    used = set().union(*(metric_names(e) for e in _dashboard_exprs()))
    assert used, "no metric in the dashboard"
    exported = set(exported[1])
    missing = used - exported - GPU_METRICS
    assert not missing, f"dashboard queries name metrics the server does not export: {sorted(missing)}"
    assert GPU_METRICS <= used  # the GPU panels are there (their series exist on a GPU host)
    for rule_file in ("alerts.yml",):
        for g in yaml.safe_load((MON / rule_file).read_text())["groups"]:
            for r in g["rules"]:
                assert not metric_names(r["expr"]) - exported - {"up"}, r["alert"]


def _prom_query(base: str, expr: str) -> dict:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_prometheus_scrapes_triton_and_runs_every_query(triton, exported, tmp_path):
    from server.triton import find_free_port

    port = find_free_port()
    shutil.copy(MON / "alerts.yml", tmp_path / "alerts.yml")
    cfg = yaml.safe_load((MON / "prometheus.yml").read_text())
    cfg["global"]["scrape_interval"] = cfg["global"]["evaluation_interval"] = "1s"
    cfg["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{triton.metrics_port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    log = tmp_path / "prometheus.log"
    procs = LocalProcs()
    proc = procs.start(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def scraped():
            res = _prom_query(base, 'musicgen_lm_requests_finished_total{job="triton",outcome="ok"}')["data"]["result"]
            return res and float(res[0]["value"][1]) >= 1

        wait_for("prometheus with the engine's series", scraped, proc, log, timeout=90)
        assert _prom_query(base, 'up{job="triton"}')["data"]["result"][0]["value"][1] == "1"
        for expr in _dashboard_exprs():
            res = _prom_query(base, expr)
            assert res["status"] == "success", (expr, res)
        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10) as r:
            rules = json.loads(r.read())["data"]["groups"]
        assert {r["name"] for g in rules for r in g["rules"]} == {
            "MusicGenEngineDown",
            "MusicGenQueueGrowing",
            "MusicGenErrorRate",
        }
        assert all(r["health"] != "err" for g in rules for r in g["rules"])
    finally:
        procs.stop()
