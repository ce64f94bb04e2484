"""Checkpoint -> ONNX graphs + tokenizer + manifest, staged into the Triton model repository."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from musicgen_runtime import manifest as manifest_mod, names

from . import checkpoints, graphs

log = logging.getLogger(__name__)
OPSET = 18
PRECISIONS = ("fp32", "fp16", "int8")
# which files each Triton model directory receives
MODEL_FILES = {
    "tokenizer": [names.TOKENIZER_FILE],
    "text_encoder": [names.TEXT_ENCODER_FILE],
    "lm_engine": [names.CROSS_KV_FILE, names.DECODER_STEP_FILE, names.DECODER_STEP_FEW_ROWS_FILE],
    "audio_decoder": [names.AUDIO_DECODER_FILE],
    "musicgen_info": [],  # manifest only
    "musicgen_stream": [],
}


def model_dims(model, tokenizer) -> manifest_mod.Dims:
    c = model.config
    dec, codec = c.decoder, c.audio_encoder
    return manifest_mod.Dims(
        num_codebooks=dec.num_codebooks, vocab_size=dec.vocab_size, pad_token_id=int(dec.pad_token_id),
        hidden_size=dec.hidden_size, num_layers=dec.num_hidden_layers, num_heads=dec.num_attention_heads,
        head_dim=dec.hidden_size // dec.num_attention_heads, max_positions=dec.max_position_embeddings,
        audio_channels=dec.audio_channels, sample_rate=codec.sampling_rate, frame_rate=float(codec.frame_rate),
        hop_length=int(codec.hop_length), text_hidden_size=c.text_encoder.hidden_size,
        max_text_tokens=min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512))


def _export(module, args, path: Path, input_names, output_names, dynamic_axes):
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True,
                          custom_opsets={"com.microsoft": 1})


def _save(model_proto, path: Path) -> None:
    """Always external data for weights: graphs above 2 GB must, and one layout is simpler to stage."""
    import onnx

    data = path.name + ".data"
    if (path.parent / data).exists():
        (path.parent / data).unlink()
    onnx.save_model(model_proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=1024)


def export_graphs(model, out: Path, precision: str = "fp32") -> dict:
    """Write the four graphs into `out`; returns {file: graph-level info}. Example shapes use sizes >= 2."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    model = model.eval().float()
    c = model.config
    dec = c.decoder
    n_layers, heads, hd = dec.num_hidden_layers, dec.num_attention_heads, dec.hidden_size // dec.num_attention_heads
    b, t_text, past_len, s = 3, 7, 5, 2
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)

    # text encoder (trace with a padded mask so the masking branch is kept)
    ids = torch.randint(2, 50, (2, t_text))
    mask = torch.ones(2, t_text, dtype=torch.long)
    mask[1, 4:] = 0
    _export(graphs.TextEncoder(model), (ids, mask), raw / names.TEXT_ENCODER_FILE,
            [names.INPUT_IDS, names.ATTENTION_MASK], [names.ENCODER_HIDDEN_STATES],
            {names.INPUT_IDS: {0: "batch", 1: "text_len"}, names.ATTENTION_MASK: {0: "batch", 1: "text_len"},
             names.ENCODER_HIDDEN_STATES: {0: "batch", 1: "text_len"}})

    # cross-attention K/V, once per request
    states = torch.randn(b, t_text, dec.hidden_size)
    cross_names = [names.cross(i, kv) for i in range(n_layers) for kv in ("key", "value")]
    _export(graphs.CrossKV(model), (states,), raw / names.CROSS_KV_FILE, [names.ENCODER_HIDDEN_STATES],
            cross_names, {names.ENCODER_HIDDEN_STATES: {0: "batch", 1: "text_len"},
                          **{n: {0: "batch", 2: "text_len"} for n in cross_names}})

    # decoder step on a preallocated KV cache (doubles as prefill with an empty cache)
    in_names, out_names = graphs.step_io_names(n_layers)
    capacity = past_len + s + 3
    step_args = [torch.randint(0, dec.vocab_size, (b, dec.num_codebooks, s)),
                 torch.tensor([[past_len, past_len + 1], [2, 3], [0, 1]]),
                 torch.tensor([past_len + 1, 3, 1], dtype=torch.int32),
                 torch.tensor(past_len + s, dtype=torch.int32),
                 torch.ones(b, t_text, dtype=torch.long)]
    step_args[4][1, 5:] = 0
    for _ in range(n_layers):
        step_args += [torch.randn(b, heads, capacity, hd), torch.randn(b, heads, capacity, hd),
                      torch.randn(b, heads, t_text, hd), torch.randn(b, heads, t_text, hd)]
    axes = {names.INPUT_IDS: {0: "batch", 2: "seq"}, names.POSITION_IDS: {0: "batch", 1: "seq"},
            names.SEQLENS_K: {0: "batch"}, names.ENCODER_ATTENTION_MASK: {0: "batch", 1: "text_len"},
            names.LOGITS: {0: "batch", 2: "seq"}}
    for i in range(n_layers):
        for kv in ("key", "value"):
            axes[names.past(i, "decoder", kv)] = {0: "batch", 2: "capacity"}
            axes[names.past(i, "encoder", kv)] = {0: "batch", 2: "text_len"}
            axes[names.present(i, kv)] = {0: "batch", 2: "capacity"}
    # CPU graphs take ORT's fused MultiHeadAttention for the cross-attention (fewer kernels per step);
    # the fp16 (GPU) graph keeps plain ops: the CUDA kernel's support for this mask layout is unverified here
    step = graphs.DecoderStep(model, fused_cross_attention=precision != "fp16")
    _export(step, tuple(step_args), raw / names.DECODER_STEP_FILE, in_names, out_names, axes)

    # EnCodec decoder
    codes = torch.randint(0, c.audio_encoder.codebook_size, (1, 2, dec.num_codebooks, 10))
    _export(graphs.AudioDecoder(model), (codes,), raw / names.AUDIO_DECODER_FILE, [names.AUDIO_CODES],
            [names.AUDIO_VALUES], {names.AUDIO_CODES: {1: "batch", 3: "frames"},
                                   names.AUDIO_VALUES: {0: "batch", 2: "samples"}})

    return finish_graphs(raw, out, precision, fp16={
        names.CROSS_KV_FILE: [names.ENCODER_HIDDEN_STATES],
        names.DECODER_STEP_FILE: [names.ENCODER_HIDDEN_STATES, names.LOGITS]},
        int8=names.DECODER_STEP_FILE, few_rows=names.DECODER_STEP_FEW_ROWS_FILE)


