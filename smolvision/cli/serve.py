"""`smolvision serve`: the OpenAI-compatible server's options and its runner (the app is smolvision.server)."""
from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys

from .. import hub
from . import common

DESCRIPTION = (
    "Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models, /health, "
    "/metrics) and a web page at /. Binds to 127.0.0.1 by default; images and videos come only as data: URLs "
    "unless --allowed-local-media-path or --allow-remote-media say otherwise. "
    "Needs the server extra: pip install \"smolvision[server]\".")


def _directory(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"not a directory: {text}")
    return text


def _key_from_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            key = f.readline().strip()
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {err.strerror or err}") from None
    if not key:
        raise argparse.ArgumentTypeError(f"the first line of {path} is empty")
    return key


def add_parser(commands) -> argparse.ArgumentParser:
    """Adds `serve` to the CLI's subparsers."""
    serve = commands.add_parser("serve", help="an OpenAI-compatible HTTP server and web page",
                                description=DESCRIPTION)
    group = serve.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                           "only; 0.0.0.0 for every interface)")
    group.add_argument("--port", type=common.non_negative_int, default=8080,
                       help="port (default 8080; 0 picks a free one, printed at startup)")
    key = group.add_mutually_exclusive_group()
    key.add_argument("--api-key", metavar="KEY", help="require this key (Authorization: Bearer KEY or "
                                                      "X-Api-Key: KEY) on every route but / and /health")
    key.add_argument("--api-key-file", dest="api_key", type=_key_from_file, metavar="FILE",
                     help="read the API key from the first line of FILE (keeps it out of the process list)")
    group.add_argument("--alias", metavar="NAME", help="the model's name in /v1/models and responses "
                                                       "(default: the directory's or repo's name)")
    group.add_argument("--parallel", type=common.positive_int, default=1, metavar="N",
                       help="requests in progress at once, decoded together (default 1)")
    group.add_argument("--max-queue", type=common.non_negative_int, default=16, metavar="N",
                       help="requests that may wait beyond --parallel (default 16); more are answered 503 with "
                            "Retry-After")
    group.add_argument("--allowed-local-media-path", type=_directory, metavar="DIR",
                       help="allow file:// URLs and paths to images and videos inside DIR (symlinks and .. "
                            "resolved; off by default)")
    group.add_argument("--allow-remote-media", "--allow-remote-images", dest="allow_remote_images",
                       action="store_true",
                       help="allow http(s) image and video URLs (public addresses only, no redirects, size-capped, "
                            "10 s timeout; off by default)")
    group.add_argument("--max-body-mb", type=common.positive_float, default=20.0, metavar="MB",
                       help="largest request body, and largest single image, in MB (default 20)")
    group.add_argument("--max-images", type=common.positive_int, default=8, metavar="N",
                       help="most images in one request (default 8)")
    group.add_argument("--max-videos", type=common.non_negative_int, default=2, metavar="N",
                       help="most videos (video_url parts, SmolVLM2 models) in one request (default 2; 0 refuses "
                            "video)")
    group.add_argument("--max-video-mb", type=common.positive_float, metavar="MB",
                       help="largest single video, from a data: URL, a local file or a download, in MB "
                            "(default: --max-body-mb)")
    group.add_argument("--cors-origin", dest="cors_origins", action="append", nargs="+", default=[],
                       metavar="ORIGIN", help="let web pages from ORIGIN call the API ('*' for any, e.g. the "
                                              "SmolVLM webcam page opened from a file)")
    group.add_argument("--no-webui", action="store_true", help="do not serve the web page at /")
    common.add_model_options(serve)
    common.add_generation_options(serve, prompt=False)
    common.add_output_options(serve)
    serve.set_defaults(handler=run_command, parser=serve)
    return serve


def _listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket (so --port 0 can report the port it got)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, cancelling running generations as its graceful shutdown starts (rather than
        waiting out the grace period on a long answer)."""

        def __init__(self, config, app) -> None:
            super().__init__(config)
            self.smolvision_state = app.state.smolvision

        async def shutdown(self, sockets=None) -> None:
            if self.smolvision_state.engine is not None:
                self.smolvision_state.engine.cancel_all()
            await super().shutdown(sockets)

    return Server


class _Stop(Exception):
    """SIGTERM, re-raised by uvicorn after its graceful shutdown."""


def _raise_stop(signum, frame) -> None:
    raise _Stop()


def run_command(args: argparse.Namespace, reporter: common.Reporter) -> int:
    from ..server import require_extra
    require_extra()
    import uvicorn

    from ..server.app import create_app
    from ..generation import SamplingParams
    from ..server.protocol import Defaults

    api_key = args.api_key or None
    source = os.path.basename(os.path.normpath(args.model_dir)) if args.model_dir else args.model or hub.DEFAULT_REPO
    name = args.alias or source
    options = common.generation_kwargs(args)  # the sampling settings, then stop, system prompt, splitting
    sampling = SamplingParams(**{name: options.pop(name) for name in
                                 ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed")})
    defaults = Defaults(sampling=sampling, **options)
    loaded: list = []
    failed: list[BaseException] = []
    server = None

    def load():
        try:
            model, _ = common.load_model(args, reporter)
        except BaseException as err:
            failed.append(err)
            if server is not None:
                server.should_exit = True
            raise
        loaded.append(model)
        reporter.status("ready")
        return model

    log = (lambda line: None) if args.silent else (lambda line: print(line, file=sys.stderr, flush=True))
    app = create_app(load, model_name=name, api_key=api_key, parallel=args.parallel, max_queue=args.max_queue,
                     allowed_local_media_path=args.allowed_local_media_path,
                     allow_remote_images=args.allow_remote_images, max_body_mb=args.max_body_mb,
                     max_images=args.max_images, max_videos=args.max_videos, max_video_mb=args.max_video_mb,
                     cors_origins=[o for group in args.cors_origins for o in group],
                     webui=not args.no_webui, defaults=defaults, log=log)
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    reporter.status(f"listening on http://{shown}:{port}/ ({'web page at /, ' if not args.no_webui else ''}"
                    f"API at /v1; Ctrl-C stops); loading {name}")
    _Server = _server_class()
    if api_key is None and not ipaddress.ip_address(host.split("%")[0]).is_loopback:
        reporter.status(f"warning: listening on {host} without --api-key: anyone who can reach this address "
                        "can use the model")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=3,
                            server_header=False)
    server = _Server(config, app)
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Stop):
        pass  # uvicorn shut down gracefully, then re-raised the signal it caught
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
        for model in loaded:
            model.close()
    if failed:
        raise failed[0]
    reporter.status("stopped")
    return common.EXIT_OK
