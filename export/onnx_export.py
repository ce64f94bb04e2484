"""The graphs stage: a loaded checkpoint -> ONNX graphs at the LM precision, in a folder (needs torch).

One function per graph family (text-only: cross-attention step; melody: prefix step); they share the
text encoder and codec exports and the precision conversions. Staging them into the model
repository is export/staging.py's job.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from musicgen_runtime import melody_lm, names

from . import graphs

OPSET = 18
PRECISIONS = ("fp32", "fp16", "int8")


def _export(module, args, path: Path, input_names, output_names, dynamic_axes):
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            custom_opsets={"com.microsoft": 1},
        )


def _save(model_proto, path: Path) -> None:
    """Always external data for weights: graphs above 2 GB must, and one layout is simpler to stage."""
    import onnx

    data = path.name + ".data"
    if (path.parent / data).exists():
        (path.parent / data).unlink()
    onnx.save_model(
        model_proto,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data,
        size_threshold=1024,
    )


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _export_text_encoder(model, raw: Path, generator=None) -> None:
    """T5 + projection, traced with a padded mask so the masking branch is kept."""
    import torch

    ids = torch.randint(2, 50, (2, 7), generator=generator)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    _export(
        graphs.TextEncoder(model),
        (ids, mask),
        raw / names.TEXT_ENCODER_FILE,
        [names.INPUT_IDS, names.ATTENTION_MASK],
        [names.ENCODER_HIDDEN_STATES],
        {
            names.INPUT_IDS: {0: "batch", 1: "text_len"},
            names.ATTENTION_MASK: {0: "batch", 1: "text_len"},
            names.ENCODER_HIDDEN_STATES: {0: "batch", 1: "text_len"},
        },
    )


def _export_audio_decoder(model, raw: Path, generator=None) -> None:
    """EnCodec decoder over a window of a clip (graphs.AudioDecoder): all the LM's codebooks in; stereo: each
    channel's codebooks decoded on their own. The example carries hidden frames and computes a middle range."""
    import torch

    k, layers = model.config.decoder.num_codebooks, model.config.audio_encoder.num_lstm_layers
    width = model.config.audio_encoder.num_filters * 2 ** len(model.config.audio_encoder.upsampling_ratios)
    rows = 2 * graphs.codec_channels(model)
    codes = torch.randint(0, model.config.audio_encoder.codebook_size, (1, 2, k, 12), generator=generator)
    args = (codes, torch.tensor([3, 9]), torch.randn(2, layers, rows, width), torch.randn(rows, width, 2))
    _export(
        graphs.AudioDecoder(model),
        args,
        raw / names.AUDIO_DECODER_FILE,
        [names.AUDIO_CODES, names.FRAME_RANGE, names.LSTM_STATE, names.HIDDEN_BEFORE],
        [names.AUDIO_VALUES, names.LSTM_STATE_OUT, names.CODEC_HIDDEN],
        {
            names.AUDIO_CODES: {1: "batch", 3: "frames"},
            names.LSTM_STATE: {2: "rows"},
            names.HIDDEN_BEFORE: {0: "rows", 2: "carried"},
            names.AUDIO_VALUES: {0: "batch", 2: "samples"},
            names.LSTM_STATE_OUT: {2: "rows"},
            names.CODEC_HIDDEN: {0: "rows", 2: "hidden_frames"},
        },
    )


def _export_audio_encoder(model, raw: Path, generator=None) -> None:
    """EnCodec encoder + quantizer (continuation prompts), at fp32 whatever the LM's precision: its codes
    are compared exactly. Legacy exporter: dynamo bakes the example's frame count into the LSTM."""
    import torch

    wave = 0.3 * torch.randn(
        2, model.config.decoder.audio_channels, 7 * model.config.audio_encoder.hop_length + 123, generator=generator
    )
    _export(
        graphs.AudioEncoder(model),
        (wave,),
        raw / names.AUDIO_ENCODER_FILE,
        [names.INPUT_VALUES],
        [names.AUDIO_CODES],
        {names.INPUT_VALUES: {0: "batch", 2: "samples"}, names.AUDIO_CODES: {0: "batch", 2: "frames"}},
    )


