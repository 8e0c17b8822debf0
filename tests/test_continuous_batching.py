"""Continuous batching: calls to one Model from several threads decode together on its engine thread
(scheduler.py), and each still gets exactly the answer it would get alone (precision fp32), with its own
sampling settings, stop strings, cancellation and errors.

The tests hold the engine at its first step until their threads have all submitted, in order, so the
batches they look at are the same on every run; wrappers on the scheduler's steps record what each step
computed.
"""
from __future__ import annotations

import math
import queue
import threading
import time

import pytest

import smolvision
from helpers import write_image
from smolvision._native import lib
from smolvision.generation import Prompt, SamplingParams
from smolvision.scheduler import Call, Ended

QUESTIONS = ["Describe the picture.", "What is the weather like today in the old harbour town?",
             "Count to five.", "Write a haiku about lighthouses and the sea at night, please."]


@pytest.fixture(scope="module")
def alone(gqa_dir):
    with smolvision.load(gqa_dir, threads=2, precision="fp32", cache_bytes=0) as model:
        yield model


class Recorded:
    """A model whose engine waits at its first step until `gate` is set and logs its steps: ("decode",
    rows) for each decode step, ("chunk", prompt tokens) for each prompt chunk, in engine order."""

    def __init__(self, gqa_dir, max_sequences: int = 4) -> None:
        self.model = smolvision.load(gqa_dir, threads=2, precision="fp32", cache_bytes=0,
                                     max_sequences=max_sequences)
        self.gate = threading.Event()
        self.log: list[tuple[str, int]] = []
        engine = self.model._scheduler
        start, decode, read_chunk = engine._start, engine._decode, engine._read_chunk

        def gated_start(m, call):
            self.gate.wait()
            return start(m, call)

        def recording_decode(m, calls):
            self.log.append(("decode", len(calls)))
            return decode(m, calls)

        def recording_chunk(m, call):
            self.log.append(("chunk", len(call.prompt.ids)))
            return read_chunk(m, call)

        engine._start, engine._decode, engine._read_chunk = gated_start, recording_decode, recording_chunk

    @property
    def widths(self) -> list[int]:
        return [n for kind, n in self.log if kind == "decode"]

    def run(self, calls) -> list:
        """Runs each callable on its own thread, submitted in order before the engine's first step;
        returns their results or the exceptions they raised."""
        outcomes: list = [None] * len(calls)
        engine = self.model._scheduler

        def wrap(i, fn):
            try:
                outcomes[i] = fn()
            except BaseException as exc:  # KeyboardInterrupt included: the test looks at it
                outcomes[i] = exc

        threads = [threading.Thread(target=wrap, args=(i, fn)) for i, fn in enumerate(calls)]
        deadline = time.monotonic() + 120
        for n, t in enumerate(threads, start=1):
            t.start()
            while engine.waiting + engine.running < n:
                assert time.monotonic() < deadline, "the calls never reached the scheduler"
                time.sleep(0.002)
        self.gate.set()
        for t in threads:
            t.join(timeout=300)
            assert not t.is_alive(), "a thread hung"
        return outcomes


