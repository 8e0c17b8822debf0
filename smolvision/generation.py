"""Token-level generation: sampling options, checked prompts, results and streaming.

Everything here works on token ids and optional image embedding rows: a checked
`Prompt` (the one place the context window is checked against a prompt's exact
length), the options (`SamplingParams`) and outcome (`Result`) of a generation,
and `stream` (any callback-driven run as a generator).  The token loop itself
runs on the model's engine thread (scheduler.py); the text methods add a prompt
before it and text assembly after it (pipeline.py).
"""
from __future__ import annotations

import math
import os
import queue
import secrets
import threading
from dataclasses import dataclass, fields, replace
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from . import errors
from ._files import read_json
from ._native import check, ffi, lib
from .config import Config

__all__ = ["Prompt", "Result", "SamplingParams", "Timings", "check_context", "read_eos_token_ids", "stream"]

#: A per-token callback: return True to stop generating after this id.
TokenCallback = Callable[[int], "bool | None"]

def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token.

    temperature 0 is greedy decoding; otherwise the logits pass, in the order
    transformers' generate uses, repetition penalty, temperature, top-k,
    top-p and min-p before one random draw.  The repetition penalty applies to
    greedy decoding too.
    """

    max_tokens: int = 256
    """The most ids to generate (an EOS id, when produced, is the last and counts)."""
    temperature: float = 0.0
    """0 = greedy; higher flattens the distribution."""
    top_k: int = 0
    """Keep the k most likely ids; 0 = off."""
    top_p: float = 1.0
    """Keep the most likely ids covering this probability mass, in (0, 1]; 1 = off."""
    min_p: float = 0.0
    """Drop ids less likely than min_p times the top one, in [0, 1]; 0 = off."""
    repetition_penalty: float = 1.0
    """> 1 discourages ids already in the prompt or output; 1 = off."""
    seed: int | None = None
    """Seed of the sampler's own PRNG, in [0, 2**64); None draws a fresh one per call."""
    eos_token_ids: tuple[int, ...] | None = None
    """Ids that end generation; None = the model's generation_config.json."""

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> errors.InputError:
            return errors.InputError(f"{name} must be {rule}, not {getattr(self, name)!r}")

        if not _is_int(self.max_tokens) or self.max_tokens < 0:
            raise bad("max_tokens", "an integer >= 0")
        if not _is_real(self.temperature) or not (0 <= self.temperature < math.inf):
            raise bad("temperature", "a finite number >= 0 (0 = greedy)")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise bad("top_k", "an integer >= 0 (0 = off)")
        if not _is_real(self.top_p) or not (0 < self.top_p <= 1):
            raise bad("top_p", "a number in (0, 1] (1 = off)")
        if not _is_real(self.min_p) or not (0 <= self.min_p <= 1):
            raise bad("min_p", "a number in [0, 1] (0 = off)")
        if not _is_real(self.repetition_penalty) or not (0 < self.repetition_penalty < math.inf):
            raise bad("repetition_penalty", "a finite number > 0 (1 = off)")
        if self.seed is not None and (not _is_int(self.seed) or not (0 <= self.seed < 2**64)):
            raise bad("seed", "None or an integer in [0, 2**64)")
        if self.eos_token_ids is not None:
            ids = (self.eos_token_ids,) if _is_int(self.eos_token_ids) else self.eos_token_ids
            try:
                ids = tuple(ids)
            except TypeError:
                raise bad("eos_token_ids", "None or a sequence of integers") from None
            if not all(_is_int(i) and 0 <= i < 2**31 for i in ids):
                raise bad("eos_token_ids", "None or a sequence of non-negative integers")
            object.__setattr__(self, "eos_token_ids", tuple(int(i) for i in ids))

    @classmethod
    def build(cls, params: SamplingParams | None = None, overrides: Mapping[str, object] = {}) -> SamplingParams:
        """`params` (or the defaults) with keyword overrides; unknown names raise InputError."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise errors.InputError(f"unknown sampling option(s) {', '.join(unknown)}; "
                                    f"valid: {', '.join(sorted(names))}")
        if params is not None and not isinstance(params, SamplingParams):
            raise errors.InputError(f"params must be a SamplingParams, not {type(params).__name__}")
        return replace(params or cls(), **overrides)


@dataclass(frozen=True)
class Timings:
    """Where the time of one generation went."""

    prompt_tokens: int
    generated_tokens: int
    prefill_s: float
    """Prompt processing, up to the first id's logits."""
    decode_s: float
    """Everything after: picking ids and running them back through the decoder."""
    image_encode_s: float = 0.0
    """Preprocessing and encoding the prompt's images (0 for id-level calls, and when every image's
    features came from the Model's image cache: nothing was encoded)."""

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.generated_tokens / self.decode_s if self.decode_s > 0 else 0.0


