"""Requests/s and latency of an OpenAI-compatible server: 1 and 8 concurrent clients, short text
prompts, 32 generated tokens each.

    PYTHONPATH=. python bench/bench_server.py -d MODEL_DIR [-t THREADS]     # starts `smolvision serve`
    python bench/bench_server.py --url http://127.0.0.1:8081 [--name llama-server]   # any running server

With -d it starts `smolvision serve --parallel 8` on a free loopback port and stops it afterwards.
With --url it measures a server already running there (e.g. llama-server -np 1 / -np 8 on the same
weights).  Prints one markdown row per concurrency: requests/s, p50 / p95 request latency, generated
tokens/s over all clients.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

PROMPTS = ["What is the capital of France?", "Write one sentence about the sea.", "Name three colours.",
           "What does a CPU do?", "Say hello in Spanish.", "What is two plus two?", "Describe a cat.",
           "Why is the sky blue?"]


def start_server(model_dir: str, threads: int | None, parallel: int) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent)]
                                        + [p for p in [env.get("PYTHONPATH")] if p])
    command = [sys.executable, "-m", "smolvision", "serve", "-d", model_dir, "--port", "0", "--parallel",
               str(parallel), "--max-queue", "64", "--no-webui"]
    if threads:
        command += ["-t", str(threads)]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    url = None
    for line in proc.stderr:
        match = re.search(r"http://[\d.]+:\d+", line)
        if match:
            url = match.group(0)
            break
    if url is None:
        proc.kill()
        raise SystemExit("the server did not start")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    for _ in range(600):
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not become healthy")


def one_request(client: httpx.Client, url: str, i: int, max_tokens: int) -> tuple[float, int]:
    body = {"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "max_tokens": max_tokens,
            "temperature": 0}
    start = time.perf_counter()
    r = client.post(url + "/v1/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - start, r.json()["usage"]["completion_tokens"]


def measure(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    with httpx.Client() as warm:
        one_request(warm, url, 0, max_tokens)
    local = threading.local()

    def run(i: int):
        if not hasattr(local, "client"):
            local.client = httpx.Client()
        return one_request(local.client, url, i, max_tokens)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(run, range(requests)))
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {"clients": clients, "requests": requests, "rps": requests / wall,
            "p50": statistics.median(latencies), "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
            "tokens_per_s": tokens / wall}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-d", "--model-dir", help="start smolvision serve on this model")
    source.add_argument("--url", help="measure a server already running at this base URL")
    parser.add_argument("--name", help="the row's name (default smolvision or the URL)")
    parser.add_argument("-t", "--threads", type=int, help="threads for smolvision serve")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args(argv)

    proc = None
    url = args.url
    if args.model_dir:
        proc, url = start_server(args.model_dir, args.threads, parallel=max(args.clients))
    name = args.name or ("smolvision" if proc else url)
    try:
        print("| server | clients | requests | requests/s | p50 latency (s) | p95 latency (s) | generated tokens/s |")
        print("|---|---|---|---|---|---|---|")
        for clients in args.clients:
            row = measure(url, clients, clients * args.requests_per_client, args.max_tokens)
            print(f"| {name} | {clients} | {row['requests']} | {row['rps']:.2f} | {row['p50']:.3f} | {row['p95']:.3f} "
                  f"| {row['tokens_per_s']:.1f} |", flush=True)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)


if __name__ == "__main__":
    main()
