"""The model repository's configs, parsed as Triton parses them, and checked for consistency."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

REPO = Path(__file__).resolve().parent.parent / "model_repository"
CONFIGS = sorted(REPO.glob("*/config.pbtxt"))


def load(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_every_model_dir_has_a_config_named_after_it():
    dirs = sorted(p.parent.name for p in CONFIGS)
    assert dirs == sorted(p.name for p in REPO.iterdir() if p.is_dir())
    for path in CONFIGS:
        assert load(path).name == path.parent.name


@pytest.mark.parametrize("path", CONFIGS, ids=[p.parent.name for p in CONFIGS])
def test_python_models_have_model_py_and_no_hard_gpu_kind(path):
    cfg = load(path)
    if cfg.platform == "ensemble":
        return
    assert cfg.backend == "python" and (path.parent / "1" / "model.py").exists()
    for group in cfg.instance_group:  # KIND_GPU is fatal on CPU hosts: leave it to Triton (auto) instead
        assert group.kind != model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_ensemble_steps_are_wired_to_real_tensors():
    models = {p.parent.name: load(p) for p in CONFIGS}
    ens = models["musicgen"]
    available = {i.name for i in ens.input}
    for step in ens.ensemble_scheduling.step:
        target = models[step.model_name]
        inputs = {i.name: i for i in target.input}
        outputs = {o.name for o in target.output}
        for key, value in step.input_map.items():
            assert key in inputs, (step.model_name, key)
            assert value in available, f"{step.model_name}.{key} reads {value} before it exists"
            ens_in = next((i for i in ens.input if i.name == value), None)
            if ens_in is not None and ens_in.optional:  # an optional ensemble input only feeds optional inputs
                assert inputs[key].optional, (step.model_name, key)
        for key, value in step.output_map.items():
            assert key in outputs, (step.model_name, key)
            available.add(value)
    assert {o.name for o in ens.output} <= available


def test_streaming_and_engine_are_decoupled_and_unary_path_is_not():
    models = {p.parent.name: load(p) for p in CONFIGS}
    assert models["musicgen_stream"].model_transaction_policy.decoupled
    assert models["lm_engine"].model_transaction_policy.decoupled
    for name in ("tokenizer", "text_encoder", "musicgen_lm", "audio_decoder"):  # HTTP refuses decoupled
        assert not models[name].model_transaction_policy.decoupled


def test_stream_and_unary_entry_points_take_the_same_inputs():
    models = {p.parent.name: load(p) for p in CONFIGS}
    sig = lambda m: {(i.name, i.data_type, tuple(i.dims), i.optional) for i in m.input}  # noqa: E731
    assert sig(models["musicgen"]) == sig(models["musicgen_stream"])
