"""The smolvision command line, a thin layer over the Python API (smolvision.load / Model.generate).

    smolvision -d DIR -i IMAGE [-p PROMPT]          answer one prompt, streaming to stdout
    smolvision chat -d DIR [-i IMAGE]               interactive multi-turn chat
    smolvision caption -d DIR PATHS... -o out.jsonl caption many images, resumably
    smolvision download [REPO_ID] [--dir DIR]       fetch a model from the Hugging Face hub

Only parsing, I/O and formatting live here.  Answers go to stdout; status, progress and errors go
to stderr.  Exit codes: 0 success, 1 runtime error, 2 usage error, 130 interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List, Optional, Sequence, Set, TextIO, Tuple

from . import hub
from ._term import ProgressBar, Spinner, format_duration, is_tty

COMMANDS = ("run", "chat", "caption", "download")
DEFAULT_PROMPT = "Describe this image."
IMAGE_EXTENSIONS = frozenset((".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"))
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


def _version() -> str:
    import smolvision
    return f"smolvision {smolvision.__version__} ({smolvision.build_info()})"


class _VersionAction(argparse.Action):
    """--version, importing the engine only when asked (so `-h` works even without a built library)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version(), flush=True)
        parser.exit()


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--debug", action="store_true",
                       help="tracebacks and extra diagnostics on stderr")
    group.add_argument("--silent", action="store_true",
                       help="no status or progress on stderr (errors are still reported)")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
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
    group.add_argument("--profile", action="store_true",
                       help="time each phase (vision, prefill, decode) by op class and print the table on "
                            "stderr at the end (with --json, also as its \"profile\" field)")


def _add_generation_options(parser: argparse.ArgumentParser, prompt: bool = True) -> None:
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
    group.add_argument("--repetition-penalty", type=_float_in(0.0, float("inf"), "positive", low_open=True),
                       default=1.0, metavar="R", help="penalty for repeated tokens; 1 = off (default)")
    group.add_argument("--seed", type=non_negative_int, metavar="N", help="random seed for sampling")
    group.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="stop when TEXT is generated (repeatable)")
    group.add_argument("--no-split", action="store_true",
                       help="encode each image as one downscaled tile, not split into tiles")
    group.add_argument("--max-edge", type=positive_int, metavar="N",
                       help="resize images so their longest edge is at most N pixels")


def build_parser() -> argparse.ArgumentParser:
    """The root parser: `run` (the default command), `chat`, `caption`, `download`."""
    root = argparse.ArgumentParser(
        prog="smolvision",
        description="Fast CPU inference for SmolVLM vision-language models.",
        epilog="Without a command, `run` is assumed: smolvision -d DIR -i IMAGE -p PROMPT. "
               "See `smolvision COMMAND -h`.")
    root.add_argument("--version", action=_VersionAction, help="print the version and exit")
    commands = root.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run", prog="smolvision", help="(default) answer one prompt about images, streaming to stdout",
        usage="smolvision [run] [-d DIR | -m REPO_ID] [-i IMAGE ...] [-p PROMPT] [options]",
        description="Answer one prompt about zero or more images, streaming the answer to stdout. "
                    "Other commands: chat, caption, download (smolvision COMMAND -h).")
    run.add_argument("-i", "--image", dest="images", action="append", default=[], metavar="IMAGE",
                     help="an image file, or - for stdin (repeatable; order matters)")
    run.add_argument("-V", "--video", dest="videos", action="append", default=[], metavar="FILE",
                     help="a video file for SmolVLM2 models, decoded with PyAV (pip install "
                          "'smolvision[video]'); repeatable")
    run.add_argument("--fps", type=_float_in(0.0, float("inf"), "positive", low_open=True), metavar="F",
                     help="frames sampled per second of video (default: the model's, 1 for SmolVLM2)")
    run.add_argument("--max-frames", type=positive_int, metavar="N",
                     help="most frames sampled from each video (default: the model's, 64 for SmolVLM2)")
    run.add_argument("--json", action="store_true",
                     help="print one JSON object (text, finish reason, token counts, timings) instead of streaming")
    run.add_argument("--version", action=_VersionAction, help="print the version and exit")
    _add_model_options(run)
    _add_generation_options(run)
    _add_output_options(run)
    run.set_defaults(handler=cmd_run, parser=run)

    chat = commands.add_parser(
        "chat", help="interactive multi-turn chat",
        description="An interactive chat: type a message, the answer streams back; the conversation is kept. "
                    "/image PATH attaches an image to your next message, /reset starts over, /help lists "
                    "commands. Ctrl-C stops an answer, Ctrl-D exits.")
    chat.add_argument("-i", "--image", dest="images", action="append", default=[], metavar="IMAGE",
                      help="an image for the first message (repeatable)")
    _add_model_options(chat)
    _add_generation_options(chat, prompt=False)
    _add_output_options(chat)
    chat.set_defaults(handler=cmd_chat, parser=chat)

    caption = commands.add_parser(
        "caption", help="caption many images into a JSON-lines file, resumably",
        description="Caption images (files, directories, globs) with one model load, writing one JSON line "
                    "per image to OUTPUT as each completes. Rerunning skips images already captioned there; "
                    "images that failed are retried.")
    caption.add_argument("inputs", nargs="+", metavar="PATH_OR_GLOB",
                         help="image files, directories (their image files) or quoted globs (** recurses)")
    caption.add_argument("-o", "--output", required=True, metavar="OUTPUT.jsonl", help="the JSON-lines file")
    _add_model_options(caption)
    _add_generation_options(caption)
    _add_output_options(caption)
    caption.set_defaults(handler=cmd_caption, parser=caption)

    download = commands.add_parser(
        "download", help="download a model from the Hugging Face hub",
        description="Download a model's safetensors, JSON, tokenizer and template files (nothing else) into "
                    "the Hugging Face cache, or into --dir, and print the directory. Needs huggingface_hub "
                    "(pip install \"smolvision[hub]\").")
    download.add_argument("repo_id", nargs="?", default=hub.DEFAULT_REPO, metavar="REPO_ID",
                          help=f"the repo id (default {hub.DEFAULT_REPO})")
    download.add_argument("--dir", metavar="DIR", help="download into DIR instead of the cache")
    _add_output_options(download)
    download.set_defaults(handler=cmd_download, parser=download)
    return root


