"""llama.cpp as bench.py's optional peer: llama-bench on the text model in BF16, Q8_0 and Q4_K_M.

llama.cpp is built once from the source vendored in the llama-cpp-python sdist (pip download) into the
bench cache, and the text model converted with its own convert_hf_to_gguf.py.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

from workload import CACHE, Workload, log

LLAMA_QUANTS = ("BF16", "Q8_0", "Q4_K_M")


TARGETS = {"bench": "llama-bench", "quantize": "llama-quantize", "batched_bench": "llama-batched-bench",
           "server": "llama-server"}


def llama_cpp_tools(threads: int, need: tuple[str, ...] = ("bench", "quantize")) -> dict:
    """Paths of the llama.cpp programs in `need` (keys of TARGETS) and the convert script, building the
    missing ones once into CACHE.

    Raises RuntimeError with the reason when something cannot be fetched or built."""
    CACHE.mkdir(parents=True, exist_ok=True)
    sdists = sorted(glob.glob(str(CACHE / "sdist" / "llama_cpp_python-*.tar.gz")))
    if not sdists:
        log("llama.cpp: downloading the llama-cpp-python sdist (pip download)")
        for isolation in (["--no-build-isolation"], []):
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                            *isolation, "-d", str(CACHE / "sdist"), "llama-cpp-python"], stdout=sys.stderr)
            sdists = sorted(glob.glob(str(CACHE / "sdist" / "llama_cpp_python-*.tar.gz")))
            if sdists:
                break
        else:
            raise RuntimeError("pip download of the llama-cpp-python sdist failed")
    name = Path(sdists[-1]).name[:-len(".tar.gz")]
    source = CACHE / name / "vendor" / "llama.cpp"
    if not (source / "CMakeLists.txt").exists():
        log(f"llama.cpp: unpacking {name}")
        with tarfile.open(sdists[-1]) as archive:
            archive.extractall(CACHE, filter="data")
    build = CACHE / f"build-{name}"
    tools = {key: build / "bin" / target for key, target in TARGETS.items()}
    tools.update(convert=source / "convert_hf_to_gguf.py", version=name)
    missing = [TARGETS[key] for key in need if not tools[key].exists()]
    if missing:
        log(f"llama.cpp: building {', '.join(missing)} into {build} (once; long on few cores)")
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        # The server's web UI is left out: it would be downloaded (no network here) or built with npm.
        steps = [["cmake", "-S", str(source), "-B", str(build), *generator, "-DCMAKE_BUILD_TYPE=Release",
                  "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                  "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_UI=OFF",
                  "-DLLAMA_USE_PREBUILT_UI=OFF", "-DBUILD_SHARED_LIBS=OFF"],
                 ["cmake", "--build", str(build), "-j", str(max(threads, 1)), "--target", *missing]]
        for step in steps:
            if subprocess.run(step, stdout=sys.stderr).returncode != 0:
                raise RuntimeError(f"building llama.cpp failed at: {' '.join(step[:3])} ... {' '.join(missing)}")
    if not tools["convert"].exists():
        raise RuntimeError(f"{tools['convert']} is missing from the sdist")
    return tools


CONVERTER_IMPORTS = "import sentencepiece, torch"  # convert_hf_to_gguf.py imports both, whatever the tokenizer


def converter_python() -> str:
    """A Python that can run convert_hf_to_gguf.py: this one if it has sentencepiece and torch, else a venv
    in CACHE on top of this one's packages, with sentencepiece added."""
    if subprocess.run([sys.executable, "-c", CONVERTER_IMPORTS], capture_output=True).returncode == 0:
        return sys.executable
    venv = CACHE / "convert-venv"
    python = venv / "bin" / "python"
    # On a fresh machine the venv does not exist yet: running its python would raise FileNotFoundError.
    if not python.exists() or subprocess.run([str(python), "-c", CONVERTER_IMPORTS],
                                             capture_output=True).returncode != 0:
        log(f"llama.cpp: installing sentencepiece for convert_hf_to_gguf.py into {venv}")
        if subprocess.run([sys.executable, "-m", "venv", str(venv)], stdout=sys.stderr).returncode != 0:
            raise RuntimeError(f"could not create {venv} for the GGUF conversion")
        # This interpreter's packages (torch, numpy...) seen from the venv: --system-site-packages would
        # give the base interpreter's instead when this one is itself a venv.
        site_packages = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
        site_packages.mkdir(parents=True, exist_ok=True)
        (site_packages / "bench-parent.pth").write_text("\n".join(site.getsitepackages()) + "\n")
        install = [str(python), "-m", "pip", "install", "-q", "sentencepiece>=0.1.98,<0.3.0"]
        if subprocess.run(install, stdout=sys.stderr).returncode != 0:
            raise RuntimeError(f"could not install sentencepiece into {venv} for the GGUF conversion")
    return str(python)


