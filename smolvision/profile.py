"""Where a model's time goes: seconds per phase and op class, read from the C engine.

Enable with ``smolvision.load(dir, profile=True)``, the environment variable
``SMOLVISION_PROFILE=1`` (which also prints the table to stderr when the model
closes) or the CLI's ``--profile``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ._native import ffi, lib

PHASES = ("vision", "prefill", "decode")
OPS = ("matmul", "attention", "norm", "activation", "lm_head")
ENV_VAR = "SMOLVISION_PROFILE"


def enabled_by_env() -> bool:
    """Whether SMOLVISION_PROFILE asks for profiling ("1", "true", "yes", "on")."""
    return os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class PhaseProfile:
    """One phase: its wall time inside the engine, how many engine calls (images encoded, prompts
    prefilled, tokens decoded) and the seconds of each op class; `other` is the rest (embedding
    lookups, RoPE, residual adds, pixel shuffle, threading overhead)."""

    calls: int
    seconds: float
    ops: dict[str, float] = field(default_factory=dict)

    @property
    def other(self) -> float:
        return max(0.0, self.seconds - sum(self.ops.values()))


@dataclass(frozen=True)
class Profile:
    """Per-phase timings since profiling was enabled (or last reset)."""

    phases: dict[str, PhaseProfile]

    @classmethod
    def _read(cls, handle) -> Profile:
        seconds = ffi.new("double[]", len(PHASES) * len(OPS))
        totals = ffi.new("double[]", len(PHASES))
        calls = ffi.new("int64_t[]", len(PHASES))
        lib.sv_profile_read(handle, seconds, totals, calls)
        return cls({phase: PhaseProfile(calls[p], totals[p], {op: seconds[p * len(OPS) + o] for o, op in enumerate(OPS)})
                    for p, phase in enumerate(PHASES)})

    def as_dict(self) -> dict:
        """Plain data for JSON: {phase: {"calls", "seconds", "ops": {op: seconds, ..., "other": seconds}}}."""
        return {name: {"calls": p.calls, "seconds": p.seconds, "ops": {**p.ops, "other": p.other}}
                for name, p in self.phases.items()}

    def format(self) -> str:
        """A table: one row per phase that ran, seconds per op class with its share of the phase."""
        columns = OPS + ("other",)
        lines = [f"{'phase':<8} {'calls':>6} {'seconds':>9}  " + "  ".join(f"{c:>15}" for c in columns)]
        for name, p in self.phases.items():
            if p.calls == 0:
                continue
            cells = []
            for c in columns:
                s = p.other if c == "other" else p.ops[c]
                share = 100.0 * s / p.seconds if p.seconds > 0 else 0.0
                cells.append(f"{s:>8.3f} ({share:>3.0f}%)")
            lines.append(f"{name:<8} {p.calls:>6} {p.seconds:>9.3f}  " + "  ".join(cells))
        if len(lines) == 1:
            lines.append("(nothing ran)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()