def _cache_axes(n_layers: int, cross: bool) -> dict:
    axes = {}
    for i in range(n_layers):
        for kv in ("key", "value"):
            axes[names.past(i, "decoder", kv)] = {0: "batch", 2: "capacity"}
            if cross:
                axes[names.past(i, "encoder", kv)] = {0: "batch", 2: "text_len"}
            axes[names.present(i, kv)] = {0: "batch", 2: "capacity"}
    return axes


def export_text_graphs(model, out: Path, precision: str = "fp32") -> dict:
    """Text-only MusicGen: text_encoder, cross_kv, decoder_step (cross-attention), audio_decoder and
    audio_encoder (continuation) into `out`;
    returns {file: graph-level info}. Example shapes use sizes >= 2."""
    import torch

    _check_precision(precision)
    model = model.eval().float()
    dec = model.config.decoder
    n_layers, heads, hd = dec.num_hidden_layers, dec.num_attention_heads, dec.hidden_size // dec.num_attention_heads
    b, t_text, past_len, s = 3, 7, 5, 2
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    _export_text_encoder(model, raw)

    # cross-attention K/V, once per request
    states = torch.randn(b, t_text, dec.hidden_size)
    cross_names = [names.cross(i, kv) for i in range(n_layers) for kv in ("key", "value")]
    _export(
        graphs.CrossKV(model),
        (states,),
        raw / names.CROSS_KV_FILE,
        [names.ENCODER_HIDDEN_STATES],
        cross_names,
        {
            names.ENCODER_HIDDEN_STATES: {0: "batch", 1: "text_len"},
            **{n: {0: "batch", 2: "text_len"} for n in cross_names},
        },
    )

    # decoder step on a preallocated KV cache (doubles as prefill with an empty cache)
    in_names, out_names = graphs.step_io_names(n_layers)
    capacity = past_len + s + 3
    step_args = [
        torch.randint(0, dec.vocab_size, (b, dec.num_codebooks, s)),
        torch.tensor([[past_len, past_len + 1], [2, 3], [0, 1]]),
        torch.tensor([past_len + 1, 3, 1], dtype=torch.int32),
        torch.tensor(past_len + s, dtype=torch.int32),
        torch.ones(b, t_text, dtype=torch.long),
    ]
    step_args[4][1, 5:] = 0
    for _ in range(n_layers):
        step_args += [
            torch.randn(b, heads, capacity, hd),
            torch.randn(b, heads, capacity, hd),
            torch.randn(b, heads, t_text, hd),
            torch.randn(b, heads, t_text, hd),
        ]
    axes = {
        names.INPUT_IDS: {0: "batch", 2: "seq"},
        names.POSITION_IDS: {0: "batch", 1: "seq"},
        names.SEQLENS_K: {0: "batch"},
        names.ENCODER_ATTENTION_MASK: {0: "batch", 1: "text_len"},
        names.LOGITS: {0: "batch", 2: "seq"},
        **_cache_axes(n_layers, cross=True),
    }
    # CPU graphs take ORT's fused MultiHeadAttention for the cross-attention (fewer kernels per step);
    # the fp16 (GPU) graph keeps plain ops: the CUDA kernel's support for this mask layout is unverified here
    step = graphs.DecoderStep(model, fused_cross_attention=precision != "fp16")
    _export(step, tuple(step_args), raw / names.DECODER_STEP_FILE, in_names, out_names, axes)
    _export_audio_decoder(model, raw)
    _export_audio_encoder(model, raw)

    return finish_graphs(
        raw,
        out,
        precision,
        fp16={
            names.CROSS_KV_FILE: [names.ENCODER_HIDDEN_STATES],
            names.DECODER_STEP_FILE: [names.ENCODER_HIDDEN_STATES, names.LOGITS],
        },
        int8=names.DECODER_STEP_FILE,
        blockwise_int8=names.DECODER_STEP_BLOCKWISE_INT8_FILE,
    )


