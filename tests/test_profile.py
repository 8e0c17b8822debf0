"""Profiling: Model.profile() accounts for each phase's engine time by op class; SMOLVISION_PROFILE=1
profiles every model and prints the table when it closes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import smolvision

PACKAGE_HOME = str(Path(smolvision.__file__).resolve().parent.parent)


def test_profiling_is_off_by_default(mha_dir, monkeypatch):
    monkeypatch.delenv("SMOLVISION_PROFILE", raising=False)
    with smolvision.load(mha_dir) as model:
        with pytest.raises(smolvision.InputError, match="profiling is off"):
            model.profile()


def test_profile_accounts_for_each_phase(mha_dir):
    image = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    with smolvision.load(mha_dir, profile=True) as model:
        result = model.generate("Describe this image.", images=[image], max_tokens=6)
        profile = model.profile()
    vision, prefill, decode = (profile.phases[name] for name in ("vision", "prefill", "decode"))
    assert vision.calls >= 1 and prefill.calls == 1 and decode.calls == len(result.token_ids) - 1
    # Engine time is inside the Python-side timings (which also cover preprocessing and callbacks).
    assert vision.seconds <= result.timings.image_encode_s
    assert prefill.seconds <= result.timings.prefill_s
    for phase in (vision, prefill, decode):
        assert all(seconds >= 0 for seconds in phase.ops.values())
        assert sum(phase.ops.values()) <= phase.seconds * (1 + 1e-9)
        assert phase.ops["matmul"] > 0 and phase.ops["attention"] > 0 and phase.ops["norm"] > 0
    assert vision.ops["lm_head"] == 0 and prefill.ops["lm_head"] > 0 and decode.ops["lm_head"] > 0
    data = profile.as_dict()
    assert data["decode"]["calls"] == decode.calls
    assert data["decode"]["ops"]["other"] == pytest.approx(decode.other)
    lines = str(profile).splitlines()
    assert [line.split()[0] for line in lines] == ["phase", "vision", "prefill", "decode"]


def test_reset_profile_starts_from_zero(mha_dir):
    with smolvision.load(mha_dir, profile=True) as model:
        model.generate("Hi", max_tokens=3)
        assert model.profile().phases["prefill"].calls == 1
        model.reset_profile()
        zero = model.profile()
        assert all(p.calls == 0 and p.seconds == 0 for p in zero.phases.values())
        assert str(zero).splitlines()[1] == "(nothing ran)"
        model.generate("Hi", max_tokens=3)
        assert model.profile().phases["prefill"].calls == 1


def test_env_var_profiles_and_prints_at_close(mha_dir, tmp_path):
    code = f"import smolvision\nwith smolvision.load({str(mha_dir)!r}) as m:\n    m.generate('Hi', max_tokens=3)\n"
    env = dict(os.environ, SMOLVISION_PROFILE="1", PYTHONPATH=PACKAGE_HOME)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "smolvision profile of" in proc.stderr
    assert any(line.startswith("prefill ") for line in proc.stderr.splitlines())
    env["SMOLVISION_PROFILE"] = "0"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