@dataclass(frozen=True)
class Result:
    """The outcome of one generation: Model.generate's answer, or generate_ids' ids (text None)."""

    token_ids: list[int]
    """The generated ids (not the prompt); an EOS id that ended generation is the last."""
    finish_reason: str
    """'stop' (an EOS id or a stop string), 'length' (max_tokens), 'cancelled' (on_token or the stream's
    consumer asked to stop) or, from generate_many, 'error' (see error)."""
    timings: Timings
    text: str | None = None
    """The answer, without special tokens and cut before any stop string; None from generate_ids."""
    cached_tokens: int = 0
    """Prompt tokens not recomputed: the prefix taken from a cached sequence (Model's prefix reuse)."""
    cached_images: int = 0
    """Prompt images (and video frames, each counted) whose features came from the Model's image cache (not
    encoded again)."""
    error: BaseException | None = None
    """Model.generate_many only: what stopped this request (bad input, an exception from its on_token);
    finish_reason is then 'error' and the fields hold what was generated before it."""
    n_tiles: int = 0
    """Image tiles encoded for the prompt (0 for text-only prompts and for generate_ids, whose image rows
    come precomputed)."""

    @property
    def prompt_tokens(self) -> int:
        """The prompt's length in tokens, image tokens included."""
        return self.timings.prompt_tokens


def read_eos_token_ids(model_dir: str) -> tuple[int, ...]:
    """The EOS ids of a model directory: generation_config.json's eos_token_id
    (an int or a list), else config.json's (top level or text_config); () if none.

    The model's shapes come from the C engine's parse of config.json (Model.config); this is the one
    place Python reads config.json itself, for a generation default the engine's sv_config does not carry."""
    def eos_of(path: str, *sections: str):
        data = read_json(path)
        if data is None:
            return None
        for section in sections:
            data = data.get(section) if isinstance(data, dict) else None
        value = data.get("eos_token_id") if isinstance(data, dict) else None
        if value is None:
            return None
        ids = [value] if _is_int(value) else value
        if not isinstance(ids, list) or not all(_is_int(i) and i >= 0 for i in ids):
            raise errors.ModelError(f"{path}: eos_token_id must be an integer or a list of integers, not {value!r}")
        return tuple(ids)

    for path, sections in ((os.path.join(model_dir, "generation_config.json"), ()),
                           (os.path.join(model_dir, "config.json"), ()),
                           (os.path.join(model_dir, "config.json"), ("text_config",))):
        ids = eos_of(path, *sections)
        if ids is not None:
            return ids
    return ()


def check_context(n_tokens: int, max_tokens: int, window: int, images: int = 0) -> None:
    """Refuses a prompt of n_tokens (at least that many, for `images` not yet decoded) that leaves no room
    for max_tokens more in the window of `window` positions (max_position_embeddings)."""
    if n_tokens + max_tokens <= window:
        return
    what = f"{images} images take at least {n_tokens} tokens" if images else f"the prompt is {n_tokens} tokens"
    raise errors.InputError(f"{what}; with max_tokens={max_tokens} that exceeds the {window}-token context window "
                            f"(max_position_embeddings)")


