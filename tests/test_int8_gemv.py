"""Our ONNX Runtime operator ai.musicgen.Int8BlockGemv (musicgen_runtime/cpu_kernels) against numpy."""

from __future__ import annotations

import gc
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper

from musicgen_runtime import cpu_kernels
from musicgen_runtime.onnx_session import GraphError, open_graph


@pytest.fixture(scope="module")
def library():
    return cpu_kernels.build()  # `make setup` built it; this rebuilds only if a source changed since


def _graph(tmp_path, weight: np.ndarray, block: int, name: str = "gemv.onnx", weights: str = "external", **attrs):
    """One Int8BlockGemv node (with `attrs` besides N and block_size). weights: "external" initializers in a
    .data file (as exports save them; the kernel copies them when it is made), "inline" initializers, or
    "inputs" fed with every run."""
    qp, sp = cpu_kernels.pack(weight, block)
    node = helper.make_node(
        cpu_kernels.OP,
        ["A", "Qp", "Sp"],
        ["Y"],
        domain=cpu_kernels.DOMAIN,
        N=weight.shape[1],
        block_size=block,
        **attrs,
    )
    inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT, None)]
    if weights == "inputs":
        inputs += [helper.make_tensor_value_info("Qp", TensorProto.INT8, None)]
        inputs += [helper.make_tensor_value_info("Sp", TensorProto.FLOAT, None)]
    graph = helper.make_graph(
        [node],
        "gemv",
        inputs,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [] if weights == "inputs" else [numpy_helper.from_array(qp, "Qp"), numpy_helper.from_array(sp, "Sp")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(cpu_kernels.DOMAIN, 1)], ir_version=8
    )
    path = tmp_path / name
    onnx.save(model, path, save_as_external_data=weights == "external", location=f"{name}.data", size_threshold=0)
    return path, cpu_kernels.unpack(qp, sp, weight.shape[1]), {"Qp": qp, "Sp": sp} if weights == "inputs" else {}


@pytest.mark.parametrize(
    "k, n, block, lead, weights",
    [
        (1024, 3072, 128, (2, 1), "external"),  # one request's step: 2 rows (guidance), 1 token each
        (4096, 1024, 128, (1,), "external"),
        (32, 130, 32, (3, 5), "inline"),  # N not a multiple of the 8-output tile; odd row count; short runs
        (1024, 200, 256, (2,), "external"),  # 25 tiles: runs of 2 and 1 read side by side
        (128, 1, 64, (2,), "inputs"),
        (256, 64, 128, (20,), "inputs"),  # a prefill chunk's rows
        (1024, 8, 128, (3,), "external"),  # fewer output tiles than the threads' share of the work
    ],
)
def test_operator_equals_the_dequantized_product(tmp_path, library, k, n, block, lead, weights):
    rng = np.random.default_rng(k + n)
    weight = rng.standard_normal((k, n)).astype(np.float32)
    path, dequantized, fed = _graph(tmp_path, weight, block, weights=weights)
    sess = open_graph(path, threads=2)
    a = rng.standard_normal((*lead, k)).astype(np.float32)
    a[..., :8] *= 30  # an outlier channel: activations are scaled per block, not per row
    y = sess.run(None, {"A": a, **fed})[0]
    assert y.shape == (*lead, n)
    ref = a @ dequantized
    # int16 activations (per row and block) against fp32: a few 1e-5 of the output's scale
    assert np.abs(y - ref).max() < 1e-4 * np.abs(ref).max()
    # and the weights' own int8 error against the fp32 product: well under 1 %
    assert np.linalg.norm(y - a @ weight) < 0.01 * np.linalg.norm(a @ weight)


def _huge_page_advised_kb() -> int:
    """Resident kB of this process's mappings advised MADV_HUGEPAGE (VmFlags "hg")."""
    total = 0
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", Path("/proc/self/smaps").read_text()):
        flags = re.search(r"^VmFlags:(.*)$", block, re.M)
        if flags and " hg" in flags.group(1):
            total += int(re.search(r"^Rss:\s+(\d+) kB", block, re.M).group(1))
    return total


