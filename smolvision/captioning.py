"""Captioning many images resumably, shared by the local `smolvision caption` and the Ray actors.

A caption file holds one JSON line per image: {"image", "text", "finish_reason", "seconds"} for a
caption, {"image", "error"} for an image that failed.  Inputs are expanded here (files, directories,
globs), records are built here, and a rerun resumes from what the file already holds (a truncated last
line repaired, failed images retried), so a cluster run writes exactly the lines a local run writes.
"""
from __future__ import annotations

import glob
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from . import errors

DEFAULT_PROMPT = "Describe this image."
IMAGE_EXTENSIONS = frozenset((".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"))

def caption_record(path: str, caption: Callable[[Any], Any], image: Any = None) -> dict:
    """The record for `path` from `caption(image) -> result` (.text, .finish_reason).

    `image` is what `caption` is given (the path itself when None).  A smolvision.Error or OSError
    becomes the record's "error" ("ImageError: cannot decode ..."); anything else propagates.
    """
    start = time.perf_counter()
    try:
        result = caption(path if image is None else image)
    except (errors.Error, OSError) as err:
        return {"image": path, "error": f"{type(err).__name__}: {err}"}
    return {"image": path, "text": result.text, "finish_reason": result.finish_reason,
            "seconds": round(time.perf_counter() - start, 3)}


def decode_image_bytes(data: bytes, path: str) -> Any:
    """The bytes of an image file read from `path`, decoded as load_image(path) would decode the file.

    Errors name `path` the way reading the file names it ("cannot decode image from 'path': ..."),
    so an image read elsewhere (a Ray reader, object storage) fails with the message a local read gives.
    Returns an RGB PIL image.
    """
    from . import processing
    return processing._decode(_BytesFile(data, path), repr(path), processing.DEFAULT_MAX_PIXELS)


class _BytesFile(io.BytesIO):
    """In-memory file bytes that name their file, in Pillow's messages too ("cannot identify image file ...")."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def __repr__(self) -> str:
        return f"<the bytes of {self.name!r}>"


def image_key(path: str) -> str:
    """What identifies an image across runs: its absolute, normalised path."""
    return os.path.normcase(os.path.abspath(path))


def expand_inputs(inputs: Iterable[str]) -> tuple[list[str], list[str]]:
    """(image paths, inputs that matched nothing) from files, directories and globs.

    A directory gives its image files (by extension, not recursing), a glob its matches (sorted;
    `**` recurses; directories among them are expanded), an existing or plain path itself (a
    missing file is kept, to be reported as an error).  Duplicates are dropped, order kept.
    """
    paths: list[str] = []
    unmatched: list[str] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        key = image_key(path)
        if key not in seen:
            seen.add(key)
            paths.append(path)

    def add_directory(directory: str) -> int:
        names = sorted(name for name in os.listdir(directory)
                       if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
                       and os.path.isfile(os.path.join(directory, name)))
        for name in names:
            add(os.path.join(directory, name))
        return len(names)

    for item in inputs:
        if os.path.isdir(item):
            if not add_directory(item):
                unmatched.append(item)
        elif os.path.exists(item) or not any(c in item for c in "*?["):
            add(item)
        else:
            found = 0
            for match in sorted(glob.glob(item, recursive=True)):
                if os.path.isdir(match):
                    found += add_directory(match)
                else:
                    add(match)
                    found += 1
            if not found:
                unmatched.append(item)
    return paths, unmatched


@dataclass
class ResumeState:
    """What an existing output file says: images already captioned, and what the repair did."""
    done: set[str]
    kept_lines: int
    dropped_lines: int


def prepare_output(out_path: str, retry: Iterable[str] = ()) -> ResumeState:
    """Reads an existing JSON-lines output and makes it safe to append to.

    Success lines ({"image", "text", ...}) are kept and their images count as done.  Error lines
    ({"image", "error"}) are kept unless their image is in `retry` (it is about to be tried again,
    and its new line replaces the old).  A line that is not a JSON object naming an image, such as
    the truncated last line of an interrupted run, is dropped.  When anything is dropped, or the
    last line lacks its newline, the file is rewritten atomically (temp file + rename).
    """
    if not os.path.exists(out_path):
        return ResumeState(set(), 0, 0)
    with open(out_path, "rb") as f:
        data = f.read()
    retry_keys = {image_key(p) for p in retry}
    kept: list[bytes] = []
    done: set[str] = set()
    dropped = 0
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            dropped += 1
            continue
        key = image_key(record["image"])
        if "text" in record:
            done.add(key)
        elif key in retry_keys:
            dropped += 1
            continue
        kept.append(raw.rstrip(b"\r"))
    if dropped or (data and not data.endswith(b"\n")):
        tmp = f"{out_path}.tmp"
        with open(tmp, "wb") as f:
            f.write(b"".join(line + b"\n" for line in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    return ResumeState(done, len(kept), dropped)


def append_record(out: TextIO, record: dict) -> None:
    """Writes one JSON line and flushes it, so an interrupted run loses at most the line in progress."""
    out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()


def caption_images(paths: Sequence[str], out_path: str, caption: Callable[[str], Any],
                   on_done: Callable[[str, dict], None] | None = None) -> tuple[int, int]:
    """Captions `paths` in order with `caption(path) -> result` (.text, .finish_reason), appending a line
    per image to out_path as each completes; a smolvision.Error or OSError for one image becomes its
    error line and the run goes on.  Returns (captioned, failed)."""
    captioned = failed = 0
    with open(out_path, "a", encoding="utf-8") as out:
        for path in paths:
            record = caption_record(path, caption)
            if "error" in record:
                failed += 1
            else:
                captioned += 1
            append_record(out, record)
            if on_done is not None:
                on_done(path, record)
    return captioned, failed


def caption_images_together(paths: Sequence[str], out_path: str, caption_many: Callable[[list[str]], list],
                            parallel: int, on_done: Callable[[str, dict], None] | None = None) -> tuple[int, int]:
    """caption_images for groups of `parallel` paths at a time through `caption_many(paths) -> results`
    (Model.generate_many: a failed image's result carries its error), a line per image as each group
    completes.  Returns (captioned, failed)."""
    captioned = failed = 0
    with open(out_path, "a", encoding="utf-8") as out:
        for first in range(0, len(paths), parallel):
            group = list(paths[first:first + parallel])
            start = time.perf_counter()
            results = caption_many(group)
            seconds = round(time.perf_counter() - start, 3)
            for path, result in zip(group, results):
                if result.error is not None:
                    record = {"image": path, "error": f"{type(result.error).__name__}: {result.error}"}
                    failed += 1
                else:
                    record = {"image": path, "text": result.text, "finish_reason": result.finish_reason,
                              "seconds": seconds}
                    captioned += 1
                append_record(out, record)
                if on_done is not None:
                    on_done(path, record)
    return captioned, failed