def export_melody_graphs(model, out: Path, precision: str = "fp32", position_table: int | None = None) -> dict:
    """MusicGen-Melody: text_encoder, melody_condition, melody_decoder_step (prefix), audio_decoder into
    `out` (see musicgen_runtime/melody_lm.py); returns {file: graph-level info}. Example sizes are >= 2."""
    import torch

    _check_precision(precision)
    model = model.eval().float()
    c = model.config
    dec = c.decoder
    n_layers, heads = dec.num_hidden_layers, dec.num_attention_heads
    hd = dec.hidden_size // heads
    position_table = position_table or dec.max_position_embeddings
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    _export_text_encoder(model, raw, g)

    chroma = torch.zeros(2, 5, c.num_chroma)
    chroma[:, :, 3] = 1
    embeds = melody_lm.INPUTS_EMBEDS
    _export(
        graphs.MelodyCondition(model),
        (chroma, torch.randn(2, 7, dec.hidden_size, generator=g)),
        raw / melody_lm.CONDITION_FILE,
        [melody_lm.CHROMA, names.ENCODER_HIDDEN_STATES],
        [embeds],
        {
            melody_lm.CHROMA: {0: "batch", 1: "chroma_frames"},
            names.ENCODER_HIDDEN_STATES: {0: "batch", 1: "text_len"},
            embeds: {0: "batch", 1: "prefix_len"},
        },
    )

    # rows at different points: one after 5 cached entries, one prefill of e + s, one with 2 cached
    b, e, s = 3, 4, 2
    capacity = 5 + e + s + 3
    in_names, out_names = graphs.prefix_step_io_names(n_layers)
    starts = [5, 0, 2]
    args = [
        torch.randn(b, e, dec.hidden_size, generator=g),
        torch.randint(0, dec.vocab_size, (b, dec.num_codebooks, s), generator=g),
        torch.stack([torch.arange(p, p + e + s) for p in starts]),
        torch.tensor([p + e + s - 1 for p in starts], dtype=torch.int32),
        torch.tensor(max(starts) + e + s, dtype=torch.int32),
    ]
    for _ in range(n_layers):
        args += [torch.randn(b, heads, capacity, hd, generator=g), torch.randn(b, heads, capacity, hd, generator=g)]
    axes = {
        embeds: {0: "batch", 1: "embeds_len"},
        names.INPUT_IDS: {0: "batch", 2: "seq"},
        names.POSITION_IDS: {0: "batch", 1: "new_len"},
        names.SEQLENS_K: {0: "batch"},
        names.LOGITS: {0: "batch", 2: "seq"},
        **_cache_axes(n_layers, cross=False),
    }
    _export(
        graphs.PrefixDecoderStep(model, position_table),
        tuple(args),
        raw / melody_lm.DECODER_STEP_FILE,
        in_names,
        out_names,
        axes,
    )
    _export_audio_decoder(model, raw, g)

    return finish_graphs(
        raw,
        out,
        precision,
        fp16={melody_lm.DECODER_STEP_FILE: [embeds, names.LOGITS]},
        int8=melody_lm.DECODER_STEP_FILE,
        blockwise_int8=melody_lm.DECODER_STEP_BLOCKWISE_INT8_FILE,
    )


