"""bench.py --sequences: the rows of issue 13 (what keeping sequences buys), smolvision next to its peers.

- follow-up turn: a second question about the same image (the first turn's answer in the conversation),
  time to first token and total, in smolvision with its cache (prefix reuse + image cache: the default
  load()) and without it (load(cache_bytes=0): everything recomputed, as a one-shot engine does), and in
  transformers (which recomputes everything; BF16 where the CPU has native BF16, else FP32, where BF16 is
  emulated and slower: the peer at its fastest); the first turn / follow-up ratios (target >= 20x);
- aggregate decode: tokens/s over all sequences of `batch_decode` sv_decode_batch steps with 1, 2, 4, 8
  sequences, each after its own `batch_prompt`-token prompt, BF16 and q8, next to llama.cpp's
  llama-batched-bench (S_TG t/s, the same prompt and generated lengths, -npl 1,2,4,8) on the BF16 and
  Q8_0 GGUFs of the same weights;
- peak RSS with 8 sequences of 2048 tokens: the high-water mark of a process that loads the model and
  fills them (prefill, then a few batched decode steps), nothing else.

Every worker runs in its own subprocess (bench.run_engine), so each figure is that process's own.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from workload import Workload, log, peer_dtype_name, prompt_ids, test_image, tile_pixels

QUESTION = "Describe this image."
FOLLOW_UP = "What colours stand out?"


def first_turn() -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]


def follow_up_turn(answer: str) -> list[dict]:
    """The conversation of the second turn: the first question, its answer, a new question (no new image)."""
    return first_turn() + [{"role": "assistant", "content": [{"type": "text", "text": answer}]},
                           {"role": "user", "content": [{"type": "text", "text": FOLLOW_UP}]}]


# ---------------------------------------------------------------- follow-up turn

def worker_follow_up(model_dir: str, threads: int, work: Workload) -> dict:
    """smolvision's first turn and follow-up with the default cache, then the follow-up with load(cache_bytes=0)."""
    import smolvision

    image = test_image(work.image_edge)

    def turn(model, messages) -> tuple[float, float, smolvision.Result]:
        """(time to first token, total, Result): the call as a user sees it, preprocessing included."""
        first = []
        start = time.perf_counter()

        def on_token(piece: str) -> None:
            if not first:
                first.append(time.perf_counter() - start)
        result = model.generate(messages=messages, images=[image], max_tokens=work.e2e_tokens, on_token=on_token)
        total = time.perf_counter() - start
        return first[0] if first else total, total, result

    config = json.loads((Path(model_dir) / "config.json").read_text())

    def warm_up(model) -> None:
        """Fault the decoder's and the vision tower's weights in from the page cache, and forget the call."""
        model.encode_pixel_values(tile_pixels(config))
        model.generate_ids(prompt_ids(config, 8, 0), max_tokens=2, eos_token_ids=())
        model.clear_cache()

    out = {}
    with smolvision.load(model_dir, threads=threads) as model:
        warm_up(model)
        ttft, total, first = turn(model, first_turn())
        out["first"] = {"ttft_s": ttft, "total_s": total, "prompt_tokens": first.prompt_tokens,
                        "tiles": first.n_tiles, "generated": len(first.token_ids)}
        log(f"smolvision: first turn {ttft:.2f} s to the first token, {total:.2f} s in all ({first.n_tiles} tiles)")
        conversation = follow_up_turn(first.text)
        ttft, total, cached = turn(model, conversation)
        out["cached"] = {"ttft_s": ttft, "total_s": total, "prompt_tokens": cached.prompt_tokens,
                         "cached_tokens": cached.cached_tokens, "cached_images": cached.cached_images,
                         "generated": len(cached.token_ids)}
        log(f"smolvision: follow-up {ttft:.3f} / {total:.3f} s with the cache "
            f"({cached.cached_tokens} of {cached.prompt_tokens} prompt tokens cached)")
    with smolvision.load(model_dir, threads=threads, cache_bytes=0) as model:
        warm_up(model)
        ttft, total, again = turn(model, conversation)
        out["uncached"] = {"ttft_s": ttft, "total_s": total, "prompt_tokens": again.prompt_tokens,
                           "cached_tokens": again.cached_tokens, "generated": len(again.token_ids)}
        log(f"smolvision: follow-up {ttft:.3f} / {total:.3f} s with load(cache_bytes=0)")
    return out


