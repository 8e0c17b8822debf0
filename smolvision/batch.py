"""Model.generate_many: several requests decoded together, one pass over the weights per step.

Each request is prepared as generate() prepares it (template, ids, images through the image cache) and
submitted to the model's scheduler (scheduler.py), which decodes up to `max_sequences` of them together;
this thread hands each request's ids to its own text assembly, stop strings and on_token.  A request
that fails (bad input, an exception from its on_token) ends with finish_reason 'error' and its `error`;
the others go on untouched, so no work is lost.  Ctrl-C (KeyboardInterrupt) stops the whole call.
"""
from __future__ import annotations

import queue
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from . import errors, scheduler
from .generation import Result, Timings
from .pipeline import TextAssembler

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model


def _failed(exc: BaseException) -> Result:
    return Result(token_ids=[], finish_reason="error", timings=Timings(0, 0, 0.0, 0.0), text="", error=exc)


def generate_many(model: Model, requests: Sequence[Mapping[str, Any]]) -> list[Result]:
    """See Model.generate_many."""
    if isinstance(requests, Mapping) or not isinstance(requests, Sequence):
        raise errors.InputError("requests must be a list of dicts of generate()'s keyword arguments")
    results: list[Result | None] = [None] * len(requests)
    prepared = []  # (index, request, on_token)
    for index, options in enumerate(requests):
        try:
            if not isinstance(options, Mapping):
                raise errors.InputError(f"request {index} must be a dict of generate()'s keyword arguments, "
                                        f"not {type(options).__name__}")
            options = dict(options)
            on_token = options.pop("on_token", None)
            prepared.append((index, model._prepare(**options), on_token))
        except Exception as exc:  # TypeError for an unknown argument included: this request only
            results[index] = _failed(exc)
    with model._scheduler.caller():  # close() waits until the texts are assembled too
        events: queue.SimpleQueue = queue.SimpleQueue()
        calls = [scheduler.Call(request.prompt, request.params, request.params.eos_token_ids, events, tag)
                 for tag, (_, request, _) in enumerate(prepared)]
        texts = [TextAssembler(model.tokenizer, request.stop, on_token) for _, request, on_token in prepared]
        submitted = []
        try:
            for call in calls:
                model._scheduler.submit(call)
                submitted.append(call)
            outcomes = model._scheduler.collect(events, calls, [text.on_id for text in texts])
        except BaseException:  # the model closed under us, or Ctrl-C: stop what went in, wait for it, say why
            for call in calls:
                call.stop.set()
            for call in submitted:
                call.finished.wait()
            raise
        for (index, request, _), text, (ids, ended, stopped, raised) in zip(prepared, texts, outcomes):
            result = replace(scheduler.result_of(request.prompt, ids, ended, stopped),
                             cached_images=request.cached_images)
            error = raised or ended.error
            if error is not None:
                text.on_text = None  # its callback failed (or the engine did): hand it nothing more
            result = text.finish(result, n_tiles=request.n_tiles, image_encode_s=request.encode_s)
            results[index] = result if error is None else replace(result, finish_reason="error", error=error)
    return results