@dataclass(frozen=True)
class Prompt:
    """Checked C-ready inputs: ids int32 [n], image rows float32 [rows, text hidden] for its image tokens."""

    config: Config
    ids: np.ndarray
    image_embeds: np.ndarray | None = None

    @classmethod
    def build(cls, config: Config, input_ids, max_tokens: int | None = None) -> Prompt:
        """Checks the ids against the vocabulary and, given max_tokens, against the context window (before
        anything max_tokens long is allocated, and before any image is encoded for them)."""
        vocab = config.text.vocab_size
        try:
            raw = np.asarray(input_ids)
        except (TypeError, ValueError) as exc:
            raise errors.InputError(f"input_ids must be a 1-D sequence of integers ({exc})") from None
        if raw.ndim != 1 or raw.size == 0 or not (np.issubdtype(raw.dtype, np.integer) or raw.dtype == object):
            raise errors.InputError(f"input_ids must be a non-empty 1-D sequence of integers, "
                                    f"got shape {raw.shape} dtype {raw.dtype}")
        if raw.dtype == object:
            if not all(_is_int(i) for i in raw):
                raise errors.InputError("input_ids must contain only integers")
            bad = next((int(i) for i in raw if not 0 <= int(i) < vocab), None)
        else:
            outside = (raw < 0) | (raw >= vocab)
            bad = int(raw[outside][0]) if outside.any() else None
        if bad is not None:
            raise errors.InputError(f"token id {bad} is outside the vocabulary [0, {vocab})")
        if max_tokens is not None:
            check_context(raw.size, max_tokens, config.text.max_position_embeddings)
        return cls(config, np.ascontiguousarray(raw, dtype=np.int32))

    def with_image_embeds(self, image_embeds) -> Prompt:
        """This prompt with the rows for its image tokens (None: it must have none), one row per token."""
        embeds = None
        if image_embeds is not None:
            try:
                embeds = np.ascontiguousarray(image_embeds, dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise errors.InputError(f"image_embeds must be a float array ({exc})") from None
            hidden = self.config.text.hidden_size
            if embeds.ndim != 2 or embeds.shape[1] != hidden:
                raise errors.InputError(f"image_embeds must have shape [rows, {hidden}], got {embeds.shape}")
            if not np.isfinite(embeds).all():
                raise errors.InputError("image_embeds contains NaN or infinite values")
        image_token_id = self.config.image_token_id
        n_image_tokens = int(np.count_nonzero(self.ids == image_token_id))
        n_rows = 0 if embeds is None else embeds.shape[0]
        if n_image_tokens != n_rows:
            raise errors.InputError(f"the prompt has {n_image_tokens} image tokens (id {image_token_id}) "
                                    f"but {n_rows} image embedding rows were given; they must match one to one")
        return replace(self, image_embeds=embeds)

    def c_args(self, start: int = 0, end: int | None = None) -> tuple:
        """(ids pointer, n, image pointer, rows) for the C calls, of the ids from `start` to `end` (and the
        rows of their image tokens); the arrays must outlive the call."""
        ids = self.ids[start:end]
        if self.image_embeds is None:
            return ffi.from_buffer("int32_t[]", ids), len(ids), ffi.NULL, 0
        image = self.config.image_token_id
        first_row = int(np.count_nonzero(self.ids[:start] == image))
        rows = self.image_embeds[first_row:first_row + int(np.count_nonzero(ids == image))]
        return ffi.from_buffer("int32_t[]", ids), len(ids), ffi.from_buffer("float[]", rows), len(rows)


def logits(handle, vocab_size: int, prompt: Prompt) -> np.ndarray:
    """float32 [vocab] logits after the prompt's last position (the caller holds the model lock)."""
    out = np.empty(vocab_size, dtype=np.float32)
    check(lib.sv_logits(handle, *prompt.c_args(), ffi.from_buffer("float[]", out)), errors.GenerationError)
    return out


def c_sampling(params: SamplingParams, eos_token_ids: Sequence[int]) -> tuple:
    """(sv_sampling *, its eos array) for params; a None seed draws a fresh one.  Keep both alive."""
    eos = ffi.new("int32_t[]", list(eos_token_ids) or [0])
    s = ffi.new("sv_sampling *")
    s.temperature = params.temperature
    s.top_k = params.top_k
    s.top_p = params.top_p
    s.min_p = params.min_p
    s.repetition_penalty = params.repetition_penalty
    s.seed = secrets.randbits(64) if params.seed is None else params.seed
    s.max_tokens = params.max_tokens
    s.eos_ids = eos
    s.n_eos_ids = len(eos_token_ids)
    return s, eos


class _Finished:
    def __init__(self, result: Result | None = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error


def stream(run: Callable[[Callable, threading.Event], Result]) -> Iterator:
    """Yields what `run(on_item, cancel)` hands its callback (ids, or text pieces), run on a worker thread.

    Closing the generator early (break, close(), garbage collection, an
    exception in the consumer) sets `cancel`, which stops the run at its next
    id, and waits for the worker.  The generator's return value is run's
    Result; errors of the run are raised in the consumer."""
    items: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    def on_item(item) -> bool:
        items.put(item)
        return stop.is_set()

    def work() -> None:
        try:
            items.put(_Finished(result=run(on_item, stop)))
        except BaseException as exc:
            items.put(_Finished(error=exc))

    worker = threading.Thread(target=work, name="smolvision-generate", daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if isinstance(item, _Finished):
                if item.error is not None:
                    raise item.error
                return item.result
            yield item
    finally:
        stop.set()
        worker.join()
