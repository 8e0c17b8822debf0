"""The Model's scheduler: one engine thread computes every generation of a Model, and the running ones
decode together (continuous batching).

Calls from any thread (generate, stream, generate_ids, generate_many, the server's requests) submit a
`_Call` and wait for its ids.  The engine thread admits up to `max_sequences` calls at a time (later
ones wait in arrival order) and loops:

1. end the calls whose caller stopped them (waiting ones too), giving their sequences back to the model's
   prefix cache;
2. read one chunk of the prompt of the oldest call still reading its prompt;
3. advance every call past its prompt by one id, all of them in one sv_decode_batch: one pass over
   the weights for the whole batch, each row attending to its own sequence.

So a new prompt waits for at most one chunk of another before its own first pass, and answers keep
coming while a long prompt is read.  The thread exists only while there is work: it ends when the last
call ends and the next submission starts a new one.

What each caller asked for stays on its own thread.  The engine only computes ids (each call's own
sampler, EOS ids and max_tokens) and queues them; the caller turns them into text, applies stop strings,
runs on_token, and sets its call's stop flag to end it (a stop string, on_token returning True, an
exception there, Ctrl-C, a closed stream, a cancel event).  The engine ends a stopped call at its next
step and the caller returns once it has, so a call's sequence is back in the cache when it returns.  One
call's stop or error never touches another's sequence or ids.

Prompts are read in the equal chunks sv_generate and sv_seq_prefill use (SV_PREFILL_CHUNK), so a
prompt's numbers do not depend on what else runs; the rows of a decode step share each matmul, which
may reorder its sums (fp32 logits within 1e-4 relative of a lone call's).
"""
from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from . import errors, generation
from ._native import check, ffi, lib
from .generation import Prompt, SamplingParams, TokenCallback

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model
    from .sequence import Sequence


class Stats(NamedTuple):
    """What a Model's engine is doing and has done (Model.scheduler_stats())."""

    running: int
    """Calls being computed now (at most max_sequences)."""
    waiting: int
    """Calls waiting for a place."""
    decode_steps: int
    """Decode steps so far: passes over the weights that advanced the running calls by a token each."""
    decode_rows: int
    """Tokens those steps produced: decode_rows / decode_steps is the mean batch width."""


@dataclass(frozen=True)
class Ended:
    """The engine's last event for a call: why it ended and what it cost."""

    finish_reason: str
    """'stop' (an EOS id), 'length' (max_tokens), 'cancelled' (its caller stopped it) or 'error'."""
    error: BaseException | None
    prefill_s: float
    decode_s: float
    cached_tokens: int
    """Prompt tokens taken from a cached sequence instead of computed."""


class Call:
    """One generation on the engine: its prompt, sampling and, while it runs, its sequence and sampler.

    The engine thread alone touches the fields below `stop`; the caller reads `events`, where the engine
    puts (tag, id) for each generated id and (tag, Ended) last."""

    def __init__(self, prompt: Prompt, params: SamplingParams, eos: tuple[int, ...], events: queue.SimpleQueue,
                 tag: int = 0, cancel: threading.Event | None = None) -> None:
        self.prompt, self.params, self.eos = prompt, params, frozenset(eos)
        self.events, self.tag = events, tag
        self.stop = threading.Event()
        """Set by the caller: end this call at the engine's next step."""
        self.cancel = cancel
        """The caller's own cancel switch (e.g. a server request's), checked as `stop` is."""
        self.finished = threading.Event()
        """Set by the engine once the call has ended and its sequence is back (after its Ended event)."""
        self.seq: Sequence | None = None
        self.key: np.ndarray | None = None
        self.sampler = None
        self.started = self.ended = False
        self.cached = 0  # prompt tokens the sequence held when taken from the cache
        self.done = 0  # prompt tokens computed (cached ones included)
        self.chunk = 0  # tokens per prompt chunk
        self.generated = 0
        self.last = -1  # the last id, fed back at the next decode step
        self.prefill_s = 0.0
        self.decode_from = 0.0

    @property
    def stopped(self) -> bool:
        return self.stop.is_set() or (self.cancel is not None and self.cancel.is_set())

    @property
    def reading(self) -> bool:
        """Still computing its prompt."""
        return self.done < len(self.prompt.ids)