def finish_graphs(
    raw: Path, out: Path, precision: str, fp16: dict, int8: str, blockwise_int8: str | None = None
) -> dict:
    """Move the exported graphs from `raw` into `out` at the LM precision, check each, remove `raw`.

    fp16: {file: its inputs/outputs that stay fp32} (sampling runs on fp32 logits); int8: the file
    whose MatMuls are quantized; blockwise_int8: if set, int8 also writes this blockwise-int8 copy of
    that file (step_graph.BLOCKWISE_INT8_MAX_ROWS). Returns {file: {"precision": ...}}.
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
            if blockwise_int8:  # from the fp32 graph just saved (saving moved the proto's weights out)
                to_int8_blockwise(out / fname, out / blockwise_int8)
                onnx.checker.check_model(str(out / blockwise_int8), full_check=True)
                info[blockwise_int8] = {"precision": "int8-block128"}
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
    """Dynamic int8 (CPU): S8 per-channel weights on every MatMul, activations quantized per step, and
    attention on our operators over the int8 cache both int8 step graphs share (`with_our_attention`).

    Layer norms, softmax and logits stay fp32. Weights use 7 bits (`reduce_range`): on
    x86 CPUs without VNNI (AVX2 only, e.g. AMD Zen 2) ORT's u8 x s8 kernel sums pairs of products in
    saturating int16, and full-range weights overflowed it (logits rel-L2 0.27 against 0.007 on a
    VNNI CPU, tiny-random); 7-bit weights cannot overflow, on every CPU.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_name("int8-" + path.name)
    quantize_dynamic(
        str(path),
        str(tmp),
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        reduce_range=True,
        use_external_data_format=True,
    )
    data = path.with_name(path.name + ".data")
    path.unlink()
    data.unlink()
    import onnx

    # re-save under the canonical name (external data named after it)
    _save(with_our_attention(onnx.load(str(tmp))), path)
    tmp.unlink()
    for f in tmp.parent.glob(tmp.name + "*"):  # the quantizer's own external-data file
        f.unlink()


def to_int8_blockwise(src: Path, path: Path) -> None:
    """Blockwise int8 (CPU), on our operators (musicgen_runtime/cpu_kernels): every MatMul with a constant
    weight [K, N] becomes Int8BlockGemv (int8 weights, one symmetric scale per output and 128 inputs — the
    largest of 128, 64, 32, 16 that divides K — packed for the kernel), and its attention our
    CachedAttention and CrossAttention (`with_our_attention`). For steps of up to 16 rows
    (step_graph.BLOCKWISE_INT8_MAX_ROWS) it is faster than dynamic int8 on AVX2 without VNNI, with logits
    closer to fp32; at many more rows ORT's int8 multiply-adds, twice the work of our int16 ones per
    instruction, should win."""
    import onnx
    from onnx import helper, numpy_helper

    from musicgen_runtime import cpu_kernels

    # first: their shape inference does not know our operator
    proto = fuse_skip_layer_norm(onnx.load(str(src)), gelu=True)
    graph = proto.graph
    weights = {t.name: t for t in graph.initializer}
    packed: dict[str, tuple[str, str, int, int]] = {}  # weight name -> (Qp name, Sp name, N, block)
    nodes = []
    for node in graph.node:
        w = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        block = next((b for b in (128, 64, 32, 16) if w is not None and w.dims[0] % b == 0), None)
        if w is None or len(w.dims) != 2 or block is None:
            nodes.append(node)
            continue
        if w.name not in packed:
            qp, sp = cpu_kernels.pack(numpy_helper.to_array(w), block)
            packed[w.name] = (w.name + "_int8_packed", w.name + "_int8_scales", int(w.dims[1]), block)
            graph.initializer.extend(
                [numpy_helper.from_array(qp, packed[w.name][0]), numpy_helper.from_array(sp, packed[w.name][1])]
            )
        q_name, s_name, n, block = packed[w.name]
        nodes.append(
            helper.make_node(
                cpu_kernels.OP,
                [node.input[0], q_name, s_name],
                list(node.output),
                node.name,
                domain=cpu_kernels.DOMAIN,
                N=n,
                block_size=block,
            )
        )
    still_read = {i for node in nodes for i in node.input}
    kept = [t for t in graph.initializer if t.name not in packed or t.name in still_read]
    del graph.node[:], graph.initializer[:]
    graph.node.extend(nodes)
    graph.initializer.extend(kept)
    proto.opset_import.append(helper.make_opsetid(cpu_kernels.DOMAIN, 1))
    _save(with_our_attention(with_gemv_fusions(proto)), path)


