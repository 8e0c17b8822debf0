"""One video row: a synthetic clip through a SmolVLM2-shaped model, phase by phase.

    python bench/bench_video.py MODEL_DIR [--seconds 30] [--fps 30] [--size 640x360] [--threads N]

MODEL_DIR is any model directory smolvision loads; for the 2.2B row use a full-size random model
(`python /work/shared/tools/make_model.py instruct DIR`: SmolVLM2-2.2B has SmolVLM-Instruct's shape, and
without `video_sampling` the published defaults apply: 1 frame a second, at most 64). The clip is
written with PyAV (mpeg4) into a temporary directory. Printed: frames sampled, seconds to decode and
preprocess them, to encode their tiles, to prefill the prompt, and their sum with the first token.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

import smolvision


def write_clip(path: Path, seconds: float, fps: int, width: int, height: int) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        y, x = np.mgrid[:height, :width]
        for n in range(int(seconds * fps)):
            rgb = np.stack([(x + n * 3) % 256, (y + n * 5) % 256, np.full_like(x, (n * 7) % 256)], -1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def bench(model_dir: str, clip: Path, threads: int | None) -> dict:
    """The phases of one question about the clip, each run once: decode + preprocess (and the prompt's
    ids), encode the frame tiles, prefill and one token."""
    with smolvision.load(model_dir, threads=threads) as model:
        messages = [{"role": "user", "content": [{"type": "video"},
                                                 {"type": "text", "text": "What happens in this video?"}]}]
        start = time.perf_counter()
        inputs = model.build_inputs(messages, videos=[str(clip)])
        preprocess_s = time.perf_counter() - start
        start = time.perf_counter()
        embeds = model.encode_pixel_values(inputs.pixel_values)
        encode_s = time.perf_counter() - start
        result = model.generate_ids(inputs.input_ids, embeds, max_tokens=1)
    return {"frames": int(inputs.pixel_values.shape[0]), "prompt_tokens": len(inputs.input_ids),
            "decode_preprocess_s": round(preprocess_s, 2), "encode_s": round(encode_s, 2),
            "prefill_s": round(result.timings.prefill_s, 2),
            "total_s": round(preprocess_s + encode_s + result.timings.prefill_s + result.timings.decode_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--size", default="640x360", help="WIDTHxHEIGHT of the clip")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        write_clip(clip, args.seconds, args.fps, width, height)
        row = bench(args.model_dir, clip, args.threads)
    row = {"clip": f"{args.seconds:g} s {width}x{height} @ {args.fps} fps", **row}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