@pytest.mark.skipif(
    "[never]"
    in (
        Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
        if Path("/sys/kernel/mm/transparent_hugepage/enabled").exists()
        else "[never]"
    ),
    reason="this kernel has no transparent huge pages: the weights stay where ONNX Runtime put them",
)
def test_initializer_weights_are_copied_to_huge_pages_and_given_back(tmp_path, library):
    weight = np.random.default_rng(3).standard_normal((1024, 8192)).astype(np.float32)
    path, dequantized, _ = _graph(tmp_path, weight, 128)
    gc.collect()
    before = _huge_page_advised_kb()
    sess = open_graph(path, threads=2)
    assert _huge_page_advised_kb() - before >= 8192  # the 8 MB of int8 weights (and their scales)
    a = np.random.default_rng(4).standard_normal((2, 1024)).astype(np.float32)
    ref = a @ dequantized
    assert np.abs(sess.run(None, {"A": a})[0] - ref).max() < 1e-4 * np.abs(ref).max()
    del sess
    gc.collect()
    # its pages are given back (the whole chunk if it held no other session's copies); in a chunk shared with
    # other copies, the 2 MB pages at its ends may stay, split, with their untouched rest
    assert _huge_page_advised_kb() - before < 4096


def test_the_largest_block_at_full_scale_does_not_overflow(tmp_path, library):
    # every product at its largest (int16 32767 x int8 127), 512 of them summed in int32: 2.13e9 < 2^31
    path, _, _ = _graph(tmp_path, np.ones((1024, 16), np.float32), 512, "full.onnx")
    y = open_graph(path, threads=2).run(None, {"A": np.ones((2, 1024), np.float32)})[0]
    assert np.allclose(y, 1024.0, rtol=1e-6)


def test_pack_rounds_each_weight_to_half_a_step():
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((256, 10)).astype(np.float32)
    qp, sp = cpu_kernels.pack(weight, 128)
    assert qp.dtype == np.int8 and qp.shape == (2, 128, 16) and sp.shape == (2, 2, 8)
    step = np.repeat(sp.transpose(0, 2, 1).reshape(16, 2)[:10], 128, axis=1).T  # [K, N]
    assert np.all(np.abs(cpu_kernels.unpack(qp, sp, 10) - weight) <= step / 2 + 1e-7)
    with pytest.raises(ValueError, match="multiple of the block"):
        cpu_kernels.pack(weight[:200], 128)


def test_wrong_shapes_are_a_clear_error_not_a_crash(tmp_path, library):
    rng = np.random.default_rng(2)
    path, _, _ = _graph(tmp_path, rng.standard_normal((128, 8)).astype(np.float32), 64)
    sess = open_graph(path)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match=r"Int8BlockGemv: A \[\.\.\., 96\]"):
        sess.run(None, {"A": np.zeros((2, 96), np.float32)})
    assert sess.run(None, {"A": np.zeros((0, 128), np.float32)})[0].shape == (0, 8)


def test_without_the_library_the_graph_is_refused_by_name(tmp_path, library, monkeypatch):
    path, _, _ = _graph(tmp_path, np.ones((128, 4), np.float32), 128)
    monkeypatch.setattr(cpu_kernels, "library", lambda: None)
    with pytest.raises(
        GraphError, match="gemv.onnx uses our CPU kernels.*not built.*python -m musicgen_runtime.cpu_kernels"
    ):
        open_graph(path)


def test_build_is_skipped_when_current_and_redone_when_a_source_changes(library, monkeypatch):
    stamp = library.stat().st_mtime_ns
    assert cpu_kernels.build() == library and library.stat().st_mtime_ns == stamp
    monkeypatch.setenv("CC", "no-such-compiler")
    with pytest.raises(cpu_kernels.KernelBuildError, match="no C compiler"):
        cpu_kernels.build(force=True)
    assert cpu_kernels.built()  # a failed build leaves the working library in place


