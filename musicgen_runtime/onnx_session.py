"""ONNX Runtime sessions: one place that chooses the execution provider and checks graph names."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from . import cpu_kernels


class GraphError(RuntimeError):
    pass


def providers_for(device: str) -> list:
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise GraphError(
                "device 'cuda' requested but this onnxruntime has no CUDAExecutionProvider "
                "(install onnxruntime-gpu matching the CUDA version, or use device 'cpu')"
            )
        return [("CUDAExecutionProvider", {"do_copy_in_default_stream": True}), "CPUExecutionProvider"]
    if device != "cpu":
        raise GraphError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")
    return ["CPUExecutionProvider"]


def open_graph(
    path: str | Path,
    device: str = "cpu",
    threads: int | None = None,
    expect_inputs=(),
    expect_outputs=(),
    spin: bool = True,
    profile_prefix: str | None = None,
) -> ort.InferenceSession:
    """Load a graph; fail clearly if it is missing or lacks the tensor names the runtime uses.

    spin=False: the intra-op threads sleep instead of spin-waiting between ops. For graphs run once
    per request (text encoder, cross K/V, codec, melody conditioner): every session has its own pool on the same cores,
    and their spinning threads would steal the cores from the LM's decode steps (and vice versa
    after the last step). The decode steps keep spinning: it runs back to back, ~310 kernels a step.
    MUSICGEN_ORT_SPIN=0 in the environment lets every session's threads sleep, the decode step's too:
    on a 2-core machine busy with other processes, a one-request int8 step took about half the time
    without spinning; on a quiet one, about a tenth more (docs/performance.md).
    profile_prefix: ORT's per-node profiling into <prefix>_<date>.json (the benchmark's step profile).
    Our operators (cpu_kernels, used by int8 exports) are registered with every session when their
    library is built; a graph that needs them without it is refused with what to do.
    """
    path = Path(path)
    if not path.exists():
        raise GraphError(f"{path} is missing: run the export (`make export`) to stage the graphs")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    threads = threads if threads is not None else int(os.environ.get("MUSICGEN_ORT_THREADS", "0"))
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not spin or os.environ.get("MUSICGEN_ORT_SPIN", "1") == "0":
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    library, missing = cpu_kernels.library(), "not built"
    if library is not None:
        try:
            so.register_custom_ops_library(str(library))
        except Exception as exc:  # e.g. a CPU without AVX2: only graphs that use the operators fail
            library, missing = None, f"not usable here ({str(exc).splitlines()[-1]})"
    try:
        sess = ort.InferenceSession(str(path), sess_options=so, providers=providers_for(device))
    except Exception as exc:
        if library is None and cpu_kernels.DOMAIN in str(exc):
            raise GraphError(
                f"{path.name} uses our CPU kernels ({cpu_kernels.DOMAIN}), whose library is {missing}: run "
                "`python -m musicgen_runtime.cpu_kernels` (`make setup` does)"
            ) from exc
        raise GraphError(f"onnxruntime could not load {path.name}: {exc}") from exc
    have_in = {i.name for i in sess.get_inputs()}
    have_out = {o.name for o in sess.get_outputs()}
    missing = [n for n in expect_inputs if n not in have_in] + [n for n in expect_outputs if n not in have_out]
    if missing:
        raise GraphError(f"{path.name} lacks tensors {missing}; it was exported by another version: re-export")
    return sess


def input_names(sess: ort.InferenceSession) -> list[str]:
    return [i.name for i in sess.get_inputs()]


def output_names(sess: ort.InferenceSession) -> list[str]:
    return [o.name for o in sess.get_outputs()]