class Scheduler:
    """Runs a Model's generations on one engine thread, decoding up to `max_sequences` of them together."""

    def __init__(self, model: Model, max_sequences: int) -> None:
        # A weak reference: the engine thread holds the model only while it runs, so a dropped Model is
        # freed at once, as its other parts are.
        self._model_ref = weakref.ref(model)
        self.max_sequences = max_sequences
        self._cond = threading.Condition()
        self._pending: deque[Call] = deque()
        self._running = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._callers = 0  # threads inside caller()
        self._local = threading.local()
        self._decode_steps = self._decode_rows = 0

    @property
    def running(self) -> int:
        """Calls the engine is computing now."""
        return self._running

    @property
    def waiting(self) -> int:
        """Calls waiting for one of the max_sequences places."""
        return len(self._pending)

    def stats(self) -> Stats:
        return Stats(self._running, len(self._pending), self._decode_steps, self._decode_rows)

    def in_callback(self) -> bool:
        """True on a thread inside one of this model's generations now: its callbacks (on_token, the last
        text piece included) run there, and close() from there would wait for itself."""
        return getattr(self._local, "in_callback", False) or getattr(self._local, "depth", 0) > 0

    # ---- the caller's side ----

    def submit(self, call: Call) -> None:
        with self._cond:
            if self._closed:
                raise errors.Error("this Model is closed")
            if self._thread is None:
                model = self._model_ref()
                if model is None:
                    raise errors.Error("this Model is gone")
                self._start_engine(model)
            self._pending.append(call)

    def _start_engine(self, model: Model) -> None:
        """Starts the engine thread (the caller holds self._cond)."""
        self._thread = threading.Thread(target=self._engine, args=(model,), name="smolvision-engine", daemon=True)
        self._thread.start()

    def collect(self, events: queue.SimpleQueue, calls: list[Call],
                on_ids: list[TokenCallback | None]) -> list[tuple[list[int], Ended, bool, Exception | None]]:
        """Waits for submitted calls to end, handing each id to its on_id (on this thread).  Per call:
        (its ids, the engine's Ended, whether its caller stopped it, the exception its on_id raised).

        A call's ids end at the one after which its on_id returned True or raised (later ones, computed
        before the engine saw the stop, are dropped).  A BaseException on this thread (Ctrl-C) stops every
        call, waits until the engine has ended them all, and propagates."""
        ids: list[list[int]] = [[] for _ in calls]
        ended: list[Ended | None] = [None] * len(calls)
        stopped = [False] * len(calls)
        raised: list[Exception | None] = [None] * len(calls)
        left = len(calls)
        try:
            while left:
                tag, item = events.get()
                if isinstance(item, Ended):
                    ended[tag] = item
                    left -= 1
                    continue
                call = calls[tag]
                if stopped[tag]:
                    continue
                if call.stopped:  # a cancel switch set from elsewhere
                    stopped[tag] = True
                    continue
                ids[tag].append(item)
                on_id = on_ids[tag]
                if on_id is None:
                    continue
                self._local.in_callback = True
                try:
                    stop = on_id(item)
                except Exception as exc:  # this call's callback failed: it alone ends
                    stop, raised[tag] = True, exc
                finally:
                    self._local.in_callback = False
                if stop:
                    stopped[tag] = True
                    call.stop.set()
        except BaseException:
            for call in calls:
                call.stop.set()
            # Not by counting Ended events: Ctrl-C landing just after get() returned one loses it.
            for call in calls:
                call.finished.wait()
            raise
        for tag, end in enumerate(ended):
            if end.finish_reason == "cancelled":  # by a cancel switch before it computed an id
                stopped[tag] = True
        return [(ids[i], ended[i], stopped[i], raised[i]) for i in range(len(calls))]

    @contextlib.contextmanager
    def caller(self) -> Iterator[None]:
        """A caller's whole use of the model around its calls, turning ids into text included (the tokenizer
        is the model's): close() waits for it to end.  Refused once the model is closing."""
        with self._cond:
            if self._closed:
                raise errors.Error("this Model is closed")
            self._callers += 1
        self._local.depth = getattr(self._local, "depth", 0) + 1
        try:
            yield
        finally:
            self._local.depth -= 1
            with self._cond:
                self._callers -= 1
                self._cond.notify_all()

    def close(self) -> None:
        """Refuses new calls and waits until the engine has ended the admitted ones and their callers are
        done with them."""
        with self._cond:
            self._closed = True
            while self._thread is not None or self._callers:
                self._cond.wait()

    # ---- the engine thread ----

    def _engine(self, model: Model) -> None:
        active: list[Call] = []
        dropped: list[Call] = []
        try:
            while True:
                with self._cond:
                    # A call stopped while it waits for a place ends now, not after someone else's answer.
                    dropped = [call for call in self._pending if call.stopped]
                    for call in dropped:
                        self._pending.remove(call)
                    while self._pending and len(active) < self.max_sequences:
                        active.append(self._pending.popleft())
                    self._running = len(active)
                    if not active and not dropped:
                        self._thread = None
                        self._cond.notify_all()
                        return
                for call in dropped:
                    self._end(model, call, "cancelled")
                if active:
                    active = self._step(model, active)
        except BaseException as exc:  # a bug here must not leave a caller waiting forever
            with self._cond:
                active += dropped + list(self._pending)
                self._pending.clear()
            for call in active:
                try:
                    self._end(model, call, "error", exc)
                except BaseException:  # its Ended is out (_end's finally); the others need theirs
                    pass
            # Only now: close() returns (and frees the model) once the thread is gone, and calls
            # submitted meanwhile get a fresh engine.
            with self._cond:
                self._running = 0
                self._thread = None
                if self._pending:
                    self._start_engine(model)
                self._cond.notify_all()

    def _step(self, model: Model, active: list[Call]) -> list[Call]:
        """One round: starts new calls, ends stopped ones, one prompt chunk, one decode step; returns the
        calls still running."""
        for call in active:
            if call.stopped:
                self._end(model, call, "cancelled")
            elif not call.started:
                self._start(model, call)
        active = [call for call in active if not call.ended]
        reading = next((call for call in active if call.reading), None)
        if reading is not None:
            self._read_chunk(model, reading)
        decoding = [call for call in active if not call.ended and not call.reading and not call.stopped]
        if decoding:
            self._decode(model, decoding)
        return [call for call in active if not call.ended]

    def _start(self, model: Model, call: Call) -> None:
        """The call's sequence (continuing the cached one sharing its longest prefix), its sampler, and
        the chunks its prompt is read in."""
        call.started = True
        prompt, params = call.prompt, call.params
        try:
            s, _eos = generation.c_sampling(params, ())
            out = ffi.new("sv_token_sampler **")
            check(lib.sv_token_sampler_create(s, model.config.text.vocab_size, out))
            call.sampler = out[0]
            lib.sv_token_sampler_observe(call.sampler, ffi.from_buffer("int32_t[]", prompt.ids), len(prompt.ids))
            with model._lock:
                call.seq, call.cached, call.key = model._take_sequence(prompt)
                # Every position the call can need, now: it fails here rather than midway, and never
                # reallocates while decoding (the last id is never fed back).
                call.seq.reserve(len(prompt.ids) + max(params.max_tokens - 1, 0))
        except errors.Error as exc:
            self._end(model, call, "error", exc)
            return
        call.done = call.cached
        rest = len(prompt.ids) - call.cached
        chunks = math.ceil(rest / lib.SV_PREFILL_CHUNK)
        call.chunk = math.ceil(rest / chunks)
        if params.max_tokens == 0:
            self._end(model, call, "length")

    def _read_chunk(self, model: Model, call: Call) -> None:
        n = min(call.chunk, len(call.prompt.ids) - call.done)
        logits = np.empty(model.config.text.vocab_size, dtype=np.float32)
        began = time.perf_counter()
        with model._lock:
            status = lib.sv_seq_prefill(model._ptr, call.seq._ptr, *call.prompt.c_args(call.done, call.done + n),
                                        ffi.from_buffer("float[]", logits))
        call.prefill_s += time.perf_counter() - began
        if status != lib.SV_OK:
            self._end(model, call, "error", _error_of(status))
            return
        call.done += n
        if not call.reading:
            call.decode_from = time.perf_counter()
            self._take(model, call, logits)

    def _decode(self, model: Model, calls: list[Call]) -> None:
        logits = np.empty((len(calls), model.config.text.vocab_size), dtype=np.float32)
        handles = ffi.new("sv_seq *[]", [call.seq._ptr for call in calls])
        ids = np.array([call.last for call in calls], dtype=np.int32)
        with model._lock:
            status = lib.sv_decode_batch(model._ptr, handles, len(calls), ffi.from_buffer("int32_t[]", ids),
                                         ffi.from_buffer("float[]", logits))
        self._decode_steps += 1
        self._decode_rows += len(calls)
        for row, call in enumerate(calls):
            if status != lib.SV_OK:
                self._end(model, call, "error", _error_of(status))
            else:
                self._take(model, call, logits[row])

    def _take(self, model: Model, call: Call, logits: np.ndarray) -> None:
        """Picks the call's next id from its logits row and hands it to the caller; ends the call on an
        EOS id or at max_tokens."""
        token = int(lib.sv_token_sampler_pick(call.sampler, ffi.from_buffer("float[]", logits)))
        call.generated += 1
        call.last = token
        call.events.put((call.tag, token))
        if token in call.eos:
            self._end(model, call, "stop")
        elif call.generated >= call.params.max_tokens:
            self._end(model, call, "length")

    def _end(self, model: Model, call: Call, reason: str, error: BaseException | None = None) -> None:
        """Frees the call's sampler, gives its sequence back to the model's cache and tells the caller (once)."""
        if call.ended:
            return
        call.ended = True
        try:
            if call.sampler is not None:
                lib.sv_token_sampler_free(call.sampler)
                call.sampler = None
            if call.seq is not None:
                with model._lock:
                    model._release_sequence(call.seq, call.key)
                call.seq = None
        finally:
            decode_s = time.perf_counter() - call.decode_from if call.decode_from else 0.0
            call.events.put((call.tag, Ended(reason, error, call.prefill_s, decode_s, call.cached)))
            call.finished.set()


def _error_of(status: int) -> BaseException:
    try:
        check(status, errors.GenerationError)
    except errors.Error as exc:
        return exc
    return errors.GenerationError(f"status {status}")


def result_of(prompt: Prompt, ids: list[int], ended: Ended, stopped: bool) -> generation.Result:
    """The id-level Result of a collected call (text None): a call its caller stopped is 'cancelled'."""
    timings = generation.Timings(prompt_tokens=len(prompt.ids), generated_tokens=len(ids),
                                 prefill_s=ended.prefill_s, decode_s=ended.decode_s)
    return generation.Result(token_ids=ids, finish_reason="cancelled" if stopped else ended.finish_reason,
                             timings=timings, cached_tokens=ended.cached_tokens)