def _attention_graph(tmp_path, op: str, heads: int, kv_heads: int, name: str):
    """One attention node: ours (CachedAttention, int8 cache) or ORT's GroupQueryAttention (float cache)."""
    domain, inputs = cpu_kernels.DOMAIN, ["qkv", "past_key", "past_value", "seqlens_k", "total"]
    if op == "GroupQueryAttention":
        domain, inputs = "com.microsoft", ["qkv", "", "", "past_key", "past_value", "seqlens_k", "total"]
    node = helper.make_node(
        op,
        inputs,
        ["out", "present_key", "present_value"],
        domain=domain,
        num_heads=heads,
        kv_num_heads=kv_heads,
        scale=0.125,
    )
    f, cache = TensorProto.FLOAT, TensorProto.FLOAT if op == "GroupQueryAttention" else TensorProto.INT8
    graph = helper.make_graph(
        [node],
        "attention",
        [
            helper.make_tensor_value_info("qkv", f, None),
            helper.make_tensor_value_info("past_key", cache, None),
            helper.make_tensor_value_info("past_value", cache, None),
            helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, None),
            helper.make_tensor_value_info("total", TensorProto.INT32, None),
        ],
        [helper.make_tensor_value_info("out", f, None)]
        + [helper.make_tensor_value_info(n, cache, None) for n in ("present_key", "present_value")],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(domain, 1)]
    path = tmp_path / name
    path.write_bytes(helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString())
    return open_graph(path, threads=2)


def _run_in_place(sess, qkv, key, value, last):
    """Run with the caches bound as both past and present (as the engine does); returns the output."""
    io = sess.io_binding()
    io.bind_output("out")
    for name, arr in (("qkv", qkv), ("seqlens_k", last), ("total", np.array(last.max() + 1, np.int32))):
        io.bind_cpu_input(name, arr)
    for past, present, cache in (("past_key", "present_key", key), ("past_value", "present_value", value)):
        io.bind_input(past, "cpu", 0, cache.dtype, list(cache.shape), cache.ctypes.data)
        io.bind_output(present, "cpu", 0, cache.dtype, list(cache.shape), cache.ctypes.data)
    sess.run_with_iobinding(io)
    return io.copy_outputs_to_cpu()[0]


def _quantize(x: np.ndarray) -> np.ndarray:
    """[..., D] float32 as the int8 cache's positions [..., D + 4]: D int8 values, then their float32 scale
    (absmax / 127; values rounded to nearest even after multiplying by 1 / scale, as the kernel does)."""
    x = x.astype(np.float32)
    scale = np.abs(x).max(-1, keepdims=True) / np.float32(127)
    inv = np.where(scale > 0, np.float32(1) / np.where(scale > 0, scale, 1), 0).astype(np.float32)
    return np.concatenate([np.rint(x * inv).astype(np.int8), scale.view(np.int8)], axis=-1)


def _values(cache: np.ndarray) -> np.ndarray:
    """A cache's positions as float32 (int8 ones dequantized)."""
    if cache.dtype != np.int8:
        return cache.astype(np.float32)
    return cache[..., :-4].astype(np.float32) * np.ascontiguousarray(cache[..., -4:]).view(np.float32)


def _reference_attention(qkv, key, value, last, heads, kv_heads):
    """numpy: store each row's new K/V at its last positions (in the caches' format), then causal softmax
    attention per head in float32."""
    rows, tokens, _ = qkv.shape
    d = _values(key).shape[3]
    store = _quantize if key.dtype == np.int8 else (lambda x: x)
    key, value, out = key.copy(), value.copy(), np.zeros((rows, tokens, heads * d), np.float32)
    for b in range(rows):
        start = last[b] + 1 - tokens
        for i in range(tokens):
            t = qkv[b, i].reshape(heads + 2 * kv_heads, d)
            key[b, :, start + i] = store(t[heads : heads + kv_heads])
            value[b, :, start + i] = store(t[heads + kv_heads :])
        keys, values = _values(key), _values(value)
        for h in range(heads):
            g = h // (heads // kv_heads)
            for i in range(tokens):
                n = start + i + 1
                s = keys[b, g, :n] @ qkv[b, i, h * d : (h + 1) * d] * 0.125
                w = np.exp(s - s.max())
                out[b, i, h * d : (h + 1) * d] = (w / w.sum()) @ values[b, g, :n]
    return out, key, value


