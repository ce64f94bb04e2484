"""Our ONNX Runtime operator ai.musicgen.Int8BlockGemv (musicgen_runtime/cpu_kernels) against numpy."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from musicgen_runtime import cpu_kernels
from musicgen_runtime.onnx_session import GraphError, open_graph


@pytest.fixture(scope="module")
def library():
    return cpu_kernels.build()  # `make setup` built it; this rebuilds only if a source changed since


def _graph(tmp_path, weight: np.ndarray, block: int, name: str = "gemv.onnx"):
    qp, sp = cpu_kernels.pack(weight, block)
    node = helper.make_node(
        cpu_kernels.OP, ["A", "Qp", "Sp"], ["Y"], domain=cpu_kernels.DOMAIN, N=weight.shape[1], block_size=block
    )
    graph = helper.make_graph(
        [node],
        "gemv",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(qp, "Qp"), numpy_helper.from_array(sp, "Sp")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(cpu_kernels.DOMAIN, 1)], ir_version=8
    )
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path, cpu_kernels.unpack(qp, sp, weight.shape[1])


@pytest.mark.parametrize(
    "k, n, block, lead",
    [
        (1024, 3072, 128, (2, 1)),  # one request's step: 2 rows (guidance), 1 token each
        (4096, 1024, 128, (1,)),
        (32, 130, 32, (3, 5)),  # N not a multiple of the 4-output tile; odd row count
        (128, 1, 64, (2,)),
        (256, 64, 128, (20,)),  # a prefill chunk's rows
    ],
)
def test_operator_equals_the_dequantized_product(tmp_path, library, k, n, block, lead):
    rng = np.random.default_rng(k + n)
    weight = rng.standard_normal((k, n)).astype(np.float32)
    path, dequantized = _graph(tmp_path, weight, block)
    sess = open_graph(path, threads=2, custom_ops=True)
    a = rng.standard_normal((*lead, k)).astype(np.float32)
    a[..., :8] *= 30  # an outlier channel: activations are scaled per block, not per row
    y = sess.run(None, {"A": a})[0]
    assert y.shape == (*lead, n)
    ref = a @ dequantized
    # int16 activations (per row and block) against fp32: a few 1e-5 of the output's scale
    assert np.abs(y - ref).max() < 1e-4 * np.abs(ref).max()
    # and the weights' own int8 error against the fp32 product: well under 1 %
    assert np.linalg.norm(y - a @ weight) < 0.01 * np.linalg.norm(a @ weight)


def test_pack_rounds_each_weight_to_half_a_step():
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((256, 10)).astype(np.float32)
    qp, sp = cpu_kernels.pack(weight, 128)
    assert qp.dtype == np.int8 and qp.shape == (3, 16, 64) and sp.shape == (3, 2, 4)
    step = np.repeat(sp.transpose(0, 2, 1).reshape(12, 2)[:10], 128, axis=1).T  # [K, N]
    assert np.all(np.abs(cpu_kernels.unpack(qp, sp, 10) - weight) <= step / 2 + 1e-7)
    with pytest.raises(ValueError, match="multiple of the block"):
        cpu_kernels.pack(weight[:200], 128)


def test_wrong_shapes_are_a_clear_error_not_a_crash(tmp_path, library):
    rng = np.random.default_rng(2)
    path, _ = _graph(tmp_path, rng.standard_normal((128, 8)).astype(np.float32), 64)
    sess = open_graph(path, custom_ops=True)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match=r"Int8BlockGemv: A \[\.\.\., 96\]"):
        sess.run(None, {"A": np.zeros((2, 96), np.float32)})
    assert sess.run(None, {"A": np.zeros((0, 128), np.float32)})[0].shape == (0, 8)


def test_without_the_library_the_graph_is_refused_by_name(tmp_path, library, monkeypatch):
    path, _ = _graph(tmp_path, np.ones((128, 4), np.float32), 128)
    monkeypatch.setattr(cpu_kernels, "library", lambda: None)
    with pytest.raises(GraphError, match="gemv.onnx uses our CPU kernels.*python -m musicgen_runtime.cpu_kernels"):
        open_graph(path, custom_ops=True)


def test_build_is_skipped_when_current_and_redone_when_a_source_changes(library, monkeypatch):
    stamp = library.stat().st_mtime_ns
    assert cpu_kernels.build() == library and library.stat().st_mtime_ns == stamp
    monkeypatch.setenv("CC", "no-such-compiler")
    with pytest.raises(cpu_kernels.KernelBuildError, match="no C compiler"):
        cpu_kernels.build(force=True)
    assert cpu_kernels.built()  # a failed build leaves the working library in place
