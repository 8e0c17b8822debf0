"""smolvision against its peers, one table from one run.

    PYTHONPATH=. python3 bench/bench.py --model DIR [--threads 2] [--llama-cpp] [--quant] [--no-peers] [--quick]
                                        [--sequences | --only-sequences]

Phases (each engine in its own subprocess, so peak RSS is that engine's own):
  vision encode   one image_size x image_size tile (384 for SmolVLM-Instruct), seconds
  prefill         a 512-token text prompt, tokens/s
  decode          64 tokens after a short prompt, and 32 tokens after a ~1.5k-token prompt, tokens/s
  end to end      one 384x384 image with the model's default splitting + 32 generated tokens,
                  preprocessing included, seconds
  peak RSS        the engine process's high-water mark (ru_maxrss of the child), MB

Engines: smolvision; transformers (Idefics3ForConditionalGeneration, BF16 weights,
torch.set_num_threads(threads)) for every phase; with --llama-cpp, llama.cpp's
llama-bench on the text model for prefill/decode in BF16, Q8_0 and Q4_K_M.  llama.cpp
is built from the source vendored in the llama-cpp-python sdist from PyPI (pip
download) into ~/.cache/smolvision-bench/ once, and the text model converted with its
own convert_hf_to_gguf.py; any failure there drops those columns with a message.

With --quant, two more smolvision columns: load(quant="q8") and quant="q4" on the
prefill and decode rows (text only, like llama.cpp's columns), next to llama.cpp's Q8_0 and
Q4_K_M.  The first run converts the model once into the smolvision cache (seconds).

Machine limits (the last column) come from bench/machine_limits.c compiled on the fly:
read bandwidth and FP32/BF16 FMA peaks with the same thread count (from the threads' CPU
time, which on an idle machine is the wall time and on a shared one still the hardware's).  Decode's limit is
the BF16 decoder weights streamed once per token at that bandwidth, and at the bandwidth the model's
own weight files read at where the page cache holds them (the pages BF16 decode streams: on a VM
their speed varies with where they landed); prefill, vision and
the end-to-end run are bounded by their FLOPs at the FP32 peak (BF16 peak in brackets).
Ratios are speedups of smolvision over the best peer with the same kind of weights (BF16
against transformers BF16 and llama.cpp BF16; with --quant, q8 against Q8_0 and q4 against
Q4_K_M): above 1 means smolvision is faster (or smaller, for RSS).

With --sequences (or --only-sequences, without the phase table) a second section follows with the
rows of issue 13, from bench/sequences.py: the follow-up turn about the same image (smolvision
with its cache, with load(cache_bytes=0), transformers), aggregate decode tok/s of 1, 2, 4, 8
sequences in BF16 and q8 next to llama.cpp's llama-batched-bench (with --llama-cpp) on the same
weights, and the peak RSS of a process holding 8 sequences of 2048 tokens.

--quick shrinks every phase (short prompts, few tokens, one short limits run) so that
the script can be smoke-tested on a tiny model in seconds.  Wall-clock figures on a
shared machine measure the other tenants too; the header shows the load average.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import sequences
from llama_cpp_peer import run_llama_batched, run_llama_cpp
from workload import CACHE, Workload, log, prompt_ids, test_image, tile_pixels

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- inputs both engines share

def best_seconds(run, repeats: int) -> float:
    """The shortest wall time of `repeats` calls of run()."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


# ---------------------------------------------------------------- engine workers (subprocesses)

