"""The OpenAI chat-completions shapes: requests checked into Model.generate arguments, results
turned into `chat.completion` objects and SSE chunks, errors in `{"error": {...}}` form.

Nothing here touches HTTP or the model; it is plain data in, plain data out.
"""
from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Sequence

from ..generation import SamplingParams

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Fields the server does not implement: refused when asking for something other than the default,
# so a client never silently gets something it did not ask for.
UNSUPPORTED_UNLESS_DEFAULT = {
    "n": 1, "logprobs": False, "top_logprobs": None, "tools": None, "tool_choice": None, "functions": None,
    "function_call": None, "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": None,
    "audio": None, "prediction": None,
}
MAX_STOP_STRINGS = 16


class APIError(Exception):
    """An error answered in the OpenAI shape, with its HTTP status (and headers, e.g. Retry-After)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, "invalid_request_error", code, param)


@dataclass
class ChatRequest:
    """A checked chat-completions request."""

    messages: list[dict]
    """Hugging Face form: content is a list of {"type": "image"}, {"type": "video"} and
    {"type": "text", "text": ...}."""
    image_urls: list[str]
    """The image URLs of every image block, in order (resolved to bytes by media.py)."""
    options: dict[str, Any]
    """Model.generate keyword options (max_tokens, sampling, stop, ...)."""
    stream: bool = False
    include_usage: bool = False
    model: str | None = None
    video_urls: list[str] = field(default_factory=list)
    """The video URLs of every {"type": "video"} block, in order (from `video_url` parts)."""


@dataclass
class Defaults:
    """Server-wide defaults for what a request leaves out (from the generation options of `serve`)."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    """max_tokens and the sampling settings (validated as Model.generate's are); eos_token_ids is unused."""
    stop: tuple[str, ...] = ()
    system_prompt: str | None = None
    do_image_splitting: bool | None = None
    longest_edge: int | None = None


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise invalid(f"the request body is not valid JSON: {err}", code="invalid_json") from None
    except RecursionError:
        raise invalid("the request body's JSON is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object", code="invalid_json")
    return body


def _number(body: dict, name: str, default, low: float, high: float, low_open: bool = False,
            integer: bool = False, rule: str = ""):
    value = body.get(name)
    if value is None:
        return default
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        raise invalid(f"{name} must be {'an integer' if integer else 'a number'} {rule}, not {value!r}", name)
    if not (value > low if low_open else value >= low) or not value <= high:
        raise invalid(f"{name} must be {rule}, not {value!r}", name)
    return value


def parse_chat_request(body: dict, defaults: Defaults, max_images: int, max_videos: int = 0) -> ChatRequest:
    """Checks a chat-completions body; raises APIError(400) naming the offending field."""
    for name, default in UNSUPPORTED_UNLESS_DEFAULT.items():
        value = body.get(name)
        if value is not None and value != default and not (name in ("tools", "functions") and value == []):
            raise invalid(f"{name}={json.dumps(value)[:80]} is not supported by this server", name,
                          code="unsupported_parameter")
    response_format = body.get("response_format")
    if response_format is not None and not (isinstance(response_format, dict)
                                            and response_format.get("type", "text") == "text"):
        raise invalid("only response_format {\"type\": \"text\"} is supported", "response_format",
                      code="unsupported_parameter")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid("model must be a string", "model")

    messages, image_urls, video_urls = _messages(body.get("messages"), max_images, max_videos)
    if defaults.system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": defaults.system_prompt}]})

    max_tokens = body.get("max_completion_tokens")
    name = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, name = body.get("max_tokens"), "max_tokens"
    if max_tokens is None:
        max_tokens = defaults.sampling.max_tokens
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise invalid(f"{name} must be a positive integer, not {max_tokens!r}", name)
    top_k = _number(body, "top_k", defaults.sampling.top_k, -1, 2**31 - 1, integer=True, rule="0 or more (0 or -1 = off)")
    seed = body.get("seed", defaults.sampling.seed)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -2**63 <= seed < 2**64):
        raise invalid(f"seed must be an integer, not {seed!r}", "seed")
    options = dict(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", defaults.sampling.temperature, 0, 2, rule="in [0, 2] (0 = greedy)"),
        top_p=_number(body, "top_p", defaults.sampling.top_p, 0, 1, low_open=True, rule="in (0, 1]"),
        top_k=max(top_k, 0),
        min_p=_number(body, "min_p", defaults.sampling.min_p, 0, 1, rule="in [0, 1]"),
        repetition_penalty=_number(body, "repetition_penalty", defaults.sampling.repetition_penalty, 0, 100, low_open=True,
                                   rule="in (0, 100]"),
        seed=None if seed is None else seed % 2**64,
        stop=_stop(body.get("stop"), defaults.stop),
        do_image_splitting=defaults.do_image_splitting,
        longest_edge=defaults.longest_edge,
    )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream must be true or false", "stream")
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise invalid("stream_options must be an object", "stream_options")
        include_usage = stream_options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise invalid("stream_options.include_usage must be true or false", "stream_options")
    return ChatRequest(messages, image_urls, options, stream, include_usage, model, video_urls)


