"""bench/bench.py runs end to end on a tiny model and prints the table it promises.

Speed is never asserted: only that every phase produced a number in the smolvision column."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ["vision encode", "prefill", "decode, 8 tokens", "decode, 4 tokens", "end to end", "peak RSS"]


def run_bench(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def table_rows(stdout: str) -> dict:
    """{phase label: cells after it} of the markdown table."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("| ") and not line.startswith("| phase"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_quick_bench_prints_every_phase(mha_dir):
    run = run_bench("--model", str(mha_dir), "--quick", "--no-peers")
    assert run.returncode == 0, run.stderr
    assert re.search(r"^\| phase \| unit \| smolvision \| smolvision vs best peer \| machine limit \|$", run.stdout,
                     re.MULTILINE), run.stdout
    rows = table_rows(run.stdout)
    assert len(rows) == len(PHASES), run.stdout
    for phase, (label, cells) in zip(PHASES, rows.items()):
        assert label.startswith(phase), (phase, label)
        assert float(cells[1]) > 0, (label, cells)  # the smolvision column
        assert cells[2] == "–", (label, cells)  # no peer, no ratio
    assert "smolvision build: blas=" in run.stdout


def test_quick_bench_with_quant_columns(mha_dir, tmp_path):
    env_cache = {"SMOLVISION_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--model", str(mha_dir), "--quick",
                          "--no-peers", "--quant"], capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**os.environ, **env_cache})
    assert run.returncode == 0, run.stderr
    assert "| smolvision | smolvision q8 | smolvision q4 | smolvision vs best peer |" in run.stdout, run.stdout
    rows = table_rows(run.stdout)
    for label, cells in rows.items():
        text_only = label.startswith(("prefill", "decode", "peak RSS"))
        assert all((float(c) > 0) if text_only else c == "–" for c in cells[2:4]), (label, cells)


def test_bench_without_a_model_says_how_to_make_one(tmp_path):
    run = run_bench("--model", str(tmp_path), "--quick")
    assert run.returncode == 2
    assert "make_model.py instruct" in run.stderr


def test_decode_bytes_are_the_decoder_matrices_in_bf16(any_model_dir):
    """The bandwidth limit counts every matrix one decode step reads: the layers' and the LM head's."""
    import json

    from safetensors import safe_open

    sys.path.insert(0, str(ROOT / "bench"))
    import bench

    config = json.loads((any_model_dir / "config.json").read_text())
    elements = 0
    for file in any_model_dir.glob("*.safetensors"):
        with safe_open(str(file), framework="np") as tensors:
            for key in tensors.keys():
                shape = tensors.get_slice(key).get_shape()
                if len(shape) == 2 and "text_model.layers." in key:
                    elements += shape[0] * shape[1]
    text = config["text_config"]
    elements += text["vocab_size"] * text["hidden_size"]  # the LM head, tied or not
    assert bench.Costs.of(config).decode_bytes == 2 * elements