def write_llama_checkpoint(model_dir: Path, out: Path) -> None:
    """The decoder of an Idefics3 directory as a plain LlamaForCausalLM checkpoint in `out`.

    Tensors are copied one at a time in their stored dtype (BF16), in shards of about 1 GB,
    so the whole model never sits in memory."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = json.loads((model_dir / "config.json").read_text())
    text = dict(config["text_config"], model_type="llama", architectures=["LlamaForCausalLM"],
                torch_dtype="bfloat16")
    text.setdefault("tie_word_embeddings", config.get("tie_word_embeddings", False))
    (out / "config.json").write_text(json.dumps(text, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (model_dir / name).exists():
            shutil.copy(model_dir / name, out / name)

    index = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else \
        ["model.safetensors"]
    weight_map, shard, shard_bytes, shard_count = {}, {}, 0, 0

    def flush() -> None:
        nonlocal shard, shard_bytes, shard_count
        if shard:
            shard_count += 1
            file = f"model-{shard_count:05d}.safetensors"
            save_file(shard, str(out / file), metadata={"format": "pt"})
            weight_map.update({key: file for key in shard})
            shard, shard_bytes = {}, 0

    for file in files:
        with safe_open(str(model_dir / file), framework="pt") as tensors:
            for key in tensors.keys():
                if key.startswith("model.text_model."):
                    target = "model." + key[len("model.text_model."):]
                elif key.startswith("text_model."):
                    target = "model." + key[len("text_model."):]
                elif key == "lm_head.weight":
                    target = key
                else:
                    continue
                tensor = tensors.get_tensor(key)
                shard[target] = tensor
                shard_bytes += tensor.numel() * tensor.element_size()
                if shard_bytes > 1 << 30:
                    flush()
    flush()
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def llama_cpp_models(tools: dict, model_dir: Path, quants: tuple[str, ...] = LLAMA_QUANTS) -> dict:
    """{quant: gguf path} for `quants` (BF16 and LLAMA_QUANTS' others), converted and quantized once per
    model directory."""
    stat = (model_dir / "config.json").stat()
    digest = hashlib.sha256(f"{model_dir.resolve()}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    key = f"{model_dir.resolve().name}-{digest}"
    folder = CACHE / "gguf" / key
    folder.mkdir(parents=True, exist_ok=True)
    paths = {quant: folder / f"text-{quant.lower()}.gguf" for quant in ("BF16", *quants)}
    if not paths["BF16"].exists():
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            log("llama.cpp: writing the text model as a Llama checkpoint")
            write_llama_checkpoint(model_dir, Path(tmp))
            log("llama.cpp: converting to GGUF BF16")
            partial = paths["BF16"].with_suffix(".partial")
            convert = subprocess.run([converter_python(), str(tools["convert"]), tmp, "--outtype", "bf16", "--outfile",
                                      str(partial)], stdout=sys.stderr)
            if convert.returncode != 0:
                raise RuntimeError("convert_hf_to_gguf.py failed")
            partial.rename(paths["BF16"])
    for quant in quants:
        if quant != "BF16" and not paths[quant].exists():
            log(f"llama.cpp: quantizing to {quant}")
            partial = paths[quant].with_suffix(".partial")
            if subprocess.run([str(tools["quantize"]), str(paths["BF16"]), str(partial), quant],
                              stdout=sys.stderr, stderr=subprocess.DEVNULL).returncode != 0:
                raise RuntimeError(f"llama-quantize to {quant} failed")
            partial.rename(paths[quant])
    return {quant: paths[quant] for quant in quants}


def run_llama_bench(tools: dict, gguf: Path, threads: int, work: Workload) -> dict:
    """Prefill/decode tokens/s and peak RSS of llama-bench on one GGUF.  A run that fails leaves its field
    out (an empty cell) and says why under "failed": llama.cpp 0.3.36's AMX matmul, for one, crashes
    (SIGSEGV in ggml_backend_amx_mul_mat) on Q8_0 and Q4_K_M prompts on Sapphire Rapids."""
    out, peak, failed = {}, 0.0, []
    runs = [("prefill_tok_s", ["-p", str(work.prefill_tokens), "-n", "0"]),
            ("decode_short_tok_s", ["-p", "0", "-n", str(work.short_decode)]),
            ("decode_long_tok_s", ["-p", "0", "-n", str(work.long_decode), "-d", str(work.long_prompt)])]
    for field, sizes in runs:
        with tempfile.NamedTemporaryFile("w+", suffix=".json") as report:
            command = [str(tools["bench"]), "-m", str(gguf), "-t", str(threads), "-r", "1" if work.repeats < 2 else "2",
                       *sizes, "-o", "json"]
            process = subprocess.Popen(command, stdout=report, stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(process.pid, 0)
            code = os.waitstatus_to_exitcode(status)
            report.seek(0)
            rows = json.loads(report.read() or "[]") if code == 0 else []
            if not rows:
                why = f"signal {-code}" if code < 0 else f"exit status {code}"
                failed.append(f"{field} ({why}: {' '.join(command)})")
                log(f"llama.cpp: llama-bench failed, {field} left empty: {why}")
                continue
            peak = max(peak, usage.ru_maxrss / 1024)
            out[field] = rows[0]["avg_ts"]
    out["peak_rss_mb"] = peak
    if failed:
        out["failed"] = failed
    return out


def run_llama_cpp(args: argparse.Namespace, work: Workload) -> dict:
    """{quant: results}; empty (with a message) when llama.cpp could not be built or run."""
    try:
        tools = llama_cpp_tools(args.threads)
        models = llama_cpp_models(tools, Path(args.model))
        results = {}
        for quant, gguf in models.items():
            log(f"llama.cpp: llama-bench {quant}")
            results[quant] = run_llama_bench(tools, gguf, args.threads, work)
            results[quant]["version"] = tools["version"]
        return results
    except (RuntimeError, OSError, ValueError, KeyError) as error:
        log(f"llama.cpp columns skipped: {error}")
        return {}


# ---------------------------------------------------------------- llama-batched-bench (aggregate decode)

def parse_batched_bench(output: str) -> dict[int, float]:
    """{parallel sequences B: S_TG t/s} from the markdown table llama-batched-bench prints (one row per
    width of -npl, for the one -npp/-ntg pair bench.py passes).  ValueError when there is no table."""
    header, rates = None, {}
    for line in output.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if header is None:
            if "B" in cells and "S_TG t/s" in cells:
                header = cells
            continue
        if len(cells) != len(header) or all(set(cell) <= {"-"} for cell in cells):
            continue  # the separator line, or something else the tool logged between rows
        row = dict(zip(header, cells))
        rates[int(row["B"])] = float(row["S_TG t/s"])
    if not rates:
        raise ValueError("no table with an S_TG t/s column in llama-batched-bench's output")
    return rates


def run_batched_bench(tools: dict, gguf: Path, threads: int, widths: list[int], prompt: int, steps: int) -> dict:
    """{width: generated tokens/s over all sequences} of llama-batched-bench on one GGUF: each of `width`
    sequences gets its own `prompt`-token prompt (not shared), then `steps` decode steps of all together."""
    context = max(widths) * (prompt + steps)
    command = [str(tools["batched_bench"]), "-m", str(gguf), "-t", str(threads), "-c", str(context),
               "-b", "2048", "-ub", "512", "-npp", str(prompt), "-ntg", str(steps),
               "-npl", ",".join(map(str, widths))]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"llama-batched-bench failed: {' '.join(command)}\n{run.stderr[-2000:]}")
    return parse_batched_bench(run.stdout + "\n" + run.stderr)


def run_llama_batched(args: argparse.Namespace, widths: list[int], prompt: int, steps: int) -> dict:
    """{quant: {width: tok/s}} for BF16 and Q8_0; empty (with a message) when llama.cpp could not be built or run."""
    try:
        tools = llama_cpp_tools(args.threads, need=("quantize", "batched_bench"))
        models = llama_cpp_models(tools, Path(args.model), quants=("BF16", "Q8_0"))
    except (RuntimeError, OSError, ValueError, KeyError) as error:
        log(f"llama.cpp batched columns skipped: {error}")
        return {}
    results = {}
    for quant, gguf in models.items():  # one failing (Q8_0's AMX prompt path crashes on Sapphire Rapids) spares the other
        log(f"llama.cpp: llama-batched-bench {quant}, widths {widths}")
        try:
            results[quant] = run_batched_bench(tools, gguf, args.threads, widths, prompt, steps)
        except (RuntimeError, OSError, ValueError, KeyError) as error:
            log(f"llama.cpp {quant} batched column skipped: {error}")
            continue
        log(f"llama.cpp {quant}: " + ", ".join(f"{w}: {r:.2f}" for w, r in results[quant].items()) + " tok/s")
    return results