@pytest.mark.parametrize(
    "rows, tokens, heads, kv_heads, d, last",
    [
        (2, 1, 4, 4, 64, [5, 30]),  # a decode step of rows at different positions
        (1, 3, 4, 2, 16, [9]),  # a prefill chunk after a past, grouped heads
        (2, 2, 2, 2, 8, [1, 17]),  # several tokens after a past on several rows (ORT's CPU GQA refuses it)
        (3, 1, 2, 1, 64, [0, 700, 12]),  # a first token, and a long past
    ],
)
def test_cached_attention_equals_the_reference_in_place(tmp_path, library, rows, tokens, heads, kv_heads, d, last):
    rng = np.random.default_rng(rows * 100 + tokens)
    capacity = max(last) + 4
    qkv = rng.standard_normal((rows, tokens, (heads + 2 * kv_heads) * d)).astype(np.float32)
    key, value = (rng.standard_normal((rows, kv_heads, capacity, d)).astype(np.float32) for _ in range(2))
    last = np.array(last, np.int32)
    # numpy on the int8 cache: the new K/V stored as _quantize does; the kernel's scores take the query in int16
    key8, value8 = _quantize(key), _quantize(value)
    ref_out, ref_key, ref_value = _reference_attention(qkv, key8, value8, last, heads, kv_heads)
    ours = _attention_graph(tmp_path, cpu_kernels.ATTENTION_OP, heads, kv_heads, "ours.onnx")
    out = _run_in_place(ours, qkv, key8, value8, last)
    assert np.abs(out - ref_out).max() < 1e-3 * np.abs(ref_out).max()
    assert np.array_equal(key8, ref_key) and np.array_equal(value8, ref_value)  # written in place, nothing else
    exact, _, _ = _reference_attention(qkv, key, value, last, heads, kv_heads)  # float32 throughout
    assert np.abs(out - exact).max() < 0.05 * np.abs(exact).max()  # the int8 cache's own error, bounded
    if tokens == 1:  # and ORT's own kernel on the same past in floats agrees, up to the new K/V's rounding
        key8, value8 = _quantize(key), _quantize(value)  # afresh: the run above wrote into them
        gqa = _attention_graph(tmp_path, "GroupQueryAttention", heads, kv_heads, "gqa.onnx")
        theirs = _run_in_place(gqa, qkv, _values(key8), _values(value8), last)
        assert np.abs(_run_in_place(ours, qkv, key8, value8, last) - theirs).max() < 1e-2 * np.abs(theirs).max()


def test_cached_attention_copies_the_past_when_present_is_not_bound_to_it(tmp_path, library):
    rng = np.random.default_rng(5)
    qkv = rng.standard_normal((1, 1, 3 * 2 * 8)).astype(np.float32)
    key, value = _quantize(rng.standard_normal((2, 1, 2, 6, 8)))
    last = np.array([3], np.int32)
    ours = _attention_graph(tmp_path, cpu_kernels.ATTENTION_OP, 2, 2, "ours.onnx")
    out, present_key, _ = ours.run(
        None, {"qkv": qkv, "past_key": key, "past_value": value, "seqlens_k": last, "total": np.array(4, np.int32)}
    )
    ref_out, ref_key, _ = _reference_attention(qkv, key, value, last, 2, 2)
    assert np.abs(out - ref_out).max() < 1e-3 * np.abs(ref_out).max() and np.array_equal(present_key, ref_key)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="CachedAttention: qkv"):
        ours.run(
            None,
            {
                "qkv": qkv,
                "past_key": key,
                "past_value": value,
                "seqlens_k": np.array([6], np.int32),
                "total": np.array(7, np.int32),
            },
        )  # a position past the cache's capacity
    # positions without their scales: head_dim 4, not the 8 of qkv
    bare = {"past_key": np.ascontiguousarray(key[..., :-4]), "past_value": np.ascontiguousarray(value[..., :-4])}
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="D \\+ 4\\] int8"):
        ours.run(None, {"qkv": qkv, **bare, "seqlens_k": last, "total": np.array(4, np.int32)})


