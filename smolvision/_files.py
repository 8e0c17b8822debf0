"""Reading the small text files of a model directory defensively.

Model directories come from the internet: a "config" may be a FIFO (opening it
would wait for a writer forever), a link to /dev/zero (endless), a link loop,
huge, not UTF-8, or JSON nested deeply enough to exhaust Python's recursion.
Every such case becomes a ModelError naming the file; a missing file is None.
"""
from __future__ import annotations

import json
import os
import stat
from typing import Any

from .errors import ModelError

MAX_TEXT_BYTES = 16 << 20
"""Largest side file read (configs, chat templates); real ones are a few KB."""


def read_text(path: os.PathLike | str, max_bytes: int = MAX_TEXT_BYTES) -> str | None:
    """The UTF-8 text of a regular file, None when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ModelError(f"cannot open {os.fspath(path)}: {err.strerror or err}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ModelError(f"{os.fspath(path)} is not a regular file")
        if info.st_size > max_bytes:
            raise ModelError(f"{os.fspath(path)} is {info.st_size} bytes, more than the {max_bytes} allowed")
        try:
            data = f.read(max_bytes + 1)
        except OSError as err:
            raise ModelError(f"cannot read {os.fspath(path)}: {err}") from None
    if len(data) > max_bytes:
        raise ModelError(f"{os.fspath(path)} grew past the {max_bytes} bytes allowed while being read")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ModelError(f"{os.fspath(path)} is not UTF-8 text: {err}") from None


def read_json(path: os.PathLike | str) -> Any:
    """The parsed JSON of a regular file, None when it does not exist."""
    text = read_text(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as err:
        raise ModelError(f"{os.fspath(path)} is not valid JSON: {err}") from None
    except RecursionError:
        raise ModelError(f"{os.fspath(path)} is not valid JSON: nested too deeply") from None
