"""Times smolvision's tokenizer against Hugging Face tokenizers on about 1 MB
of text: mixed prose/code/multilingual text, and one unbroken 1 MB word (the
worst case for the BPE merge loop).  Checks the ids agree and prints times.

    PYTHONPATH=. python3 bench/bench_tokenizer.py [tokenizer.json]
"""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import tokenizers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import modelgen  # noqa: E402
from smolvision import Tokenizer  # noqa: E402

MB = 1 << 20


def mixed_text(size: int) -> str:
    sources = [Path(modelgen.__file__).read_text(), Path(tokenizers.__file__).read_text(),
               "日本語の文章と中文句子。한국어 문장. العربية نص. हिन्दी पाठ. ภาษาไทย. 😀👨‍👩‍👧 ",
               "Numbers 1234567890 and 3.14159, dates 2024-05-06, <image> tags <|im_start|>\n"]
    rng = random.Random(0)
    parts, total = [], 0
    while total < size:
        s = rng.choice(sources)
        start = rng.randrange(len(s))
        piece = s[start:start + rng.randint(20, 400)]
        parts.append(piece)
        total += len(piece.encode())
    return "".join(parts)


def best_of(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else str(modelgen.smollm2_tokenizer_dir() / "tokenizer.json")
    ours, ref = Tokenizer.from_file(path), tokenizers.Tokenizer.from_file(path)
    for name, text in [("mixed text", mixed_text(MB)), ("one 1 MB word", "ab" * (MB // 2))]:
        ids = ours.encode(text)
        same = ids == ref.encode(text, add_special_tokens=False).ids
        t_ours = best_of(lambda: ours.encode(text))
        t_ref = best_of(lambda: ref.encode(text, add_special_tokens=False))
        t_dec = best_of(lambda: ours.decode(ids))
        print(f"{name}: {len(text.encode()) / MB:.2f} MB -> {len(ids)} tokens; encode smolvision {t_ours * 1e3:.1f} ms, "
              f"tokenizers {t_ref * 1e3:.1f} ms; decode smolvision {t_dec * 1e3:.1f} ms; ids identical: {same}")


if __name__ == "__main__":
    main()
