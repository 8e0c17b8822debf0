"""The thread-safety contract.

One Model may be shared by threads: their generations run on the model's engine thread and decode
together (test_continuous_batching.py), with the single-threaded results (precision fp32: a batched
step may reorder sums, which bf16 rounding could turn into a different id).  Separate Models are
independent and run in parallel, since the GIL is released during C work.  Generation can be cancelled from another thread, and close() racing a generate either
lets it finish or makes it raise smolvision.Error, never crashes.
"""
from __future__ import annotations

import gc
import random
import sys
import threading
import time
import weakref

import numpy as np
import pytest

import smolvision
from smolvision.sequence import Sequence

PROMPT = "What is in the picture?"


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (60, 80, 3), dtype=np.uint8)


def run_threads(targets) -> list:
    """Runs each callable on its own thread; returns their results, re-raising the first exception."""
    results: list = [None] * len(targets)
    errors: list = []

    def wrap(i, fn):
        try:
            results[i] = fn()
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i, fn)) for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a thread hung"
    if errors:
        raise errors[0]
    return results


def test_four_threads_sharing_one_model_get_the_single_thread_result(mha_dir):
    with smolvision.load(mha_dir, threads=1, precision="fp32") as model:
        img = image(0)
        expected = model.generate(PROMPT, images=[img], max_tokens=12).token_ids
        text_only = model.generate("Hello", max_tokens=12).token_ids

        def hammer():
            return [(model.generate(PROMPT, images=[img], max_tokens=12).token_ids,
                     model.generate("Hello", max_tokens=12).token_ids) for _ in range(3)]

        for per_thread in run_threads([hammer] * 4):
            assert per_thread == [(expected, text_only)] * 3


def test_two_models_in_two_threads_are_independent(mha_dir, gqa_dir):
    with smolvision.load(mha_dir, threads=1) as a, smolvision.load(gqa_dir, threads=1) as b:
        img = image(1)
        want_a = a.generate(PROMPT, images=[img], max_tokens=10).token_ids
        want_b = b.generate(PROMPT, images=[img], max_tokens=10).token_ids
        got = run_threads([lambda: [a.generate(PROMPT, images=[img], max_tokens=10).token_ids for _ in range(3)],
                           lambda: [b.generate(PROMPT, images=[img], max_tokens=10).token_ids for _ in range(3)]])
        assert got == [[want_a] * 3, [want_b] * 3]


def test_the_gil_is_released_during_c_work(gqa_dir):
    # With forced GIL hand-overs out of reach (a 60 s switch interval), a second thread runs Python
    # only while this one has let the GIL go.  The counter thread gives the GIL back after every tick
    # (a short sleep), so it ticks during the engine's calls if, and only if, they release the GIL.
    # The control: the same thread spinning in Python (which holds the GIL) must see no tick at all.
    with smolvision.load(gqa_dir, threads=1) as model:
        size = model.config.vision.image_size
        tiles = np.random.default_rng(2).standard_normal((64, 3, size, size)).astype(np.float32)
        done = threading.Event()
        ticks = [0]

        def count():
            while not done.is_set():
                ticks[0] += 1
                time.sleep(0.0005)  # releases the GIL

        interval = sys.getswitchinterval()
        sys.setswitchinterval(60)
        counter = threading.Thread(target=count)
        try:
            counter.start()
            while ticks[0] < 2:
                time.sleep(0.001)  # the counter is running
            before = ticks[0]
            total = 0
            for i in range(2_000_000):  # Python, GIL held, well beyond the counter's 0.5 ms sleeps
                total += i
            ticks_in_python = ticks[0] - before
            before = ticks[0]
            calls = 0
            while ticks[0] == before and calls < 200:  # a GIL-holding engine would run all 200
                model.encode_pixel_values(tiles)
                calls += 1
            ticks_in_c = ticks[0] - before
        finally:
            done.set()
            counter.join()
            sys.setswitchinterval(interval)
    assert ticks_in_python == 0, "the control failed: the counter ran while Python held the GIL"
    assert ticks_in_c > 0, f"the counter never ran during {calls} engine calls: they hold the GIL"


