"""bench/bench_sequences.py: what keeping sequences buys (issue 13), smolvision alone.

    PYTHONPATH=. python3 bench/bench_sequences.py --model DIR [--threads 2] [--precision bf16] [--quant q8]
                                                  [--widths 1,2,4,8] [--steps 32] [--context 512] [--quick]

Rows:
- follow-up turn: a second question about the same default-split image (the first turn's answer in
  the conversation), time to first token and total, with the cache (prefix reuse + image cache) and
  without it (Model.clear_cache() before the turn: everything recomputed, as a one-shot engine does);
- aggregate decode: tokens/s of `steps` sv_decode_batch steps over 1, 2, 4, 8 sequences at a context
  of `context` tokens each (every sequence advancing one token per step);
- peak RSS of the process (ru_maxrss) after all of it.

The peers' rows (transformers for the follow-up, llama.cpp's llama-batched-bench for aggregate
decode) belong next to these in bench/bench.py; this script measures smolvision's side.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import smolvision  # noqa: E402
from smolvision.sequence import decode_batch  # noqa: E402


def test_image(edge: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(edge, edge, 3), dtype=np.uint8)


def follow_up(model, edge: int, tokens: int) -> dict:
    """{first, cached, uncached}: (time to first token, total) of the turns."""
    image = test_image(edge)
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    out = {}

    def timed(messages) -> tuple[float, float, smolvision.Result]:
        first = []
        start = time.perf_counter()

        def on_token(piece: str) -> None:
            if not first:
                first.append(time.perf_counter() - start)
        result = model.generate(messages=messages, images=[image], max_tokens=tokens, on_token=on_token)
        total = time.perf_counter() - start
        return first[0] if first else total, total, result

    ttft, total, first = timed(turn)
    out["first"] = (ttft, total)
    conversation = turn + [{"role": "assistant", "content": first.text},
                           {"role": "user", "content": "What colours stand out?"}]
    ttft, total, cached = timed(conversation)
    out["cached"] = (ttft, total, cached.cached_tokens, cached.cached_images, cached.prompt_tokens)
    model.clear_cache()
    ttft, total, _ = timed(conversation)
    out["uncached"] = (ttft, total)
    return out


def aggregate_decode(model, widths: list[int], context: int, steps: int) -> dict:
    rng = np.random.default_rng(1)
    rates = {}
    for width in widths:
        seqs = [model.sequence() for _ in range(width)]
        try:
            for seq in seqs:
                seq.reserve(context + steps + 1)
                seq.prefill(rng.integers(100, 1000, context))
            ids = rng.integers(100, 1000, width)
            decode_batch(model, seqs, ids)  # warm-up step
            start = time.perf_counter()
            for _ in range(steps):
                ids = decode_batch(model, seqs, ids).argmax(axis=1)
            rates[width] = width * steps / (time.perf_counter() - start)
        finally:
            for seq in seqs:
                seq.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--quant", choices=["q8", "q4"])
    parser.add_argument("--widths", default="1,2,4,8")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--image-edge", type=int, default=384)
    parser.add_argument("--tokens", type=int, default=32, help="tokens per turn")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke-testing the script")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.context, args.image_edge, args.tokens = 4, 16, 96, 4
    widths = [int(w) for w in args.widths.split(",")]
    with smolvision.load(args.model, threads=args.threads, precision=args.precision, quant=args.quant) as model:
        model.generate_ids([100, 101, 102], max_tokens=2, eos_token_ids=())  # fault the weights in
        turns = follow_up(model, args.image_edge, args.tokens)
        rates = aggregate_decode(model, widths, args.context, args.steps)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ttft1, total1 = turns["first"]
    ttft_c, total_c, cached_tokens, cached_images, prompt_tokens = turns["cached"]
    ttft_u, total_u = turns["uncached"]
    print(f"smolvision {smolvision.__version__}, {args.model}, {args.threads} threads, precision {args.precision}"
          f"{', ' + args.quant if args.quant else ''}, {smolvision.cpu_features()['kernels']} kernels")
    print()
    print("| phase | unit | value |")
    print("|---|---|---|")
    print(f"| first turn ({args.image_edge}x{args.image_edge} image, {args.tokens} tokens): first token / total "
          f"| s | {ttft1:.3f} / {total1:.3f} |")
    print(f"| follow-up turn, cached ({cached_tokens} of {prompt_tokens} prompt tokens, {cached_images} image "
          f"reused): first token / total | s | {ttft_c:.3f} / {total_c:.3f} |")
    print(f"| follow-up turn, recomputed: first token / total | s | {ttft_u:.3f} / {total_u:.3f} |")
    print(f"| follow-up speed-up of the first token (recomputed / cached) | x | {ttft_u / ttft_c:.1f} |")
    for width, rate in rates.items():
        print(f"| aggregate decode, {width} sequence{'s' if width > 1 else ''} at context {args.context} | tok/s "
              f"| {rate:.1f} ({rate / rates[widths[0]]:.2f}x) |")
    print(f"| peak RSS | MB | {rss_mb:.0f} |")


if __name__ == "__main__":
    main()
