"""`smolvision chat`: an interactive multi-turn conversation, answers streamed, history kept."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from .common import (EXIT_OK, Reporter, StreamPrinter, add_generation_options, add_model_options,
                     add_output_options, check_image_paths, format_stats, generation_kwargs, load_model,
                     printing_profile, read_images, tile_progress)


def add_parser(commands) -> argparse.ArgumentParser:
    chat = commands.add_parser(
        "chat", help="interactive multi-turn chat",
        description="An interactive chat: type a message, the answer streams back; the conversation is kept. "
                    "/image PATH attaches an image to your next message, /reset starts over, /help lists "
                    "commands. Ctrl-C stops an answer, Ctrl-D exits.")
    chat.add_argument("-i", "--image", dest="images", action="append", default=[], metavar="IMAGE",
                      help="an image for the first message (repeatable)")
    add_model_options(chat)
    add_generation_options(chat, prompt=False)
    add_output_options(chat)
    chat.set_defaults(handler=run_command, parser=chat)
    return chat


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
    messages: list[dict] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    pending_images: list[Any] = field(default_factory=list)

    def user_turn(self, text: str) -> tuple[list[dict], list[Any]]:
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


def run_command(args: argparse.Namespace, reporter: Reporter) -> int:
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