def worker_smolvision(model_dir: str, threads: int, work: Workload) -> dict:
    import smolvision

    config = json.loads((Path(model_dir) / "config.json").read_text())
    start = time.perf_counter()
    model = smolvision.load(model_dir, threads=threads)
    features = smolvision.cpu_features()
    out = {"load_s": time.perf_counter() - start, "build_info": smolvision.build_info(),
           "kernels": f"vision, prefill and their attention: {features['bf16_gemm']}; decode: "
                      + ("the AVX512_BF16 dot" if features["bf16_matmul"] else f"the {features['kernels']} dot")
                      + f"; q8/q4 columns {features['quant_kernels']}; ISA level {features['kernels']}, "
                        f"AMX {features['amx']}",
           "precision": f"{model.precision} (the default; "
                        + ("BF16 x BF16 products summed in FP32)" if features["bf16_matmul"]
                           and model.precision == "bf16" else "FP32 activations and accumulation)")}
    no_eos = {"eos_token_ids": (), "temperature": 0.0}

    # Warm-up: the first calls fault the memory-mapped weights in from the page cache.
    pixels = tile_pixels(config)
    model.encode_pixel_values(pixels)
    model.generate_ids(prompt_ids(config, 8, 0), max_tokens=2, **no_eos)

    out["vision_s_per_tile"] = best_seconds(lambda: model.encode_pixel_values(pixels), work.repeats)
    log(f"smolvision: vision {out['vision_s_per_tile']:.3f} s/tile")

    result = model.generate_ids(prompt_ids(config, work.prefill_tokens, 3), max_tokens=1, **no_eos)
    out["prefill_tok_s"] = result.timings.prefill_tokens_per_s
    log(f"smolvision: prefill {out['prefill_tok_s']:.1f} tok/s")

    result = model.generate_ids(prompt_ids(config, work.short_prompt, 4), max_tokens=work.short_decode + 1, **no_eos)
    out["decode_short_tok_s"] = _decode_rate(result.timings)
    result = model.generate_ids(prompt_ids(config, work.long_prompt, 5), max_tokens=work.long_decode + 1, **no_eos)
    out["decode_long_tok_s"] = _decode_rate(result.timings)
    log(f"smolvision: decode {out['decode_short_tok_s']:.2f} / {out['decode_long_tok_s']:.2f} tok/s")

    start = time.perf_counter()
    result = model.generate("Describe this image.", images=[test_image(work.image_edge)], max_tokens=work.e2e_tokens)
    out["e2e_s"] = time.perf_counter() - start
    out["e2e_tiles"] = result.n_tiles
    out["e2e_prompt_tokens"] = result.prompt_tokens
    out["e2e_generated"] = len(result.token_ids)
    log(f"smolvision: end to end {out['e2e_s']:.2f} s ({result.n_tiles} tiles)")
    model.close()
    return out


def _decode_rate(timings) -> float:
    """Tokens/s of the decode steps: the first id comes from prefill, each later one from a decoder step."""
    steps = timings.generated_tokens - 1
    return steps / timings.decode_s if timings.decode_s > 0 and steps > 0 else 0.0


def worker_transformers(model_dir: str, threads: int, work: Workload) -> dict:
    import torch
    import transformers
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration

    torch.set_num_threads(threads)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    start = time.perf_counter()
    model = Idefics3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    out = {"load_s": time.perf_counter() - start, "version": f"transformers {transformers.__version__}, "
                                                              f"torch {torch.__version__}"}

    def prefill(ids: np.ndarray):
        return model(input_ids=torch.from_numpy(ids)[None], use_cache=True)

    def decode(ids: np.ndarray, steps: int) -> float:
        """Tokens/s of `steps` greedy decoder steps after prefilling ids."""
        outputs = prefill(ids)
        cache, token = outputs.cache, outputs.logits[:, -1].argmax(-1, keepdim=True)
        start = time.perf_counter()
        for _ in range(steps):
            outputs = model(input_ids=token, cache=cache, use_cache=True)
            cache, token = outputs.cache, outputs.logits[:, -1].argmax(-1, keepdim=True)
        return steps / (time.perf_counter() - start)

    pixels = torch.from_numpy(tile_pixels(config)).to(torch.bfloat16)[None]  # [batch 1, 1 tile, 3, S, S]
    with torch.inference_mode():
        model.get_image_features(pixel_values=pixels)
        decode(prompt_ids(config, 8, 0), 1)

        out["vision_s_per_tile"] = best_seconds(lambda: model.get_image_features(pixel_values=pixels), work.repeats)
        log(f"transformers: vision {out['vision_s_per_tile']:.3f} s/tile")

        ids = prompt_ids(config, work.prefill_tokens, 3)
        start = time.perf_counter()
        prefill(ids)
        out["prefill_tok_s"] = len(ids) / (time.perf_counter() - start)
        log(f"transformers: prefill {out['prefill_tok_s']:.1f} tok/s")

        out["decode_short_tok_s"] = decode(prompt_ids(config, work.short_prompt, 4), work.short_decode)
        out["decode_long_tok_s"] = decode(prompt_ids(config, work.long_prompt, 5), work.long_decode)
        log(f"transformers: decode {out['decode_short_tok_s']:.2f} / {out['decode_long_tok_s']:.2f} tok/s")

        from PIL import Image

        start = time.perf_counter()
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=text, images=[[Image.fromarray(test_image(work.image_edge))]], return_tensors="pt")
        inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
        generated = model.generate(**inputs, max_new_tokens=work.e2e_tokens, min_new_tokens=work.e2e_tokens,
                                   do_sample=False)
        out["e2e_s"] = time.perf_counter() - start
        out["e2e_generated"] = generated.shape[1] - inputs["input_ids"].shape[1]
        out["e2e_tiles"] = inputs["pixel_values"].shape[1]
        out["e2e_prompt_tokens"] = inputs["input_ids"].shape[1]
        log(f"transformers: end to end {out['e2e_s']:.2f} s")
    return out


