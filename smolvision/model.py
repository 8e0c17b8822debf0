"""Model: one loaded SmolVLM, owning its C engine handle."""
from __future__ import annotations

import os
import threading
from typing import Optional, Union

from . import errors
from ._native import check, ffi, lib
from .config import Config
from .tokenizer import Tokenizer

PathLike = Union[str, "os.PathLike[str]"]


class Model:
    """A SmolVLM model loaded from a Hugging Face model directory.

    Weights are memory-mapped and validated at load, not converted, so loading
    is fast.  Use as a context manager, or call close(), to release the
    mapping and the engine's threads promptly.

        with smolvision.load("SmolVLM-Instruct") as model:
            print(model.config.text.hidden_size)
    """

    def __init__(self, model_dir: PathLike, threads: Optional[int] = None) -> None:
        path = os.fspath(model_dir)
        if not os.path.isdir(path):
            raise errors.ModelError(f"model directory not found: {path}")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise errors.InputError(f"threads must be a positive integer or None, not {threads!r}")
        self.model_dir = path
        # One engine handle is not reentrant: calls into it are serialised.
        self._lock = threading.RLock()
        out = ffi.new("sv_model **")
        check(lib.sv_model_load(path.encode(), threads or 0, out), errors.ModelError)
        self._handle = out[0]
        self.config = Config._from_c(lib.sv_model_config(self._handle))

    @property
    def _ptr(self):
        if self._handle is None:
            raise errors.Error("this Model is closed")
        return self._handle

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer (from its tokenizer.json), borrowed: it keeps
        this Model alive and stops working once the Model is closed."""
        handle = lib.sv_model_tokenizer(self._ptr)
        if handle == ffi.NULL:
            raise errors.TokenizerError(f"{self.model_dir} has no tokenizer.json")
        return Tokenizer(handle, _owner=self)

    @property
    def closed(self) -> bool:
        return self._handle is None

    def close(self) -> None:
        """Releases the weights mapping and the engine's threads; idempotent."""
        with self._lock:
            handle, self._handle = getattr(self, "_handle", None), None
            if handle is not None:
                lib.sv_model_free(handle)

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None:
            lib.sv_model_free(handle)
            self._handle = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.config.text.num_hidden_layers}-layer text, " \
            f"{self.config.vision.num_hidden_layers}-layer vision"
        return f"<smolvision.Model {self.model_dir!r} ({state})>"


def load(model_dir: PathLike, threads: Optional[int] = None) -> Model:
    """Loads a SmolVLM model directory; `threads` defaults to one per core."""
    return Model(model_dir, threads=threads)
