"""Tokenizer: the C engine's byte-level BPE, read from a tokenizer.json.

It produces the same ids as Hugging Face `tokenizers` for the files it
accepts, and refuses (with TokenizerError) the options it does not implement.

    tok = Tokenizer.from_file("SmolVLM-Instruct/tokenizer.json")
    ids = tok.encode("Hello world")
    tok.decode(ids)  # 'Hello world'
"""
from __future__ import annotations

import operator
import os
import threading
from collections.abc import Iterable

from . import errors
from ._native import check, ffi, lib

PathLike = str | os.PathLike


class Tokenizer:
    """A loaded tokenizer.json.  Use as a context manager or call close()."""

    def __init__(self, _handle, _owner: object = None) -> None:
        # _owner: the Model whose tokenizer this is (kept alive, never freed here).
        # Calls hold the owner's tokenizer lock (or our own), so close() never frees
        # the tokenizer under a call running on another thread.
        self._handle = _handle
        self._owner = _owner
        self._lock = _owner._tokenizer_lock if _owner is not None else threading.RLock()

    @classmethod
    def from_file(cls, path: PathLike) -> Tokenizer:
        """Loads a tokenizer.json (no model weights needed)."""
        out = ffi.new("sv_tokenizer **")
        check(lib.sv_tokenizer_load(os.fsencode(path), out), errors.TokenizerError)
        return cls(out[0])

    @property
    def _ptr(self):
        if self._handle is None:
            raise errors.TokenizerError("this Tokenizer is closed")
        if self._owner is not None and getattr(self._owner, "closed", False):
            raise errors.TokenizerError("the Model owning this Tokenizer is closed")
        return self._handle

    @property
    def closed(self) -> bool:
        return self._handle is None

    def close(self) -> None:
        """Frees the tokenizer (a model's tokenizer is only detached); idempotent."""
        with self._lock:
            handle, self._handle = self._handle, None
            if handle is not None and self._owner is None:
                lib.sv_tokenizer_free(handle)
            self._owner = None

    def __enter__(self) -> Tokenizer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        # Nothing else can be calling in: no lock needed, and a view frees nothing.
        if getattr(self, "_handle", None) is not None and getattr(self, "_owner", None) is None:
            lib.sv_tokenizer_free(self._handle)
            self._handle = None

    def __len__(self) -> int:
        """Vocabulary size including added tokens (len(tokenizers.Tokenizer.get_vocab()))."""
        with self._lock:
            return int(lib.sv_tokenizer_vocab_size(self._ptr))

    def encode(self, text: str | bytes, add_special_tokens: bool = False) -> list[int]:
        """Text -> token ids.  bytes are decoded as UTF-8 with invalid sequences
        replaced by U+FFFD (bytes.decode("utf-8", "replace")) first."""
        if isinstance(text, str):
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise errors.TokenizerError(f"text is not encodable as UTF-8: {exc}") from None
        elif isinstance(text, (bytes, bytearray, memoryview)):
            data = bytes(text)
        else:
            raise errors.InputError(f"encode() takes str or bytes, not {type(text).__name__}")
        ids = ffi.new("int32_t **")
        n = ffi.new("size_t *")
        with self._lock:
            check(lib.sv_tokenizer_encode(self._ptr, data, len(data), int(bool(add_special_tokens)), ids, n),
                  errors.TokenizerError)
        try:
            return list(ffi.unpack(ids[0], n[0]))
        finally:
            lib.sv_free(ids[0])

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Token ids -> text; ids naming no token are skipped, as tokenizers does."""
        arr = _id_array(ids)
        text = ffi.new("char **")
        n = ffi.new("size_t *")
        with self._lock:
            check(lib.sv_tokenizer_decode(self._ptr, arr, len(arr), int(bool(skip_special_tokens)), text, n),
                  errors.TokenizerError)
        try:
            return ffi.unpack(text[0], n[0]).decode("utf-8")
        finally:
            lib.sv_free(text[0])

    def token_to_id(self, token: str) -> int | None:
        """The id of a token string (e.g. 'Ġthe' or '<image>'), None if there is none."""
        data = token.encode("utf-8", "surrogatepass")
        with self._lock:
            tid = lib.sv_tokenizer_token_to_id(self._ptr, data, len(data))
        return None if tid < 0 else int(tid)

    def id_to_token(self, token_id: int) -> str | None:
        """The token string of an id, None if no token has it."""
        try:
            token_id = operator.index(token_id)
        except TypeError:
            return None
        if not -2**31 <= token_id < 2**31:
            return None
        n = ffi.new("size_t *")
        with self._lock:
            p = lib.sv_tokenizer_id_to_token(self._ptr, token_id, n)
            return None if p == ffi.NULL else ffi.unpack(p, n[0]).decode("utf-8", "replace")

    def incremental_decoder(self, skip_special_tokens: bool = False) -> IncrementalDecoder:
        return IncrementalDecoder(self, skip_special_tokens)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self)} tokens"
        return f"<smolvision.Tokenizer ({state})>"


class IncrementalDecoder:
    """Streaming decode: push(id) returns the text completed so far (never a
    broken character); flush() returns what is held back.  The pieces
    concatenate to Tokenizer.decode of all pushed ids."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False) -> None:
        self._tokenizer = tokenizer  # keeps the tokenizer (and its model) alive
        out = ffi.new("sv_detokenizer **")
        with tokenizer._lock:
            check(lib.sv_detokenizer_create(tokenizer._ptr, int(bool(skip_special_tokens)), out),
                  errors.TokenizerError)
        self._handle = out[0]
        self._text = ffi.new("char **")
        self._n = ffi.new("size_t *")

    def _ptr(self):
        if self._handle is None:
            raise errors.TokenizerError("this IncrementalDecoder is closed")
        self._tokenizer._ptr  # raises if the tokenizer is gone
        return self._handle

    def push(self, token_id: int) -> str:
        """Adds one id; returns the newly completed text (possibly '')."""
        try:
            token_id = operator.index(token_id)
        except TypeError:
            raise errors.InputError(f"token id must be an integer, not {token_id!r}") from None
        if not -2**31 <= token_id < 2**31:
            raise errors.InputError(f"token id {token_id} is not a 32-bit integer")
        with self._tokenizer._lock:
            check(lib.sv_detokenizer_push(self._ptr(), token_id, self._text, self._n), errors.TokenizerError)
            return ffi.unpack(self._text[0], self._n[0]).decode("utf-8")

    def flush(self) -> str:
        """Returns held-back bytes (an incomplete character becomes U+FFFD) and resets."""
        with self._tokenizer._lock:
            check(lib.sv_detokenizer_flush(self._ptr(), self._text, self._n), errors.TokenizerError)
            return ffi.unpack(self._text[0], self._n[0]).decode("utf-8")

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            lib.sv_detokenizer_free(handle)

    def __enter__(self) -> IncrementalDecoder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self.close()


def _id_array(ids: Iterable[int]):
    """ids as a C int32 array; InputError for anything that is not a 32-bit integer."""
    values = ids if isinstance(ids, (list, tuple)) else list(ids)
    try:
        return ffi.new("int32_t[]", values)
    except (OverflowError, TypeError) as exc:
        raise errors.InputError(f"token ids must be 32-bit integers: {exc}") from None
