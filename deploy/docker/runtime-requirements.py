#!/usr/bin/env python3
"""Print the runtime's pinned dependencies for the Triton image, GPU flavour.

Reads pyproject.toml (the single source of the pins): the core `[project] dependencies` with the
`runtime` extra's pins in place of the core's ranges (numpy 1.26.4 for Triton's python backend), and
replaces the CPU `onnxruntime` with the given onnxruntime-gpu requirement; `--with NAME` adds NAME's pin
from any extra (the supervisor's psutil). Standard library only and
no tomllib: it runs with the Triton image's Python 3.10.

    python3 runtime-requirements.py pyproject.toml --gpu onnxruntime-gpu==1.23.2 --with psutil > requirements.txt
"""

from __future__ import annotations

import argparse
import re
import sys

RUNTIME_EXTRA = "runtime"


def _table(pyproject_text: str, name: str) -> str:
    table = re.search(rf"^\[{re.escape(name)}\]\s*$(.*?)(?=^\[)", pyproject_text + "\n[end]", re.S | re.M)
    if not table:
        raise SystemExit(f"pyproject.toml has no [{name}] table")
    return table.group(1)


def _string_list(table: str, key: str, where: str) -> list[str]:
    block = re.search(rf"^{re.escape(key)}\s*=\s*\[(.*?)\]\s*$", table, re.S | re.M)
    if not block:
        raise SystemExit(f"{where} has no {key} list")
    body = "\n".join(line.split("#", 1)[0] for line in block.group(1).splitlines())
    return re.findall(r'"([^"]+)"', body)


def core_dependencies(pyproject_text: str) -> list[str]:
    return _string_list(_table(pyproject_text, "project"), "dependencies", "[project]")


def extra_dependencies(pyproject_text: str, extra: str) -> list[str]:
    return _string_list(
        _table(pyproject_text, "project.optional-dependencies"), extra, "[project.optional-dependencies]"
    )


def requirement_name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def runtime_requirements(pyproject_text: str) -> list[str]:
    """The core dependencies, each replaced by the runtime extra's pin of the same package, then the
    runtime extra's other packages."""
    extra = extra_dependencies(pyproject_text, RUNTIME_EXTRA)
    pins = {requirement_name(r): r for r in extra}
    core = core_dependencies(pyproject_text)
    out = [pins.get(requirement_name(r), r) for r in core]
    core_names = {requirement_name(r) for r in core}
    return out + [r for r in extra if requirement_name(r) not in core_names]


def gpu_requirements(pyproject_text: str, gpu: str) -> list[str]:
    deps = runtime_requirements(pyproject_text)
    if "onnxruntime" not in {requirement_name(d) for d in deps}:
        raise SystemExit("the runtime dependencies have no onnxruntime to replace")
    out = [d for d in deps if requirement_name(d) != "onnxruntime"]
    return out + [gpu]


def pinned(pyproject_text: str, name: str) -> str:
    """The `name==X` pin written anywhere in pyproject.toml (an extra's list)."""
    for req in re.findall(r'"([^"]+==[^"]+)"', pyproject_text):
        if requirement_name(req) == name.lower():
            return req
    raise SystemExit(f"pyproject.toml pins no {name}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pyproject")
    ap.add_argument("--gpu", required=True, help="the onnxruntime-gpu requirement, e.g. onnxruntime-gpu==1.23.2")
    ap.add_argument(
        "--with",
        dest="extra",
        action="append",
        default=[],
        metavar="NAME",
        help="also NAME, pinned as in pyproject.toml's extras",
    )
    args = ap.parse_args(argv)
    if requirement_name(args.gpu) != "onnxruntime-gpu" or "==" not in args.gpu:
        raise SystemExit("--gpu must pin onnxruntime-gpu with ==")
    with open(args.pyproject, encoding="utf-8") as f:
        text = f.read()
    print("\n".join(gpu_requirements(text, args.gpu) + [pinned(text, n) for n in args.extra]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