def finish_graphs(raw: Path, out: Path, precision: str, fp16: dict, int8: str, few_rows: str | None = None) -> dict:
    """Move the exported graphs from `raw` into `out` at the LM precision, check each, remove `raw`.

    fp16: {file: its inputs/outputs that stay fp32} (sampling runs on fp32 logits); int8: the file
    whose MatMuls are quantized; few_rows: if set, int8 also writes this blockwise-int8 copy of that
    file (lm.FEW_ROWS). Returns {file: {"precision": ...}}.
    """
    import onnx

    info = {}
    for path in sorted(raw.glob("*.onnx")):
        fname = path.name
        proto = onnx.load(str(path))
        graph_precision = "fp32"
        if precision == "fp16" and fname in fp16:
            proto = to_fp16(proto, fp16[fname])
            graph_precision = "fp16"
        _save(proto, out / fname)
        if precision == "int8" and fname == int8:
            if few_rows:  # from the fp32 graph just saved (saving moved the proto's weights out)
                to_int8_blockwise(out / fname, out / few_rows)
                onnx.checker.check_model(str(out / few_rows), full_check=True)
                info[few_rows] = {"precision": "int8-block128"}
            to_int8(out / fname)
            graph_precision = "int8"
        onnx.checker.check_model(str(out / fname), full_check=True)
        info[fname] = {"precision": graph_precision}
    shutil.rmtree(raw)
    return info


def to_fp16(proto, keep_io_types: list[str]):
    """fp16 weights and KV cache; the inputs/outputs named in `keep_io_types` stay fp32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(proto, keep_io_types=keep_io_types)
    _toposort(proto.graph)  # the converter appends its input casts at the end
    return proto


def to_int8(path: Path) -> None:
    """Dynamic int8 (CPU): S8 per-channel weights on every MatMul, activations quantized per step.

    The KV cache, layer norms, softmax and logits stay fp32.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_name("int8-" + path.name)
    quantize_dynamic(str(path), str(tmp), op_types_to_quantize=["MatMul"], per_channel=True,
                     weight_type=QuantType.QInt8, use_external_data_format=True)
    data = path.with_name(path.name + ".data")
    path.unlink()
    data.unlink()
    import onnx

    _save(onnx.load(str(tmp)), path)  # re-save under the canonical name (external data named after it)
    tmp.unlink()
    for f in tmp.parent.glob(tmp.name + "*"):  # the quantizer's own external-data file
        f.unlink()


