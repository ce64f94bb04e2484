#!/usr/bin/env python3
"""Print the runtime's pinned core dependencies for the Triton image, GPU flavour.

Reads `[project] dependencies` from pyproject.toml (the single source of the pins) and replaces
the CPU `onnxruntime` with the given onnxruntime-gpu requirement; `--with NAME` adds NAME's pin
from any extra (the supervisor's psutil). Standard library only and no tomllib: it runs with the
Triton image's Python 3.10.

    python3 runtime-requirements.py pyproject.toml --gpu onnxruntime-gpu==1.23.2 --with psutil > requirements.txt
"""

from __future__ import annotations

import argparse
import re
import sys


def core_dependencies(pyproject_text: str) -> list[str]:
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[)", pyproject_text + "\n[end]", re.S | re.M)
    if not project:
        raise SystemExit("pyproject.toml has no [project] table")
    block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", project.group(1), re.S | re.M)
    if not block:
        raise SystemExit("[project] has no dependencies list")
    body = "\n".join(line.split("#", 1)[0] for line in block.group(1).splitlines())
    return re.findall(r'"([^"]+)"', body)


def requirement_name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def gpu_requirements(pyproject_text: str, gpu: str) -> list[str]:
    deps = core_dependencies(pyproject_text)
    if "onnxruntime" not in {requirement_name(d) for d in deps}:
        raise SystemExit("the core dependencies have no onnxruntime to replace")
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
    ap.add_argument("--with", dest="extra", action="append", default=[], metavar="NAME",
                    help="also NAME, pinned as in pyproject.toml's extras")
    args = ap.parse_args(argv)
    if requirement_name(args.gpu) != "onnxruntime-gpu" or "==" not in args.gpu:
        raise SystemExit("--gpu must pin onnxruntime-gpu with ==")
    with open(args.pyproject, encoding="utf-8") as f:
        text = f.read()
    print("\n".join(gpu_requirements(text, args.gpu) + [pinned(text, n) for n in args.extra]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
