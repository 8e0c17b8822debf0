"""`smolvision [run]`: answer one prompt about zero or more images, streaming to stdout (the default command)."""
from __future__ import annotations

import argparse
import json
import sys

from .common import (DEFAULT_PROMPT, EXIT_OK, Reporter, StreamPrinter, VersionAction, add_generation_options,
                     add_model_options, add_output_options, check_image_paths, format_stats, generation_kwargs,
                     load_model, positive_float, positive_int, printing_profile, read_images, result_json,
                     tile_progress)


def add_parser(commands) -> argparse.ArgumentParser:
    run = commands.add_parser(
        "run", prog="smolvision", help="(default) answer one prompt about images, streaming to stdout",
        usage="smolvision [run] [-d DIR | -m REPO_ID] [-i IMAGE ...] [-V VIDEO ...] [-p PROMPT] [options]",
        description="Answer one prompt about zero or more images, streaming the answer to stdout. "
                    "Other commands: chat, caption, download (smolvision COMMAND -h).")
    run.add_argument("-i", "--image", dest="images", action="append", default=[], metavar="IMAGE",
                     help="an image file, or - for stdin (repeatable; order matters)")
    run.add_argument("-V", "--video", dest="videos", action="append", default=[], metavar="FILE",
                     help="a video file for SmolVLM2 models, decoded with PyAV (pip install "
                          "'smolvision[video]'); repeatable")
    run.add_argument("--fps", type=positive_float, metavar="F",
                     help="frames sampled per second of video (default: the model's, 1 for SmolVLM2)")
    run.add_argument("--max-frames", type=positive_int, metavar="N",
                     help="most frames sampled from each video (default: the model's, 64 for SmolVLM2)")
    run.add_argument("--json", action="store_true",
                     help="print one JSON object (text, finish reason, token counts, timings) instead of streaming")
    run.add_argument("--version", action=VersionAction, help="print the version and exit")
    add_model_options(run)
    add_generation_options(run)
    add_output_options(run)
    run.set_defaults(handler=run_command, parser=run)
    return run


def run_command(args: argparse.Namespace, reporter: Reporter) -> int:
    check_image_paths(args.images)
    images = read_images(args.images)
    prompt = args.prompt if args.prompt is not None else (
        "Describe this video." if args.videos else DEFAULT_PROMPT)
    kwargs = generation_kwargs(args)
    if args.videos:
        kwargs.update(videos=list(args.videos), fps=args.fps, max_frames=args.max_frames)
    model, load_s = load_model(args, reporter)
    with model, printing_profile(model, args):
        reporter.debug(f"generate(prompt={prompt!r}, images={args.images!r}, {kwargs})")
        spinner = reporter.spinner(f"encoding {len(images)} image(s) and the prompt" if images
                                   else "reading the prompt")
        kwargs["on_progress"] = tile_progress(spinner)
        if args.json:
            counted = [0]

            def count(piece: str) -> None:
                counted[0] += 1
                spinner.label = f"generating ({counted[0]} pieces)"

            with spinner.start():
                result = model.generate(prompt=prompt, images=images, on_token=count, **kwargs)
            out = result_json(result, load_s)
            if args.profile:
                out["profile"] = model.profile().as_dict()
            print(json.dumps(out, ensure_ascii=False), flush=True)
        else:
            printer = StreamPrinter(sys.stdout, spinner)
            spinner.start()
            try:
                result = model.generate(prompt=prompt, images=images, on_token=printer, **kwargs)
            except BaseException:
                printer.abort()
                raise
            printer.end_line()
        reporter.debug(f"{len(result.token_ids)} token ids: {result.token_ids}")
        reporter.status(format_stats(result))
    return EXIT_OK
