"""Tiny terminal progress indicators for the command line: a spinner and a progress bar.

Both draw on one stream (stderr) with carriage returns, only when it is a terminal; on a pipe
or file they draw nothing, so logs stay clean.  No dependencies.
"""
from __future__ import annotations

import shutil
import threading
import time
from typing import TextIO


def is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def format_duration(seconds: float) -> str:
    """'42s', '3:07', '1:02:03' for an ETA or elapsed time."""
    seconds = int(round(max(0.0, seconds)))
    if seconds < 60:
        return f"{seconds}s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Spinner:
    """'| label 1.2s' redrawn by a background thread until stop(); for work with no known length.

        with Spinner(sys.stderr, "encoding image") as spin:
            ...            # spin.stop() early to clear the line before printing elsewhere
    """

    FRAMES = "|/-\\"

    def __init__(self, stream: TextIO, label: str, enabled: bool = True, interval: float = 0.1) -> None:
        self.stream, self.label, self.interval = stream, label, interval
        self.enabled = enabled and is_tty(stream)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Spinner:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="smolvision-spinner", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        start, frame = time.perf_counter(), 0
        while not self._stop.wait(self.interval if frame else 0.0):
            elapsed = time.perf_counter() - start
            self.stream.write(f"\r{self.FRAMES[frame % len(self.FRAMES)]} {self.label} {elapsed:.1f}s\033[K")
            self.stream.flush()
            frame += 1

    def stop(self) -> None:
        """Stops drawing and erases the line; idempotent."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.stream.write("\r\033[K")
            self.stream.flush()

    def __enter__(self) -> Spinner:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class ProgressBar:
    """'[#####.....]  12/40  30%  1.3 img/s  ETA 0:21  current-item' for a known number of steps."""

    def __init__(self, stream: TextIO, total: int, unit: str = "it", width: int = 24, enabled: bool = True) -> None:
        self.stream, self.total, self.unit, self.width = stream, total, unit, width
        self.enabled = enabled and is_tty(stream)
        self.done = 0
        self._start = time.perf_counter()

    def line(self, note: str = "") -> str:
        """The bar's text for the current state (no control characters)."""
        fraction = self.done / self.total if self.total else 1.0
        filled = int(fraction * self.width)
        elapsed = time.perf_counter() - self._start
        rate = self.done / elapsed if elapsed > 0 and self.done else 0.0
        eta = f"ETA {format_duration((self.total - self.done) / rate)}" if rate else "ETA ?"
        text = (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                f"{fraction:4.0%} {rate:.2f} {self.unit}/s {eta}")
        return f"{text}  {note}" if note else text

    def show(self, note: str = "") -> None:
        if self.enabled:
            columns = shutil.get_terminal_size().columns
            self.stream.write(f"\r{self.line(note)[:max(columns - 1, 20)]}\033[K")
            self.stream.flush()

    def advance(self, note: str = "") -> None:
        self.done += 1
        self.show(note)

    def clear(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()
