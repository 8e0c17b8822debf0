"""Model.generate_many: several requests decoded together, one pass over the weights per step.

Each request is prepared as generate() prepares it (template, ids, images through the image cache),
prefilled on its own sequence (continuing a cached prefix where one matches), and then every running
request advances by one token per sv_decode_batch call, at most `max_sequences` at a time (the others
wait and start as running ones finish).  Each keeps its own sampler (sv_token_sampler: the same
choices as sv_generate's loop), stop strings, max_tokens and on_token.  A request that fails (bad
input, an exception from its on_token) ends with finish_reason 'error' and its `error`; the others go
on untouched, so no work is lost.  Ctrl-C (KeyboardInterrupt) stops the whole call.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from . import errors, generation
from ._native import check, ffi, lib
from .generation import Result, Timings
from .pipeline import TextAssembler

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model, _Request


class _Slot:
    """One request in flight: its sequence, sampler, text and what it generated."""

    def __init__(self, index: int, request: _Request, on_token) -> None:
        self.index, self.request = index, request
        self.text: TextAssembler | None = None
        self.on_token = on_token
        self.sampler = None
        self.seq = None
        self.key: np.ndarray | None = None
        self.start = 0
        self.ids: list[int] = []
        self.finish_reason = "length"
        self.error: BaseException | None = None
        self.prefill_s = self.decode_s = 0.0
        self.eos = frozenset(request.params.eos_token_ids or ())

    def take(self, logits: np.ndarray) -> bool:
        """Picks the next id from this request's logits row; True while it should go on."""
        token = int(lib.sv_token_sampler_pick(self.sampler, ffi.from_buffer("float[]", logits)))
        self.ids.append(token)
        try:
            if self.text.on_id(token):
                self.finish_reason = "cancelled"
                return False
        except Exception as exc:  # this request's callback failed: it alone ends
            self.error = exc
            return False
        if token in self.eos:
            self.finish_reason = "stop"
            return False
        return len(self.ids) < self.request.params.max_tokens


def _failed(exc: BaseException) -> Result:
    return Result(token_ids=[], finish_reason="error", timings=Timings(0, 0, 0.0, 0.0), text="", error=exc)


def generate_many(model: Model, requests: Sequence[Mapping[str, Any]]) -> list[Result]:
    """See Model.generate_many."""
    if isinstance(requests, Mapping) or not isinstance(requests, Sequence):
        raise errors.InputError("requests must be a list of dicts of generate()'s keyword arguments")
    results: list[Result | None] = [None] * len(requests)
    slots: list[_Slot] = []
    for index, options in enumerate(requests):
        try:
            if not isinstance(options, Mapping):
                raise errors.InputError(f"request {index} must be a dict of generate()'s keyword arguments, "
                                        f"not {type(options).__name__}")
            options = dict(options)
            on_token = options.pop("on_token", None)
            slots.append(_Slot(index, model._prepare(**options), on_token))
        except Exception as exc:  # TypeError for an unknown argument included: this request only
            results[index] = _failed(exc)
    vocab = model.config.text.vocab_size
    with model._lock:
        handle = model._ptr
        outer, model._in_callback_call = model._in_callback_call, True
        pending, running = deque(slots), []
        try:
            while pending or running:
                while pending and len(running) < model.max_sequences:
                    slot = pending.popleft()
                    if _start(model, handle, slot, vocab):
                        running.append(slot)
                    else:
                        results[slot.index] = _finish(model, slot)
                if not running:
                    continue
                logits = np.empty((len(running), vocab), dtype=np.float32)
                handles = ffi.new("sv_seq *[]", [slot.seq._ptr for slot in running])
                ids = np.array([slot.ids[-1] for slot in running], dtype=np.int32)
                began = time.perf_counter()
                status = lib.sv_decode_batch(handle, handles, len(running), ffi.from_buffer("int32_t[]", ids),
                                             ffi.from_buffer("float[]", logits))
                spent = time.perf_counter() - began
                still = []
                for row, slot in enumerate(running):
                    slot.decode_s += spent
                    if status != lib.SV_OK:
                        slot.error = _error_of(status)
                    elif slot.take(logits[row]):
                        still.append(slot)
                        continue
                    results[slot.index] = _finish(model, slot)
                running = still
        finally:
            for slot in slots:
                _release(model, slot)
            model._in_callback_call = outer
    return results


def _error_of(status: int) -> BaseException:
    try:
        check(status, errors.GenerationError)
    except errors.Error as exc:
        return exc
    return errors.GenerationError(f"status {status}")


def _start(model: Model, handle, slot: _Slot, vocab: int) -> bool:
    """Sampler, sequence (a cached prefix where one matches), prefill and the first id; True if the
    request goes on decoding."""
    request = slot.request
    slot.text = TextAssembler(model.tokenizer, request.stop, slot.on_token)
    try:
        s, _eos = generation.c_sampling(request.params, ())
        out = ffi.new("sv_token_sampler **")
        check(lib.sv_token_sampler_create(s, vocab, out))
        slot.sampler = out[0]
        prompt = request.prompt
        slot.seq, slot.start, slot.key = model._take_sequence(prompt)
        lib.sv_token_sampler_observe(slot.sampler, ffi.from_buffer("int32_t[]", prompt.ids), len(prompt.ids))
        if request.params.max_tokens == 0:
            return False
        logits = np.empty(vocab, dtype=np.float32)
        began = time.perf_counter()
        check(lib.sv_seq_prefill(handle, slot.seq._ptr, *prompt.c_args(slot.start), ffi.from_buffer("float[]", logits)),
              errors.GenerationError)
        slot.prefill_s = time.perf_counter() - began
    except errors.Error as exc:
        slot.error = exc
        return False
    return slot.take(logits)


def _finish(model: Model, slot: _Slot) -> Result:
    request = slot.request
    timings = Timings(prompt_tokens=len(request.prompt.ids), generated_tokens=len(slot.ids),
                      prefill_s=slot.prefill_s, decode_s=slot.decode_s)
    result = Result(token_ids=slot.ids, finish_reason=slot.finish_reason, timings=timings,
                    cached_tokens=slot.start, cached_images=request.cached_images)
    if slot.error is not None:
        slot.text.on_text = None  # its callback failed (or the engine did): hand it nothing more
    result = slot.text.finish(result, n_tiles=request.n_tiles, image_encode_s=request.encode_s)
    if slot.error is not None:
        result = replace(result, finish_reason="error", error=slot.error)
    _release(model, slot)
    return result


def _release(model: Model, slot: _Slot) -> None:
    """Gives the slot's sequence back to the model's cache and frees its sampler (once)."""
    if slot.sampler is not None:
        lib.sv_token_sampler_free(slot.sampler)
        slot.sampler = None
    if slot.seq is not None:
        model._release_sequence(slot.seq, slot.key)
        slot.seq = None
