"""`smolvision caption`: many images into a JSON-lines file with one model load, resumably, on this
machine or (--ray) on a Ray cluster.  The bookkeeping that makes a rerun resume is smolvision.captioning."""
from __future__ import annotations

import argparse
import os
import time

from .._term import ProgressBar, format_duration
from ..captioning import (DEFAULT_PROMPT, IMAGE_EXTENSIONS, ResumeState, append_record, caption_images,
                          caption_images_together, expand_inputs, image_key, prepare_output)
from .common import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, Reporter, add_generation_options,
                     add_model_options, add_output_options, generation_kwargs, load_model, positive_float, positive_int,
                     printing_profile)

__all__ = ["DEFAULT_PROMPT", "IMAGE_EXTENSIONS", "ResumeState", "add_parser", "append_record", "caption_images",
           "caption_images_together", "expand_inputs", "image_key", "prepare_output", "run_command"]


def _ray_address(text: str) -> str:
    """--ray's ADDRESS; refuses a path, which argparse hands over when --ray comes right before one."""
    if text in ("", "auto") or ":" in text:
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a Ray address (host:port, ray://host:port or auto); "
                                     "to start or join a cluster without one, put --ray after the images")


def add_parser(commands) -> argparse.ArgumentParser:
    caption = commands.add_parser(
        "caption", help="caption many images into a JSON-lines file, resumably",
        description="Caption images (files, directories, globs) with one model load, writing one JSON line "
                    "per image to OUTPUT as each completes. Rerunning skips images already captioned there; "
                    "images that failed are retried.")
    caption.add_argument("inputs", nargs="+", metavar="PATH_OR_GLOB",
                         help="image files, directories (their image files) or quoted globs (** recurses)")
    caption.add_argument("-o", "--output", required=True, metavar="OUTPUT.jsonl",
                         help="the JSON-lines file (with --ray, a name ending in .parquet writes a Parquet directory)")
    cluster = caption.add_argument_group("Ray cluster (pip install \"smolvision[ray]\"; see the README)")
    cluster.add_argument("--ray", nargs="?", const="", default=None, type=_ray_address, metavar="ADDRESS",
                         help="caption on a Ray cluster with Ray Data: ADDRESS (host:port, ray://host:port or auto), "
                              "else $RAY_ADDRESS or a local `ray start` cluster, else a new local Ray instance")
    cluster.add_argument("--actors", type=positive_int, default=1, metavar="N",
                         help="with --ray: actors, each with its own model (default 1)")
    cluster.add_argument("--cpus-per-actor", type=positive_float, metavar="C",
                         help="with --ray: Ray CPUs per actor, its engine threads unless -t is given "
                              "(default: the cluster's CPUs less one for reading, shared by the actors)")
    caption.add_argument("--parallel", type=positive_int, default=1, metavar="N",
                         help="caption N images at a time, their tokens decoded together in one pass over the "
                              "weights (Model.generate_many; default 1). Each running image holds its own KV "
                              "cache; lines are written as each group of N completes")
    add_model_options(caption)
    add_generation_options(caption)
    add_output_options(caption)
    caption.set_defaults(handler=run_command, parser=caption)
    return caption


def run_command(args: argparse.Namespace, reporter: Reporter) -> int:
    if args.ray is not None:
        from .. import ray as ray_captioning
        return ray_captioning.run_caption_command(args, reporter)
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