def test_threads_decode_together_with_their_own_settings(gqa_dir, alone):
    greedy = alone.generate(QUESTIONS[1], max_tokens=12)
    stop = greedy.text[len(greedy.text) // 2:][:3]
    assert stop and stop in greedy.text
    # The stop string's call comes last: its first decode step, with all four, happens before its caller
    # can have seen the stop (the steps after depend on when that caller looks).
    requests = [dict(prompt=QUESTIONS[2], max_tokens=9, temperature=0.9, top_k=30, top_p=0.9, seed=11),
                dict(prompt=QUESTIONS[3], max_tokens=7, temperature=1.3, min_p=0.05, repetition_penalty=1.3, seed=3),
                dict(prompt=QUESTIONS[0], max_tokens=10),
                dict(prompt=QUESTIONS[1], max_tokens=12, stop=[stop])]
    engine = Recorded(gqa_dir)
    with engine.model as model:
        results = engine.run([lambda r=r: model.generate(**r) for r in requests])
    assert max(engine.widths) == 4, engine.log  # the four decoded in one pass over the weights
    assert results[3].text == greedy.text[:greedy.text.index(stop)] and results[3].finish_reason == "stop"
    for request, result in zip(requests, results):
        expected = alone.generate(**request)
        assert (result.token_ids, result.text, result.finish_reason) == \
            (expected.token_ids, expected.text, expected.finish_reason)


def test_cancelling_or_failing_one_of_four_leaves_the_others_alone(gqa_dir, alone):
    seen: list[str] = []

    def cancel_after_two(piece: str) -> bool:
        seen.append(piece)
        return len(seen) >= 2

    def explode(piece: str) -> None:
        raise RuntimeError("callback failed")

    def interrupt(piece: str) -> None:  # what Ctrl-C looks like to the thread running the callback
        raise KeyboardInterrupt

    requests = [dict(prompt=q, max_tokens=10) for q in QUESTIONS]
    callbacks = [cancel_after_two, None, explode, interrupt]
    engine = Recorded(gqa_dir)
    with engine.model as model:
        outcomes = engine.run([lambda r=r, c=c: model.generate(**r, on_token=c) for r, c in zip(requests, callbacks)])
        assert model._scheduler.running == 0 and model._scheduler.waiting == 0
        assert model.generate(QUESTIONS[1], max_tokens=10).token_ids == outcomes[1].token_ids  # still usable
    assert max(engine.widths) >= 2, engine.log  # the third call's first step carries the second's too
    assert outcomes[0].finish_reason == "cancelled" and outcomes[0].text == "".join(seen) and len(seen) == 2
    assert outcomes[0].token_ids == alone.generate(**requests[0]).token_ids[:len(outcomes[0].token_ids)]
    assert outcomes[1].token_ids == alone.generate(**requests[1]).token_ids
    assert isinstance(outcomes[2], RuntimeError) and isinstance(outcomes[3], KeyboardInterrupt)


def test_max_sequences_bounds_the_batch_and_the_rest_wait(gqa_dir, alone):
    requests = [dict(prompt=q, max_tokens=6 + i) for i, q in enumerate(QUESTIONS)]
    engine = Recorded(gqa_dir, max_sequences=2)
    with engine.model as model:
        results = engine.run([lambda r=r: model.generate(**r) for r in requests])
    assert max(engine.widths) == 2, engine.log
    for request, result in zip(requests, results):
        assert result.token_ids == alone.generate(**request).token_ids


def test_a_long_prompt_is_read_in_chunks_between_decode_steps(gqa_dir, alone, tmp_path):
    photo = write_image(tmp_path / "photo.png", seed=4)
    long_prompt = "Here is a long story about lighthouses. " * 320  # over two chunks (SV_PREFILL_CHUNK)
    requests = [dict(prompt=QUESTIONS[1], max_tokens=40), dict(prompt=long_prompt, images=[photo], max_tokens=5)]
    engine = Recorded(gqa_dir)
    with engine.model as model:
        results = engine.run([lambda r=r: model.generate(**r) for r in requests])
    log = engine.log
    long_tokens = results[1].prompt_tokens
    assert long_tokens > 2 * lib.SV_PREFILL_CHUNK
    chunks = [i for i, (kind, n) in enumerate(log) if kind == "chunk" and n == long_tokens]
    assert len(chunks) == math.ceil(long_tokens / lib.SV_PREFILL_CHUNK), log  # chunks of at most SV_PREFILL_CHUNK
    # The first call kept decoding between the long prompt's chunks.
    assert all(("decode", 1) in log[a + 1:b] for a, b in zip(chunks, chunks[1:])), log
    for request, result in zip(requests, results):
        expected = alone.generate(**request)
        assert (result.token_ids, result.text) == (expected.token_ids, expected.text)


def test_a_cancel_event_stops_a_call_from_another_thread(gqa_dir):
    with smolvision.load(gqa_dir, threads=2, precision="fp32") as model:
        cancel = threading.Event()
        pieces: list[str] = []

        def on_token(piece: str) -> None:
            pieces.append(piece)
            if len(pieces) == 2:
                cancel.set()  # as another thread would: the call stops after its next id at most

        result = model.generate(QUESTIONS[3], max_tokens=200, on_token=on_token, cancel=cancel)
        assert result.finish_reason == "cancelled" and len(result.token_ids) < 200
        ready = threading.Event()
        ready.set()
        before = model.generate(QUESTIONS[3], max_tokens=200, cancel=ready)  # set before it starts
        assert before.finish_reason == "cancelled" and before.token_ids == []
        with pytest.raises(smolvision.InputError, match="cancel"):
            model.stream(QUESTIONS[0], cancel=ready)


class LosesFirstEnd:
    """The engine's event queue, except that the first Ended taken from it is lost to a KeyboardInterrupt:
    what Ctrl-C does when it lands just after SimpleQueue.get() returned that event (the interpreter checks
    for signals as the call returns, and the returned item is dropped)."""

    def __init__(self) -> None:
        self.inner = queue.SimpleQueue()
        self.lost = False

    def put(self, item) -> None:
        self.inner.put(item)

    def get(self):
        item = self.inner.get()
        if isinstance(item[1], Ended) and not self.lost:
            self.lost = True
            raise KeyboardInterrupt
        return item


def test_ctrl_c_just_after_a_call_ended_does_not_hang(gqa_dir):
    with smolvision.load(gqa_dir, threads=2, precision="fp32") as model:
        engine, config = model._scheduler, model.config
        events = LosesFirstEnd()
        ids = model.tokenizer.encode(QUESTIONS[1])
        eos = ()  # nothing ends the long one but its max_tokens or its stop flag
        short = Call(Prompt.build(config, ids), SamplingParams(max_tokens=1), eos, events, 0)  # ends first
        long = Call(Prompt.build(config, ids), SamplingParams(max_tokens=4000), eos, events, 1)
        outcome: list = []

        def collect():
            try:
                engine.collect(events, [short, long], [None, None])
            except KeyboardInterrupt as exc:
                outcome.append(exc)

        engine.submit(short)
        engine.submit(long)
        thread = threading.Thread(target=collect, daemon=True)
        thread.start()
        thread.join(timeout=120)
        assert not thread.is_alive(), "collect() waited for an Ended it had already taken"
        assert events.lost and len(outcome) == 1
        assert long.generated < 4000  # stopped by the interrupt, not run to its end
        assert engine.running == 0 and engine.waiting == 0
        assert model.generate(QUESTIONS[0], max_tokens=3).token_ids  # still usable


def test_a_call_stopped_while_waiting_for_a_place_ends_at_once(gqa_dir):
    # max_sequences=1 and a first call that runs until the second has returned: the second, cancelled
    # while it waits for the place, must not wait for the first to end (Ctrl-C on a waiting call, or a
    # server request whose client left, would otherwise wait for someone else's whole answer).
    with smolvision.load(gqa_dir, threads=2, precision="fp32", cache_bytes=0, max_sequences=1) as model:
        ids = model.tokenizer.encode(QUESTIONS[1])
        running, second_done = threading.Event(), threading.Event()

        def first_on_token(token_id: int) -> bool:
            running.set()
            return second_done.is_set()

        outcomes: dict = {}

        def first():
            outcomes["first"] = model.generate_ids(ids, max_tokens=3000, eos_token_ids=(), on_token=first_on_token)

        thread = threading.Thread(target=first)
        thread.start()
        assert running.wait(timeout=120)
        cancel = threading.Event()
        cancel.set()
        try:
            outcomes["second"] = model.generate(QUESTIONS[0], max_tokens=5, cancel=cancel)
        finally:
            second_done.set()
            thread.join(timeout=300)
        assert outcomes["second"].finish_reason == "cancelled" and outcomes["second"].token_ids == []
        assert outcomes["first"].finish_reason == "cancelled", "the waiting call waited for the running one"


def test_an_exception_in_the_engine_thread_ends_every_call_with_it(gqa_dir, alone):
    # An engine bug whose clean-up fails too (here: the decode step and then giving each sequence back
    # raise): every caller gets the error, none waits forever, and the next call starts a fresh engine.
    engine = Recorded(gqa_dir, max_sequences=2)
    scheduler = engine.model._scheduler
    decode, release = scheduler._decode, engine.model._release_sequence

    def broken_decode(m, calls):
        raise RuntimeError("engine bug")

    def broken_release(seq, key):
        raise RuntimeError("clean-up bug")

    scheduler._decode, engine.model._release_sequence = broken_decode, broken_release
    with engine.model as model:
        outcomes: list = [None] * 3

        def call(i):
            try:
                outcomes[i] = model.generate(QUESTIONS[i], max_tokens=5)
            except BaseException as exc:  # noqa: B036 - the test looks at it
                outcomes[i] = exc

        threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(3)]
        for n, thread in enumerate(threads, start=1):  # all three in, in order, before the first step
            thread.start()
            while scheduler.waiting + scheduler.running < n:
                time.sleep(0.002)
        engine.gate.set()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a caller waits forever after the engine failed"
        assert all(isinstance(o, RuntimeError) for o in outcomes), outcomes
        assert scheduler.running == 0 and scheduler.waiting == 0
        scheduler._decode, model._release_sequence = decode, release
        assert model.generate(QUESTIONS[0], max_tokens=5).token_ids == alone.generate(QUESTIONS[0], max_tokens=5).token_ids