def with_gemv_fusions(proto):
    """Work folded into the Int8BlockGemv kernels around it (cpu_kernels/prologue.h, int8_gemv.h): each
    SkipLayerNormalization whose only reader is a GEMV becomes that GEMV's prologue, each Gelu whose input
    only it reads, made by a GEMV, that GEMV's epilogue. 96 fewer kernels a step for musicgen-small, each of
    which cost ~10 us on ONNX Runtime's threads. Returns the proto, changed in place."""
    from onnx import helper

    from musicgen_runtime import cpu_kernels

    graph = proto.graph
    readers: dict[str, list] = {}
    makers: dict[str, object] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
        for name in node.output:
            makers[name] = node
    outputs = {v.name for v in graph.output}

    def is_gemv(node) -> bool:
        return node is not None and node.op_type == cpu_kernels.OP and node.domain == cpu_kernels.DOMAIN

    def only_reader_gemv(name: str):
        nodes = readers.get(name, [])
        ok = len(nodes) == 1 and is_gemv(nodes[0])
        return nodes[0] if ok and nodes[0].input[0] == name and name not in outputs else None

    def has(node, attribute: str) -> bool:
        return any(a.name == attribute for a in node.attribute)

    folded = set()
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gelu" and node.domain == "com.microsoft" and not attrs:
            gemv = makers.get(node.input[0])
            if not is_gemv(gemv) or gemv.output[0] != node.input[0] or has(gemv, "epilogue"):
                continue
            if len(readers.get(node.input[0], [])) != 1 or node.input[0] in outputs:
                continue
            gemv.output[0] = node.output[0]
            gemv.attribute.append(helper.make_attribute("epilogue", cpu_kernels.EPILOGUE_GELU))
        elif (
            node.op_type == "SkipLayerNormalization"
            and len(node.input) == 4
            and all(node.input)
            and len(node.output) == 4
            and node.output[3]
            and not any(readers.get(o) or o in outputs for o in node.output[1:3] if o)
            and set(attrs) <= {"epsilon"}
        ):
            gemv = only_reader_gemv(node.output[0])
            if gemv is None or has(gemv, "prologue"):
                continue
            x, skip, gamma, beta = node.input
            weights, scales = gemv.input[1:3]
            del gemv.input[:], gemv.output[1:]
            gemv.input.extend([x, weights, scales, skip, gamma, beta])
            gemv.output.append(node.output[3])  # the residual sum
            gemv.attribute.extend(
                [
                    helper.make_attribute("prologue", cpu_kernels.PROLOGUE_SKIP_LAYER_NORM),
                    helper.make_attribute("epsilon", float(attrs.get("epsilon", 1e-5))),
                ]
            )
        else:
            continue
        folded.add(id(node))
    kept = [n for n in graph.node if id(n) not in folded]
    del graph.node[:]
    graph.node.extend(kept)
    _toposort(graph)  # a fused GEMV now also makes the residual sum that later nodes read
    return proto


