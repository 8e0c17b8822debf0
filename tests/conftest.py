"""Shared fixtures: tiny random SmolVLM models written by transformers (see modelgen.py), and the small
ones several test modules use (their helpers are in helpers.py)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import modelgen  # noqa: E402
from helpers import FakeModel, write_image  # noqa: E402


def pytest_sessionstart(session):
    """On an AMX CPU Linux may refuse this process the tile state (the faulthandler plugin's alternate
    signal stack can be too small for its signal frames) yet grant it to the subprocesses tests start,
    whose BF16 sums would then run in another order than this process's; tests comparing the two (the CLI
    against generate) keep them on the same kernels.  After pytest_configure: asking before faulthandler
    installs its stack would make faulthandler.enable() fail instead."""
    import smolvision
    if smolvision.cpu_features()["amx"].startswith("refused: "):
        os.environ["SMOLVISION_ISA"] = "avx512bf16"


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


@pytest.fixture
def broken(tmp_path, mha_dir) -> Path:
    """A fresh copy of the MHA fixture to damage."""
    out = tmp_path / "model"
    shutil.copytree(mha_dir, out)
    return out


@pytest.fixture
def image(tmp_path) -> Path:
    """A random 150 x 110 PNG."""
    return write_image(tmp_path / "photo.png")


@pytest.fixture
def fake_model(monkeypatch) -> FakeModel:
    """A FakeModel that smolvision.load returns, recording what it was loaded with."""
    import smolvision

    model = FakeModel()
    model.config = "fake-config"

    def load(model_dir, threads=None, precision="fp32", profile=None, quant=None, on_log=None):
        model.loaded_with = dict(threads=threads, precision=precision, profile=profile)
        if quant is not None:
            model.loaded_with["quant"] = quant
            on_log("quantizing (fake)")
        return model

    monkeypatch.setattr(smolvision, "load", load)
    return model
