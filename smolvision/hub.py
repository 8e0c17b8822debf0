"""Model resolution: turn a Hugging Face repo id into a local model directory.

The local Hugging Face cache is always tried first, so a model fetched once works offline
afterwards; a download happens only when the model is absent, allowed, and the hub is not
switched off with HF_HUB_OFFLINE=1.  huggingface_hub is an optional dependency
(`pip install "smolvision[hub]"`); nothing here is needed to load a model from a directory.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from .errors import ModelError

DEFAULT_REPO = "HuggingFaceTB/SmolVLM-Instruct"

# Everything the engine reads, and nothing else (no ONNX exports, no PyTorch .bin duplicates).
MODEL_FILE_PATTERNS: Sequence[str] = (
    "*.safetensors", "*.json", "*.jinja", "tokenizer.model", "vocab.txt", "merges.txt",
)


def _hub():
    """The huggingface_hub module, or a ModelError saying how to get it."""
    try:
        import huggingface_hub
        import huggingface_hub.errors  # noqa: F401  (a submodule: make sure it is loaded)
    except ImportError:
        raise ModelError("fetching a model by repo id needs huggingface_hub: "
                         "pip install \"smolvision[hub]\" (or pass a model directory with -d)") from None
    return huggingface_hub


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE forbids network access (read now, not at import time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _cache_dir(cache_dir: str | None) -> str | None:
    # huggingface_hub reads HF_HUB_CACHE once at import; honour a value set since then.
    return cache_dir or os.environ.get("HF_HUB_CACHE") or None


def _is_model_dir(path: str) -> bool:
    """A snapshot is usable when it has a config and at least one weights file."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        return False
    return any(name.endswith(".safetensors") for name in os.listdir(path))


def find_cached_model(repo_id: str, *, revision: str | None = None,
                      cache_dir: str | None = None) -> str | None:
    """The cached snapshot directory of `repo_id`, or None when it is not (completely) cached."""
    hub = _hub()
    try:
        path = hub.snapshot_download(repo_id, revision=revision, cache_dir=_cache_dir(cache_dir),
                                     local_files_only=True, allow_patterns=list(MODEL_FILE_PATTERNS))
    except hub.errors.HFValidationError as err:
        raise ModelError(f"not a valid Hugging Face repo id: {repo_id!r} ({err})") from None
    except (OSError, ValueError):
        # LocalEntryNotFoundError and friends: not cached.
        return None
    return path if isinstance(path, str) and _is_model_dir(path) else None


def download_model(repo_id: str = DEFAULT_REPO, *, local_dir: str | None = None,
                   revision: str | None = None, cache_dir: str | None = None) -> str:
    """Downloads the model files of `repo_id` (into the cache, or into `local_dir`); returns the directory."""
    hub = _hub()
    if hub_offline():
        raise ModelError(f"cannot download {repo_id}: HF_HUB_OFFLINE is set; run "
                         f"`smolvision download {repo_id}` on a connected machine, or pass -d DIR")
    try:
        path = hub.snapshot_download(repo_id, revision=revision, cache_dir=_cache_dir(cache_dir),
                                     local_dir=local_dir, allow_patterns=list(MODEL_FILE_PATTERNS))
    except hub.errors.HFValidationError as err:
        raise ModelError(f"not a valid Hugging Face repo id: {repo_id!r} ({err})") from None
    except hub.errors.RepositoryNotFoundError:
        raise ModelError(f"no such model on the Hugging Face hub (or it is private): {repo_id}") from None
    except hub.errors.GatedRepoError:
        raise ModelError(f"{repo_id} is gated: accept its terms on huggingface.co and log in "
                         "with `hf auth login`") from None
    except Exception as err:  # network failures come in many classes (requests, httpx, OSError)
        raise ModelError(f"could not download {repo_id}: {err}; check the network, or run "
                         f"`smolvision download {repo_id}` on a connected machine and pass -d DIR") from err
    if not _is_model_dir(path):
        raise ModelError(f"{repo_id} has no config.json and .safetensors weights; is it a SmolVLM model?")
    return path


def resolve_model(repo_id: str = DEFAULT_REPO, *, allow_download: bool = True,
                  revision: str | None = None, cache_dir: str | None = None) -> str:
    """The local directory of `repo_id`: the cached snapshot if there is one, else a fresh download.

    Raises ModelError, saying what to do, when the model is not cached and cannot be downloaded
    (allow_download=False, HF_HUB_OFFLINE=1, no network, or huggingface_hub not installed).
    """
    cached = find_cached_model(repo_id, revision=revision, cache_dir=cache_dir)
    if cached is not None:
        return cached
    if not allow_download or hub_offline():
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "downloading is not allowed here"
        raise ModelError(f"{repo_id} is not in the Hugging Face cache and {why}: run "
                         f"`smolvision download {repo_id}` on a connected machine (it fills the cache), "
                         "or pass a model directory with -d DIR")
    return download_model(repo_id, revision=revision, cache_dir=cache_dir)