def _command_parsers(root: argparse.ArgumentParser) -> dict:
    action = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parses argv, assuming the `run` command unless the first argument names a command."""
    argv = list(argv)
    root = build_parser()
    if argv and argv[0] in ("-h", "--help"):
        root.parse_args(argv)  # prints the overview of commands and exits
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    # Parsing with the command's own parser keeps its usage line in error messages.
    args = _command_parsers(root)[command].parse_args(argv)
    args.command = command
    if args.command == "run" and not args.images and not args.videos and args.prompt is None:
        args.parser.error("give an image (-i IMAGE), a video (-V FILE) or a prompt (-p PROMPT)")
    return args


# ---------------------------------------------------------------------------------------------
# Status output

class Reporter:
    """Writes status, diagnostics and errors to stderr according to --silent / --debug."""

    def __init__(self, silent: bool = False, debug: bool = False, stream: Optional[TextIO] = None) -> None:
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


def result_json(result: Any, load_s: Optional[float] = None) -> dict:
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

    def __init__(self, out: TextIO, spinner: Optional[Spinner] = None) -> None:
        self.out, self.spinner = out, spinner
        self.pieces: List[str] = []

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
# Shared steps

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
    model = smolvision.load(model_dir, threads=args.threads, precision=args.precision,
                            profile=True if args.profile else None, quant=args.quant, on_log=reporter.status)
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


# ---------------------------------------------------------------------------------------------
# smolvision [run]

def cmd_run(args: argparse.Namespace, reporter: Reporter) -> int:
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


# ---------------------------------------------------------------------------------------------
# smolvision chat

CHAT_HELP = """commands:
  /image PATH   attach an image to your next message (repeatable)
  /reset        forget the conversation and pending images
  /help         this list
  /exit         quit (or Ctrl-D); Ctrl-C stops an answer"""


@dataclass
class ChatSession:
    """A conversation as Model.generate(messages=..., images=...) takes it.

    messages use the Hugging Face form: content is a list of {"type": "image"} and
    {"type": "text", "text": ...} blocks; `images` holds the images of every {"type": "image"}
    block, in order.
    """
    messages: List[dict] = field(default_factory=list)
    images: List[Any] = field(default_factory=list)
    pending_images: List[Any] = field(default_factory=list)

    def user_turn(self, text: str) -> Tuple[List[dict], List[Any]]:
        """(messages, images) for the next generate call: the history plus this user message."""
        content = [{"type": "image"} for _ in self.pending_images] + [{"type": "text", "text": text}]
        return self.messages + [{"role": "user", "content": content}], self.images + self.pending_images

    def commit(self, text: str, answer: str) -> None:
        """Records a finished (or stopped) exchange and consumes the pending images."""
        messages, images = self.user_turn(text)
        # The model saw "Assistant:" and produced " answer"; the template adds ": " itself.
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer.strip()}]})
        self.messages, self.images, self.pending_images = messages, images, []

    def reset(self) -> None:
        self.messages, self.images, self.pending_images = [], [], []


def _enable_line_editing() -> None:
    try:
        import readline  # noqa: F401  (importing it gives input() editing and history)
    except ImportError:
        pass


def cmd_chat(args: argparse.Namespace, reporter: Reporter) -> int:
    import smolvision
    check_image_paths(args.images)
    kwargs = generation_kwargs(args)
    model, _ = load_model(args, reporter)
    _enable_line_editing()
    session = ChatSession(pending_images=read_images(args.images))
    reporter.status("type a message; /image PATH attaches an image, /reset starts over, /help for more; "
                    "Ctrl-C stops an answer, Ctrl-D exits")
    turn = 0
    with model, printing_profile(model, args):
        while True:
            try:
                line = input("> ")
            except EOFError:
                print()
                return EXIT_OK
            except KeyboardInterrupt:
                print()
                reporter.status("(Ctrl-D or /exit quits)")
                continue
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                if _chat_command(text, session):
                    return EXIT_OK
                continue
            turn += 1
            messages, images = session.user_turn(text)
            reporter.debug(f"turn {turn}: {len(messages)} messages, {len(images)} images: "
                           f"{json.dumps(messages, ensure_ascii=False)}")
            printer = StreamPrinter(sys.stdout, reporter.spinner("thinking"))
            printer.spinner.start()
            try:
                result = model.generate(messages=messages, images=images, on_token=printer,
                                        on_progress=tile_progress(printer.spinner), **kwargs)
            except KeyboardInterrupt:
                printer.abort()
                if printer.pieces:  # the partial answer was seen: keep it, so the history matches the screen
                    session.commit(text, printer.text)
                    reporter.status("(stopped)")
                else:
                    reporter.status("(stopped before answering; the message was not kept)")
                continue
            except smolvision.Error as err:
                printer.abort()
                hint = "; /reset starts a new conversation" if isinstance(err, smolvision.InputError) else ""
                reporter.error(f"{err} (the message and its images were not kept{hint})")
                session.pending_images = []
                continue
            printer.end_line()
            session.commit(text, result.text)
            reporter.debug(f"turn {turn}: prompt {result.prompt_tokens} tokens, "
                           f"{len(result.token_ids)} generated, finish {result.finish_reason}")
            reporter.status(format_stats(result))


def _chat_command(text: str, session: ChatSession) -> bool:
    """Runs a /command; True when the session should end."""
    name, _, rest = text.partition(" ")
    rest = rest.strip()
    if name in ("/exit", "/quit"):
        return True
    if name == "/reset":
        session.reset()
        print("(conversation reset)", flush=True)
    elif name == "/image":
        if not rest:
            print("usage: /image PATH", flush=True)
        elif not os.path.isfile(os.path.expanduser(rest)):
            print(f"no such file: {rest}", flush=True)
        else:
            session.pending_images.append(os.path.expanduser(rest))
            count = len(session.pending_images)
            print(f"({count} image{'s' if count != 1 else ''} attached to your next message)", flush=True)
    elif name == "/help":
        print(CHAT_HELP, flush=True)
    else:
        print(f"unknown command {name}; /help lists them", flush=True)
    return False


# ---------------------------------------------------------------------------------------------
# smolvision caption: input expansion and the resumable JSON-lines bookkeeping

def image_key(path: str) -> str:
    """What identifies an image across runs: its absolute, normalised path."""
    return os.path.normcase(os.path.abspath(path))


def expand_inputs(inputs: Iterable[str]) -> Tuple[List[str], List[str]]:
    """(image paths, inputs that matched nothing) from files, directories and globs.

    A directory gives its image files (by extension, not recursing), a glob its matches (sorted;
    `**` recurses; directories among them are expanded), an existing or plain path itself (a
    missing file is kept, to be reported as an error).  Duplicates are dropped, order kept.
    """
    paths: List[str] = []
    unmatched: List[str] = []
    seen: Set[str] = set()

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
    done: Set[str]
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
    kept: List[bytes] = []
    done: Set[str] = set()
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
                   on_done: Optional[Callable[[str, dict], None]] = None) -> Tuple[int, int]:
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


def cmd_caption(args: argparse.Namespace, reporter: Reporter) -> int:
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


# ---------------------------------------------------------------------------------------------
# smolvision download

def cmd_download(args: argparse.Namespace, reporter: Reporter) -> int:
    if reporter.silent:
        try:
            from huggingface_hub.utils import disable_progress_bars
            disable_progress_bars()
        except ImportError:
            pass
    reporter.status(f"downloading {args.repo_id} (safetensors, JSON, tokenizer and template files)")
    path = hub.download_model(args.repo_id, local_dir=args.dir)
    print(path, flush=True)  # stdout: the directory, for -d "$(smolvision download)"
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# Entry point

def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted)."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:  # argparse: -h / --version (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    reporter = Reporter(silent=args.silent, debug=args.debug)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # a text piece the terminal cannot show must not crash
    try:
        return args.handler(args, reporter)
    except KeyboardInterrupt:
        reporter.status("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout closed early (| head): stop quietly; point stdout at devnull so exit does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as err:  # noqa: BLE001  one line for users; the traceback with --debug
        import smolvision
        if args.debug:
            traceback.print_exc()
        if isinstance(err, (smolvision.Error, OSError)):
            reporter.error(str(err) if isinstance(err, smolvision.Error) else _os_error_message(err))
        else:
            reporter.error(f"{type(err).__name__}: {err} (rerun with --debug for the traceback)")
        return EXIT_ERROR


def _os_error_message(err: OSError) -> str:
    return f"{err.strerror or err}: {err.filename}" if err.filename else str(err)
