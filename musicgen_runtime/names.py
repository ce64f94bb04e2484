"""Tensor names of the exported graphs (set at export; the runtime checks them against each graph)."""

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
SEQLENS_K = "seqlens_k"  # int32 [B]: cache index of each row's last new token
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"  # int32 scalar
ENCODER_ATTENTION_MASK = "encoder_attention_mask"
ENCODER_HIDDEN_STATES = "encoder_hidden_states"
LOGITS = "logits"
AUDIO_CODES = "audio_codes"
AUDIO_VALUES = "audio_values"
# audio_decoder graph (a window of a clip; codec.py): which hidden frames to compute, the LSTM state and
# the hidden frames carried from the previous window in; the state and the window's hidden frames out
FRAME_RANGE = "frame_range"
LSTM_STATE = "lstm_state"
LSTM_STATE_OUT = "lstm_state_out"
HIDDEN_BEFORE = "hidden_before"
CODEC_HIDDEN = "codec_hidden"
INPUT_VALUES = "input_values"  # audio_encoder graph input: waveform [B, C, samples] at the codec's rate

# graph file names inside model_repository/<model>/1/
TEXT_ENCODER_FILE = "text_encoder.onnx"
CROSS_KV_FILE = "cross_kv.onnx"
DECODER_STEP_FILE = "decoder_step.onnx"
# int8 exports also carry the step with blockwise int8 weights (our Int8BlockGemv), for steps of up to 16 rows
DECODER_STEP_BLOCKWISE_INT8_FILE = "decoder_step_blockwise_int8.onnx"
AUDIO_DECODER_FILE = "audio_decoder.onnx"
AUDIO_ENCODER_FILE = "audio_encoder.onnx"  # EnCodec encoder + quantizer (continuation), in lm_engine/1
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"


def past(layer: int, kind: str, kv: str) -> str:
    """past_key_values.{layer}.{decoder|encoder}.{key|value}"""
    return f"past_key_values.{layer}.{kind}.{kv}"


def present(layer: int, kv: str) -> str:
    return f"present.{layer}.decoder.{kv}"


def cross(layer: int, kv: str) -> str:
    """Outputs of the cross_kv graph (fed to the step as past_key_values.{i}.encoder.*)."""
    return f"cross.{layer}.{kv}"
