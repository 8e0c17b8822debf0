"""Sequences: what one context computed (its KV cache, length and token history), kept in the C engine.

A `Sequence` belongs to the Model that made it.  `prefill` appends tokens (and the rows of their image
tokens) and returns the logits after the last; `truncate` cuts it back to a prefix to be extended
differently; `decode_batch` advances several sequences by one token each in one pass over the weights.

    with model.sequence() as seq:
        logits = seq.prefill(ids)
        seq.truncate(len(ids) - 1)

Memory: the KV cache takes layers x 2 x kv_heads x head_dim values per token, BF16 where the model's
matmuls run in BF16, else fp32 (`Model.sequence_bytes_per_token`); the 2.2B model in BF16 takes
192 KiB a token.  Calls on one model are serialised (its scratch is shared), as all of Model's calls are.
"""
from __future__ import annotations

import weakref
from collections.abc import Sequence as _Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import errors
from ._native import check, ffi, lib
from .generation import Prompt

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model

__all__ = ["Sequence", "decode_batch"]


class Sequence:
    """One context's KV cache, length and token history in the engine (see the module docstring)."""

    def __init__(self, model: Model) -> None:
        # A weak reference: the Model caches sequences, and a cycle would keep a dropped Model (its
        # weights mapping and threads) alive until the cyclic garbage collector ran.
        self._model_ref = weakref.ref(model)
        out = ffi.new("sv_seq **")
        with model._lock:
            check(lib.sv_seq_create(model._ptr, out), errors.GenerationError)
        self._handle = out[0]

    @property
    def model(self) -> Model:
        """The Model that made this sequence (an Error once it is gone)."""
        model = self._model_ref()
        if model is None:
            raise errors.Error("this Sequence's Model is gone")
        return model

    @property
    def _model(self) -> Model:
        return self.model

    @property
    def _ptr(self):
        if self._handle is None:
            raise errors.Error("this Sequence is closed")
        return self._handle

    def __len__(self) -> int:
        return int(lib.sv_seq_length(self._ptr))

    @property
    def tokens(self) -> np.ndarray:
        """int32 [len]: the ids computed so far (image positions hold the image token id), a copy."""
        n = len(self)
        if n == 0:
            return np.zeros(0, dtype=np.int32)
        return np.frombuffer(ffi.buffer(lib.sv_seq_tokens(self._ptr), n * 4), dtype=np.int32).copy()

    @property
    def nbytes(self) -> int:
        """Bytes the sequence holds (its KV cache and token history at their current capacity)."""
        return int(lib.sv_seq_bytes(self._ptr))

    def prefill(self, input_ids, image_embeds=None) -> np.ndarray:
        """Appends input_ids (positions continue from len(self)); image token positions take the rows of
        image_embeds [n_image_tokens, text hidden] in order.  Returns float32 [vocab] logits after the
        last id.  Past the context window (max_position_embeddings) it raises InputError and the
        sequence is unchanged."""
        prompt = Prompt.build(self._model.config, input_ids).with_image_embeds(image_embeds)
        out = np.empty(self._model.config.text.vocab_size, dtype=np.float32)
        with self._model._lock:
            check(lib.sv_seq_prefill(self._model._ptr, self._ptr, *prompt.c_args(), ffi.from_buffer("float[]", out)),
                  errors.GenerationError)
        return out

    def truncate(self, n: int) -> None:
        """Cuts the sequence back to its first n tokens (0 <= n <= len), keeping its memory."""
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
            raise errors.InputError(f"n must be an integer, not {type(n).__name__}")
        with self._model._lock:
            check(lib.sv_seq_truncate(self._ptr, int(n)))

    def reserve(self, positions: int) -> None:
        """Grows the cache to hold `positions` now, so that later calls do not reallocate."""
        with self._model._lock:
            check(lib.sv_seq_reserve(self._ptr, int(positions)))

    def close(self) -> None:
        """Frees the sequence's memory; idempotent."""
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is not None:
            lib.sv_seq_free(handle)

    def __enter__(self) -> Sequence:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<smolvision.Sequence closed>" if self._handle is None else f"<smolvision.Sequence of {len(self)} tokens>"


def decode_batch(model: Model, sequences: _Sequence[Sequence], ids) -> np.ndarray:
    """Appends ids[r] to sequences[r] for every r in one pass over the model's weights; returns float32
    [n, vocab] logits after each.  The sequences must be distinct and belong to `model`."""
    seqs = list(sequences)
    if not seqs or not all(isinstance(s, Sequence) for s in seqs):
        raise errors.InputError("sequences must be a non-empty list of Sequence")
    token_ids = np.ascontiguousarray(ids, dtype=np.int32)
    if token_ids.shape != (len(seqs),):
        raise errors.InputError(f"ids must hold one id per sequence ({len(seqs)}), got shape {token_ids.shape}")
    out = np.empty((len(seqs), model.config.text.vocab_size), dtype=np.float32)
    handles = ffi.new("sv_seq *[]", [s._ptr for s in seqs])
    with model._lock:
        check(lib.sv_decode_batch(model._ptr, handles, len(seqs), ffi.from_buffer("int32_t[]", token_ids),
                                  ffi.from_buffer("float[]", out)), errors.GenerationError)
    return out
