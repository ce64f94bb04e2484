"""Benchmarks: our Triton server (through the client) against PyTorch `transformers` on the same checkpoint.

`python -m bench [--short | --quick]` (or `make bench` / `make bench-short` / `make bench-quick`); see bench/README.md.
"""


def print_json(result: dict, out=None) -> None:
    """A measuring tool's result: printed as JSON, and written to `out` (a Path) when given."""
    import json

    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.write_text(text)
