"""`smolvision caption`: many images into a JSON-lines file with one model load, resumably.

Input expansion (files, directories, globs) and the bookkeeping that makes a rerun resume: a line per
image as it completes, a truncated last line repaired, failed images retried."""
from __future__ import annotations

import argparse
import glob
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from .._term import ProgressBar, format_duration
from .common import (DEFAULT_PROMPT, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, Reporter, add_generation_options,
                     add_model_options, add_output_options, generation_kwargs, load_model, printing_profile)

IMAGE_EXTENSIONS = frozenset((".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"))


def add_parser(commands) -> argparse.ArgumentParser:
    caption = commands.add_parser(
        "caption", help="caption many images into a JSON-lines file, resumably",
        description="Caption images (files, directories, globs) with one model load, writing one JSON line "
                    "per image to OUTPUT as each completes. Rerunning skips images already captioned there; "
                    "images that failed are retried.")
    caption.add_argument("inputs", nargs="+", metavar="PATH_OR_GLOB",
                         help="image files, directories (their image files) or quoted globs (** recurses)")
    caption.add_argument("-o", "--output", required=True, metavar="OUTPUT.jsonl", help="the JSON-lines file")
    caption.add_argument("--parallel", type=positive_int, default=1, metavar="N",
                         help="caption N images at a time, their tokens decoded together in one pass over the "
                              "weights (Model.generate_many; default 1). Each running image holds its own KV "
                              "cache; lines are written as each group of N completes")
    add_model_options(caption)
    add_generation_options(caption)
    add_output_options(caption)
    caption.set_defaults(handler=run_command, parser=caption)
    return caption


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
    import smolvision
    captioned = failed = 0
    with open(out_path, "a", encoding="utf-8") as out:
        for path in paths:
            start = time.perf_counter()
            try:
                result = caption(path)
            except (smolvision.Error, OSError) as err:
                record = {"image": path, "error": f"{type(err).__name__}: {err}"}
                failed += 1
            else:
                record = {"image": path, "text": result.text, "finish_reason": result.finish_reason,
                          "seconds": round(time.perf_counter() - start, 3)}
                captioned += 1
            append_record(out, record)
            if on_done is not None:
                on_done(path, record)
    return captioned, failed


def positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 512:
        raise argparse.ArgumentTypeError(f"must be an integer in [1, 512], not {text}")
    return value


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


def run_command(args: argparse.Namespace, reporter: Reporter) -> int:
    paths, unmatched = expand_inputs(args.inputs)
    for item in unmatched:
        reporter.status(f"warning: no images match {item}")
    state = prepare_output(args.output, retry=paths)
    open(args.output, "a").close()  # an unwritable output fails now, not after loading the model
    if state.dropped_lines:
        reporter.status(f"{args.output}: dropped {state.dropped_lines} incomplete or to-be-retried line(s)")
    todo = [p for p in paths if image_key(p) not in state.done]
    reporter.status(f"{len(paths)} images: {len(paths) - len(todo)} already in {args.output}, {len(todo)} to caption")
    if not todo:
        return EXIT_OK
    prompt = args.prompt if args.prompt is not None else DEFAULT_PROMPT
    kwargs = generation_kwargs(args)
    model, _ = load_model(args, reporter)
    bar = ProgressBar(reporter.stream, len(todo), unit="img", enabled=reporter.interactive)

    def on_done(path: str, record: dict) -> None:
        if bar.enabled:
            bar.advance(os.path.basename(path))
        else:
            bar.done += 1
            outcome = f"error: {record['error']}" if "error" in record else f"{record['seconds']:.2f} s"
            reporter.status(f"[{bar.done}/{bar.total}] {path}: {outcome}")

    start = time.perf_counter()
    bar.show()
    try:
        with model, printing_profile(model, args):
            if args.parallel > 1:
                captioned, failed = caption_images_together(
                    todo, args.output,
                    lambda group: model.generate_many([dict(prompt=prompt, images=[path], **kwargs) for path in group]),
                    args.parallel, on_done)
            else:
                captioned, failed = caption_images(
                    todo, args.output, lambda path: model.generate(prompt=prompt, images=[path], **kwargs), on_done)
    except KeyboardInterrupt:
        bar.clear()
        reporter.status(f"interrupted after {bar.done} of {bar.total}; rerun the same command to resume")
        return EXIT_INTERRUPTED
    bar.clear()
    elapsed = time.perf_counter() - start
    reporter.status(f"captioned {captioned} images in {format_duration(elapsed)} "
                    f"({len(todo) / elapsed:.2f} img/s) into {args.output}")
    if failed:
        reporter.error(f"{failed} of {len(todo)} images failed; their errors are in {args.output} "
                       "(rerun to retry them)")
        return EXIT_ERROR
    return EXIT_OK
