"""Prompt -> token ids (tokenizers) -> projected text states (text_encoder graph)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import names
from .onnx_session import open_graph
from .validation import ValidationError


class PromptTokenizer:
    def __init__(self, tokenizer_json: str | Path, max_tokens: int):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(tokenizer_json))
        self.tok.no_padding()
        self.tok.no_truncation()
        self.max_tokens = max_tokens

    def encode(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """ids, mask [B, T] int64, right-padded with 0 (T5's pad id)."""
        encs = [self.tok.encode(p) for p in prompts]
        for p, e in zip(prompts, encs):
            if len(e.ids) > self.max_tokens:
                raise ValidationError(f"prompt is too long: {len(e.ids)} tokens, at most {self.max_tokens}")
        t = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), t), np.int64)
        mask = np.zeros((len(encs), t), np.int64)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        return ids, mask


class TextEncoder:
    def __init__(self, graph: str | Path, device: str = "cpu", threads: int | None = None):
        self.sess = open_graph(
            graph,
            device,
            threads,
            expect_inputs=[names.INPUT_IDS, names.ATTENTION_MASK],
            expect_outputs=[names.ENCODER_HIDDEN_STATES],
            spin=False,
        )

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """[B, T, H] float32 states, zero at padded positions."""
        out = self.sess.run(
            [names.ENCODER_HIDDEN_STATES],
            {names.INPUT_IDS: ids.astype(np.int64), names.ATTENTION_MASK: mask.astype(np.int64)},
        )[0]
        return out.astype(np.float32, copy=False)
