"""Unit tests of the shared runtime: delay pattern, sampling, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from musicgen_runtime import delay, sampling
from musicgen_runtime.validation import ValidationError, validate_params, validate_prompt


def test_delay_pattern_matches_reference_rule():
    # REFERENCE rule: [k, t] is pad if t <= k or t >= max_len - K + 1 + k, max_len = steps + 1
    k, frames = 4, 6
    m = delay.valid_mask(frames, k)
    max_len = delay.num_steps(frames, k) + 1
    for cb in range(k):
        for t in range(max_len):
            assert m[cb, t] == (not (t <= cb or t >= max_len - k + 1 + cb))
    assert m.sum(axis=1).tolist() == [frames] * k


def test_undelay_inverts_the_shift():
    k, frames = 4, 5
    codes = np.arange(k * frames).reshape(k, frames)
    seq = np.full((k, delay.num_steps(frames, k) + 1), -1)
    for cb in range(k):
        seq[cb, 1 + cb : 1 + cb + frames] = codes[cb]
    assert np.array_equal(delay.undelay(seq, frames), codes)


def test_stereo_delays_interleave():
    assert delay.delays(8, audio_channels=2).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert delay.num_steps(10, 8, audio_channels=2) == 13


def test_guidance_formula():
    cond, uncond = np.array([[1.0, 2.0]]), np.array([[0.5, 0.0]])
    assert np.allclose(sampling.guide(cond, uncond, 3.0), [[2.0, 6.0]])
    assert sampling.guide(cond, None, 3.0) is cond


def test_top_k_keeps_k_best():
    x = np.array([[0.1, 3.0, 2.0, -1.0, 2.5]])
    out = sampling.filter_logits(x, top_k=2, top_p=0.0, temperature=1.0)
    assert np.isfinite(out).sum() == 2 and np.isfinite(out[0, [1, 4]]).all()


def test_top_p_keeps_smallest_set_reaching_p():
    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    out = sampling.filter_logits(np.log(probs), top_k=0, top_p=0.7, temperature=1.0)
    assert np.isfinite(out[0]).tolist() == [True, True, False, False]


def test_sampling_is_seeded_and_follows_the_distribution():
    logits = np.log(np.array([[0.7, 0.2, 0.1, 1e-9]] * 2000))
    a = sampling.sample(logits, 0, 0.0, 1.0, np.random.default_rng(7))
    b = sampling.sample(logits, 0, 0.0, 1.0, np.random.default_rng(7))
    assert np.array_equal(a, b)
    freq = np.bincount(a, minlength=4) / len(a)
    assert abs(freq[0] - 0.7) < 0.05 and freq[3] == 0


def test_top_k_one_is_greedy():
    x = np.random.default_rng(0).standard_normal((4, 50))
    assert np.array_equal(sampling.sample(x, 1, 0.0, 1.0, np.random.default_rng(0)), x.argmax(-1))


def test_defaults_follow_reference():
    p = validate_params(10)
    assert (p.top_k, p.top_p, p.temperature, p.guidance_scale, p.seed) == (250, 0.0, 1.0, 3.0, None)
    assert p.with_seed().seed is not None


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"duration": 0}, "duration"),
        ({"duration": 121}, "duration"),
        ({"duration": math.nan}, "finite"),
        ({"duration": math.inf}, "finite"),
        ({"duration": 5, "top_k": -1}, "top_k"),
        ({"duration": 5, "top_p": 1.5}, "top_p"),
        ({"duration": 5, "temperature": 0}, "temperature"),
        ({"duration": 5, "guidance_scale": 0.5}, "guidance_scale"),
        ({"duration": 5, "seed": -3}, "seed"),
        ({"duration": 5, "top_k": 2.5}, "integer"),
        ({"duration": "abc"}, "number"),
    ],
)
def test_bad_parameters_are_refused_clearly(kwargs, msg):
    with pytest.raises(ValidationError, match=msg):
        validate_params(**kwargs)


def test_duration_limit_is_configurable():
    assert validate_params(35, max_duration=40).duration == 35


def test_prompt_validation():
    assert validate_prompt(b"  lofi beat ") == "lofi beat"
    for bad in ["", "   ", b"\xff\xfe", "x" * 3000, 5]:
        with pytest.raises(ValidationError):
            validate_prompt(bad)


def test_chunk_plan_grows_chunks_up_to_the_maximum():
    from musicgen_runtime.streaming import ChunkPlan, Reach

    reach = Reach(codes=3, hidden=1)  # EnCodec 32 kHz's, as measured at export
    plan = ChunkPlan(chunk=50, reach=reach, first=25, max_chunk=200)
    ends = list(plan.boundaries(1000))
    assert ends == [25, 75, 175, 375, 575, 775, 975, 1000]  # 25, 50, 100, 200, 200, ...
    assert list(ChunkPlan(chunk=50, reach=reach, first=25).boundaries(160)) == [25, 75, 125, 160]
    assert plan.ready_chunks(0, 1000, 1000) == list(zip([0] + ends[:-1], ends))  # all ready: they tile the clip
    assert plan.ready_chunks(175, 378, 1000) == []  # [175, 375) needs hidden frame 376, so codes up to 379
    assert plan.ready_chunks(175, 379, 1000) == [(175, 375)]


def test_chunk_plan_gives_every_chunk_new_hidden_frames():
    """The decoder computes hidden frames up to a chunk's end + reach.hidden (the first window at least
    MIN_FRAMES): a chunk that would end within reach.hidden of the clip's end joins the last one, and the
    first chunk is at least MIN_FRAMES long."""
    from musicgen_runtime.streaming import MIN_FRAMES, ChunkPlan, Reach

    plan = ChunkPlan(chunk=50, reach=Reach(codes=3, hidden=1), first=25, max_chunk=200)
    assert list(plan.boundaries(376)) == [25, 75, 175, 376]  # not [.., 375, 376]
    assert list(plan.boundaries(377)) == [25, 75, 175, 375, 377]
    one = ChunkPlan(chunk=1, reach=Reach(codes=3, hidden=2), first=1)
    assert list(one.boundaries(10)) == [MIN_FRAMES, 5, 6, 7, 10]
    assert list(one.boundaries(3)) == [3]


def test_chunk_plan_tiles_the_clip_and_waits_for_the_codec_reach():
    from musicgen_runtime.streaming import ChunkPlan, Reach

    plan = ChunkPlan(chunk=50, reach=Reach(codes=3, hidden=1), first=25)
    assert plan.ready_chunks(0, 28, 200) == []  # first chunk [0, 25) needs codes up to 29
    assert plan.ready_chunks(0, 29, 200) == [(0, 25)]
    got, start = [], 0
    for ready in range(0, 201, 7):
        for a, b in plan.ready_chunks(start, min(ready, 200), 200):
            assert min(ready, 200) >= min(b + 4, 200)
            got.append((a, b))
            start = b
    got += plan.ready_chunks(start, 200, 200)
    assert got == list(zip([0, 25, 75, 125, 175], [25, 75, 125, 175, 200]))


def test_public_manifest_carries_no_server_path(tmp_path):
    from musicgen_runtime import manifest

    local = tmp_path / "ckpts" / "my-musicgen"
    local.mkdir(parents=True)
    m = {
        "source": str(local),
        "checkpoint_path": str(local),
        "requested_source": "facebook/musicgen-small",
        "precision": "fp32",
    }
    pub = manifest.public(m)
    assert pub == {"source": "my-musicgen", "requested_source": "facebook/musicgen-small", "precision": "fp32"}
    assert manifest.public({"source": "tiny-random"}) == {"source": "tiny-random"}


def test_ort_spin_setting_lets_the_decode_steps_threads_sleep(tmp_path, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    from musicgen_runtime.onnx_session import open_graph

    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))

    def spins(**kw) -> bool:
        options = open_graph(path, **kw).get_session_options()
        try:
            return options.get_session_config_entry("session.intra_op.allow_spinning") != "0"
        except Exception:  # not set: ORT's default, spinning
            return True

    monkeypatch.delenv("MUSICGEN_ORT_SPIN", raising=False)
    assert spins() and not spins(spin=False)
    monkeypatch.setenv("MUSICGEN_ORT_SPIN", "0")
    assert not spins() and not spins(spin=False)