def worker_smolvision_quant(quant: str):
    """The prefill and decode phases with load(quant=quant): the text path is all that quantization changes."""
    def worker(model_dir: str, threads: int, work: Workload) -> dict:
        import smolvision

        config = json.loads((Path(model_dir) / "config.json").read_text())
        start = time.perf_counter()
        model = smolvision.load(model_dir, threads=threads, quant=quant, on_log=lambda m: log(f"smolvision: {m}"))
        out = {"load_s": time.perf_counter() - start, "build_info": smolvision.build_info()}
        no_eos = {"eos_token_ids": (), "temperature": 0.0}
        model.generate_ids(prompt_ids(config, 8, 0), max_tokens=2, **no_eos)  # warm-up: fault the weights in
        result = model.generate_ids(prompt_ids(config, work.prefill_tokens, 3), max_tokens=1, **no_eos)
        out["prefill_tok_s"] = result.timings.prefill_tokens_per_s
        result = model.generate_ids(prompt_ids(config, work.short_prompt, 4), max_tokens=work.short_decode + 1,
                                    **no_eos)
        out["decode_short_tok_s"] = _decode_rate(result.timings)
        result = model.generate_ids(prompt_ids(config, work.long_prompt, 5), max_tokens=work.long_decode + 1,
                                    **no_eos)
        out["decode_long_tok_s"] = _decode_rate(result.timings)
        log(f"smolvision {quant}: prefill {out['prefill_tok_s']:.1f} tok/s, decode "
            f"{out['decode_short_tok_s']:.2f} / {out['decode_long_tok_s']:.2f} tok/s")
        model.close()
        return out
    return worker


WORKERS = {"smolvision": worker_smolvision, "transformers": worker_transformers,
           "smolvision-q8": worker_smolvision_quant("q8"), "smolvision-q4": worker_smolvision_quant("q4"),
           **{f"sequences-{name}": worker for name, worker in sequences.WORKERS.items()}}


def run_child(command: list, env: dict | None = None) -> tuple:
    """(exit status, peak RSS in MB) of a subprocess; its stdout/stderr pass through to stderr."""
    process = subprocess.Popen(command, stdout=sys.stderr, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return process.returncode, usage.ru_maxrss / scale


def smolvision_home() -> str:
    """The folder holding the smolvision package this script imports (installed, or the source tree
    under PYTHONPATH=.), so the engine workers run that same build."""
    import smolvision

    return str(Path(smolvision.__file__).resolve().parent.parent)


def run_engine(name: str, args: argparse.Namespace) -> dict | None:
    """One engine's results (its worker in a fresh interpreter), or None with a message if it failed."""
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--model", args.model,
                   "--threads", str(args.threads), "--result-file", str(result_file)]
        if args.quick:
            command.append("--quick")
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [smolvision_home(), env.get("PYTHONPATH")]))
        log(f"running {name}")
        status, rss_mb = run_child(command, env)
        if status != 0 or not result_file.exists():
            log(f"{name} failed (exit status {status}); its column stays empty")
            return None
        result = json.loads(result_file.read_text())
        result["peak_rss_mb"] = rss_mb
        return result


