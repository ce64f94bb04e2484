"""Export stage: checkpoint sources, graphs, manifest, parity with PyTorch (tiny-random)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from export import checkpoints
from musicgen_runtime.onnx_session import GraphError
from export.__main__ import main as export_main
from export.build import build
from export.verify import verify
from musicgen_runtime import manifest, names


def test_verify_fp32_parity_and_greedy_oracle(tiny_repo):
    report = verify(tiny_repo, steps=40)
    assert report["passed"], report
    for name, g in report["graphs"].items():
        assert g["max_abs"] < 1e-4, (name, g)
    assert report["checks"]["causal"]
    assert report["graphs"]["audio_decoder_chunked"]["chunks"] >= 4  # a clip decoded chunk by chunk, vs EnCodec
    assert all(r["identical"] for r in report["greedy_oracle"]["runs"])
    assert all(r["audio"]["max_abs"] < 1e-4 for r in report["greedy_oracle"]["runs"])
    # continuation: the prompt encoder's codes equal EnCodec's, and continued runs are in the oracle
    assert report["codes"]["audio_encoder"]["code_agreement"] == 1.0
    assert sum(r["prompt_frames"] > 0 for r in report["greedy_oracle"]["runs"]) == 3
    # long form: clips of several windows equal audiocraft's window loop on transformers (one after a prompt)
    long = [r for r in report["greedy_oracle"]["runs"] if "windows" in r]
    assert len(long) == 2 and all(r["windows"] == 4 and r["identical"] for r in long), long
    assert [r["prompt_frames"] > 0 for r in long] == [False, True]


def test_manifest_records_source_dims_and_hashes(tiny_repo):
    m = manifest.read(tiny_repo / "lm_engine" / "1")
    assert m["random_weights"] is True and m["source"] == "tiny-random"
    assert m["precision"] == "fp32" and m["opset"] == 18
    d = manifest.dims(m)
    assert (d.num_codebooks, d.sample_rate, d.frame_rate, d.hop_length) == (4, 32000, 50.0, 640)
    for model_name, files in {
        "lm_engine": ["decoder_step.onnx", "cross_kv.onnx"],
        "audio_decoder": ["audio_decoder.onnx"],
        "tokenizer": ["tokenizer.json"],
    }.items():
        for f in files:
            path = tiny_repo / model_name / "1" / f
            assert m["files"][f]["sha256"] == manifest.sha256(path)
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(m["versions"])


def _step_ops(repo, graph_file=names.DECODER_STEP_FILE):
    import collections

    import onnx

    g = onnx.load(str(repo / "lm_engine" / "1" / graph_file), load_external_data=False).graph
    return collections.Counter(n.op_type for n in g.node)


def test_graph_names_are_explicit(tiny_repo):
    import onnx

    g = onnx.load(str(tiny_repo / "lm_engine" / "1" / names.DECODER_STEP_FILE), load_external_data=False).graph
    inputs = [i.name for i in g.input]
    assert inputs[:5] == [
        names.INPUT_IDS,
        names.POSITION_IDS,
        names.SEQLENS_K,
        names.TOTAL_SEQUENCE_LENGTH,
        names.ENCODER_ATTENTION_MASK,
    ]
    # self-attention runs on the preallocated cache, in place (no Concat of the past per step)
    assert sum(n.op_type == "GroupQueryAttention" for n in g.node) == 2
    assert names.past(1, "encoder", "value") in inputs
    # CPU graphs: one fused MultiHeadAttention node per layer for the cross-attention (no softmax of their own)
    ops = _step_ops(tiny_repo)
    assert ops["MultiHeadAttention"] == 2 and ops["Softmax"] == 0 and ops["Transpose"] == 0
    assert [o.name for o in g.output][:2] == [names.LOGITS, names.present(0, "key")]


def test_export_from_save_pretrained_directory(tmp_path, tiny_checkpoint):
    """The path a real download takes: a plain HF directory written by save_pretrained."""
    model, tok = checkpoints.load(tiny_checkpoint)
    ckpt = tmp_path / "my-musicgen"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    repo = tmp_path / "repo"
    repo.mkdir()
    m = build(str(ckpt), repo)
    assert m["source_kind"] == "directory" and m["random_weights"] is False
    report = verify(repo, steps=12)
    assert report["passed"], report


def _batched_codes_equal_solo(lm) -> bool:
    from musicgen_runtime.lm import GenerationRequest
    from musicgen_runtime.validation import GenerationParams

    rng = np.random.default_rng(0)
    hidden = [rng.standard_normal((6, lm.dims.hidden_size)).astype(np.float32) for _ in range(2)]
    reqs = [
        GenerationRequest(h, np.ones(6, np.int64), GenerationParams(duration=1, seed=i), 24)
        for i, h in enumerate(hidden)
    ]
    seqs = [lm.prepare(r) for r in reqs]
    for seq in seqs:
        lm.add(seq)
    while any(not seq.done for seq in seqs):
        lm.step()
    return all(np.array_equal(seq.codes(), lm.generate(r)) for seq, r in zip(seqs, reqs))


def test_int8_export_is_quantized_and_close(tmp_path, monkeypatch):
    import collections

    from musicgen_runtime import cpu_kernels

    repo = tmp_path / "repo"
    m = build("tiny-random", repo, precision="int8")
    assert m["precision"] == "int8" and m["graphs"]["decoder_step.onnx"]["precision"] == "int8"
    report = verify(repo, steps=12)
    assert report["passed"], report
    assert report["graphs"]["decoder_step"]["rel_l2"] < 0.1 and report["checks"]["top250_overlap"] > 0.9
    assert _step_ops(repo)["CrossAttention"] == 2 and _step_ops(repo)["MultiHeadAttention"] == 0
    # and the blockwise-int8 copy that runs steps of up to 8 requests (BLOCKWISE_INT8_MAX_ROWS), checked the same way
    assert m["graphs"][names.DECODER_STEP_BLOCKWISE_INT8_FILE]["precision"] == "int8-block128"
    assert report["graphs"]["decoder_step_blockwise_int8"]["rel_l2"] < 0.1
    assert report["checks"]["top250_overlap_blockwise_int8"] > 0.9
    few_ops = _step_ops(repo, names.DECODER_STEP_BLOCKWISE_INT8_FILE)
    assert few_ops["Int8BlockGemv"] > 0 and few_ops["MatMul"] == few_ops["MatMulInteger"] == 0
    assert few_ops["CachedAttention"] == few_ops["CrossAttention"] == 2
    assert few_ops["GroupQueryAttention"] == few_ops["MultiHeadAttention"] == 0
    # every LayerNormalization fused with the residual Add before it (3 per layer and the final one), and
    # folded into the GEMV that reads it, as is each GELU: only the final norm (read by 4 heads) stays a kernel
    assert few_ops["LayerNormalization"] == few_ops["Gelu"] == few_ops["Erf"] == 0
    assert few_ops["SkipLayerNormalization"] == 1
    import onnx

    g = onnx.load(str(repo / "lm_engine" / "1" / names.DECODER_STEP_BLOCKWISE_INT8_FILE), load_external_data=False)
    prologues = collections.Counter(
        onnx.helper.get_attribute_value(a) for n in g.graph.node for a in n.attribute if a.name == "prologue"
    )
    epilogues = collections.Counter(
        onnx.helper.get_attribute_value(a) for n in g.graph.node for a in n.attribute if a.name == "epilogue"
    )
    assert prologues == {cpu_kernels.PROLOGUE_SKIP_LAYER_NORM: 3 * 2} and epilogues == {cpu_kernels.EPILOGUE_GELU: 2}
    from musicgen_runtime.step_graph import BLOCKWISE_INT8_MAX_ROWS
    from musicgen_runtime.text_lm import TextLanguageModel

    step = TextLanguageModel(repo / "lm_engine" / "1").decoder
    assert (
        step.select(BLOCKWISE_INT8_MAX_ROWS) is step.blockwise_int8_sess
        and step.select(BLOCKWISE_INT8_MAX_ROWS + 1) is step.sess
    )
    # the blockwise graph quantizes each row's activations on its own: two requests batched (4 rows) give the
    # codes each gives alone (the dynamic graph's per-tensor scales would tie them to each other)
    assert _batched_codes_equal_solo(TextLanguageModel(repo / "lm_engine" / "1"))
    # lm_engine's "blockwise_int8_max_rows": "0"
    assert TextLanguageModel(repo / "lm_engine" / "1", blockwise_int8_max_rows=0).decoder.blockwise_int8_sess is None
    # both int8 step graphs run our operators over an int8 self-attention cache (head_dim values and a float32
    # scale a position) and float16 cross-attention K/V: without their library (not built) the export is
    # refused by name, with what to do
    assert step.cache_dtype == np.int8 and step.cache_width == step.dims.head_dim + cpu_kernels.CACHE_SCALE_BYTES
    assert step.cross_dtype == np.float16
    assert _step_ops(repo)["CachedAttention"] == 2
    monkeypatch.setattr(cpu_kernels, "library", lambda: None)
    with pytest.raises(
        GraphError, match="decoder_step.onnx uses our CPU kernels.*python -m musicgen_runtime.cpu_kernels"
    ):
        TextLanguageModel(repo / "lm_engine" / "1")
    monkeypatch.undo()

    # staged and current: skipped; staged by other exporter code: exported again
    # a killed export's staging folder (Triton would refuse the repository) goes, a live one's stays
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    debris = [repo / f".export-{killed.pid}-abc", repo / ".export-oldstyle"]
    live = repo / f".export-{os.getpid()}-xyz"
    for d in (*debris, live):
        d.mkdir()
        (d / "decoder_step.onnx").write_bytes(b"partial")
    step = repo / "lm_engine" / "1" / names.DECODER_STEP_FILE
    written = step.stat().st_mtime_ns
    build("tiny-random", repo, precision="int8", skip_if_current=True)
    assert step.stat().st_mtime_ns == written
    assert not any(d.exists() for d in debris) and live.exists()
    shutil.rmtree(live)
    lm_manifest = repo / "lm_engine" / "1" / names.MANIFEST_FILE
    lm_manifest.write_text(json.dumps({**json.loads(lm_manifest.read_text()), "exporter": "older-code"}))
    again = build("tiny-random", repo, precision="int8", skip_if_current=True)
    assert again["exporter"] == m["exporter"] != "older-code" and step.stat().st_mtime_ns != written
    assert json.loads(lm_manifest.read_text())["exporter"] == m["exporter"]


def test_fp16_export_loads_and_reports_error(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    m = build("tiny-random", repo, precision="fp16")
    assert m["graphs"]["decoder_step.onnx"]["precision"] == "fp16"
    assert m["graphs"]["text_encoder.onnx"]["precision"] == "fp32"
    report = verify(repo, steps=12)
    assert report["graphs"]["decoder_step"]["max_rel"] < 0.05
    assert all(0.0 <= r["token_agreement"] <= 1.0 for r in report["greedy_oracle"]["runs"])
    # the GPU graph keeps the cross-attention in plain ops (the fused CPU node's CUDA support is unverified)
    ops = _step_ops(repo)
    assert ops["MultiHeadAttention"] == 0 and ops["Softmax"] == 2


def test_non_musicgen_directory_is_refused(tmp_path, capsys):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(checkpoints.CheckpointError, match="not a MusicGen checkpoint"):
        checkpoints.resolve(str(d))
    assert export_main(["build", "--checkpoint", str(d), "--repository", str(tmp_path / "r")]) == 2
    assert "not a MusicGen checkpoint" in capsys.readouterr().err


def test_unknown_hub_id_offline_fails_fast_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSICGEN_CHECKPOINT_CACHE", str(tmp_path))
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.resolve("nobody-here/no-such-musicgen", hub_timeout=5)
    msg = str(err.value)
    assert "local directory" in msg and "tiny-random" in msg


def test_fallback_to_preset_is_loud(tmp_path, caplog):
    repo = tmp_path / "repo"
    repo.mkdir()
    m = build("nobody-here/no-such-musicgen", repo, fallback="tiny-random")
    assert m["source"] == "tiny-random" and m["requested_source"] == "nobody-here/no-such-musicgen"
    assert "RANDOM" in caplog.text


def test_presets_are_deterministic(tmp_path):
    from export import presets

    a = presets.build("tiny-random", tmp_path / "a")
    b = presets.build("tiny-random", tmp_path / "b")
    assert manifest.sha256(a / "model.safetensors") == manifest.sha256(b / "model.safetensors")
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_small_random_preset_has_musicgen_small_shapes():
    from transformers import EncodecConfig, MusicgenDecoderConfig, T5Config

    from export import presets

    p = presets.PRESETS["small-random"]
    t5, dec, codec = T5Config(**p.t5), MusicgenDecoderConfig(**p.decoder), EncodecConfig(**p.encodec)
    assert (t5.d_model, t5.num_layers, t5.num_heads, t5.vocab_size) == (768, 12, 12, 32128)
    assert (dec.hidden_size, dec.num_hidden_layers, dec.num_attention_heads, dec.ffn_dim) == (1024, 24, 16, 4096)
    assert (dec.num_codebooks, dec.vocab_size, dec.max_position_embeddings) == (4, 2048, 2048)
    assert (codec.sampling_rate, codec.frame_rate, codec.num_quantizers, codec.codebook_size) == (32000, 50, 4, 2048)


def test_codec_rewrite_matches_encodec_and_drops_the_copies(tiny_checkpoint, tiny_repo):
    """The exported EnCodec decoder: same audio as HF's decode, without HF's per-conv Slice copies."""
    import onnx
    import torch

    from export import codec_graph
    from musicgen_runtime.codec import MIN_FRAMES

    model, _ = checkpoints.load(tiny_checkpoint)
    codec = model.audio_encoder
    new = codec_graph.export_decoder(codec)
    g = torch.Generator().manual_seed(3)
    for frames in (MIN_FRAMES, 9):
        codes = torch.randint(0, codec.config.codebook_size, (1, 1, 4, frames), generator=g)
        with torch.no_grad():
            ref = codec.decode(codes, [None]).audio_values  # the original still decodes: not mutated
            ours = new.decode(codes, [None]).audio_values
        assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=1e-6), frames
    assert not any(type(m).__name__.startswith("Parametrized") for m in new.decoder.modules())  # weights folded

    graph = onnx.load(str(tiny_repo / "audio_decoder" / "1" / names.AUDIO_DECODER_FILE), load_external_data=False).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    kernel = {
        n.name: onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "kernel_shape"))[0]
        for n in graph.node
        if n.op_type == "Conv"
    }
    # one static Pad per convolution with a kernel wider than 1, and no Slice of a padded activation
    assert sum(n.op_type == "Pad" for n in graph.node) == sum(k > 1 for k in kernel.values()) == 6
    assert not [n.name for n in graph.node if n.op_type == "Slice" and made_by.get(n.input[0]) == "Pad"]
    assert (
        sum(
            n.op_type == "ConvTranspose" and any(a.name == "pads" and any(a.ints) for a in n.attribute)
            for n in graph.node
        )
        == 3
    )  # the even strides trim inside the op; stride 5 keeps a Slice


def test_the_codec_decodes_chunk_by_chunk_what_it_decodes_whole_and_refuses_bad_chunks(tiny_repo):
    """The state carried between chunks makes the chunks the whole clip's audio, bit for bit or nearly
    (float sums in another order); with less context than the export measured, they differ."""
    from musicgen_runtime.codec import AudioDecoder, CodecState
    from musicgen_runtime.streaming import ChunkPlan, Reach
    from musicgen_runtime.validation import ValidationError

    dec = AudioDecoder.from_directory(tiny_repo / "audio_decoder" / "1")
    assert manifest.read(tiny_repo / "audio_decoder" / "1")["codec_reach"] == {"codes": 3, "hidden": 1}
    total = 90
    codes = np.random.default_rng(1).integers(0, 64, (1, 4, total))
    whole = dec(codes)

    def chunked(plan):
        state, parts = None, []
        for _, b in plan.ready_chunks(0, total, total):
            audio, state = dec.decode(codes[..., : plan.reach.needed(b, total)], total, b, state)
            parts.append(audio)
        return np.concatenate(parts, axis=-1)

    for first, chunk, most in ((4, 1, 0), (25, 10, 40), (7, 13, 0)):
        got = chunked(ChunkPlan(chunk=chunk, reach=dec.reach, first=first, max_chunk=most))
        assert got.shape == whole.shape and np.abs(got - whole).max() < 1e-6, (first, chunk)
    dec.reach = Reach(codes=2, hidden=0)  # less context than the codec has: the chunks' seams show
    assert np.abs(chunked(ChunkPlan(chunk=10, reach=dec.reach, first=10)) - whole).max() > 1e-3
    dec.reach = Reach(codes=3, hidden=1)

    _, state = dec.decode(codes[..., :29], total, 25)
    with pytest.raises(ValidationError, match="need the codes up to frame 30"):
        dec.decode(codes[..., :29], total, 26, state)
    with pytest.raises(ValidationError, match="cannot decode frames"):
        dec.decode(codes, total, 20, state)  # already emitted
    with pytest.raises(ValidationError, match="bring no new codes"):
        dec.decode(codes, total, 90, dec.decode(codes, total, 89, state)[1])  # [25, 89) made them all
    for flat in (state.pack()[:-1], np.zeros(2, np.float32), np.full(50, np.nan, np.float32)):
        with pytest.raises(ValidationError, match="codec_state"):
            CodecState.unpack(flat, dec.layers, dec.width)
    with pytest.raises(ValidationError, match="codec_state holds 1 rows; these codes decode as 2"):
        dec.decode(np.concatenate([codes, codes])[..., :40], total, 30, state)  # another batch's state
    assert dec.rows_per_clip == 1
    again = CodecState.unpack(state.pack(), dec.layers, dec.width)
    assert (again.frames, again.emitted) == (26, 25) and np.array_equal(again.tail, state.tail)


def test_causality_check_tells_quantization_noise_from_a_leak():
    from export.parity import causality

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 4, 9, 64)).astype(np.float32)
    full = ref + 0.01 * rng.standard_normal(ref.shape).astype(np.float32)  # int8-like error vs fp32
    noise_only = full + 0.004 * rng.standard_normal(ref.shape).astype(np.float32)
    leak = full.copy()
    leak[:, :, 3] += 0.5 * rng.standard_normal((2, 4, 64)).astype(np.float32)  # an earlier position moved
    assert causality(full, noise_only, ref, "int8")["causal"]
    assert not causality(full, leak, ref, "int8")["causal"]
    assert not causality(full, noise_only, ref, "fp32")["causal"]  # fp32: no movement at all
    last_only = full.copy()
    last_only[:, :, -1] += 1.0
    assert causality(full, last_only, ref, "fp32")["causal"]


def test_the_exporter_digest_covers_our_kernels_sources(tmp_path, monkeypatch):
    # a change to how int8 weights are packed (cpu_kernels' Python or C) makes a staged export not current
    from types import SimpleNamespace

    from export import staging

    runtime = tmp_path / "musicgen_runtime"
    (runtime / "cpu_kernels").mkdir(parents=True)
    (runtime / "manifest.py").write_text("")
    monkeypatch.setattr(staging, "manifest_mod", SimpleNamespace(__file__=str(runtime / "manifest.py")))
    digests = [staging.exporter_digest()]
    for name in ("__init__.py", "int8_gemv.c", "int8_gemv.h"):
        (runtime / "cpu_kernels" / name).write_text("// tiles of 8 outputs")
        digests.append(staging.exporter_digest())
    assert len(set(digests)) == len(digests)