def worker_transformers_follow_up(model_dir: str, threads: int, work: Workload) -> dict:
    """transformers' first turn and follow-up (its own answer in the conversation): both recompute everything."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(threads)
    dtype = {"BF16": torch.bfloat16, "FP32": torch.float32}[peer_dtype_name()]
    model = Idefics3ForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    image = Image.fromarray(test_image(work.image_edge))

    class FirstToken(BaseStreamer):
        """Notes when generate() hands over its first new token (its first put() is the prompt)."""

        def __init__(self, start: float) -> None:
            self.start, self.puts, self.ttft = start, 0, None

        def put(self, value) -> None:
            self.puts += 1
            if self.puts == 2:
                self.ttft = time.perf_counter() - self.start

        def end(self) -> None:
            pass

    def turn(messages) -> tuple[float, float, str, int]:
        start = time.perf_counter()
        streamer = FirstToken(start)
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=text, images=[[image]], return_tensors="pt")
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        generated = model.generate(**inputs, max_new_tokens=work.e2e_tokens, min_new_tokens=work.e2e_tokens,
                                   do_sample=False, streamer=streamer)
        total = time.perf_counter() - start
        prompt_tokens = inputs["input_ids"].shape[1]
        answer = processor.decode(generated[0, prompt_tokens:], skip_special_tokens=True)
        return streamer.ttft or total, total, answer, prompt_tokens

    out = {"dtype": peer_dtype_name()}
    with torch.inference_mode():
        config = json.loads((Path(model_dir) / "config.json").read_text())
        model(input_ids=torch.from_numpy(prompt_ids(config, 8, 0))[None])  # fault the weights in
        ttft, total, answer, prompt_tokens = turn(first_turn())
        out["first"] = {"ttft_s": ttft, "total_s": total, "prompt_tokens": prompt_tokens}
        log(f"transformers: first turn {ttft:.2f} / {total:.2f} s")
        ttft, total, _, prompt_tokens = turn(follow_up_turn(answer))
        out["uncached"] = {"ttft_s": ttft, "total_s": total, "prompt_tokens": prompt_tokens}
        log(f"transformers: follow-up {ttft:.2f} / {total:.2f} s")
    return out


# ---------------------------------------------------------------- aggregate decode

def aggregate_decode(model, config: dict, work: Workload) -> dict[int, float]:
    """{width: tokens/s over all sequences} of work.batch_decode decode_batch steps, each of `width`
    sequences after its own work.batch_prompt-token prompt (as llama-batched-bench without -pps)."""
    import numpy as np
    from smolvision.sequence import decode_batch

    rates = {}
    for width in work.batch_widths:
        seqs = [model.sequence() for _ in range(width)]
        try:
            for i, seq in enumerate(seqs):
                seq.reserve(work.batch_prompt + work.batch_decode + 1)
                seq.prefill(prompt_ids(config, work.batch_prompt, 20 + i))
            ids = prompt_ids(config, width, 40).astype(np.int32)
            decode_batch(model, seqs, ids)  # warm-up step: the batch's scratch grows once
            start = time.perf_counter()
            for _ in range(work.batch_decode):
                ids = decode_batch(model, seqs, ids).argmax(axis=1)
            rates[width] = width * work.batch_decode / (time.perf_counter() - start)
        finally:
            for seq in seqs:
                seq.close()
        log(f"smolvision {model.quant or model.precision}: {width} sequence(s) decode {rates[width]:.2f} tok/s")
    return rates


def worker_batched(quant: str | None):
    def worker(model_dir: str, threads: int, work: Workload) -> dict:
        import smolvision

        config = json.loads((Path(model_dir) / "config.json").read_text())
        with smolvision.load(model_dir, threads=threads, quant=quant, cache_bytes=0,
                             on_log=lambda m: log(f"smolvision: {m}")) as model:
            model.generate_ids(prompt_ids(config, 8, 0), max_tokens=2, eos_token_ids=())  # fault the weights in
            return {"rates": aggregate_decode(model, config, work)}
    return worker


# ---------------------------------------------------------------- peak RSS

def worker_rss(model_dir: str, threads: int, work: Workload) -> dict:
    """Loads the model and fills work.rss_sequences sequences to work.rss_tokens tokens each (a prompt, then
    work.batch_decode batched decode steps); the parent reads this process's peak RSS."""
    import numpy as np
    import smolvision
    from smolvision.sequence import decode_batch

    config = json.loads((Path(model_dir) / "config.json").read_text())
    steps = min(work.batch_decode, work.rss_tokens - 1)
    with smolvision.load(model_dir, threads=threads, cache_bytes=0) as model:
        seqs = [model.sequence() for _ in range(work.rss_sequences)]
        for i, seq in enumerate(seqs):
            seq.reserve(work.rss_tokens)
            seq.prefill(prompt_ids(config, work.rss_tokens - steps, 60 + i))
        ids = prompt_ids(config, len(seqs), 80).astype(np.int32)
        for _ in range(steps):
            ids = decode_batch(model, seqs, ids).argmax(axis=1)
        out = {"tokens": [len(seq) for seq in seqs], "kv_mb": sum(seq.nbytes for seq in seqs) / 2**20,
               "bytes_per_token": model.sequence_bytes_per_token}
        for seq in seqs:
            seq.close()
    log(f"smolvision: {len(seqs)} sequences of {out['tokens'][0]} tokens hold {out['kv_mb']:.0f} MB")
    return out


WORKERS = {"follow-up": worker_follow_up, "transformers-follow-up": worker_transformers_follow_up,
           "batched": worker_batched(None), "batched-q8": worker_batched("q8"), "rss": worker_rss}


# ---------------------------------------------------------------- the tables