# ---------------------------------------------------------------- machine limits

def machine_limits(threads: int, quick: bool, weight_files: list[Path]) -> dict | None:
    """Bandwidth and FMA peaks from bench/machine_limits.c, or None with a message if it cannot run; also the
    read bandwidth of weight_files' pages where the page cache holds them (what decode streams)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if platform.machine() not in ("x86_64", "AMD64") or compiler is None:
        log("machine limits: needs an x86-64 C compiler; column left empty")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "machine_limits"
        build = subprocess.run([compiler, "-O2", "-pthread", str(HERE / "machine_limits.c"), "-o", str(binary)],
                               capture_output=True, text=True)
        if build.returncode != 0:
            log(f"machine limits: compiling failed, column left empty:\n{build.stderr}")
            return None
        sizes = ["64", "1"] if quick else ["2048", "20"]  # MB read, millions of FMA rounds
        run = subprocess.run([str(binary), str(threads), *sizes, *map(str, weight_files)], capture_output=True,
                             text=True)
    if run.returncode != 0:
        log(f"machine limits: {run.stderr.strip()}; column left empty")
        return None
    return json.loads(run.stdout)


@dataclass(frozen=True)
class Costs:
    """FLOPs and bytes of the phases, from the config's shapes (matmuls and attention only)."""

    tile_flops: float
    token_flops: float  # decoder, per prompt token, attention excluded
    attention_flops_per_pair: float  # decoder, per (query, key) pair over all layers
    decode_bytes: float  # BF16 decoder weights one token reads

    @classmethod
    def of(cls, config: dict) -> Costs:
        v, t = config["vision_config"], config["text_config"]
        vh, vi, vl = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
        patches = (v["image_size"] // v["patch_size"]) ** 2
        tile = 2 * patches * (vl * (4 * vh * vh + 2 * vh * vi) + 3 * v["patch_size"] ** 2 * vh)
        tile += 4 * patches * patches * vh * vl
        h, inter, layers = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
        tile += 2 * patches * vh * h  # connector: patches / s^2 rows of vh * s^2 -> h
        head_dim = t.get("head_dim") or h // t["num_attention_heads"]
        kv = t.get("num_key_value_heads", t["num_attention_heads"]) * head_dim
        weights = layers * (2 * h * h + 2 * h * kv + 3 * h * inter) + t["vocab_size"] * h
        return cls(tile_flops=tile, token_flops=2 * weights,
                   attention_flops_per_pair=4 * t["num_attention_heads"] * head_dim * layers,
                   decode_bytes=2 * weights)

    def prefill_flops(self, tokens: int) -> float:
        return tokens * self.token_flops + self.attention_flops_per_pair * tokens * (tokens + 1) / 2


def limit_cells(limits: dict | None, costs: Costs, work: Workload, e2e: dict | None) -> dict:
    """The machine-limit cell of each row (text), from measured peaks and the phase costs."""
    if limits is None:
        return {}
    # The CPU-time figures: on an idle machine they equal the wall-clock ones, on a shared one
    # they are still the hardware's ceiling.
    fp32, bf16, bw = limits["fp32_gflop_s_cpu"] * 1e9, limits["bf16_gflop_s_cpu"], limits["read_gb_s_cpu"] * 1e9
    # AMX: the tiles fed from L1 with varied data, below the instruction's own peak, which no GEMM reaches
    amx = limits.get("amx_bf16_l1_gflop_s_cpu")

    def compute(flops: float, unit: str, per_second: bool) -> str:
        """The bound at the FP32 peak (and at the BF16 one): flops per item -> items/s or s/item."""
        def bound(peak: float) -> str:
            return _number(peak / flops if per_second else flops / peak)
        return (f"{'≤' if per_second else '≥'} {bound(fp32)} {unit}" + (f" ({bound(bf16 * 1e9)} BF16)" if bf16 else "")
                + (f" ({bound(amx * 1e9)} AMX)" if amx else ""))

    # q8 / q4 store 8.5 / 4.5 bits a weight (blocks of 32 with an fp16 scale) instead of BF16's 16
    decode_limit = (f"≤ {_number(bw / costs.decode_bytes)} tok/s (BF16 weights at that bandwidth; "
                    f"q8 {_number(bw / (costs.decode_bytes * 8.5 / 16))}, q4 {_number(bw / (costs.decode_bytes * 4.5 / 16))})")
    if limits.get("file_read_gb_s_cpu"):  # BF16 decode reads the file's pages (q8 / q4: fresh anonymous memory)
        decode_limit += f"; BF16 {_number(limits['file_read_gb_s_cpu'] * 1e9 / costs.decode_bytes)} at its pages' bandwidth"
    cells = {
        "vision": compute(costs.tile_flops, "s", False),
        "prefill": compute(costs.prefill_flops(work.prefill_tokens) / work.prefill_tokens, "tok/s", True),
        "decode_short": decode_limit,
        "decode_long": decode_limit,
    }
    if e2e and e2e.get("e2e_tiles") is not None:
        flops = e2e["e2e_tiles"] * costs.tile_flops + costs.prefill_flops(e2e["e2e_prompt_tokens"])
        decode_s = work.e2e_tokens * costs.decode_bytes / bw
        cells["e2e"] = f"≥ {_number(flops / fp32 + decode_s)} s" + \
            (f" ({_number(flops / (bf16 * 1e9) + decode_s)} BF16)" if bf16 else "")
    return cells


# ---------------------------------------------------------------- the table

ROWS = [  # key, label, unit, higher is better
    ("vision", "vision encode, 1 tile", "s/tile", False),
    ("prefill", "prefill, {prefill_tokens} tokens", "tok/s", True),
    ("decode_short", "decode, {short_decode} tokens at context {short_prompt}", "tok/s", True),
    ("decode_long", "decode, {long_decode} tokens at context {long_prompt}", "tok/s", True),
    ("e2e", "end to end: {image_edge}x{image_edge} image + {e2e_tokens} tokens", "s", False),
    ("rss", "peak RSS", "MB", False),
]
FIELDS = {"vision": "vision_s_per_tile", "prefill": "prefill_tok_s", "decode_short": "decode_short_tok_s",
          "decode_long": "decode_long_tok_s", "e2e": "e2e_s", "rss": "peak_rss_mb"}


def _number(value: float) -> str:
    if value < 0.001:
        return f"{value:.1e}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


# Ratio columns: a smolvision column against the peers with the same kind of weights.
COMPARISONS = [("smolvision", ("transformers BF16", "llama.cpp BF16"), "BF16: smolvision vs best peer"),
               ("smolvision q8", ("llama.cpp Q8_0",), "q8 vs Q8_0"),
               ("smolvision q4", ("llama.cpp Q4_K_M",), "q4 vs Q4_K_M")]


def table(work: Workload, engines: dict, limits: dict) -> str:
    """The markdown table: one row per phase, one column per engine, then smolvision's speedup over the best
    peer with the same kind of weights (BF16, 8-bit, 4-bit), and the machine's limit."""
    comparisons = [c for c in COMPARISONS if c[0] in engines and any(p in engines for p in c[1])]
    header = ["phase", "unit", *engines, *(c[2] for c in comparisons), "machine limit"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, label, unit, higher in ROWS:
        values = {name: (result or {}).get(FIELDS[key]) for name, result in engines.items()}
        cells = [_number(values[name]) if values[name] else "–" for name in engines]
        ratios = []
        for mine_name, peer_names, _ in comparisons:
            mine = values.get(mine_name)
            # Peak RSS compares engines that hold the whole model (llama.cpp runs the text model only).
            same_work = [name for name in peer_names if name in engines and
                         (key != "rss" or (engines[name] or {}).get("vision_s_per_tile"))]
            peer_values = [values[name] for name in same_work if values[name]]
            ratio = "–"
            if mine and peer_values:
                best = max(peer_values) if higher else min(peer_values)
                ratio = f"{(mine / best if higher else best / mine):.2f}x"
            ratios.append(ratio)
        lines.append("| " + " | ".join([label.format(**work.__dict__), unit, *cells, *ratios, limits.get(key, "–")])
                     + " |")
    return "\n".join(lines)


def best_of(first: dict | None, again: dict | None) -> dict | None:
    """Two runs of one engine merged field by field: the faster figure of each phase, the larger peak RSS."""
    if not first or not again:
        return first or again
    merged = dict(first)
    for key, _, _, higher in ROWS:
        field = FIELDS[key]
        values = [v for v in (first.get(field), again.get(field)) if v]
        if values:
            merged[field] = max(values) if higher or key == "rss" else min(values)
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="SmolVLM model directory (make the 2.2B random one with "
                                        "`python3 shared/tools/make_model.py instruct DIR`)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-cpp", action="store_true",
                        help=f"also build (once, into {CACHE}) and run llama.cpp's llama-bench")
    parser.add_argument("--quant", action="store_true",
                        help="also smolvision with load(quant='q8') and quant='q4' (prefill and decode rows)")
    parser.add_argument("--no-peers", action="store_true", help="smolvision and the machine limits only")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run smolvision and llama.cpp this many times, one after the other, and keep each "
                             "phase's best: memory bandwidth on shared hosts drifts by minutes, and interleaved "
                             "rounds give both engines the same chances (transformers runs once)")
    parser.add_argument("--sequences", action="store_true",
                        help="also the rows of issue 13 after the phase table: follow-up turn (cache on / off, "
                             "transformers), aggregate decode of 1-8 sequences (BF16, q8; llama-batched-bench with "
                             "--llama-cpp), peak RSS of 8 sequences of 2k tokens")
    parser.add_argument("--only-sequences", action="store_true", help="the --sequences rows without the phase table")
    parser.add_argument("--quick", action="store_true", help="tiny phases, for smoke-testing the script")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Workload.quick() if args.quick else Workload()
    if not args.model or not (Path(args.model) / "config.json").exists():
        parser.error("--model DIR must be a SmolVLM model directory; make the 2.2B one (random weights) with\n"
                     "  python3 shared/tools/make_model.py instruct DIR")

    if args.worker:
        result = WORKERS[args.worker](args.model, args.threads, work)
        Path(args.result_file).write_text(json.dumps(result))
        return

    config = json.loads((Path(args.model) / "config.json").read_text())
    load_before = os.getloadavg()[0]
    header = [f"## smolvision benchmark, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n",
              f"- model: `{args.model}` (text hidden {config['text_config']['hidden_size']}, "
              f"{config['text_config']['num_hidden_layers']} layers; vision {config['vision_config']['image_size']} px)",
              f"- CPU: {cpu_name()}, {os.cpu_count()} logical CPUs, {args.threads} threads per engine; "
              f"load average before the run {load_before:.1f}"]
    if args.only_sequences:
        print("\n".join(header) + "\n", flush=True)
    else:
        phases(args, work, config, header)
    if args.sequences or args.only_sequences:
        print(sequence_rows(args, work))