def test_an_event_set_from_another_thread_cancels_generation(mha_dir):
    with smolvision.load(mha_dir, threads=1) as model:
        stop = threading.Event()
        pieces = []

        def on_token(piece):
            pieces.append(piece)
            if len(pieces) == 1:
                threading.Timer(0.01, stop.set).start()
            return stop.is_set()

        result = model.generate("Tell me a long story", max_tokens=4000, on_token=on_token)
        assert result.finish_reason == "cancelled"
        assert 1 <= len(result.token_ids) < 4000
        # The model stays usable.
        assert model.generate("Hello", max_tokens=3).finish_reason in ("stop", "length")


def test_a_stream_consumed_in_one_thread_stopped_from_another(mha_dir):
    with smolvision.load(mha_dir, threads=1) as model:
        stop = threading.Event()
        received = []

        def consume():
            stream = model.stream("Tell me a long story", max_tokens=4000)
            for piece in stream:
                received.append(piece)
                if stop.is_set():
                    stream.close()  # stops the engine after at most one more token
                    return "stopped"
            return "finished"

        def stopper():
            while not received:
                time.sleep(0.001)
            stop.set()

        outcome, _ = run_threads([consume, stopper])
        assert outcome == "stopped"
        assert len(received) < 4000
        assert model.generate("Hello", max_tokens=3).token_ids


@pytest.mark.parametrize("seed", range(8))
def test_close_racing_generate_completes_or_raises(mha_dir, seed):
    model = smolvision.load(mha_dir, threads=1)
    rng = random.Random(seed)
    outcome = []

    def generate():
        try:
            result = model.generate(PROMPT, images=[image(seed)], max_tokens=30)
            outcome.append(("done", result.finish_reason))
        except smolvision.Error as exc:
            outcome.append(("error", str(exc)))

    def close():
        time.sleep(rng.uniform(0, 0.05))
        model.close()

    run_threads([generate, close])
    assert model.closed
    assert len(outcome) == 1 and outcome[0][0] in ("done", "error"), outcome
    if outcome[0][0] == "done":
        assert outcome[0][1] in ("stop", "length")
    with pytest.raises(smolvision.Error, match="closed"):
        model.generate("Hello", max_tokens=1)


def test_close_from_inside_the_models_own_callback_is_refused(mha_dir):
    with smolvision.load(mha_dir, threads=1) as model:
        with pytest.raises(smolvision.Error, match="inside its own generation callback"):
            model.generate("Hello", max_tokens=5, on_token=lambda piece: model.close())
        assert not model.closed
        assert model.generate("Hello", max_tokens=3).token_ids
        with pytest.raises(smolvision.Error, match="inside its own generation callback"):
            model.generate_ids([1, 2, 3], max_tokens=5, on_token=lambda token_id: model.close())
        assert not model.closed


def test_a_tokenizer_view_racing_close_raises_cleanly(mha_dir):
    model = smolvision.load(mha_dir, threads=1)
    tok = model.tokenizer
    results = []

    def encode_loop():
        try:
            for _ in range(2000):
                tok.decode(tok.encode("hello world " * 20))
            results.append("done")
        except smolvision.Error:
            results.append("error")

    def close():
        time.sleep(0.01)
        model.close()

    run_threads([encode_loop, close])
    assert results in (["done"], ["error"])


def open_sequences() -> list:
    """Every Sequence of this process whose memory is still held."""
    gc.collect()
    return [o for o in gc.get_objects() if type(o) is Sequence and o._handle is not None]


