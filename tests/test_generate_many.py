"""Model.generate_many: requests decoded together through sv_decode_batch give, request by request,
what generate() gives alone (precision fp32), with their own sampling, stops, limits and callbacks."""
from __future__ import annotations

import pytest

import smolvision
from helpers import write_image
from smolvision._native import lib

QUESTIONS = ["Describe the picture.", "What is the weather like today in the old harbour town?",
             "Count to five.", "Write a haiku about lighthouses and the sea at night, please."]


@pytest.fixture(scope="module")
def models(gqa_dir):
    with smolvision.load(gqa_dir, threads=2, precision="fp32", cache_bytes=0) as alone, \
            smolvision.load(gqa_dir, threads=2, precision="fp32", max_sequences=2) as together:
        yield alone, together


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return write_image(tmp_path_factory.mktemp("many") / "photo.png", seed=5)


def test_greedy_batched_equals_sequential(models, photo):
    alone, together = models
    requests = [dict(prompt=QUESTIONS[0], images=[photo], max_tokens=8),
                dict(prompt=QUESTIONS[1], max_tokens=12),
                dict(prompt=QUESTIONS[2], max_tokens=5),
                dict(prompt=QUESTIONS[3], max_tokens=10, system_prompt="Be brief.")]
    results = together.generate_many(requests)  # max_sequences=2: two wait and join later
    for request, result in zip(requests, results):
        expected = alone.generate(**request)
        assert result.error is None
        assert result.token_ids == expected.token_ids
        assert result.text == expected.text and result.finish_reason == expected.finish_reason
        assert result.prompt_tokens == expected.prompt_tokens


def test_sampling_settings_and_stop_strings_per_request(models):
    alone, together = models
    greedy = alone.generate(QUESTIONS[1], max_tokens=12)
    stop = greedy.text[len(greedy.text) // 2:][:3]
    assert stop and stop in greedy.text
    requests = [dict(prompt=QUESTIONS[1], max_tokens=12, stop=[stop]),
                dict(prompt=QUESTIONS[2], max_tokens=9, temperature=0.9, top_k=30, top_p=0.9, seed=11),
                dict(prompt=QUESTIONS[3], max_tokens=7, temperature=1.3, min_p=0.05, repetition_penalty=1.3, seed=3),
                dict(prompt=QUESTIONS[0], max_tokens=3)]
    results = together.generate_many(requests)
    first = results[0]
    assert first.text == greedy.text[:greedy.text.index(stop)] and first.finish_reason == "stop"
    for request, result in zip(requests, results):
        expected = alone.generate(**request)
        assert (result.token_ids, result.text, result.finish_reason) == \
            (expected.token_ids, expected.text, expected.finish_reason)


def test_cancelling_one_of_four(models):
    alone, together = models
    seen: list[str] = []

    def cancel_after_two(piece: str) -> bool:
        seen.append(piece)
        return len(seen) >= 2

    requests = [dict(prompt=q, max_tokens=10) for q in QUESTIONS]
    requests[2]["on_token"] = cancel_after_two
    results = together.generate_many(requests)
    assert results[2].finish_reason == "cancelled" and len(seen) == 2
    assert results[2].text == "".join(seen)
    for index in (0, 1, 3):
        expected = alone.generate(**requests[index])
        assert results[index].token_ids == expected.token_ids and results[index].text == expected.text


def test_a_failing_request_does_not_disturb_the_others(models):
    alone, together = models

    def explode(piece: str) -> None:
        raise RuntimeError("callback failed")

    requests = [dict(prompt=QUESTIONS[0], max_tokens=6),
                dict(prompt=QUESTIONS[1], max_tokens=-1),
                dict(prompt=QUESTIONS[2], max_tokens=6, on_token=explode),
                dict(prompt=QUESTIONS[3], max_tokens=6, no_such_option=1),
                "not a dict"]
    results = together.generate_many(requests)
    assert results[0].error is None
    assert results[0].token_ids == alone.generate(**requests[0]).token_ids
    assert results[1].finish_reason == "error" and isinstance(results[1].error, smolvision.InputError)
    assert results[2].finish_reason == "error" and isinstance(results[2].error, RuntimeError)
    assert len(results[2].token_ids) >= 1  # what it generated before the failure is kept
    assert results[3].finish_reason == "error" and isinstance(results[3].error, TypeError)
    assert results[4].finish_reason == "error" and isinstance(results[4].error, smolvision.InputError)
    assert together.generate_many([]) == []


def test_max_sequences_is_checked(gqa_dir):
    for bad in (0, lib.SV_PREFILL_CHUNK + 1, 1.5, None):
        with pytest.raises(smolvision.InputError, match="max_sequences"):
            smolvision.load(gqa_dir, max_sequences=bad)