def to_int8_blockwise(src: Path, path: Path) -> None:
    """Blockwise int8 (CPU): MatMulNBits with 8-bit weights, one symmetric scale per 128 inputs,
    int8 arithmetic (accuracy level 4). Its kernel streams the weights faster than dynamic int8's
    GEMM when a step has one or two rows (lm.FEW_ROWS); with more rows it computes slower."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=128, is_symmetric=True, accuracy_level=4)
    q.process()
    _save(q.model.model, path)


def _toposort(graph) -> None:
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in known for i in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise RuntimeError("graph has a cycle or undefined inputs after fp16 conversion")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def exporter_digest() -> str:
    """Hash of the exporter's and runtime's code: a staged export made by other code is not current."""
    import hashlib

    h = hashlib.sha256()
    for pkg in (Path(__file__).parent, Path(manifest_mod.__file__).parent):
        for f in sorted(pkg.glob("*.py")):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "onnx", "onnxruntime", "tokenizers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def save_tokenizer(tokenizer, path: Path) -> None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise checkpoints.CheckpointError("the checkpoint's tokenizer has no fast (tokenizers) version")
    backend.save(str(path))


def build(source: str, repository: Path, precision: str = "fp32", fallback: str | None = None,
          skip_if_current: bool = False) -> dict:
    """Export `source` into `repository` (model dirs must exist: they hold config.pbtxt). Returns the manifest."""
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(repository)  # also when the export itself is skipped: the server reads the folder
    if skip_if_current:
        current = current_manifest(repository)
        if (current and current.get("source") == source and current.get("precision") == precision
                and current.get("exporter") == exporter_digest()):
            log.info("repository already holds an export of %s (%s); skipping", source, precision)
            return current
    try:
        resolved = checkpoints.resolve(source)
    except checkpoints.CheckpointError as exc:
        if not fallback:
            raise
        log.warning("\n%s\n!! %s\n!! FALLING BACK TO THE '%s' PRESET: ITS WEIGHTS ARE RANDOM AND IT MAKES NOISE,"
                    " NOT MUSIC.\n%s", "!" * 100, exc, fallback, "!" * 100)
        resolved = checkpoints.resolve(fallback)
    t0 = time.time()
    model, tokenizer = checkpoints.load(resolved.path)
    if model.config.model_type == "musicgen_melody":  # conditioning prepended, no cross-attention
        from . import melody

        return melody.stage(source, resolved, model, tokenizer, repository, precision, t0)
    return stage(source, resolved, model, tokenizer, repository, precision, t0,
                 export=lambda out: export_graphs(model, out, precision), model_files=MODEL_FILES)


STAGING_PREFIX = ".export-"  # + the exporting process's pid: a staging folder inside the repository


def _pid_exists(pid: int) -> bool:
    """kill(pid, 0): the export image has no server/ package (nor psutil) to ask."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def remove_abandoned_staging(repository: Path) -> list[Path]:
    """Delete staging folders left by exports that were killed (their process is gone): Triton reads
    every folder of a repository as a model and refuses to start with one of them in it."""
    removed = []
    for d in Path(repository).glob(STAGING_PREFIX + "*"):
        pid = d.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if d.is_dir() and not (pid.isdigit() and _pid_exists(int(pid))):
            shutil.rmtree(d, ignore_errors=True)
            log.warning("removed %s, left by an export that did not finish", d)
            removed.append(d)
    return removed


def stage(source: str, resolved, model, tokenizer, repository: Path, precision: str, t0: float, *,
          export, model_files: dict, extra: dict | None = None) -> dict:
    """Run `export(tmp_dir) -> graph info`, then move the files and a manifest into the model dirs."""
    dims = model_dims(model, tokenizer)
    with tempfile.TemporaryDirectory(dir=repository, prefix=f"{STAGING_PREFIX}{os.getpid()}-") as tmp:
        tmp = Path(tmp)
        info = export(tmp)
        save_tokenizer(tokenizer, tmp / names.TOKENIZER_FILE)
        files = {}
        for fname in [names.TOKENIZER_FILE, *info]:
            for f in sorted(tmp.glob(fname + "*")):
                files[f.name] = {"sha256": manifest_mod.sha256(f), "bytes": f.stat().st_size}
        manifest = {
            "format": 1,
            "requested_source": source,
            "source": resolved.source,
            "source_kind": resolved.kind,
            "checkpoint_path": str(resolved.path),
            "random_weights": resolved.random_weights,
            "model_type": model.config.model_type,
            "precision": precision,
            "graphs": info,
            "opset": OPSET,
            "dims": dims.__dict__,
            **(extra or {}),
            "generation_defaults": {"top_k": 250, "top_p": 0.0, "temperature": 1.0, "guidance_scale": 3.0},
            "files": files,
            "versions": _versions(),
            "exporter": exporter_digest(),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "export_seconds": round(time.time() - t0, 1),
        }
        for model_name, fnames in model_files.items():
            dst = repository / model_name / "1"
            dst.mkdir(parents=True, exist_ok=True)
            for f in list(dst.glob("*.onnx")) + list(dst.glob("*.onnx.data")):
                if not any(f.name.startswith(n) for n in fnames):  # another architecture's earlier export
                    f.unlink()
            for fname in fnames:
                for f in tmp.glob(fname + "*"):
                    shutil.move(str(f), dst / f.name)
            (dst / names.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    log.info("exported %s (%s, %s) into %s in %.1fs", resolved.source, model.config.model_type, precision,
             repository, time.time() - t0)
    return manifest


def current_manifest(repository: Path) -> dict | None:
    """The manifest of the export staged in `repository`, if complete and its files intact (by size)."""
    try:
        m = manifest_mod.read(Path(repository) / "lm_engine" / "1")
    except manifest_mod.ManifestError:
        return None
    for model_name, fnames in MODEL_FILES.items():
        for fname, meta in m.get("files", {}).items():
            if any(fname.startswith(n) for n in fnames):
                f = Path(repository) / model_name / "1" / fname
                if not f.exists() or f.stat().st_size != meta["bytes"]:
                    return None
    return m