def test_close_from_another_thread_while_four_calls_run(mha_dir):
    model = smolvision.load(mha_dir, threads=1, precision="fp32", max_sequences=4)
    started = threading.Barrier(5)  # the four calls have each produced an id, and the closer is ready

    def generate(i: int):
        seen = []

        def on_token(piece: str) -> None:
            seen.append(piece)
            if len(seen) == 1:
                started.wait(timeout=120)

        try:
            return model.generate(f"Tell me story number {i}", images=[image(i)], max_tokens=20, on_token=on_token)
        except smolvision.Error as exc:
            return exc

    def close():
        started.wait(timeout=120)
        model.close()

    *results, _ = run_threads([lambda i=i: generate(i) for i in range(4)] + [close])
    assert model.closed
    for result in results:  # close() waits for the admitted calls: each ends on its own terms
        assert isinstance(result, smolvision.Result) and result.finish_reason in ("stop", "length"), result
    with pytest.raises(smolvision.Error, match="closed"):
        model.generate("Hello", max_tokens=1)
    assert not [s for s in open_sequences() if s._model_ref() is model], "a closed model's sequences are alive"


def test_generate_many_while_another_thread_generates(mha_dir):
    requests = [dict(prompt=PROMPT, images=[image(3)], max_tokens=8), dict(prompt="Count to five.", max_tokens=10),
                dict(prompt="Hello", max_tokens=6, temperature=0.8, seed=5)]
    with smolvision.load(mha_dir, threads=1, precision="fp32", cache_bytes=0) as alone:
        want_many = [alone.generate(**r).token_ids for r in requests]
        want_single = alone.generate("What is the weather like?", max_tokens=12).token_ids
    with smolvision.load(mha_dir, threads=1, precision="fp32", max_sequences=3) as model:
        both = threading.Barrier(2)

        def many():
            both.wait(timeout=120)
            return [r.token_ids for r in model.generate_many(requests)]

        def single():
            both.wait(timeout=120)
            return [model.generate("What is the weather like?", max_tokens=12).token_ids for _ in range(2)]

        got_many, got_single = run_threads([many, single])
    assert got_many == want_many
    assert got_single == [want_single] * 2


def test_two_threads_asking_the_same_question_with_the_cache_on(mha_dir):
    with smolvision.load(mha_dir, threads=1, precision="fp32", cache_bytes=0) as alone:
        want = alone.generate(PROMPT, images=[image(4)], max_tokens=10).token_ids
    with smolvision.load(mha_dir, threads=1, precision="fp32") as model:
        model.generate(PROMPT, images=[image(4)], max_tokens=10)  # the question and image are now cached
        both = threading.Barrier(2)

        def ask():
            both.wait(timeout=120)
            return model.generate(PROMPT, images=[image(4)], max_tokens=10)

        first, second = run_threads([ask, ask])
        assert first.token_ids == second.token_ids == want
        assert first.cached_images == second.cached_images == 1
        # One of them continues the cached sequence; the other, finding it taken, starts afresh or not.
        assert max(first.cached_tokens, second.cached_tokens) > 0
        assert model.cached_bytes() <= model.cache_bytes


def test_many_concurrent_calls_leave_only_what_the_cache_holds(mha_dir):
    with smolvision.load(mha_dir, threads=1, precision="fp32", cache_bytes=200_000, max_sequences=4) as model:
        def calls(worker: int):
            return [model.generate(f"Question {worker} {i}?", max_tokens=3 + i % 3).finish_reason
                    for i in range(10)]

        for reasons in run_threads([lambda w=w: calls(w) for w in range(5)]):  # 50 calls, 5 threads
            assert all(reason in ("stop", "length") for reason in reasons)
        assert model.cached_bytes() <= model.cache_bytes
        mine = [s for s in open_sequences() if s._model_ref() is model]
        cached = [value for kind, _, value in model._states._entries.values() if kind == "seq"]
        assert len(mine) == len(cached) and all(any(s is c for c in cached) for s in mine), \
            "a sequence outlived its call outside the cache"
        model.clear_cache()
        assert model.cached_bytes() == 0 and not [s for s in open_sequences() if s._model_ref() is model]


