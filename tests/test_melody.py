"""MusicGen-Melody: tiny-random-melody export, parity + greedy oracle (with and without melody), runtime loop."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from musicgen_runtime import chroma as chroma_mod, names, text
from musicgen_runtime.chroma import MelodyInputError
from musicgen_runtime.lm import GenerationRequest
from musicgen_runtime.melody_lm import CONDITION_FILE, DECODER_STEP_FILE, MelodyLanguageModel
from musicgen_runtime.onnx_session import GraphError
from musicgen_runtime.validation import GenerationParams

from staging import ROOT, stage_repository


@pytest.fixture(scope="module")
def melody_repo(tmp_path_factory):
    return stage_repository(tmp_path_factory.mktemp("melody") / "model_repository", "tiny-random-melody")


@pytest.fixture(scope="module")
def parts(melody_repo):
    lm = MelodyLanguageModel(melody_repo / "lm_engine" / "1")
    enc = text.TextEncoder(melody_repo / "text_encoder" / "1" / names.TEXT_ENCODER_FILE)
    tok = text.PromptTokenizer(melody_repo / "tokenizer" / "1" / names.TOKENIZER_FILE, lm.dims.max_text_tokens)

    def states(prompt):
        ids, mask = tok.encode([prompt])
        return enc(ids, mask)[0], mask[0]

    return lm, states


def _melody(seconds, sr, seed, channels=1):
    from export.signals import synth_melody

    w = synth_melody(seconds, sr, channels, seed)
    return chroma_mod.chroma(w if channels > 1 else w[0], sr)


def _request(inputs, params, frames):
    text_states, text_mask, chroma = inputs
    return GenerationRequest(text_states, text_mask, params, frames, chroma=chroma)


def test_verify_melody_fp32_parity_and_greedy_oracle(melody_repo):
    from export.verify import verify  # the variant from the manifest's model_type

    report = verify(melody_repo, steps=24)
    print(json.dumps({k: {"max_abs": g["max_abs"], "max_rel": g["max_rel"]} for k, g in report["graphs"].items()}))
    assert report["passed"], report
    assert set(report["graphs"]) >= {
        "text_encoder",
        "melody_condition",
        "decoder_step",
        "decoder_step_block",
        "decoder_step_mixed_prefix",
        "audio_decoder",
    }
    for name, g in report["graphs"].items():
        assert g["max_abs"] < 1e-4, (name, g)
    assert report["checks"]["causal"] and report["checks"]["melody_changes_codes"]
    runs = report["greedy_oracle"]["runs"]
    assert {r["melody"].startswith("none") for r in runs} == {True, False}  # text-only and melody runs
    assert {r["guidance_scale"] for r in runs} == {1.0, 3.0}
    assert len({r["prefix_len"] for r in runs}) == 2  # different prefix lengths shared one batch
    assert all(r["identical"] for r in runs), runs
    assert all(r["audio"]["max_abs"] < 1e-4 for r in runs)
    # long form: each window conditioned on the chroma of the melody looped from its offset, as audiocraft
    assert [r["windows"] for r in runs if "windows" in r] == [4]
    assert not [r for r in runs if "windows" in r][0]["melody"].startswith("none")


def test_manifest_files_and_graph_names(melody_repo):
    import onnx

    lm_dir = melody_repo / "lm_engine" / "1"
    m = json.loads((lm_dir / names.MANIFEST_FILE).read_text())
    assert m["model_type"] == "musicgen_melody" and m["random_weights"] is True
    assert m["melody"]["chroma_length"] == 40 and m["melody"]["num_chroma"] == 12
    assert m["melody"]["feature_extractor"] == {
        "n_fft": 16384,
        "hop_length": 4096,
        "chunk_length": 30,
        "sample_rate": 32000,
        "num_chroma": 12,
    }
    assert m["melody"]["source_separation"] is False
    assert not (lm_dir / names.CROSS_KV_FILE).exists() and not (lm_dir / names.DECODER_STEP_FILE).exists()
    for f in (CONDITION_FILE, DECODER_STEP_FILE):
        assert m["files"][f]["sha256"]
    g = onnx.load(str(lm_dir / DECODER_STEP_FILE), load_external_data=False).graph
    inputs = [i.name for i in g.input]
    assert inputs[:5] == ["inputs_embeds", "input_ids", "position_ids", names.SEQLENS_K, names.TOTAL_SEQUENCE_LENGTH]
    assert inputs[5:7] == [names.past(0, "decoder", "key"), names.past(0, "decoder", "value")]
    # self-attention on the in-place cache (no Concat of the past per step)
    assert sum(n.op_type == "GroupQueryAttention" for n in g.node) == m["dims"]["num_layers"]
    assert [o.name for o in g.output][:3] == [names.LOGITS, names.present(0, "key"), names.present(0, "value")]
    c = onnx.load(str(lm_dir / CONDITION_FILE), load_external_data=False).graph
    assert [i.name for i in c.input] == ["chroma", names.ENCODER_HIDDEN_STATES]
    assert [o.name for o in c.output] == ["inputs_embeds"]


@pytest.mark.parametrize("movable", [True, False], ids=["dense-cpu", "gaps-as-on-gpu"])
def test_sequences_joining_midway_equal_alone(parts, movable, monkeypatch):
    """Continuous batching: a request joining a running batch (other prefix length) gets its own result,
    also when the one before it leaves first (its rows are taken over by a move, or left as a gap)."""
    lm, states = parts
    monkeypatch.setattr(lm.cache, "can_move", movable)
    a_in = (*states("lofi hip hop beat with mellow piano"), _melody(3.0, 44100, 1, channels=2))
    b_in = (*states("epic metal riff with double bass drums and distorted guitars"), None)
    c_in = (*states("jazz trio"), _melody(9.0, 16000, 2))
    greedy = GenerationParams(duration=1, top_k=1, seed=0)
    sampled = GenerationParams(duration=1, top_k=50, temperature=1.2, seed=42)
    requests = [(a_in, greedy, 20), (b_in, sampled, 5), (c_in, greedy, 9)]
    alone = [lm.generate(_request(*r)) for r in requests]
    a, b, c = (lm.prepare(_request(*r)) for r in requests)
    lm.add(a)
    for _ in range(4):
        lm.step()
    lm.add(b)
    lm.step()
    lm.add(c)
    finished, starts = [], set()
    while not (a.done and b.done and c.done):
        if c in lm.active:
            starts.add(lm.rows.start[c.id])
        finished += lm.step()
    assert set(map(id, finished)) == {id(a), id(b), id(c)}
    assert starts == ({4, 2} if movable else {4})  # b left first: c moved into its rows, or not
    for seq, ref in zip((a, b, c), alone):
        assert seq.error is None
        np.testing.assert_array_equal(seq.codes(), ref)
    assert not lm.active and not lm.pending and lm.rows_used == 0


def test_cancel_and_limits(parts):
    lm, states = parts
    h, m = states("reggae groove")
    seq = lm.prepare(GenerationRequest(h, m, GenerationParams(duration=1, top_k=1, seed=0), 30))
    lm.add(seq)
    lm.step()
    lm.cancel(seq)
    assert seq in lm.step() and not lm.active
    pending = lm.prepare(GenerationRequest(h, m, GenerationParams(duration=1, top_k=1, seed=0), 5))
    lm.add(pending)
    lm.cancel(pending)  # cancelled before its prefill
    assert pending in lm.step() and not lm.pending
    limit = lm.max_frames(int(m.sum()))
    assert limit == lm.position_table - (lm.chroma_length + int(m.sum())) - 1 - 3
    with pytest.raises(ValueError, match="positions"):
        lm.prepare(GenerationRequest(h, m, GenerationParams(duration=1), limit + 1))
    with pytest.raises(MelodyInputError, match="chroma must be"):
        lm.prepare(GenerationRequest(h, m, GenerationParams(duration=1), 5, chroma=np.zeros((10, 11), np.float32)))
    with pytest.raises(MelodyInputError, match="NaN"):
        lm.prepare(
            GenerationRequest(h, m, GenerationParams(duration=1), 5, chroma=np.full((4, 12), np.nan, np.float32))
        )
    with pytest.raises(ValueError, match="text states"):
        lm.prepare(GenerationRequest(h[:, :5], m, GenerationParams(duration=1), 5))


def test_padded_text_states_are_dropped(parts):
    """A request's padded text positions (e.g. states from a batched text encoder) do not change its result."""
    lm, states = parts
    h, m = states("gospel choir with hammond organ and clapping")
    hp = np.concatenate([h, np.random.default_rng(0).standard_normal((3, h.shape[1])).astype(np.float32)])
    mp = np.concatenate([m, np.zeros(3, m.dtype)])
    p = GenerationParams(duration=1, top_k=1, seed=0)
    ch = _melody(2.0, 22050, 4)
    np.testing.assert_array_equal(
        lm.generate(GenerationRequest(hp, mp, p, 8, chroma=ch)), lm.generate(GenerationRequest(h, m, p, 8, chroma=ch))
    )