def _cross_graph(tmp_path, op: str, heads: int, kv_type: int, name: str):
    """One cross-attention node: ours (CrossAttention, float16 K/V) or ORT's MultiHeadAttention (float K/V)."""
    domain, inputs = cpu_kernels.DOMAIN, ["q", "key", "value", "mask"]
    if op == "MultiHeadAttention":
        domain, inputs = "com.microsoft", ["q", "key", "value", "", "mask"]
    node = helper.make_node(op, inputs, ["out"], domain=domain, num_heads=heads, scale=0.125)
    graph = helper.make_graph(
        [node],
        "cross",
        [
            helper.make_tensor_value_info("q", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("key", kv_type, None),
            helper.make_tensor_value_info("value", kv_type, None),
            helper.make_tensor_value_info("mask", TensorProto.INT32, None),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    path = tmp_path / name
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(domain, 1)]
    path.write_bytes(helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString())
    return open_graph(path, threads=2)


@pytest.mark.parametrize(
    "rows, tokens, heads, d, text_len",
    [
        (2, 1, 16, 64, 12),  # one request's decode step (guidance: the second row's mask is all zeros)
        (3, 5, 4, 16, 7),  # a prefill chunk; odd text length (a partial group of four scores)
        (1, 1, 2, 8, 1),
    ],
)
def test_cross_attention_equals_onnxruntimes_multi_head_attention(tmp_path, library, rows, tokens, heads, d, text_len):
    rng = np.random.default_rng(rows * 10 + tokens)
    q = rng.standard_normal((rows, tokens, heads * d)).astype(np.float32)
    key, value = (rng.standard_normal((rows, heads, text_len, d)).astype(np.float16) for _ in range(2))
    mask = (rng.random((rows, text_len)) < 0.7).astype(np.int32)
    mask[0, 0] = 1
    mask[-1] = 0 if rows > 1 else mask[-1]  # a fully masked row: ORT averages its values, as do we
    ours = _cross_graph(tmp_path, cpu_kernels.CROSS_ATTENTION_OP, heads, TensorProto.FLOAT16, "ours.onnx")
    mha = _cross_graph(tmp_path, "MultiHeadAttention", heads, TensorProto.FLOAT, "mha.onnx")
    out = ours.run(None, {"q": q, "key": key, "value": value, "mask": mask})[0]
    ref = mha.run(None, {"q": q, "key": key.astype(np.float32), "value": value.astype(np.float32), "mask": mask})[0]
    assert out.shape == ref.shape == (rows, tokens, heads * d)
    assert np.abs(out - ref).max() < 2e-5 * max(1.0, np.abs(ref).max())
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="CrossAttention: q"):
        ours.run(None, {"q": q, "key": key, "value": value, "mask": mask[:, :-1] if text_len > 1 else mask[:0]})


def _skip_layer_norm_graph(tmp_path, weight: np.ndarray, name: str, gamma_beta=None):
    """Int8BlockGemv with the skip layer norm prologue: (A, skip, gamma, beta) -> (Y, sum); gamma_beta: the two
    as initializers (as exports have them, read once when the kernel is made), else graph inputs."""
    qp, sp = cpu_kernels.pack(weight, 128)
    node = helper.make_node(
        cpu_kernels.OP,
        ["A", "Qp", "Sp", "skip", "gamma", "beta"],
        ["Y", "sum"],
        domain=cpu_kernels.DOMAIN,
        N=weight.shape[1],
        block_size=128,
        prologue=cpu_kernels.PROLOGUE_SKIP_LAYER_NORM,
        epsilon=1e-5,
    )
    f = TensorProto.FLOAT
    inits = [numpy_helper.from_array(qp, "Qp"), numpy_helper.from_array(sp, "Sp")]
    if gamma_beta is not None:
        inits += [numpy_helper.from_array(gamma_beta[0], "gamma"), numpy_helper.from_array(gamma_beta[1], "beta")]
    graph = helper.make_graph(
        [node],
        "gemv",
        [helper.make_tensor_value_info(n, f, None) for n in ["A", "skip"] + ([] if gamma_beta else ["gamma", "beta"])],
        [helper.make_tensor_value_info(n, f, None) for n in ["Y", "sum"]],
        inits,
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(cpu_kernels.DOMAIN, 1)]
    path = tmp_path / name
    path.write_bytes(helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString())
    return open_graph(path, threads=2), cpu_kernels.unpack(qp, sp, weight.shape[1])


@pytest.mark.parametrize("lead", [(2, 1), (3,)])  # two rows per tile, and an odd one alone
def test_gelu_epilogue_equals_the_product_then_erf_gelu(tmp_path, library, lead):
    import math

    rng = np.random.default_rng(6)
    weight = rng.standard_normal((256, 42)).astype(np.float32)  # N not a multiple of the 8-output tile
    path, dequantized, _ = _graph(tmp_path, weight, 128, "gelu.onnx", epilogue=cpu_kernels.EPILOGUE_GELU)
    a = (rng.standard_normal((*lead, 256)) * 0.2).astype(np.float32)  # outputs of about +-9: erf's tails too
    y = open_graph(path, threads=2).run(None, {"A": a})[0]
    x = (a @ dequantized).astype(np.float64)
    ref = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    assert y.shape == (*lead, 42) and np.abs(x).max() > 6
    assert np.abs(y - ref).max() < 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("constants", [False, True])
def test_skip_layer_norm_prologue_gives_the_sum_and_the_normalized_product(tmp_path, library, constants):
    rng = np.random.default_rng(7)
    gamma, beta = rng.standard_normal(128).astype(np.float32), rng.standard_normal(128).astype(np.float32)
    weight = rng.standard_normal((128, 24)).astype(np.float32)
    sess, dequantized = _skip_layer_norm_graph(tmp_path, weight, "sln.onnx", (gamma, beta) if constants else None)
    a, skip = (rng.standard_normal((2, 1, 128)).astype(np.float32) * 4 + 1 for _ in range(2))
    fed = {} if constants else {"gamma": gamma, "beta": beta}
    y, total = sess.run(None, {"A": a, "skip": skip, **fed})
    s = a + skip
    normed = (s - s.mean(-1, keepdims=True)) / np.sqrt(s.var(-1, keepdims=True) + 1e-5) * gamma + beta
    ref = normed @ dequantized
    assert np.allclose(total, s, atol=1e-6) and np.abs(y - ref).max() < 1e-4 * np.abs(ref).max()
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="Int8BlockGemv: skip float"):
        sess.run(None, {"A": a, "skip": skip[:1], **fed})


