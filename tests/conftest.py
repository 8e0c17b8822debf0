"""Shared fixtures: tiny random SmolVLM models written by transformers (see modelgen.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import modelgen  # noqa: E402


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory):
    """make(variant, naming="hf", shards=False) -> Path, each combination written once per session."""
    made: dict = {}

    def make(variant: str = "mha", naming: str = "hf", shards: bool = False) -> Path:
        key = (variant, naming, shards)
        if key not in made:
            out = tmp_path_factory.mktemp(f"{variant}-{naming}{'-sharded' if shards else ''}")
            made[key] = modelgen.write_model(out, variant, naming=naming, shards=shards)
        return made[key]

    return make


@pytest.fixture(scope="session")
def mha_dir(model_factory) -> Path:
    """MHA, untied head, patch 14 on 90-pixel tiles, scale factor 3, BF16 weights, one file."""
    return model_factory("mha")


@pytest.fixture(scope="session")
def gqa_dir(model_factory) -> Path:
    """GQA, tied head, patch 16, scale factor 4, F32 weights, one file."""
    return model_factory("gqa")


@pytest.fixture(scope="session", params=["mha", "gqa"])
def any_model_dir(request, model_factory) -> Path:
    """Each tiny variant in turn."""
    return model_factory(request.param)


@pytest.fixture(scope="session")
def real_dir() -> Path:
    """SmolVLM with SmolLM2-135M-Instruct's real text weights and a tiny random vision tower (cached)."""
    import realmodel

    return realmodel.smollm2_vlm_dir()
