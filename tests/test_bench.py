"""bench/bench.py runs end to end on a tiny model and prints the table it promises.

Speed is never asserted: only that every phase produced a number in the smolvision column."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    if "- machine (" in run.stdout:  # machine_limits ran (x86-64 with a C compiler): the weight files' pages too
        assert re.search(r"weight files read where the page cache holds them: [0-9.]+ GB/s", run.stdout), run.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason="machine_limits.c is x86-64 code and maps files the Linux way")
def test_machine_limits_reads_the_files_it_is_given(tmp_path):
    """The FILE read: a file's pages read back at some bandwidth; a missing file is named and gives nulls."""
    import json
    import shutil
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    binary = tmp_path / "machine_limits"
    subprocess.run([compiler, "-O2", "-pthread", str(ROOT / "bench" / "machine_limits.c"), "-o", str(binary)],
                   check=True)
    weights = tmp_path / "w.bin"
    weights.write_bytes(os.urandom(4 << 20))
    read = json.loads(subprocess.run([str(binary), "2", "8", "1", str(weights)], capture_output=True, text=True,
                                     check=True).stdout)
    assert read["file_read_gb_s"] > 0 and read["file_pmd_mapped_mb"] >= 0, read
    # AMX: fed from L1 or L2 the tiles run at most at their own peak (within a shared machine's noise)
    fed = [read["amx_bf16_l1_gflop_s"], read["amx_bf16_l2_gflop_s"]]
    if read["amx_bf16_gflop_s"] is None:
        assert fed == [None, None], read
    else:
        assert all(0 < gflops <= 1.25 * read["amx_bf16_gflop_s"] for gflops in fed), read
    missing = subprocess.run([str(binary), "1", "8", "1", str(tmp_path / "none.bin")], capture_output=True, text=True)
    assert missing.returncode == 0 and json.loads(missing.stdout)["file_read_gb_s"] is None
    assert "none.bin" in missing.stderr


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
    code ran the venv's python before it existed and died with FileNotFoundError.  The venv sees this
    interpreter's packages (torch): --system-site-packages would see the base interpreter's."""
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
        if command[1:] == ["-c", llama_cpp_peer.CONVERTER_IMPORTS]:
            return subprocess.CompletedProcess(command, 1)  # this python lacks sentencepiece
        if command[1:3] == ["-m", "venv"]:
            venv_python.parent.mkdir(parents=True)
            venv_python.symlink_to(sys.executable)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(llama_cpp_peer.subprocess, "run", fake_run)
    assert llama_cpp_peer.converter_python() == str(venv_python)
    assert [step[1:3] for step in steps] == [["-c", llama_cpp_peer.CONVERTER_IMPORTS], ["-m", "venv"], ["-m", "pip"]]
    pth = next((tmp_path / "convert-venv").rglob("bench-parent.pth"))
    assert pth.parent.name == "site-packages"
    assert set(pth.read_text().split()) == set(__import__("site").getsitepackages())


def bench_module(name: str):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_quick_sequence_rows(mha_dir, tmp_path):
    """--only-sequences prints the three rows of issue 13 with a figure in every smolvision cell, and the
    follow-up with the cache reused the first turn's image and prompt (without it, nothing)."""
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--model", str(mha_dir), "--quick",
                          "--no-peers", "--only-sequences"], capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**os.environ, "SMOLVISION_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr
    assert "| phase |" not in run.stdout  # no phase table
    rows = table_rows(run.stdout)
    cached, uncached = rows["smolvision, cache on (default load())"], rows["smolvision, cache off (load(cache_bytes=0))"]
    assert all(float(cell) > 0 for cell in cached[:4]) and cached[4].endswith("x"), cached
    assert uncached[:2] == ["as above", "as above"] and all(float(cell) > 0 for cell in uncached[2:4]), uncached
    reuse = re.search(r"the follow-up computed (\d+) prompt tokens \((\d+) cached\) and encoded 0 of 1 image",
                      run.stdout)
    assert reuse and int(reuse.group(2)) > int(reuse.group(1)) > 0, run.stdout
    assert "| sequences | smolvision BF16 (tok/s) | smolvision q8 (tok/s) |" in run.stdout, run.stdout
    for width in ("1", "2", "4", "8"):
        bf16, q8 = rows[width]
        assert float(bf16.split()[0]) > 0 and float(q8.split()[0]) > 0, (width, rows[width])
    rss = re.search(r"Peak RSS with 8 sequences of 64 tokens .*: (\d+) MB, of which the sequences hold (\d+) MB",
                    run.stdout)
    assert rss and int(rss.group(1)) > int(rss.group(2)) > 0, run.stdout