def test_a_model_dropped_right_after_a_call_is_freed_with_its_engine(mha_dir):
    model = smolvision.load(mha_dir, threads=1, precision="fp32")
    assert model.generate(PROMPT, images=[image(5)], max_tokens=4).token_ids  # leaves a cached sequence
    engines = [t for t in threading.enumerate() if t.name == "smolvision-engine"]
    ref = weakref.ref(model)
    cached = [weakref.ref(s) for s in open_sequences() if s._model_ref() is model]
    assert cached
    del model
    for engine in engines:  # it may still be ending its loop, holding the model until it returns
        engine.join(timeout=60)
        assert not engine.is_alive()
    gc.collect()
    assert ref() is None, "the dropped Model is still alive"
    assert all(s() is None or s()._handle is None for s in cached), "its cached sequences outlived it"


def test_close_waits_for_a_caller_still_turning_ids_into_text(mha_dir):
    """The engine may finish a call while its caller is still in on_token with ids queued: close() waits for
    the caller too (its text comes from the model's tokenizer), not only for the engine."""
    model = smolvision.load(mha_dir, threads=1, precision="fp32")
    first, release = threading.Event(), threading.Event()
    outcome = {}

    def on_token(piece: str) -> None:
        if not first.is_set():
            first.set()
            release.wait(timeout=120)

    def generate():
        try:
            outcome["result"] = model.generate("Tell me a long story", max_tokens=12, on_token=on_token)
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    caller = threading.Thread(target=generate)
    caller.start()
    assert first.wait(timeout=60)
    deadline = time.monotonic() + 60
    while model.scheduler_stats().running:  # the engine is done with the call; its caller is not
        assert time.monotonic() < deadline
        time.sleep(0.005)
    closer = threading.Thread(target=model.close)
    closer.start()
    closer.join(timeout=0.5)
    assert closer.is_alive(), "close() returned while a caller was still assembling its text"
    release.set()
    caller.join(timeout=60)
    closer.join(timeout=60)
    assert model.closed and "error" not in outcome, outcome
    assert outcome["result"].finish_reason in ("stop", "length") and outcome["result"].text


def test_close_from_the_callback_of_the_last_piece_is_refused_not_a_deadlock(mha_dir):
    """Text held back while it could still become a stop string reaches on_token only after the token loop
    (TextAssembler.finish): close() there is still inside the call and must be refused, not wait for itself."""
    with smolvision.load(mha_dir, threads=1) as model:
        answer = model.generate("Hello", max_tokens=1).text
        assert answer
        outcome = {}

        def on_token(piece: str) -> None:
            outcome["piece"] = piece
            model.close()

        def generate():
            try:  # the whole answer is the start of the stop string: held back to the end
                model.generate("Hello", max_tokens=1, stop=[answer + "\x00never"], on_token=on_token)
            except smolvision.Error as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=generate, daemon=True)  # a regression hangs it: let the test fail
        worker.start()
        worker.join(timeout=60)
        assert not worker.is_alive(), "close() from the last piece's callback waited for its own call"
        assert outcome["piece"] == answer and "inside its own generation callback" in str(outcome["error"])
        assert not model.closed


def test_tokenizer_does_not_wait_for_a_decode_step(mha_dir):
    """Turning ids into text (each streamed piece) and a prompt into ids must not wait for the step the
    engine thread is running, which holds the model's lock: else every piece reached the caller a step
    late (the first token a whole decode step after it was chosen)."""
    with smolvision.load(mha_dir, threads=1) as model:
        tokenizer = model.tokenizer
        ids = tokenizer.encode("Hello there")
        held, release = threading.Event(), threading.Event()

        def decode_step() -> None:  # stands in for the engine thread's step
            with model._lock:
                held.set()
                release.wait(120)

        engine = threading.Thread(target=decode_step)
        engine.start()
        assert held.wait(60)
        try:
            done = []
            caller = threading.Thread(target=lambda: done.append(
                (tokenizer.decode(ids), tokenizer.encode("Hello there"), tokenizer.incremental_decoder().push(ids[0]))))
            caller.start()
            caller.join(timeout=30)  # the "step" lasts until released (or 120 s)
            assert done and done[0][1] == ids, "the tokenizer waited for the model's lock"
        finally:
            release.set()
            engine.join()
            caller.join()
