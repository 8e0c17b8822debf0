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
    # No peer, no ratio column.
    assert re.search(r"^\| phase \| unit \| smolvision \| machine limit \|$", run.stdout, re.MULTILINE), run.stdout
    rows = table_rows(run.stdout)
    assert len(rows) == len(PHASES), run.stdout
    for phase, (label, cells) in zip(PHASES, rows.items()):
        assert label.startswith(phase), (phase, label)
        assert float(cells[1]) > 0, (label, cells)  # the smolvision column
    assert "smolvision build: blas=" in run.stdout


def test_quick_bench_with_quant_columns(mha_dir, tmp_path):
    env_cache = {"SMOLVISION_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--model", str(mha_dir), "--quick",
                          "--no-peers", "--quant"], capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**os.environ, **env_cache})
    assert run.returncode == 0, run.stderr
    assert "| smolvision | smolvision q8 | smolvision q4 | machine limit |" in run.stdout, run.stdout
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


def test_ratios_compare_the_same_kind_of_weights():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench
    finally:
        sys.path.pop(0)
    engines = {"smolvision": {"decode_short_tok_s": 10.0, "vision_s_per_tile": 2.0, "peak_rss_mb": 100.0},
               "smolvision q8": {"decode_short_tok_s": 20.0},
               "transformers BF16": {"decode_short_tok_s": 4.0, "vision_s_per_tile": 2.5, "peak_rss_mb": 120.0},
               "llama.cpp BF16": {"decode_short_tok_s": 12.5, "peak_rss_mb": 50.0},
               "llama.cpp Q8_0": {"decode_short_tok_s": 16.0},
               "llama.cpp Q4_K_M": {"decode_short_tok_s": 40.0}}
    lines = bench.table(bench.Workload(), engines, {}).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[-3:] == ["BF16: smolvision vs best peer", "q8 vs Q8_0", "machine limit"]  # no q4 column: no q4 run
    rows = table_rows("\n".join(lines))
    decode = next(cells for label, cells in rows.items() if label.startswith("decode, 64"))
    assert decode[-3:-1] == ["0.80x", "1.25x"]  # 10 / 12.5 against llama.cpp BF16, not Q4_K_M; 20 / 16
    vision = next(cells for label, cells in rows.items() if label.startswith("vision"))
    assert vision[-3] == "1.25x"  # 2.5 / 2.0: lower is better
    rss = next(cells for label, cells in rows.items() if label.startswith("peak RSS"))
    assert rss[-3] == "1.20x"  # against transformers only: llama.cpp holds the text model alone


def test_rounds_keep_each_phases_best_and_the_larger_rss():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench
    finally:
        sys.path.pop(0)
    first = {"vision_s_per_tile": 2.0, "prefill_tok_s": 100.0, "decode_short_tok_s": 12.0, "peak_rss_mb": 900.0,
             "build_info": "x"}
    again = {"vision_s_per_tile": 1.9, "prefill_tok_s": 90.0, "decode_short_tok_s": 14.0, "peak_rss_mb": 950.0,
             "decode_long_tok_s": 9.0}
    merged = bench.best_of(first, again)
    assert merged == {"vision_s_per_tile": 1.9, "prefill_tok_s": 100.0, "decode_short_tok_s": 14.0,
                      "peak_rss_mb": 950.0, "decode_long_tok_s": 9.0, "build_info": "x"}
    assert bench.best_of(None, again) is again and bench.best_of(first, None) is first


def test_quick_bench_in_two_rounds(mha_dir):
    run = run_bench("--model", str(mha_dir), "--quick", "--no-peers", "--rounds", "2")
    assert run.returncode == 0, run.stderr
    assert "2 interleaved rounds" in run.stdout and "round 2 of 2" in run.stderr
    assert all(float(cells[1]) > 0 for cells in table_rows(run.stdout).values()), run.stdout


def test_converter_python_creates_its_venv_before_running_it(tmp_path, monkeypatch):
    """On a fresh machine (no sentencepiece here, no convert venv yet) the venv is made first: the old
    code ran the venv's python before it existed and died with FileNotFoundError."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import llama_cpp_peer
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(llama_cpp_peer, "CACHE", tmp_path)
    venv_python = tmp_path / "convert-venv" / "bin" / "python"
    steps = []

    def fake_run(command, **kwargs):
        if not Path(command[0]).exists():
            raise FileNotFoundError(command[0])
        steps.append(command)
        if command[1:] == ["-c", "import sentencepiece"]:
            return subprocess.CompletedProcess(command, 1)  # this python lacks sentencepiece
        if command[1:3] == ["-m", "venv"]:
            venv_python.parent.mkdir(parents=True)
            venv_python.symlink_to(sys.executable)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(llama_cpp_peer.subprocess, "run", fake_run)
    assert llama_cpp_peer.converter_python() == str(venv_python)
    assert [step[1:3] for step in steps] == [["-c", "import sentencepiece"], ["-m", "venv"], ["-m", "pip"]]
