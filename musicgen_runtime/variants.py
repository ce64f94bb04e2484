"""The LM variants by the export's model_type, and the one way to open the right one for an export."""

from __future__ import annotations

from pathlib import Path

from . import manifest as manifest_mod
from .lm import LanguageModel
from .melody_lm import MelodyLanguageModel
from .onnx_session import GraphError
from .text_lm import TextLanguageModel

LANGUAGE_MODELS: dict[str, type[LanguageModel]] = {
    cls.model_type: cls for cls in (TextLanguageModel, MelodyLanguageModel)
}


def open_language_model(model_dir: str | Path, **options) -> LanguageModel:
    """The LM of the export in `model_dir` (lm_engine/1), for its model_type; options as the variant's constructor."""
    model_type = manifest_mod.read(model_dir).get("model_type", TextLanguageModel.model_type)
    try:
        cls = LANGUAGE_MODELS[model_type]
    except KeyError:
        raise GraphError(
            f"{model_dir}: no LM for model_type {model_type!r} (known: {', '.join(sorted(LANGUAGE_MODELS))}): re-export"
        ) from None
    return cls(model_dir, **options)
