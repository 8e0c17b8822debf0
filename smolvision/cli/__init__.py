"""The smolvision command line, a thin layer over the Python API (smolvision.load / Model.generate).

    smolvision -d DIR -i IMAGE [-p PROMPT]          answer one prompt, streaming to stdout
    smolvision chat -d DIR [-i IMAGE]               interactive multi-turn chat
    smolvision caption -d DIR PATHS... -o out.jsonl caption many images, resumably
    smolvision download [REPO_ID] [--dir DIR]       fetch a model from the Hugging Face hub
    smolvision serve -d DIR [--port 8080]           OpenAI-compatible server and web page (smolvision.server)

Only parsing, I/O and formatting live here.  Answers go to stdout; status, progress and errors go
to stderr.  Exit codes: 0 success, 1 runtime error, 2 usage error, 130 interrupted.

One module per command (run.py, chat.py, caption.py, download.py, serve.py), each with `add_parser(commands)`,
which adds its subparser with `handler=run_command`, and `run_command(args, reporter) -> exit status`.
A new command is a new module added to COMMANDS.  common.py holds what they share.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from . import caption, chat, download, run, serve
from .common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, Reporter, VersionAction

# Command name -> its module, in the order `smolvision -h` lists them; `run` is the default.
COMMANDS = {"run": run, "chat": chat, "caption": caption, "download": download, "serve": serve}

__all__ = ["COMMANDS", "build_parser", "main", "parse_args"]


def build_parser() -> argparse.ArgumentParser:
    """The root parser, with one subparser per command in COMMANDS."""
    root = argparse.ArgumentParser(
        prog="smolvision",
        description="Fast CPU inference for SmolVLM vision-language models.",
        epilog="Without a command, `run` is assumed: smolvision -d DIR -i IMAGE -p PROMPT. "
               "See `smolvision COMMAND -h`.")
    root.add_argument("--version", action=VersionAction, help="print the version and exit")
    commands = root.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(commands)
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


def main(argv: Sequence[str] | None = None) -> int:
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