def test_export_from_save_pretrained_directory(tmp_path, melody_repo, parts):
    """The path a downloaded facebook/musicgen-melody takes: a plain HF directory (with preprocessor_config.json)."""
    from export import checkpoints
    from export.build import build

    model, tok = checkpoints.load(checkpoints.resolve("tiny-random-melody").path)
    assert type(model).__name__ == "MusicgenMelodyForConditionalGeneration"
    ckpt = tmp_path / "my-musicgen-melody"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    (ckpt / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "feature_extractor_type": "MusicgenMelodyFeatureExtractor",
                "sampling_rate": 32000,
                "n_fft": 16384,
                "hop_length": 4096,
                "chunk_length": 20,
                "feature_size": 12,
                "num_chroma": 12,
            }
        )
    )
    repo = tmp_path / "repo"
    repo.mkdir()
    m = build(str(ckpt), repo)
    assert m["source_kind"] == "directory" and m["random_weights"] is False and m["model_type"] == "musicgen_melody"
    assert m["melody"]["feature_extractor"]["chunk_length"] == 20  # read from the checkpoint's extractor config
    lm2 = MelodyLanguageModel(repo / "lm_engine" / "1")
    lm, states = parts
    h, mask = states("chill bossa nova")
    ch = _melody(4.0, 48000, 6)
    p = GenerationParams(duration=1, top_k=1, seed=0)
    np.testing.assert_array_equal(
        lm2.generate(GenerationRequest(h, mask, p, 10, chroma=ch)),
        lm.generate(GenerationRequest(h, mask, p, 10, chroma=ch)),
    )