def test_a_prologue_without_its_inputs_or_unknown_is_a_clear_error(tmp_path, library):
    weight = np.random.default_rng(8).standard_normal((128, 8)).astype(np.float32)
    bad = [
        ({"prologue": cpu_kernels.PROLOGUE_SKIP_LAYER_NORM}, "takes skip, gamma and beta"),
        ({"prologue": 1}, "prologue must be 0 \\(none\\) or 2"),  # the GELU is an epilogue (int8_gemv.h)
        ({"epilogue": 3}, "epilogue must be 0 \\(none\\) or 1"),
    ]
    for i, (attrs, error) in enumerate(bad):
        path, _, _ = _graph(tmp_path, weight, 128, f"bad{i}.onnx", weights="inline", **attrs)
        with pytest.raises((GraphError, ort.capi.onnxruntime_pybind11_state.InvalidArgument), match=error):
            open_graph(path).run(None, {"A": np.ones((2, 128), np.float32)})


def test_weights_packed_for_the_older_tiles_are_refused_when_the_session_is_made(tmp_path, library):
    path, _, _ = _graph(tmp_path, np.ones((128, 8), np.float32), 64, "old.onnx", weights="inline")
    proto = onnx.load(str(path))
    for init in proto.graph.initializer:  # as earlier exports packed them: Qp [N/4, K/16, 64], Sp [N/4, K/64, 4]
        arr = numpy_helper.to_array(init)
        old = (2, 8, 64) if arr.dtype == np.int8 else (2, 2, 4)
        init.CopyFrom(numpy_helper.from_array(arr.reshape(old), init.name))
    path.write_bytes(proto.SerializeToString())
    with pytest.raises((GraphError, ort.capi.onnxruntime_pybind11_state.Fail), match="tiles of 8 outputs.*re-export"):
        open_graph(path)
