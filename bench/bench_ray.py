"""Throughput of `smolvision caption --ray` with 1, 2 and 4 actors next to the local `smolvision caption`,
on one machine, with one model directory and a handful of small images.  Prints a Markdown table.

    python /work/shared/tools/make_model.py 500m /tmp/m500      # a random 500M-shaped model
    PYTHONPATH=. python bench/bench_ray.py /tmp/m500 [--images 8] [--max-tokens 16] [--actors 1 2 4]

One local Ray instance, started by this script with enough logical CPUs for the largest pool plus one
for reading (Ray would otherwise give it one per core and 4 actors could not start on 2 cores), serves
every --ray run; each run starts from an empty output, and its time includes connecting, starting the
actors and loading the model in each (what a user waits for).  Images are random 160x120 PNGs, captioned
greedily as one tile (--no-split).  On a small machine expect the rates to be about flat: the actors
share the same cores; the point of --ray is that the same command runs on a cluster.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def run(label: str, argv, env) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "smolvision", *argv], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{label} failed:\n{proc.stderr[-3000:]}")
    summary = [line for line in proc.stderr.splitlines() if line.startswith("smolvision: captioned")]
    print(f"# {label}: {seconds:.1f} s; {summary[-1] if summary else ''}", file=sys.stderr, flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--skip-local", action="store_true", help="only the --ray runs")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    folder = work / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(args.images):
        Image.fromarray(rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH")] if p),
               RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", PYTHONPATH=env["PYTHONPATH"])
    common = [str(folder), "-d", args.model_dir, "--no-split", "--max-tokens", str(args.max_tokens), "-p",
              "Describe this image."]
    import ray
    ray_temp = tempfile.mkdtemp(prefix="svray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(num_cpus=max(actors * max(1, cores // actors) for actors in args.actors) + 1, include_dashboard=False,
             _temp_dir=ray_temp)
    address = ray.get_runtime_context().gcs_address
    rows = []
    if not args.skip_local:
        seconds = run("local", ["caption", *common, "-o", str(work / "local.jsonl"), "-t", str(cores)], env)
        rows.append(("local `caption`", "-", str(cores), seconds))
    for actors in args.actors:
        threads = max(1, cores // actors)
        seconds = run(f"{actors} actors", ["caption", *common, "-o", str(work / f"ray{actors}.jsonl"), "--ray",
                                           address, "--actors", str(actors), "--cpus-per-actor", str(threads)], env)
        rows.append((f"`--ray`, {actors} actor{'s' if actors > 1 else ''}", str(actors), str(threads), seconds))
    ray.shutdown()
    shutil.rmtree(ray_temp, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.images} images, {args.max_tokens} tokens max, {cores} cores; time includes start-up and model load\n")
    print("| run | actors | threads each | wall s | img/s |")
    print("|---|---|---|---|---|")
    for label, actors, threads, seconds in rows:
        print(f"| {label} | {actors} | {threads} | {seconds:.1f} | {args.images / seconds:.2f} |")


if __name__ == "__main__":
    main()
