"""Requests/s and latency of OpenAI-compatible servers: 1 and 8 concurrent clients, short text prompts,
32 generated tokens each, one table.

    PYTHONPATH=. python bench/bench_server.py -d MODEL_DIR -t 2 [--llama-cpp]   # starts the servers itself
    python bench/bench_server.py --url http://127.0.0.1:8081 --name llama-server   # any running server

With -d it starts `smolvision serve --parallel N` for each N of --parallel (default 1 and 8) on a free
loopback port, measures each --clients count (default 1 and 8) against it and stops it.  With
--llama-cpp it then does the same with llama.cpp's llama-server -np N on the BF16 GGUF of the same
weights (the text model only, which is all these text prompts use; built from the same llama.cpp
source and converted as bench.py's llama.cpp peer does, cached in the bench cache).  With --url it
measures a server already running there.  Prints one markdown row per server setting and client count:
requests/s, p50 / p95 request latency, generated tokens/s over all clients and tokens per request
(below --max-tokens when a model stopped early).
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

PROMPTS = ["What is the capital of France?", "Write one sentence about the sea.", "Name three colours.",
           "What does a CPU do?", "Say hello in Spanish.", "What is two plus two?", "Describe a cat.",
           "Why is the sky blue?"]


def wait_healthy(proc: subprocess.Popen, url: str, what: str, seconds: float = 600) -> None:
    """Returns once GET /health answers 200; SystemExit if the server exits or takes longer than `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode} before it was healthy")
        try:
            if httpx.get(url + "/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{what} did not become healthy in {seconds:.0f} s")


def start_smolvision(model_dir: str, threads: int | None, parallel: int) -> tuple[subprocess.Popen, str]:
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
        raise SystemExit("smolvision serve did not start")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    wait_healthy(proc, url, "smolvision serve")
    return proc, url


def free_port() -> int:
    """A loopback port nothing listens on now (llama-server needs a number; the race is harmless here)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_llama_server(binary: Path, gguf: Path, threads: int | None, parallel: int, log_file) \
        -> tuple[subprocess.Popen, str]:
    """llama-server -np `parallel` on 127.0.0.1 with 512 positions of context per slot."""
    port = free_port()
    command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", str(parallel),
               "-c", str(512 * parallel), "--no-webui"]
    if threads:
        command += ["-t", str(threads), "-tb", str(threads)]
    proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url, "llama-server")
    return proc, url


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
            "tokens_per_s": tokens / wall, "tokens_per_request": tokens / requests}


def rows(name: str, parallel: str, url: str, args: argparse.Namespace) -> None:
    for clients in args.clients:
        row = measure(url, clients, clients * args.requests_per_client, args.max_tokens)
        print(f"| {name} | {parallel} | {clients} | {row['requests']} | {row['rps']:.2f} | {row['p50']:.3f} "
              f"| {row['p95']:.3f} | {row['tokens_per_s']:.1f} | {row['tokens_per_request']:.1f} |", flush=True)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-d", "--model-dir", help="start smolvision serve (and llama-server) on this model")
    source.add_argument("--url", help="measure a server already running at this base URL")
    parser.add_argument("--name", help="the row's name with --url (default: the URL)")
    parser.add_argument("-t", "--threads", type=int, help="threads for each server (default: its own default)")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 8],
                        help="smolvision serve --parallel / llama-server -np values, one server each")
    parser.add_argument("--llama-cpp", action="store_true",
                        help="also llama-server -np N on the BF16 GGUF of the same weights (built once into the "
                             "bench cache)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args(argv)

    print(f"Servers on 127.0.0.1, {args.max_tokens} generated tokens per request (greedy), short text prompts, "
          f"{args.requests_per_client} requests per client after one warm-up request; threads per server: "
          f"{args.threads or 'its default'}; load average before the run {os.getloadavg()[0]:.1f}.")
    if args.llama_cpp:
        print("llama-server runs the text model only (a GGUF of the decoder, which is all text prompts use) "
              "with its default chat template and 512 positions of context per slot.")
    print()
    print("| server | parallel | clients | requests | requests/s | p50 latency (s) | p95 latency (s) "
          "| generated tokens/s | tokens/request |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    if args.url:
        rows(args.name or args.url, "?", args.url, args)
        return
    for parallel in args.parallel:
        proc, url = start_smolvision(args.model_dir, args.threads, parallel)
        try:
            rows("smolvision serve", f"--parallel {parallel}", url, args)
        finally:
            stop(proc)
    if args.llama_cpp:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from llama_cpp_peer import llama_cpp_models, llama_cpp_tools

        try:
            tools = llama_cpp_tools(args.threads or os.cpu_count() or 1, need=("server",))
            gguf = llama_cpp_models(tools, Path(args.model_dir), quants=("BF16",))["BF16"]
        except (RuntimeError, OSError, ValueError, KeyError) as error:
            print(f"\nllama-server rows left out: {error}")
            return
        with tempfile.NamedTemporaryFile("w+", suffix=".log") as log_file:
            for parallel in args.parallel:
                proc, url = start_llama_server(tools["server"], gguf, args.threads, parallel, log_file)
                try:
                    rows(f"llama-server ({tools['version']} llama.cpp)", f"-np {parallel}", url, args)
                finally:
                    stop(proc)


if __name__ == "__main__":
    main()
