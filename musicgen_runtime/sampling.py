"""Classifier-free guidance and top-k / top-p / temperature sampling, in numpy.

Follows the reference order (guidance, temperature, top-k, top-p). Each request owns its random
generator, so a seeded request draws the same numbers whether it runs alone or in a batch.
"""

from __future__ import annotations

import numpy as np


def guide(cond: np.ndarray, uncond: np.ndarray | None, scale: float) -> np.ndarray:
    """logits = uncond + (cond - uncond) * scale; no guidance rows -> cond unchanged."""
    if uncond is None:
        return cond
    return uncond + (cond - uncond) * np.float32(scale)


def filter_logits(logits: np.ndarray, top_k: int, top_p: float, temperature: float) -> np.ndarray:
    """[K, V] logits -> logits with filtered entries at -inf (temperature applied)."""
    x = logits.astype(np.float32, copy=True)
    if temperature != 1.0:
        x /= np.float32(temperature)
    vocab = x.shape[-1]
    if 0 < top_k < vocab:
        kth = np.partition(x, vocab - top_k, axis=-1)[..., vocab - top_k, None]
        x[x < kth] = -np.inf
    if 0.0 < top_p < 1.0:
        order = np.argsort(-x, axis=-1, kind="stable")
        sorted_x = np.take_along_axis(x, order, axis=-1)
        probs = _softmax(sorted_x)
        cum = np.cumsum(probs, axis=-1)
        drop_sorted = (cum - probs) >= top_p  # keep the smallest set whose mass reaches top_p
        drop_sorted[..., 0] = False
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        x[drop] = -np.inf
    return x


def sample(logits: np.ndarray, top_k: int, top_p: float, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """[K, V] guided logits -> [K] token ids. top_k == 1 is greedy (argmax) and draws nothing."""
    if top_k == 1:
        return np.argmax(logits, axis=-1).astype(np.int64)
    probs = _softmax(filter_logits(logits, top_k, top_p, temperature))
    u = rng.random(probs.shape[0])
    cdf = np.cumsum(probs, axis=-1)
    idx = (cdf < (u * cdf[:, -1])[:, None]).sum(axis=-1)
    return np.minimum(idx, probs.shape[-1] - 1).astype(np.int64)


def _softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=-1, keepdims=True)
