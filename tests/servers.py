"""A real `smolvision serve` process for tests: started on a free loopback port, its stderr collected."""
from __future__ import annotations

import base64
import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

import smolvision

PACKAGE_PARENT = str(Path(smolvision.__file__).resolve().parent.parent)
# `python -m` puts the working directory first on sys.path: run from a source checkout, the server would
# import its smolvision/ (no C engine when the package is installed, as in CI) instead of this one.
_EMPTY_DIR = tempfile.mkdtemp(prefix="smolvision-serve-cwd-")


class ServerProcess:
    """`python -m smolvision serve -d MODEL --port 0 -t 1 ARGS`, ready when its model has loaded."""

    def __init__(self, model_dir, *args: str, cwd: str | None = None, ready_timeout: float = 60) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([PACKAGE_PARENT] + [p for p in [env.get("PYTHONPATH")] if p])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smolvision", "serve", "-d", str(model_dir), "--host", "127.0.0.1", "--port", "0",
             "-t", "1", *map(str, args)],
            cwd=cwd or _EMPTY_DIR, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(ready_timeout):
            self.stop()
            raise RuntimeError("the server did not become ready:\n" + self.log)
        match = next(m for m in (re.search(r"http://127\.0\.0\.1:(\d+)/", line) for line in self.lines) if m)
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if line.strip() == "smolvision: ready":
                self._ready.set()
        self._ready.set()  # exited: let the waiter see it

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def request_lines(self, path: str = "/v1/chat/completions") -> list[str]:
        return [line for line in self.lines if f" {path} " in line]

    def wait_for_line(self, pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r} within {timeout} s:\n{self.log}")

    def rss_kb(self) -> int:
        """The server's anonymous resident memory (heap, stacks): what a leak grows.  File-backed pages (the
        mapped weights) come and go with the page cache on a busy machine, so they are left out."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith("RssAnon:")))

    def stop(self, sig=signal.SIGINT, timeout: float = 20) -> int:
        """Signals the server and waits for it; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the server did not exit within {timeout} s of {sig!r}:\n{self.log}")
        self._reader.join(5)
        return self.proc.returncode


def image_bytes(width: int, height: int, seed: int, format: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=format)
    return out.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