def _stop(value, default: Sequence[str]) -> tuple[str, ...]:
    if value is None:
        return tuple(default)
    stops = [value] if isinstance(value, str) else value
    if (not isinstance(stops, list) or len(stops) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in stops)):
        raise invalid(f"stop must be a non-empty string or a list of at most {MAX_STOP_STRINGS} of them", "stop")
    return tuple(stops)


def _messages(value, max_images: int, max_videos: int) -> tuple[list[dict], list[str], list[str]]:
    if not isinstance(value, list) or not value:
        raise invalid("messages must be a non-empty list", "messages")
    messages: list[dict] = []
    urls: list[str] = []
    video_urls: list[str] = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(f"{where} must be an object", where)
        role = message.get("role")
        if role not in ROLES:
            raise invalid(f"{where}.role must be one of system, developer, user, assistant; not {role!r}",
                          f"{where}.role", code="unsupported_role" if isinstance(role, str) else "invalid_value")
        role = ROLES[role]
        content = message.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = content
        else:
            raise invalid(f"{where}.content must be a string or a list of content parts", f"{where}.content")
        blocks: list[dict] = []
        for j, part in enumerate(parts):
            pwhere = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise invalid(f"{pwhere}.text must be a string", pwhere)
                blocks.append({"type": "text", "text": text})
            elif kind in ("image_url", "video_url"):
                media = kind.removesuffix("_url")
                found, limit = (urls, max_images) if media == "image" else (video_urls, max_videos)
                found.append(_media_url(part, media, role, pwhere))
                if len(found) > limit:
                    raise invalid(f"more than {limit} {media}s in one request (the server's --max-{media}s)",
                                  pwhere, code=f"too_many_{media}s")
                blocks.append({"type": media})
            else:
                raise invalid(f"{pwhere}: unsupported content part type {kind!r} (text, image_url and video_url "
                              "are)", pwhere, code="unsupported_content_type")
        if role == "assistant":
            # The model produced " answer" after "Assistant:", and the template writes ": " itself (as `chat`).
            for block in blocks:
                if block["type"] == "text":
                    block["text"] = block["text"].strip()
        messages.append({"role": role, "content": blocks})
    return messages, urls, video_urls


def _media_url(part: dict, kind: str, role: str, where: str) -> str:
    """The URL of an `image_url` / `video_url` part: {"url": ...} or the URL string itself."""
    if role != "user":
        raise invalid(f"{where}: {kind}s are accepted in user messages only", where)
    media = part.get(f"{kind}_url")
    url = media.get("url") if isinstance(media, dict) else media
    if not isinstance(url, str) or not url:
        raise invalid(f"{where}.{kind}_url.url must be a non-empty string", where)
    return url


# ---- responses ----

def completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def finish_reason(result) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def usage(result) -> dict:
    completion = len(result.token_ids)
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": completion,
            "total_tokens": result.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": int(getattr(result, "cached_tokens", 0) or 0)}}


def completion(result, model: str, id: str, created: int) -> dict:
    return {"id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "logprobs": None, "finish_reason": finish_reason(result)}],
            "usage": usage(result)}


@dataclass
class ChunkWriter:
    """Builds the SSE `data:` lines of one streamed completion."""

    model: str
    include_usage: bool
    id: str = field(default_factory=completion_id)
    created: int = field(default_factory=lambda: int(time.time()))

    def _chunk(self, delta: dict | None, finish: str | None = None, usage_: dict | None = None) -> bytes:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                        "finish_reason": finish}]}
        if self.include_usage:
            chunk["usage"] = usage_
        return sse(chunk)

    def role(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def content(self, piece: str) -> bytes:
        return self._chunk({"content": piece})

    def end(self, result) -> bytes:
        out = self._chunk({}, finish_reason(result))
        if self.include_usage:
            out += self._chunk(None, usage_=usage(result))
        return out + b"data: [DONE]\n\n"


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
