"""Model: one loaded SmolVLM, owning its C engine handle."""
from __future__ import annotations

import os
import threading
from typing import Optional, Union

import numpy as np

from . import errors
from ._native import check, ffi, lib
from .config import Config

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
    def closed(self) -> bool:
        return self._handle is None

    def close(self) -> None:
        """Releases the weights mapping and the engine's threads; idempotent."""
        with self._lock:
            handle, self._handle = getattr(self, "_handle", None), None
            if handle is not None:
                lib.sv_model_free(handle)

    def encode_pixel_values(self, pixel_values: np.ndarray) -> np.ndarray:
        """Image features of preprocessed tiles, as transformers' `get_image_features`.

        `pixel_values` is float32 [n_tiles, 3, image_size, image_size], already
        resized, split and normalized; every tile must be a real (full) tile,
        not all-zero batch padding.  Returns float32
        [n_tiles * image_seq_len, text_hidden]: each tile's tokens in order,
        ready to stand in for the prompt's <image> tokens.
        """
        if not isinstance(pixel_values, np.ndarray):
            raise errors.InputError(f"pixel_values must be a numpy array, not {type(pixel_values).__name__}")
        if pixel_values.dtype != np.float32:
            raise errors.InputError(f"pixel_values must be float32, not {pixel_values.dtype}")
        size = self.config.vision.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (3, size, size) or pixel_values.shape[0] < 1:
            raise errors.InputError(
                f"pixel_values must have shape [n_tiles >= 1, 3, {size}, {size}], not {list(pixel_values.shape)}")
        pixels = np.ascontiguousarray(pixel_values)
        n_tiles = pixels.shape[0]
        out = np.empty((n_tiles * self.config.image_seq_len, self.config.text.hidden_size), dtype=np.float32)
        with self._lock:
            check(lib.sv_encode_images(self._ptr, ffi.cast("const float *", ffi.from_buffer(pixels)), n_tiles,
                                       ffi.cast("float *", ffi.from_buffer(out, require_writable=True))))
        return out

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
