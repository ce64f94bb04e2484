"""Prompts in Chinese (or Japanese, Korean): MusicGen's T5 text encoder was trained on English
music descriptions, so such a prompt gives poor music. The page, the client and the CLI warn with
the same words; nothing translates a prompt silently.
"""

from __future__ import annotations

import re

# CJK ideographs (incl. extension A and compatibility), kana, hangul, CJK punctuation and fullwidth forms
_CJK = re.compile(
    "[\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]"
)

WARNING = (
    "the prompt contains Chinese, Japanese or Korean characters. MusicGen's text encoder (T5) was "
    "trained on English music descriptions, so this prompt will likely give poor music. Describe "
    "the music in English: genre, instruments, mood, tempo (e.g. 'calm lo-fi beat with warm piano, "
    "80 bpm'). The prompt is sent as typed, not translated."
)


class PromptLanguageWarning(UserWarning):
    """Issued by the client library for a prompt MusicGen cannot read well (see :data:`WARNING`)."""


def has_cjk(text: str | None) -> bool:
    """Whether `text` holds any CJK character (ideograph, kana, hangul or CJK punctuation)."""
    return bool(text) and _CJK.search(str(text)) is not None


def warning_for(prompt: str | None) -> str | None:
    """The warning to show for `prompt`, or None when it reads as English-like text."""
    return WARNING if has_cjk(prompt) else None
