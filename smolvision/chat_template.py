"""Chat templates: find a model's Jinja template and render messages with it as transformers does.

Rendering uses Jinja's immutable sandbox with the settings and helpers of transformers' `apply_chat_template`
(trim_blocks, lstrip_blocks, loop controls, `raise_exception`, `strftime_now`, a `tojson` that does not escape
HTML), because templates come with downloaded models and are untrusted code.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ._files import read_json, read_text
from .errors import InputError, ModelError

__all__ = ["load_chat_template", "normalize_messages", "render_chat_template"]


def load_chat_template(model_dir: str | os.PathLike) -> str:
    """Return the chat template of a model directory.

    Looked for where transformers looks, first found wins: `processor_config.json`'s `chat_template`,
    `chat_template.json`, `chat_template.jinja`, then `tokenizer_config.json`'s `chat_template`. Where several
    named templates are stored, the one named "default" is returned. Raises ModelError when there is none.
    """
    model_dir = Path(model_dir)
    template = _json_key(model_dir / "processor_config.json", "chat_template")
    if template is None:
        template = _json_key(model_dir / "chat_template.json", "chat_template")
    if template is None:
        template = read_text(model_dir / "chat_template.jinja")
    if template is None:
        template = _json_key(model_dir / "tokenizer_config.json", "chat_template")
    if template is None:
        raise ModelError(f"{model_dir} has no chat template")
    return _default_template(template, model_dir)


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages as plain data for a template: string content becomes one text block, None values are dropped.

    Everything is rebuilt from JSON types and anything else (a PIL image in an image block, an array) becomes a
    placeholder naming its type, so the template cannot call methods of rich objects; templates only test whether
    such keys are there.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InputError("messages must be a list of {'role': ..., 'content': ...} dicts")
    normalized = []
    for message in messages:
        if not isinstance(message, Mapping) or "role" not in message:
            raise InputError(f"each message must be a dict with a 'role', not {message!r}")
        plain = {key: _plain(value) for key, value in message.items() if value is not None}
        if isinstance(plain.get("content"), str):
            plain["content"] = [{"type": "text", "text": plain["content"]}]
        normalized.append(plain)
    return normalized


def render_chat_template(
    template_str: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    **extra: Any,
) -> str:
    """Render `messages` (HF form: content a list of {"type": "image"} / {"type": "text", "text": ...} blocks,
    or a plain string) with a chat template.

    `extra` becomes template variables, e.g. `bos_token`; transformers passes the tokenizer's special tokens this
    way. Raises ModelError when the template does not parse and InputError when it refuses the messages (its
    `raise_exception`) or fails in any other way while rendering them.
    """
    if not isinstance(template_str, str):
        raise InputError(f"a chat template must be a string, not {type(template_str).__name__}")
    template = _compile(template_str)
    variables: dict[str, Any] = {"tools": None, "documents": None}
    variables.update({key: _plain(value) for key, value in extra.items()})
    try:
        return template.render(
            messages=normalize_messages(messages), add_generation_prompt=add_generation_prompt, **variables
        )
    except Exception as err:  # template code may fail in any way (TemplateError, TypeError on '+', ...)
        raise InputError(f"the chat template cannot render these messages: {err}") from err


# ---------------------------------------------------------------------------------------------------------------


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML, which would change the prompt.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace, refusing underscore names so a template cannot reach Python internals through it."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # same signature trick as jinja2.utils.Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template cannot set {name!r} on a namespace")


def _make_dict(*args: Any, **kwargs: Any) -> dict[str, Any]:
    # A plain function rather than the dict type, so templates cannot reach class attributes through it.
    return dict(*args, **kwargs)


@functools.lru_cache(maxsize=16)
def _compile(template_str: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, namespace=_Namespace,
                       dict=_make_dict)
    try:
        return env.from_string(template_str)
    except jinja2.TemplateSyntaxError as err:
        raise ModelError(f"the chat template is not valid Jinja (line {err.lineno}): {err.message}") from err


def _plain(value: Any) -> Any:
    """`value` rebuilt from JSON-like types only (see normalize_messages)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):  # subclasses such as enums carry extra methods
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    item = getattr(value, "item", None)  # NumPy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return _plain(item())
    return f"<{type(value).__name__}>"


def _json_key(path: Path, key: str) -> Any:
    data = read_json(path)
    return data.get(key) if isinstance(data, dict) else None


def _default_template(template: Any, model_dir: Path) -> str:
    """A single template string, picking "default" from named templates (a dict, or a list of name/template)."""
    if isinstance(template, list):
        template = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
    if isinstance(template, dict):
        if "default" not in template:
            raise ModelError(f"{model_dir} has named chat templates but none is called 'default'")
        template = template["default"]
    if not isinstance(template, str):
        raise ModelError(f"the chat template in {model_dir} is not a string")
    return template
