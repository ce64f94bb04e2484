"""python -m export build|verify ... (see --help)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DEFAULT_REPO = Path(__file__).resolve().parent.parent / "model_repository"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="export a checkpoint into the model repository")
    b.add_argument(
        "--checkpoint",
        default="facebook/musicgen-small",
        help="HF checkpoint directory, hub id, or preset (tiny-random, small-random)",
    )
    b.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "fp16", "int8"],
        help="LM precision: fp32 (reference, CPU), fp16 (GPU), int8 (fast CPU)",
    )
    b.add_argument("--repository", type=Path, default=DEFAULT_REPO)
    b.add_argument("--fallback", default=None, help="preset to use (loudly) when the checkpoint cannot be fetched")
    b.add_argument("--skip-if-current", action="store_true", help="do nothing if this export is already staged")
    v = sub.add_parser("verify", help="prove the staged graphs match PyTorch (parity, causality, greedy oracle)")
    v.add_argument("--repository", type=Path, default=DEFAULT_REPO)
    v.add_argument("--checkpoint", default=None, help="checkpoint to compare with (default: the manifest's)")
    v.add_argument("--steps", type=int, default=64, help="greedy generation steps to compare")
    v.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from .checkpoints import CheckpointError

    try:
        if args.cmd == "build":
            from .build import build

            m = build(args.checkpoint, args.repository, args.precision, args.fallback, args.skip_if_current)
            print(json.dumps({k: m[k] for k in ("source", "precision", "random_weights", "dims")}, indent=2))
            if m["random_weights"]:
                print("NOTE: this export has RANDOM weights (a preset): it generates noise, not music.")
            return 0
        from .verify import verify

        report = verify(args.repository, args.checkpoint, args.steps)
        text = json.dumps(report, indent=2)
        print(text)
        if args.json:
            args.json.write_text(text)
        return 0 if report["passed"] else 1
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