def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    return f"{numerator / denominator:.1f}x" if numerator and denominator else "–"


def follow_up_table(mine: dict | None, peer: dict | None) -> str:
    """One row per engine setting: first turn and follow-up (time to first token, total) and their ratios."""
    lines = ["| engine | first turn: first token (s) | first turn: total (s) | follow-up: first token (s) "
             "| follow-up: total (s) | first turn / follow-up: first token | first turn / follow-up: total |",
             "|---|---|---|---|---|---|---|"]
    rows = []
    if mine:
        first = mine["first"]
        rows.append(("smolvision, cache on (default load())", first, mine["cached"], first))
        # With the cache off the first turn is the same work as in a fresh cached model: measured once.
        rows.append(("smolvision, cache off (load(cache_bytes=0))", None, mine["uncached"], first))
    if peer:
        rows.append((f"transformers {peer.get('dtype', 'BF16')} (recomputes)", peer["first"], peer["uncached"],
                     peer["first"]))
    for name, first, follow, reference in rows:
        lines.append(f"| {name} | {_seconds(first['ttft_s']) if first else 'as above'} "
                     f"| {_seconds(first['total_s']) if first else 'as above'} | {_seconds(follow['ttft_s'])} "
                     f"| {_seconds(follow['total_s'])} | {_ratio(reference['ttft_s'], follow['ttft_s'])} "
                     f"| {_ratio(reference['total_s'], follow['total_s'])} |")
    return "\n".join(lines)


def decode_table(work: Workload, columns: dict[str, dict | None]) -> str:
    """Rows: 1, 2, 4, 8 sequences; columns: each engine's aggregate tok/s (with its gain over one sequence),
    then smolvision over llama.cpp with the same weights."""
    pairs = [("smolvision BF16", "llama.cpp BF16"), ("smolvision q8", "llama.cpp Q8_0")]
    names = [name for name in ("smolvision BF16", "llama.cpp BF16", "smolvision q8", "llama.cpp Q8_0")
             if columns.get(name)]
    ratios = [pair for pair in pairs if all(columns.get(name) for name in pair)]
    header = ["sequences", *(f"{name} (tok/s)" for name in names), *(f"{a} / {b}" for a, b in ratios)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for width in work.batch_widths:
        cells = [str(width)]
        for name in names:
            rate, single = columns[name].get(width), columns[name].get(work.batch_widths[0])
            cells.append("–" if rate is None else f"{rate:.2f} ({rate / single:.2f}x)" if single else f"{rate:.2f}")
        for a, b in ratios:
            mine, peer = columns[a].get(width), columns[b].get(width)
            cells.append(f"{mine / peer:.2f}x" if mine and peer else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rates_of(result: dict | None) -> dict[int, float] | None:
    """A worker's {width: rate} (JSON made its keys strings)."""
    return {int(width): rate for width, rate in result["rates"].items()} if result else None


def section(work: Workload, follow: dict | None, follow_peer: dict | None, columns: dict, rss: dict | None) -> str:
    """The markdown section bench.py prints for --sequences."""
    out = ["## Sequences (issue 13)", ""]
    if follow:
        first, cached = follow["first"], follow["cached"]
        peer = f"; transformers: {follow_peer['first']['prompt_tokens']} and {follow_peer['uncached']['prompt_tokens']}" \
            if follow_peer else ""
        out += [f"Follow-up turn: one {work.image_edge}x{work.image_edge} image with the model's default splitting "
                f"({first['tiles']} tiles), up to {work.e2e_tokens} generated tokens a turn, preprocessing included; "
                f"prompts of {first['prompt_tokens']} and {cached['prompt_tokens']} tokens{peer}. With the cache the "
                f"follow-up computed {cached['prompt_tokens'] - cached['cached_tokens']} prompt tokens "
                f"({cached['cached_tokens']} cached) and encoded {1 - cached['cached_images']} of 1 image. "
                f"Target: the follow-up's first token >= 20x sooner than the first turn's.", "",
                follow_up_table(follow, follow_peer), ""]
    if any(columns.values()):
        out += [f"Aggregate decode: {work.batch_decode} decode steps of every sequence after its own "
                f"{work.batch_prompt}-token prompt, generated tokens/s over all sequences (in brackets: over "
                f"one sequence's rate); llama.cpp: llama-batched-bench -npp {work.batch_prompt} -ntg "
                f"{work.batch_decode} -npl {','.join(map(str, work.batch_widths))} (S_TG t/s), text model only. "
                f"Target: 8 sequences >= 5x one, and >= llama.cpp at every width.", "",
                decode_table(work, columns), ""]
    if rss:
        out += [f"Peak RSS with {len(rss['tokens'])} sequences of {rss['tokens'][0]} tokens (BF16 weights, "
                f"a process that loads the model and fills them, nothing else): {rss['peak_rss_mb']:.0f} MB, of "
                f"which the sequences hold {rss['kv_mb']:.0f} MB ({rss['bytes_per_token'] / 1024:.0f} KiB a token).",
                ""]
    return "\n".join(out)
