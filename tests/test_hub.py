"""smolvision.hub against a fake Hugging Face cache, offline: resolution, refusals, the download command."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import smolvision
from helpers import assert_one_line_error, fake_hf_cache, run_cli
from smolvision import hub


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_resolve_finds_the_cached_snapshot(offline_cache):
    snapshot = fake_hf_cache(offline_cache, "ORG/NAME")
    assert hub.resolve_model("ORG/NAME", allow_download=True) == str(snapshot)
    assert hub.resolve_model("ORG/NAME", allow_download=False) == str(snapshot)
    assert hub.find_cached_model("ORG/NAME") == str(snapshot)


@pytest.mark.parametrize("allow_download", [True, False])
def test_resolve_absent_model_says_what_to_do(offline_cache, allow_download):
    fake_hf_cache(offline_cache, "ORG/NAME")
    with pytest.raises(smolvision.ModelError, match=r"smolvision download ORG/OTHER.*-d DIR"):
        hub.resolve_model("ORG/OTHER", allow_download=allow_download)


def test_snapshot_without_weights_does_not_count(offline_cache):
    fake_hf_cache(offline_cache, "ORG/NAME", files=("config.json",))
    assert hub.find_cached_model("ORG/NAME") is None
    with pytest.raises(smolvision.ModelError, match="not in the Hugging Face cache"):
        hub.resolve_model("ORG/NAME")


def test_download_refuses_when_offline(offline_cache):
    with pytest.raises(smolvision.ModelError, match="HF_HUB_OFFLINE"):
        hub.download_model("ORG/NAME")


def test_invalid_repo_id_is_a_model_error(offline_cache):
    with pytest.raises(smolvision.ModelError, match="not a valid Hugging Face repo id"):
        hub.resolve_model("not a repo id!")


def test_missing_huggingface_hub_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(smolvision.ModelError, match=r"smolvision\[hub\]"):
        hub.resolve_model("ORG/NAME")


def test_cli_download_and_m_offline_subprocess(tmp_path, offline_cache):
    env = dict(HF_HUB_CACHE=str(offline_cache), HF_HUB_OFFLINE="1")
    proc = run_cli("download", "ORG/NAME", cwd=tmp_path, **env)
    assert_one_line_error(proc.returncode, proc.stderr, "HF_HUB_OFFLINE")
    proc = run_cli("-m", "ORG/NAME", "-p", "hi", cwd=tmp_path, **env)
    assert_one_line_error(proc.returncode, proc.stderr, "smolvision download ORG/NAME")
    assert "downloading" not in proc.stderr
