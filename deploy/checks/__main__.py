"""python -m deploy.checks: every offline check of the deploy folder, one report.

Exit 0 when all pass. The same checks run, with mutation tests of the checkers themselves, in
tests/deploy (`make deploy-check`, part of `make test`).
"""

from __future__ import annotations

import sys

from . import TERRAFORM_DIR, cloudinit, compose, kubernetes, ros, terraform, tools


def main() -> int:
    results: list[tuple[str, list[str]]] = []
    results.append(("ROS template + Compute Nest config", ros.check_all()))
    results.append(("Terraform", terraform.check_all()))
    results.append(("compose + Caddyfile", compose.check_all()))
    results.append(("Kubernetes manifests (every overlay)", kubernetes.check_all()))
    results.append(("cloud-init user data", cloudinit.check_cloud_config(terraform.render_cloud_init())))
    for name, (ok, text) in (
        ("shellcheck", tools.shellcheck()),
        ("shellcheck ROS stage 0", tools.shellcheck(text=ros.stage0_script(ros.load()))),
        ("hadolint", tools.hadolint()),
        ("yamllint", tools.yamllint()),
    ):
        results.append((name, [] if ok else [text]))
    fmt = tools.terraform_fmt(TERRAFORM_DIR)
    if fmt is not None:
        results.append(("terraform fmt", [] if fmt[0] else [fmt[1]]))
    failed = 0
    for name, findings in results:
        print(f"{'ok  ' if not findings else 'FAIL'} {name}")
        for f in findings:
            print(f"     - {f}")
        failed += bool(findings)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
