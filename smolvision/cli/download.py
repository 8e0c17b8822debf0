"""`smolvision download`: fetch a model's files from the Hugging Face hub and print the directory."""
from __future__ import annotations

import argparse

from .. import hub
from .common import EXIT_OK, Reporter, add_output_options


def add_parser(commands) -> argparse.ArgumentParser:
    download = commands.add_parser(
        "download", help="download a model from the Hugging Face hub",
        description="Download a model's safetensors, JSON, tokenizer and template files (nothing else) into "
                    "the Hugging Face cache, or into --dir, and print the directory. Needs huggingface_hub "
                    "(pip install \"smolvision[hub]\").")
    download.add_argument("repo_id", nargs="?", default=hub.DEFAULT_REPO, metavar="REPO_ID",
                          help=f"the repo id (default {hub.DEFAULT_REPO})")
    download.add_argument("--dir", metavar="DIR", help="download into DIR instead of the cache")
    add_output_options(download)
    download.set_defaults(handler=run_command, parser=download)
    return download


def run_command(args: argparse.Namespace, reporter: Reporter) -> int:
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
