"""The MusicGen LM loop on ONNX Runtime: KV cache, classifier-free guidance, delay pattern, sampling.

One loop for every model variant, by composition: a `StepGraph` (the variant's decoder-step graph
family), a `RowAllocator` over one preallocated `KVCache`, and the variant's conditioning, which
its small subclass supplies (text_lm.TextLanguageModel, melody_lm.MelodyLanguageModel;
variants.open_language_model picks one from the export's manifest).

Generations share one batched decoder step: each feeds one token per step, so a new generation
joins a running batch at any step, in free rows of the cache, with its own positions, sampling
parameters and random generator; finished ones leave and their rows are reused. A generation whose
conditioning comes before its first token (`prefix_len` > 0, e.g. melody's prepended chroma and
text) or that continues an audio prompt (`prompt_codes`) is first prefilled on its own rows: BOS and
the prompt's delayed columns, at most `prefill_chunk` columns per step (the first chunk also carries
the prefix), each step's chunk next to the batched decode step of the others, so a long prompt never
holds them up for long; then it decodes with the others. A prompt's codes fill the delay pattern;
only the positions they leave unknown are sampled (as transformers does).

    lm = open_language_model(model_dir)
    gen = lm.prepare(GenerationRequest(text_states, text_mask, params, frames, chroma=None))
    lm.add(gen); while not gen.done: lm.step()         # step() returns the generations that left
    codes = gen.codes()                                  # [K, frames]; or: lm.generate(request)
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import delay, manifest as manifest_mod, sampling
from .kv_cache import KVCache, RowAllocator
from .onnx_session import GraphError
from .step_graph import BLOCKWISE_INT8_MAX_ROWS, StepGraph
from .validation import GenerationParams

_ids = itertools.count(1)

# Most prefill columns one generation runs per engine step: a long audio prompt (or a long-form window's
# prompt) prefills over several steps, between the decode steps of the others. A 10-column chunk of
# musicgen-small int8 with guidance (2 rows) took 0.2-0.36 s on our 2-core AMD EPYC VM under load
# (20-50 ms a column as the load varied); the whole 600-column window prompt in one step took 27.5 s.
PREFILL_CHUNK = 10


@dataclass(eq=False)
class GenerationRequest:
    """What one request asks the LM for. Variants read the fields they take and refuse the others."""

    text_states: np.ndarray  # [T, H] projected text states (text_encoder graph)
    text_mask: np.ndarray  # [T]; 0 = padding
    params: GenerationParams
    frames: int  # audio frames of the clip (the prompt's included)
    chroma: np.ndarray | None = None  # [Tc, num_chroma] melody features (melody models)
    prompt_codes: np.ndarray | None = None  # [K, P] codes the clip starts with (continuation), P < frames
    on_step: Callable[["Generation"], None] | None = None


@dataclass(eq=False, kw_only=True)
class Generation:
    """One request in the LM loop: its delayed tokens, sampling state and conditioning."""

    params: GenerationParams  # seed fixed
    frames: int
    steps: int
    tokens: np.ndarray  # [K, steps + 1] delayed sequence, column 0 = BOS
    valid: np.ndarray  # [K, steps + 1] where real tokens go
    known: np.ndarray  # [K, steps + 1] where the audio prompt put its tokens (never sampled)
    rng: np.random.Generator
    condition: object  # the variant's per-request conditioning (see its `condition`)
    prefix_len: int = 0  # conditioning positions before BOS
    prompt_frames: int = 0  # frames of the audio prompt, the clip's first
    audio_channels: int = 1
    on_step: Callable[["Generation"], None] | None = None
    t: int = 0  # columns filled after BOS (a prompt's columns are filled from the start)
    prefilled: int = 0  # prefill columns (BOS and the prompt's) already in this generation's cache rows
    id: int = field(default_factory=lambda: next(_ids))
    error: BaseException | None = None
    cancelled: bool = False

    @property
    def rows(self) -> int:
        """Batch rows: the conditional row, plus the null row with classifier-free guidance."""
        return 2 if self.params.guidance_scale > 1.0 else 1

    @property
    def needs_prefill(self) -> bool:
        """A prefix or a prompt: prefilled on its own rows when it joins."""
        return self.prefix_len > 0 or self.prompt_frames > 0

    @property
    def prefill_left(self) -> int:
        """Prefill columns (BOS and the prompt's) still to run; 0 once it decodes."""
        return self.prompt_frames + 1 - self.prefilled if self.needs_prefill else 0

    @property
    def first_position(self) -> int:
        """Position (and cache index) of the BOS token: after the prefix."""
        return self.prefix_len

    @property
    def positions_written(self) -> int:
        """Cache positions this generation's rows hold."""
        if self.prefill_left:
            return self.first_position + self.prefilled if self.prefilled else 0
        return self.first_position + self.t + 1

    @property
    def done(self) -> bool:
        return self.t >= self.steps or self.error is not None or self.cancelled

    def codes(self, upto_frames: int | None = None) -> np.ndarray:
        """[K, frames] codes (only meaningful for frames whose every codebook is filled)."""
        n = self.frames if upto_frames is None else upto_frames
        return delay.undelay(self.tokens, n, self.audio_channels)

    @property
    def frames_ready(self) -> int:
        """Frames whose tokens are final in every codebook."""
        d = int(delay.delays(self.tokens.shape[0], self.audio_channels).max())
        return int(np.clip(self.t - d, 0, self.frames))

    def advance(self, logits: np.ndarray, row: int, pad_token_id: int) -> None:
        """Sample the next column from this generation's rows (from `row`) of `logits` [rows, K, S, V]:
        guidance, the request's own sampling and generator, the delay pattern, then `on_step`.
        A failure (e.g. a callback whose client has gone) ends only this generation."""
        try:
            cond = logits[row, :, -1, :].astype(np.float32)
            uncond = logits[row + 1, :, -1, :].astype(np.float32) if self.rows == 2 else None
            p = self.params
            nxt = sampling.sample(
                sampling.guide(cond, uncond, p.guidance_scale), p.top_k, p.top_p, p.temperature, self.rng
            )
            col = self.t + 1
            new = np.where(self.valid[:, col], nxt, pad_token_id)
            self.tokens[:, col] = np.where(self.known[:, col], self.tokens[:, col], new)
            self.t = col
            if self.on_step is not None:
                self.on_step(self)
        except Exception as exc:
            self.error = exc


class LanguageModel:
    """The loop, for the export in `model_dir` (lm_engine/1). A variant subclass opens its graphs
    (`open_graphs`, `capacity`) and supplies `condition` (a request's conditioning) and the step's
    conditioning inputs (`decode_inputs`, `prefill_inputs`); it does not touch the loop.

    max_rows: cache rows (a request takes 2 with guidance); max_steps: the longest request's steps (the
    cache's positions follow); blockwise_int8_max_rows: see step_graph (0: never load that graph);
    prefill_chunk: most prefill columns a generation runs in one step (see `step`).
    """

    model_type: str = ""
    chroma_config = None  # the melody features the model takes (chroma.ChromaConfig); None: it takes no melody

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        max_rows: int = 32,
        max_steps: int | None = None,
        blockwise_int8_max_rows: int = BLOCKWISE_INT8_MAX_ROWS,
        prefill_chunk: int = PREFILL_CHUNK,
    ):
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.prefill_chunk = prefill_chunk
        model_dir = Path(model_dir)
        self.manifest = manifest_mod.read(model_dir)
        if self.manifest.get("model_type", "musicgen") != self.model_type:
            raise GraphError(
                f"{model_dir}: export of a {self.manifest.get('model_type')!r} checkpoint, not "
                f"{self.model_type!r}: open it with variants.open_language_model"
            )
        self.dims = manifest_mod.dims(self.manifest)
        self.device = device
        self.decoder: StepGraph = self.open_graphs(model_dir, threads, blockwise_int8_max_rows)
        self.num_layers, self.cache_dtype = self.decoder.num_layers, self.decoder.cache_dtype
        self.cache: KVCache = self.decoder.new_cache(max_rows, self.capacity(max_steps))
        self.rows = RowAllocator(self.cache)
        self.pending: list[Generation] = []  # prefill to run: rows taken at their first chunk
        self._lock = threading.Lock()

    # -- what a variant supplies ----------------------------------------------------------------------
    def open_graphs(self, model_dir: Path, threads: int | None, blockwise_int8_max_rows: int) -> StepGraph:
        """Open the variant's graphs (self.manifest, self.dims and self.device are set); its step graph."""
        raise NotImplementedError

    def capacity(self, max_steps: int | None) -> int:
        """Cache positions per row: conditioning and tokens of the longest request."""
        raise NotImplementedError

    def condition(self, request: GenerationRequest, params: GenerationParams) -> tuple[object, int]:
        """(the request's conditioning, its prefix length in positions before BOS)."""
        raise NotImplementedError

    def decode_inputs(self) -> dict:
        """The conditioning inputs of a decode step over every seated row: StepGraph.run's `extra`/`cross`."""
        raise NotImplementedError

    def prefill_inputs(self, gen: Generation, rows: slice) -> dict:
        """The conditioning inputs of `gen`'s next prefill chunk on `rows` of its own rows (the prefix only
        in the first chunk, `gen.prefilled` == 0): StepGraph.run's `extra`/`cross`."""
        raise NotImplementedError(f"{type(self).__name__} has no prefill step")

    def max_frames(self, text_tokens: int) -> int:
        """Most frames one request with `text_tokens` text tokens can generate on this engine."""
        room = self.cache.capacity - 1 - self.prefix_positions(text_tokens)
        return max(0, room - int(delay.delays(self.dims.num_codebooks, self.dims.audio_channels).max()))

    def prefix_positions(self, text_tokens: int) -> int:
        """Cache positions a request's conditioning takes before BOS."""
        return 0

    # -- requests ---------------------------------------------------------------------------------------
    @property
    def active(self) -> list:
        """Seated generations, in row order."""
        return self.rows.active

    @property
    def rows_used(self) -> int:
        return self.rows.used

    def prepare(self, request: GenerationRequest) -> Generation:
        """A generation for one request (its conditioning computed now); ValueError if it cannot fit."""
        d = self.dims
        if request.frames < 1:
            raise ValueError("frames must be >= 1")
        params = request.params.with_seed()
        steps = delay.num_steps(request.frames, d.num_codebooks, d.audio_channels)
        prompt = self._prompt_codes(request)
        condition, prefix_len = self.condition(request, params)
        if prefix_len + steps + 1 > self.cache.capacity:
            raise ValueError(
                f"{request.frames} frames after a {prefix_len}-position conditioning need "
                f"{prefix_len + steps + 1} positions; this engine holds {self.cache.capacity}"
            )
        tokens, known = delay.delay_prompt(prompt, steps + 1, d.pad_token_id, d.audio_channels)
        return Generation(
            params=params,
            frames=request.frames,
            steps=steps,
            tokens=tokens,
            valid=delay.valid_mask(request.frames, d.num_codebooks, d.audio_channels),
            known=known,
            condition=condition,
            prefix_len=prefix_len,
            prompt_frames=prompt.shape[1],
            t=prompt.shape[1],
            rng=np.random.default_rng(params.seed),
            audio_channels=d.audio_channels,
            on_step=request.on_step,
        )

    def _prompt_codes(self, request: GenerationRequest) -> np.ndarray:
        """The request's prompt codes, checked ([K, 0] without a prompt)."""
        d = self.dims
        if request.prompt_codes is None:
            return np.zeros((d.num_codebooks, 0), np.int64)
        codes = np.asarray(request.prompt_codes)
        if codes.ndim != 2 or codes.shape[0] != d.num_codebooks or not 1 <= codes.shape[1] < request.frames:
            raise ValueError(
                f"prompt codes must be [{d.num_codebooks}, P] with 1 <= P < frames ({request.frames}), "
                f"got {list(codes.shape)}"
            )
        if codes.min() < 0 or codes.max() >= d.vocab_size:
            raise ValueError(f"prompt codes must be in [0, {d.vocab_size})")
        return codes.astype(np.int64)

    def add(self, gen: Generation) -> None:
        """Join the running batch: at once in the lowest free rows (nothing is copied; RuntimeError when
        full), or, with a prefix or a prompt, from the next step on, prefilled on its own rows."""
        with self._lock:
            if gen.needs_prefill:
                self.pending.append(gen)
            else:
                self.rows.take(gen)

    def cancel(self, gen: Generation) -> None:
        gen.cancelled = True

    def reset(self) -> None:
        """Forget every generation (after a failure the caller has reported to each of them)."""
        with self._lock:
            self.rows.clear()
            self.pending = []

    # -- the loop -------------------------------------------------------------------------------------------
    def step(self) -> list[Generation]:
        """One step: a batched decode step for the seated generations that decode, then one prefill chunk
        for each generation with prefill left (its rows taken at its first chunk: a full cache fails it
        alone). A cancelled generation leaves here, between chunks too, and its rows are free.

        Returns the generations that left (done, failed or cancelled).
        """
        with self._lock:
            if any(not g.prefill_left for g in self.rows.active):
                self._decode()
            left = []
            for gen in list(self.pending):
                if not gen.done and gen.id not in self.rows.start:
                    try:
                        self.rows.take(gen)
                    except RuntimeError as exc:  # no room: this request alone fails
                        gen.error = exc
                if not gen.done:
                    self._prefill_chunk(gen)
                if gen.done or not gen.prefill_left:
                    self.pending.remove(gen)
                    if gen.id not in self.rows.start:  # never seated: it leaves here, not from its rows
                        left.append(gen)
            return left + self.rows.release_done()

    def _decode(self) -> None:
        """Every seated row steps; a generation still prefilling feeds padding at the position its next
        chunk starts at (which that chunk overwrites) and samples nothing."""
        d = self.dims
        rows = self.rows.used
        ids = np.full((rows, d.num_codebooks, 1), d.pad_token_id, np.int64)  # gap rows: padding at position 0
        pos = np.zeros((rows, 1), np.int64)
        for gen in self.rows.active:
            r = self.rows.start[gen.id]
            if gen.prefill_left:
                pos[r : r + gen.rows] = gen.first_position + gen.prefilled
            else:
                ids[r : r + gen.rows, :, 0] = gen.tokens[:, gen.t]
                pos[r : r + gen.rows] = gen.first_position + gen.t
        try:
            logits = self.decoder.run(ids, pos, self.cache, **self.decode_inputs())
        except Exception as exc:  # a failed batched step fails the generations in it, clearly
            err = RuntimeError(f"decoder step failed: {exc}")
            for gen in self.rows.active:
                gen.error = err
            return
        for gen in self.rows.active:
            if not gen.cancelled and not gen.prefill_left:
                gen.advance(logits, self.rows.start[gen.id], d.pad_token_id)

    def _prefill_chunk(self, gen: Generation) -> None:
        """The next at most `prefill_chunk` prefill columns on the generation's own rows, at their cache
        positions (the first chunk from position 0: the prefix, then BOS); after the last chunk, its
        first unknown column is sampled."""
        a = gen.prefilled
        b = min(a + self.prefill_chunk, gen.prompt_frames + 1)
        ids = np.repeat(gen.tokens[None, :, a:b], gen.rows, axis=0)
        first = 0 if a == 0 else gen.first_position + a
        pos = np.tile(np.arange(first, gen.first_position + b, dtype=np.int64), (gen.rows, 1))
        # GroupQueryAttention on CPU takes several new tokens after a past for one row at a time only
        # ("batch_size must be 1 when sequence_length > 1 and past context is given"): later chunks run per row
        parts = [slice(0, gen.rows)] if a == 0 or b - a == 1 else [slice(i, i + 1) for i in range(gen.rows)]
        start, last = self.rows.start[gen.id], []
        try:
            for part in parts:
                inputs = self.prefill_inputs(gen, part)
                logits = self.decoder.run(ids[part], pos[part], self.cache, first_row=start + part.start, **inputs)
                last.append(logits[:, :, -1:])
        except Exception as exc:
            gen.error = RuntimeError(f"prefill failed: {exc}")
            return
        gen.prefilled = b
        if not gen.prefill_left:
            gen.advance(np.concatenate(last), 0, self.dims.pad_token_id)

    # -- whole requests -------------------------------------------------------------------------------------
    def run_together(self, gens) -> None:
        """Add the generations and step until every one of them is done (errors stay on each)."""
        for gen in gens:
            self.add(gen)
        while any(not g.done for g in gens):
            self.step()

    def finish(self, gen: Generation) -> np.ndarray:
        """Run one prepared generation to its end; its codes [K, frames], or its error raised."""
        self.run_together([gen])
        if gen.error is not None:
            raise gen.error
        return gen.codes()

    def generate(self, request: GenerationRequest) -> np.ndarray:
        """codes [K, frames] for one request (runs alongside whatever else is in the batch)."""
        return self.finish(self.prepare(request))