def cpu_name() -> str:
    if not Path("/proc/cpuinfo").exists():
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())


def sequence_rows(args: argparse.Namespace, work: Workload) -> str:
    """The --sequences section (bench/sequences.py): each worker in its own process, then llama-batched-bench."""
    follow = run_engine("sequences-follow-up", args)
    follow_peer = None if args.no_peers else run_engine("sequences-transformers-follow-up", args)
    columns = {"smolvision BF16": sequences.rates_of(run_engine("sequences-batched", args)),
               "smolvision q8": sequences.rates_of(run_engine("sequences-batched-q8", args))}
    if not args.no_peers and args.llama_cpp:
        for quant, rates in run_llama_batched(args, list(work.batch_widths), work.batch_prompt,
                                              work.batch_decode).items():
            columns[f"llama.cpp {quant}"] = rates
    elif not args.no_peers:
        log("llama.cpp batched columns skipped: pass --llama-cpp to build and run llama-batched-bench")
    rss = run_engine("sequences-rss", args)
    return sequences.section(work, follow, follow_peer, columns, rss)


def phases(args: argparse.Namespace, work: Workload, config: dict, header: list[str]) -> None:
    """The phase table: every engine on vision, prefill, decode, end to end and peak RSS."""
    log("measuring the machine limits")
    limits = machine_limits(args.threads, args.quick, sorted(Path(args.model).glob("*.safetensors")))
    engines: dict = {"smolvision": None}
    for round_ in range(max(args.rounds, 1)):
        if args.rounds > 1:
            log(f"round {round_ + 1} of {args.rounds}")
        engines["smolvision"] = best_of(engines["smolvision"], run_engine("smolvision", args))
        if args.quant:
            for quant in ("q8", "q4"):
                name = f"smolvision {quant}"
                engines[name] = best_of(engines.get(name), run_engine(f"smolvision-{quant}", args))
        if not args.no_peers and round_ == 0:
            engines["transformers BF16"] = run_engine("transformers", args)
        if not args.no_peers and args.llama_cpp:
            for quant, result in run_llama_cpp(args, work).items():
                name = f"llama.cpp {quant}"
                engines[name] = best_of(engines.get(name), result)
    if not args.no_peers and not args.llama_cpp:
        log("llama.cpp columns skipped: pass --llama-cpp to build and run llama-bench")

    mine = engines["smolvision"] or {}
    print("\n".join(header))
    if args.rounds > 1:
        print(f"- {args.rounds} interleaved rounds of smolvision and llama.cpp: each phase's best round "
              f"(transformers: one run)")
    print(f"- smolvision build: {mine.get('build_info', '?')}; precision: {mine.get('precision', '?')}")
    print(f"- smolvision kernels that ran, per phase (smolvision.cpu_features()): {mine.get('kernels', '?')}")
    if engines.get("transformers BF16"):
        print(f"- peer: {engines['transformers BF16']['version']}, BF16 weights and compute")
    llama = [result for name, result in engines.items() if name.startswith("llama.cpp") and result]
    if llama:
        print(f"- peer: llama.cpp from {llama[0]['version']} (llama-bench, text model only: no vision/e2e rows, "
              f"and its RSS is not compared)")
    for name, result in engines.items():
        for failure in (result or {}).get("failed", []):
            print(f"- {name} failed, cell left empty: {failure}")
    if limits:
        bf16 = f"{limits['bf16_gflop_s']} GFLOP/s" if limits["bf16_gflop_s"] else "not on this CPU"
        amx = (f"{limits['amx_bf16_gflop_s']} GFLOP/s (its operands loaded from L1: {limits['amx_bf16_l1_gflop_s']}, "
               f"from L2 as a GEMM's blocks: {limits['amx_bf16_l2_gflop_s']})") if limits.get("amx_bf16_gflop_s") else "not here"
        print(f"- machine ({limits['threads']} threads, {limits['isa']}): read bandwidth {limits['read_gb_s']} GB/s, "
              f"FP32 FMA peak {limits['fp32_gflop_s']} GFLOP/s, BF16 dot-product peak {bf16}, "
              f"AMX BF16 tile peak {amx}")
        cpu_bf16 = f", BF16 {limits['bf16_gflop_s_cpu']}" if limits["bf16_gflop_s_cpu"] else ""
        print(f"  (from CPU time, i.e. what an idle machine gives: {limits['read_gb_s_cpu']} GB/s, "
              f"FP32 {limits['fp32_gflop_s_cpu']}{cpu_bf16} GFLOP/s)")
        if limits.get("file_read_gb_s_cpu"):
            print(f"- the model's weight files read where the page cache holds them: {limits['file_read_gb_s_cpu']} GB/s "
                  f"({limits['file_pmd_mapped_mb']} MB of them in 2 MiB mappings); decode streams these pages, whose "
                  f"speed can differ from fresh memory's (on a VM, the same file measured 23.5 and 31 GB/s from "
                  f"different page-cache pages)")
    if mine.get("e2e_generated") is not None and mine["e2e_generated"] < work.e2e_tokens:
        print(f"- note: smolvision stopped at EOS after {mine['e2e_generated']} of {work.e2e_tokens} tokens")
    for name, result in engines.items():
        if result and result.get("e2e_tiles") is not None:
            print(f"- end to end, {name}: {result['e2e_tiles']} tiles, {result['e2e_prompt_tokens']} prompt tokens")
    print()
    print(table(work, engines, limit_cells(limits, Costs.of(config), work, mine)), end="\n\n", flush=True)



if __name__ == "__main__":
    main()