def test_sequence_tables_put_each_engine_next_to_its_peer():
    sequences = bench_module("sequences")
    workload = bench_module("workload")
    work = workload.Workload()
    columns = {"smolvision BF16": {1: 10.0, 2: 19.0, 4: 36.0, 8: 60.0},
               "smolvision q8": {1: 16.0, 2: 30.0, 4: 56.0, 8: 96.0},
               "llama.cpp BF16": {1: 12.5, 2: 19.0, 4: 30.0, 8: 48.0},
               "llama.cpp Q8_0": None}  # failed: its column and ratio left out
    lines = sequences.decode_table(work, columns).splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "sequences", "smolvision BF16 (tok/s)", "llama.cpp BF16 (tok/s)", "smolvision q8 (tok/s)",
        "smolvision BF16 / llama.cpp BF16"]
    rows = table_rows("\n".join(lines))
    assert rows["1"] == ["10.00 (1.00x)", "12.50 (1.00x)", "16.00 (1.00x)", "0.80x"]
    assert rows["8"] == ["60.00 (6.00x)", "48.00 (3.84x)", "96.00 (6.00x)", "1.25x"]

    first = {"ttft_s": 40.0, "total_s": 44.0}
    mine = {"first": first, "cached": {"ttft_s": 0.5, "total_s": 4.4}, "uncached": {"ttft_s": 38.0, "total_s": 42.0}}
    peer = {"first": {"ttft_s": 90.0, "total_s": 99.0}, "uncached": {"ttft_s": 95.0, "total_s": 110.0}}
    rows = table_rows(sequences.follow_up_table(mine, peer))
    assert rows["smolvision, cache on (default load())"] == ["40.0", "44.0", "0.500", "4.400", "80.0x", "10.0x"]
    assert rows["smolvision, cache off (load(cache_bytes=0))"][-2:] == ["1.1x", "1.0x"]  # against the same first turn
    assert rows["transformers BF16 (recomputes)"] == ["90.0", "99.0", "95.0", "110.0", "0.9x", "0.9x"]


# llama-batched-bench's stdout from llama-cpp-python 0.3.36's llama.cpp (-npp 16 -ntg 4 -npl 1,2,4,8 on the
# Q8_0 GGUF of make_model.py's 500m model, 2 threads on a busy machine), as captured.
BATCHED_BENCH_OUTPUT = """
llama_batched_bench: n_kv_max = 2048, n_batch = 2048, n_ubatch = 512, flash_attn = -1, is_pp_shared = 0, is_tg_separate = 0, n_gpu_layers = -1, n_threads = 2, n_threads_batch = 2

|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|    16 |      4 |    1 |     20 |    0.223 |    71.61 |    0.140 |    28.63 |    0.363 |    55.07 |
|    16 |      4 |    2 |     40 |    0.426 |    75.07 |    0.234 |    34.23 |    0.660 |    60.61 |
|    16 |      4 |    4 |     80 |    0.849 |    75.34 |    0.394 |    40.61 |    1.243 |    64.34 |
|    16 |      4 |    8 |    160 |    3.569 |    35.86 |    7.096 |     4.51 |   10.665 |    15.00 |

"""


def test_parse_batched_bench_reads_the_generation_rate_of_each_width():
    llama_cpp_peer = bench_module("llama_cpp_peer")
    stderr = "0.00.266.349 W llama_context: n_ctx is not divisible by n_seq_max - rounding down to 2048\n"
    rates = llama_cpp_peer.parse_batched_bench(BATCHED_BENCH_OUTPUT + "\n" + stderr)
    assert rates == {1: 28.63, 2: 34.23, 4: 40.61, 8: 4.51}  # S_TG t/s, not S_PP or S


def test_parse_batched_bench_without_a_table_says_so():
    llama_cpp_peer = bench_module("llama_cpp_peer")
    with pytest.raises(ValueError, match="S_TG"):
        llama_cpp_peer.parse_batched_bench("main: error: unable to load model\n")
    header_only = "\n".join(BATCHED_BENCH_OUTPUT.splitlines()[:5])
    with pytest.raises(ValueError):
        llama_cpp_peer.parse_batched_bench(header_only)
