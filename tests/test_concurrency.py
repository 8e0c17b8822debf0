"""The thread-safety contract.

One Model may be shared by threads: its calls are serialised by the model's lock, so results equal
single-threaded ones.  Separate Models are independent and run in parallel, since the GIL is released
during C work.  Generation can be cancelled from another thread, and close() racing a generate either
lets it finish or makes it raise smolvision.Error, never crashes.
"""
from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

import smolvision

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
    with smolvision.load(mha_dir, threads=1) as model:
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
    # While one thread is inside a long C call (no Python callbacks), another keeps running Python at
    # a good share of its solo speed (two cores are shared with the C thread and whatever else runs).
    # Were the GIL held, the counter would only get the switch interval (5 ms) around the call: a few
    # percent of it.
    with smolvision.load(gqa_dir, threads=1) as model:
        size = model.config.vision.image_size
        tiles = np.random.default_rng(2).standard_normal((160, 3, size, size)).astype(np.float32)
        # Each call must be long against the 5 ms switch interval, or a GIL-holding call would still
        # let the counter run between calls: grow the batch until one call takes 50 ms.
        while True:
            start = time.perf_counter()
            model.encode_pixel_values(tiles)
            if time.perf_counter() - start > 0.05:
                break
            tiles = np.concatenate([tiles, tiles])
        done = threading.Event()
        ticks = [0]

        def count():
            while not done.is_set():
                ticks[0] += 1

        counter = threading.Thread(target=count)
        counter.start()
        time.sleep(0.1)
        ticks[0] = 0
        time.sleep(0.2)  # the main thread sleeps (GIL released): the counter's solo rate
        solo_rate = ticks[0] / 0.2
        ticks[0] = 0
        # Repeat the call so the measured span is long enough to average over scheduling noise.
        start = time.perf_counter()
        calls = 0
        while calls < 2 or time.perf_counter() - start < 0.5:
            model.encode_pixel_values(tiles)
            calls += 1
        elapsed = time.perf_counter() - start
        during_rate = ticks[0] / elapsed
        done.set()
        counter.join()
    print(f"counter rate during C: {during_rate:.0f}/s, alone: {solo_rate:.0f}/s, {calls} calls in {elapsed:.3f} s")
    assert during_rate > 0.25 * solo_rate, (during_rate, solo_rate, elapsed)


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