def with_our_attention(proto):
    """The attention of int8 CPU step graphs on our operators: every self-attention GroupQueryAttention as
    CachedAttention over an int8 cache (each position's head_dim values and their float32 scale: the last
    dimension becomes head_dim + 4, a quarter of the bytes of a float cache, which a step reads every
    position of), every cross-attention MultiHeadAttention as CrossAttention over float16 text K/V. The
    arithmetic stays fp32. Returns the proto, changed in place."""
    from onnx import TensorProto, helper

    from musicgen_runtime import cpu_kernels

    graph, kinds, pasts = proto.graph, {}, {}  # graph input/output name -> its new element type; present -> past
    for node in graph.node:
        if node.op_type not in ("GroupQueryAttention", "MultiHeadAttention"):
            continue
        ours = _cached_attention(node) if node.op_type == "GroupQueryAttention" else _cross_attention(node)
        if ours is None:
            raise ValueError(f"{node.name}: a {node.op_type} that our attention operators cannot replace")
        node.CopyFrom(ours)
        if node.op_type == cpu_kernels.ATTENTION_OP:
            kinds.update(dict.fromkeys([*node.input[1:3], *node.output[1:3]], TensorProto.INT8))
            pasts.update(zip(node.output[1:3], node.input[1:3]))
        else:
            kinds.update(dict.fromkeys(node.input[1:3], TensorProto.FLOAT16))
    graph_inputs = {v.name for v in graph.input}
    for node in graph.node:  # the K/V must come straight from the graph's inputs, the only ones changed
        if node.domain == cpu_kernels.DOMAIN and node.op_type != cpu_kernels.OP:
            if any(name not in graph_inputs for name in node.input[1:3]):
                raise ValueError(f"{node.name}: its keys and values are not inputs of the graph")
    for value in graph.input:
        if value.name in kinds:
            t = value.type.tensor_type
            t.elem_type = kinds[value.name]
            if t.elem_type == TensorProto.INT8:
                width = t.shape.dim[3]
                if not width.HasField("dim_value"):
                    raise ValueError(f"{value.name}: the cache's head_dim must be static")
                width.dim_value += cpu_kernels.CACHE_SCALE_BYTES
    inputs = {v.name: v for v in graph.input}
    for value in graph.output:  # a present cache: its past's type and shape (the same buffer)
        if value.name in pasts:
            value.type.CopyFrom(inputs[pasts[value.name]].type)
    if kinds and all(o.domain != cpu_kernels.DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(cpu_kernels.DOMAIN, 1))
    return proto


def _cached_attention(node):
    """Our CachedAttention for a GroupQueryAttention of packed QKV with an explicit scale and no rotary
    or window (what the step graphs export); None for any other."""
    from onnx import helper

    from musicgen_runtime import cpu_kernels

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    qkv, key, value, past_key, past_value, seqlens_k, total = list(node.input)[:7]
    if key or value or set(attrs) != {"num_heads", "kv_num_heads", "scale"} or len(node.input) > 7:
        return None
    return helper.make_node(
        cpu_kernels.ATTENTION_OP,
        [qkv, past_key, past_value, seqlens_k, total],
        list(node.output),
        node.name,
        domain=cpu_kernels.DOMAIN,
        **attrs,
    )


def _cross_attention(node):
    """Our CrossAttention for a MultiHeadAttention of a query against whole K/V ([B, H, T, D]) with a key
    padding mask, no bias and an explicit scale (the text-conditioned step graphs' cross-attention); None
    for any other."""
    from onnx import helper

    from musicgen_runtime import cpu_kernels

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inputs = list(node.input) + [""] * (5 - len(node.input))
    q, key, value, bias, mask = inputs[:5]
    if bias or not (key and value and mask) or len(node.input) > 5 or len(node.output) > 1:
        return None
    if set(attrs) != {"num_heads", "scale"}:
        return None
    return helper.make_node(
        cpu_kernels.CROSS_ATTENTION_OP,
        [q, key, value, mask],
        list(node.output),
        node.name,
        domain=cpu_kernels.DOMAIN,
        **attrs,
    )


def fuse_skip_layer_norm(proto, gelu: bool = False):
    """Each residual Add and the LayerNormalization after it as one SkipLayerNormalization kernel (and with
    `gelu`, each erf-based GELU's five ops as one Gelu).

    ORT's session optimizer leaves them apart here: in a pre-LN decoder the residual sum also feeds
    the next residual Add, and its fusion takes only an Add with one consumer. onnxruntime's
    transformer optimizer fuses them with the sum as the fused node's extra output.
    """
    from onnxruntime.transformers.fusion_gelu import FusionGelu
    from onnxruntime.transformers.fusion_skiplayernorm import FusionSkipLayerNormalization
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(proto)
    FusionSkipLayerNormalization(model).apply()
    if gelu:
        FusionGelu(model).apply()
    model.topological_sort()
    return model.model


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
