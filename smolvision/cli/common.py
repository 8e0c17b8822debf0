"""What the commands share: option groups and argument types, the status Reporter, printing a streamed
answer, and the steps from arguments to a loaded model."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

from .. import hub
from ..captioning import DEFAULT_PROMPT
from .._term import Spinner, is_tty

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# ---------------------------------------------------------------------------------------------
# Argument parsing

def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value
    return parse


def _float_in(low: float, high: float, what: str, low_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value > low if low_open else value >= low) or not value <= high:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "zero or more")
positive_float = _float_in(0.0, float("inf"), "positive", low_open=True)


def _version() -> str:
    import smolvision
    return f"smolvision {smolvision.__version__} ({smolvision.build_info()})"


class VersionAction(argparse.Action):
    """--version, importing the engine only when asked (so `-h` works even without a built library)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version(), flush=True)
        parser.exit()


def add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--debug", action="store_true",
                       help="tracebacks and extra diagnostics on stderr")
    group.add_argument("--silent", action="store_true",
                       help="no status or progress on stderr (errors are still reported)")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    source = group.add_mutually_exclusive_group()
    source.add_argument("-d", "--model-dir", metavar="DIR", help="a local SmolVLM model directory")
    source.add_argument("-m", "--model", metavar="REPO_ID",
                        help=f"a Hugging Face repo id, from the local cache or downloaded "
                             f"(default {hub.DEFAULT_REPO} when neither -d nor -m is given)")
    group.add_argument("-t", "--threads", type=positive_int, metavar="N", help="threads (default: all cores)")
    group.add_argument("--precision", choices=["fp32", "bf16"], default="bf16",
                       help="bf16 (default): BF16 matrix products where the CPU has AVX512_BF16 (about "
                            "twice as fast for images and prompts, error within transformers' own BF16 "
                            "run); fp32: exact to transformers' float32")
    group.add_argument("--quant", choices=["q8", "q4"], default=None,
                       help="quantize the text decoder's weights for faster decoding: q8 (8.5 bits a weight, "
                            "close to the original) or q4 (4.5 bits, fastest, less accurate); converted once "
                            "and cached in $SMOLVISION_CACHE or ~/.cache/smolvision")
    group.add_argument("--cache-mb", type=non_negative_int, metavar="MB",
                       help="memory for finished conversations and image features that later prompts reuse "
                            "(load(cache_bytes=...); default 1024, 0 = off)")
    group.add_argument("--profile", action="store_true",
                       help="time each phase (vision, prefill, decode) by op class and print the table on "
                            "stderr at the end (with --json, also as its \"profile\" field)")


def add_generation_options(parser: argparse.ArgumentParser, prompt: bool = True) -> None:
    group = parser.add_argument_group("generation")
    if prompt:
        group.add_argument("-p", "--prompt", help=f"the prompt (default with images: {DEFAULT_PROMPT!r})")
    group.add_argument("--system-prompt", metavar="TEXT", help="a system message before the conversation")
    group.add_argument("--max-tokens", type=positive_int, default=256, metavar="N",
                       help="most tokens to generate (default 256)")
    group.add_argument("--temperature", type=_float_in(0.0, float("inf"), "zero or more"), default=0.0,
                       metavar="T", help="sampling temperature; 0 = greedy (default)")
    group.add_argument("--top-k", type=non_negative_int, default=0, metavar="K",
                       help="sample among the K most likely tokens; 0 = off (default)")
    group.add_argument("--top-p", type=_float_in(0.0, 1.0, "in (0, 1]", low_open=True), default=1.0, metavar="P",
                       help="nucleus sampling mass; 1 = off (default)")
    group.add_argument("--min-p", type=_float_in(0.0, 1.0, "in [0, 1]"), default=0.0, metavar="P",
                       help="drop tokens below P times the top probability; 0 = off (default)")
    group.add_argument("--repetition-penalty", type=positive_float,
                       default=1.0, metavar="R", help="penalty for repeated tokens; 1 = off (default)")
    group.add_argument("--seed", type=non_negative_int, metavar="N", help="random seed for sampling")
    group.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="stop when TEXT is generated (repeatable)")
    group.add_argument("--no-split", action="store_true",
                       help="encode each image as one downscaled tile, not split into tiles")
    group.add_argument("--max-edge", type=positive_int, metavar="N",
                       help="resize images so their longest edge is at most N pixels")


# ---------------------------------------------------------------------------------------------
# Status output

class Reporter:
    """Writes status, diagnostics and errors to stderr according to --silent / --debug."""

    def __init__(self, silent: bool = False, debug: bool = False, stream: TextIO | None = None) -> None:
        self.silent, self.debug_enabled = silent, debug
        self.stream = stream if stream is not None else sys.stderr

    @property
    def interactive(self) -> bool:
        """Whether progress indicators may be drawn."""
        return not self.silent and is_tty(self.stream)

    def status(self, message: str) -> None:
        if not self.silent:
            print(f"smolvision: {message}", file=self.stream, flush=True)

    def debug(self, message: str) -> None:
        if self.debug_enabled:
            print(f"[debug] {message}", file=self.stream, flush=True)

    def error(self, message: str) -> None:
        """Always shown, even with --silent."""
        print(f"smolvision: error: {message}", file=self.stream, flush=True)

    def spinner(self, label: str) -> Spinner:
        return Spinner(self.stream, label, enabled=self.interactive)