def test_int8_melody_export_runs_the_blockwise_graph_for_one_request(tmp_path, parts):
    from export.build import build
    from export.verify import verify
    from musicgen_runtime.melody_lm import DECODER_STEP_BLOCKWISE_INT8_FILE

    repo = tmp_path / "repo"
    m = build("tiny-random-melody", repo, precision="int8")
    assert m["graphs"][DECODER_STEP_BLOCKWISE_INT8_FILE]["precision"] == "int8-block128"
    report = verify(repo, steps=12)
    assert report["passed"], report
    assert report["graphs"]["decoder_step_blockwise_int8"]["rel_l2"] < 0.1
    lm = MelodyLanguageModel(repo / "lm_engine" / "1")
    used = []
    step = lm.decoder
    for sess in (step.sess, step.blockwise_int8_sess):
        run = sess.run_with_iobinding
        sess.run_with_iobinding = lambda io, run=run, sess=sess: (used.append(sess), run(io))[1]
    _, states = parts
    h, mask = states("chill bossa nova")
    lm.generate(GenerationRequest(h, mask, GenerationParams(duration=1, seed=0), 6, chroma=_melody(4.0, 48000, 6)))
    # one request with guidance: the prefill (prefix + BOS) on the main graph, every decode step on the blockwise one
    assert used[0] is step.sess and used[1:] and all(s is step.blockwise_int8_sess for s in used[1:])


def test_melody_runtime_refuses_text_only_export(tmp_path):
    (tmp_path / names.MANIFEST_FILE).write_text(json.dumps({"model_type": "musicgen", "dims": {}}))
    with pytest.raises(GraphError, match="not 'musicgen_melody'"):
        MelodyLanguageModel(tmp_path)


def test_runtime_modules_do_not_import_torch():
    code = (
        "import sys, musicgen_runtime.melody_lm, musicgen_runtime.chroma; "
        "bad = [m for m in ('torch', 'transformers', 'torchaudio', 'scipy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