class BadRows(Prompt):
    """A prompt whose image rows the C engine refuses (one row too many for its image tokens)."""

    def c_args(self, start: int = 0, end: int | None = None) -> tuple:
        ids, n, rows, n_rows = super().c_args(start, end)
        return ids, n, rows, n_rows + 1


def test_a_prompt_the_engine_refuses_fails_alone(gqa_dir, alone, tmp_path):
    photo = write_image(tmp_path / "photo.png", seed=6)
    engine = Recorded(gqa_dir)
    model = engine.model
    inputs = model.build_inputs([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
                                images=[photo])
    good = Prompt.build(model.config, inputs.input_ids).with_image_embeds(model.encode_image(photo))
    bad = BadRows(good.config, good.ids, good.image_embeds)
    params = SamplingParams(max_tokens=8)
    with model:
        outcomes = engine.run([lambda: model.generate(QUESTIONS[1], max_tokens=10),
                               lambda: model._decode(bad, params, None),
                               lambda: model.generate(QUESTIONS[2], max_tokens=0),
                               lambda: model.generate(QUESTIONS[3], max_tokens=1)])
        assert isinstance(outcomes[1], smolvision.Error), outcomes[1]
        assert model._decode(good, params, None).token_ids == alone._decode(good, params, None).token_ids
    for request, outcome in zip([dict(prompt=QUESTIONS[1], max_tokens=10), None,
                                 dict(prompt=QUESTIONS[2], max_tokens=0), dict(prompt=QUESTIONS[3], max_tokens=1)],
                                outcomes):
        if request is not None:
            expected = alone.generate(**request)
            assert (outcome.token_ids, outcome.finish_reason) == (expected.token_ids, expected.finish_reason)
    assert outcomes[2].token_ids == [] and outcomes[2].finish_reason == "length"
    assert len(outcomes[3].token_ids) == 1


def test_a_stream_dropped_without_close_stops_its_call(gqa_dir):
    with smolvision.load(gqa_dir, threads=2, precision="fp32") as model:
        stream = model.stream(QUESTIONS[3], max_tokens=3000)
        next(stream)  # running
        del stream  # garbage: its finalizer stops the call and waits for it
        stats = model.scheduler_stats()
        assert stats.running == 0 and stats.waiting == 0
        assert stats.decode_rows < 100


def test_ctrl_c_between_submitting_and_collecting_stops_the_call(gqa_dir, monkeypatch):
    with smolvision.load(gqa_dir, threads=2, precision="fp32") as model:
        def interrupted(events, calls, on_ids):  # Ctrl-C lands before collect() is under way
            raise KeyboardInterrupt

        monkeypatch.setattr(model._scheduler, "collect", interrupted)
        with pytest.raises(KeyboardInterrupt):
            model.generate_ids(model.tokenizer.encode(QUESTIONS[1]), max_tokens=3000, eos_token_ids=())
        with pytest.raises(KeyboardInterrupt):
            model.generate_many([dict(prompt=QUESTIONS[3], max_tokens=3000)] * 2)
        for engine in [t for t in threading.enumerate() if t.name == "smolvision-engine"]:
            engine.join(timeout=120)
        assert model.scheduler_stats().decode_rows < 100, "an abandoned call ran on to its max_tokens"