def format_stats(result: Any) -> str:
    """One status line from a generation result: tiles and encode time, prefill and decode speed."""
    t = result.timings
    parts = []
    if result.n_tiles:
        parts.append(f"{result.n_tiles} image tile{'s' if result.n_tiles != 1 else ''} "
                     f"encoded in {t.image_encode_s:.2f} s")
    parts.append(f"prefill {result.prompt_tokens} tokens in {t.prefill_s:.2f} s ({t.prefill_tokens_per_s:.1f} tok/s)")
    parts.append(f"decode {len(result.token_ids)} tokens in {t.decode_s:.2f} s ({t.decode_tokens_per_s:.1f} tok/s)")
    parts.append(f"finish: {result.finish_reason}")
    return "; ".join(parts)


def result_json(result: Any, load_s: float | None = None) -> dict:
    """The --json object for one generation result."""
    t = result.timings
    out = {
        "text": result.text,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": len(result.token_ids),
        "n_tiles": result.n_tiles,
        "timings": {name: getattr(t, name) for name in (
            "image_encode_s", "prefill_s", "decode_s", "prefill_tokens_per_s", "decode_tokens_per_s")},
    }
    if load_s is not None:
        out["timings"]["load_s"] = load_s
    return out


class StreamPrinter:
    """The on_token callback that streams pieces to `out`, clearing a spinner before the first one."""

    def __init__(self, out: TextIO, spinner: Spinner | None = None) -> None:
        self.out, self.spinner = out, spinner
        self.pieces: list[str] = []

    def __call__(self, piece: str) -> None:
        if self.spinner is not None:
            self.spinner.stop()
        self.out.write(piece)
        self.out.flush()
        self.pieces.append(piece)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def end_line(self) -> None:
        """Ends a complete answer with a newline."""
        if self.spinner is not None:
            self.spinner.stop()
        self.out.write("\n")
        self.out.flush()

    def abort(self) -> None:
        """After a failed or interrupted generation: ends the line only if part of an answer was printed."""
        if self.spinner is not None:
            self.spinner.stop()
        if self.pieces:
            self.out.write("\n")
            self.out.flush()


# ---------------------------------------------------------------------------------------------
# Steps the commands share

def generation_kwargs(args: argparse.Namespace) -> dict:
    """Model.generate keyword arguments from the generation options."""
    return dict(
        max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed, stop=tuple(args.stop),
        system_prompt=args.system_prompt, do_image_splitting=False if args.no_split else None,
        longest_edge=args.max_edge,
    )


def check_image_paths(paths: Iterable[str]) -> None:
    """Fails fast, before loading the model, on an image file that does not exist."""
    import smolvision
    for path in paths:
        if path != "-" and not os.path.isfile(path):
            raise smolvision.ImageError(f"cannot read image {path}: no such file")


def read_images(paths: Sequence[str]) -> list:
    """The images argument for Model.generate: paths as given, `-` as the bytes of stdin."""
    return [sys.stdin.buffer.read() if path == "-" else path for path in paths]


def model_directory(args: argparse.Namespace, reporter: Reporter) -> str:
    """-d as given, or -m (default repo) resolved through the Hugging Face cache, downloading if needed.

    Like transformers' from_pretrained, -m also accepts a local directory."""
    if args.model_dir:
        return args.model_dir
    repo = args.model or hub.DEFAULT_REPO
    if os.path.isdir(repo):
        return repo
    if reporter.silent:
        try:
            from huggingface_hub.utils import disable_progress_bars
            disable_progress_bars()
        except ImportError:
            pass  # resolve_model explains what to install
    cached = hub.find_cached_model(repo)
    if cached is not None:
        reporter.debug(f"{repo} found in the Hugging Face cache: {cached}")
        return cached
    if not hub.hub_offline():
        reporter.status(f"{repo} is not in the Hugging Face cache; downloading it (once)")
    return hub.resolve_model(repo, allow_download=True)


def load_model(args: argparse.Namespace, reporter: Reporter):
    """Resolves and loads the model, reporting where from and how long it took; returns (model, seconds)."""
    import smolvision
    model_dir = model_directory(args, reporter)
    start = time.perf_counter()
    # Only a command that decodes several requests together asks for more sequences than the default.
    options = {"max_sequences": args.parallel} if getattr(args, "parallel", 1) > 1 else {}
    if args.cache_mb is not None:
        options["cache_bytes"] = args.cache_mb * 2**20
    model = smolvision.load(model_dir, threads=args.threads, precision=args.precision,
                            profile=True if args.profile else None, quant=args.quant, on_log=reporter.status,
                            **options)
    load_s = time.perf_counter() - start
    threads = args.threads or os.cpu_count()
    quant = f", {args.quant} weights" if args.quant else ""
    reporter.status(f"loaded {model_dir} in {load_s:.2f} s ({threads} threads{quant})")
    reporter.debug(f"config: {model.config}")
    return model, load_s


@contextlib.contextmanager
def printing_profile(model, args: argparse.Namespace):
    """Prints the model's profile table on stderr when the block ends (also on errors and Ctrl-C), with --profile."""
    try:
        yield
    finally:
        if args.profile and not model.closed:
            print(f"profile:\n{model.profile()}", file=sys.stderr, flush=True)


def tile_progress(spinner: Spinner):
    """An on_progress callback that shows how many image tiles are encoded on the spinner."""
    def show(done: int, total: int) -> None:
        spinner.label = f"encoding image tiles {done}/{total}"
    return show
