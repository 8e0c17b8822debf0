"""Where load(quant=...) keeps its quantized weights: one file per model directory and quant.

The directory is $SMOLVISION_CACHE, else $XDG_CACHE_HOME/smolvision, else ~/.cache/smolvision, so
read-only model directories (the Hugging Face cache) work.  The file name carries a hash of the model
directory's real path; whether a file still fits its checkpoint is decided by the C engine from the
file's own header (checkpoint file names, sizes and modification times), not by the name.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path


def cache_dir() -> Path:
    explicit = os.environ.get("SMOLVISION_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "smolvision"


def quant_cache_path(model_dir: str, quant: str) -> Path:
    """The cache file for model_dir's weights quantized to quant ("q8" or "q4")."""
    real = os.path.realpath(model_dir)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(real.rstrip("/")) or "model")[:64]
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return cache_dir() / f"{name}-{digest}.{quant}.svq"
