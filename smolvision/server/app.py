"""The ASGI application: routes, middleware (request log, CORS, API key, body limit) and the
chat-completions response, streaming or not."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from collections.abc import Callable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .. import errors, video
from . import protocol
from .engine import Engine, Finished, Generation, Job, QueueFull
from .media import MediaPolicy, load_media_bytes
from .protocol import APIError, Defaults

EXEMPT_PATHS = ("/", "/health")


@dataclass
class ServerOptions:
    """Everything `create_app` takes besides the model (see create_app)."""

    model_name: str = "smolvision"
    api_key: str | None = None
    parallel: int = 1
    max_queue: int = 16
    allowed_local_media_path: str | None = None
    allow_remote_images: bool = False
    """Allow http(s) image and video URLs (`--allow-remote-media` / `--allow-remote-images`)."""
    max_body_mb: float = 20.0
    max_images: int = 8
    max_videos: int = 2
    max_video_mb: float | None = None
    """The largest single video (data URL, local file or download); None: max_body_mb."""
    cors_origins: Sequence[str] = ()
    webui: bool = True
    defaults: Defaults = field(default_factory=Defaults)
    log: Callable[[str], Any] | None = None
    """Where the one-line-per-request log goes (default: stderr)."""


class Metrics:
    """The Prometheus series of one app (its own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("smolvision_requests", "HTTP requests answered", ["path", "status"], registry=r)
        self.prompt_tokens = Counter("smolvision_prompt_tokens", "Prompt tokens processed", registry=r)
        self.completion_tokens = Counter("smolvision_completion_tokens", "Tokens generated", registry=r)
        self.cached_tokens = Counter("smolvision_prompt_cached_tokens", "Prompt tokens reused from the cache",
                                     registry=r)
        self.cache_hits = Counter("smolvision_cache_hits", "Generations that reused cached prompt tokens",
                                  registry=r)
        self.cancelled = Counter("smolvision_generations_cancelled",
                                 "Generations stopped because the client went away or the server stopped", registry=r)
        self.rejected = Counter("smolvision_requests_rejected", "Requests refused because the queue was full",
                                registry=r)
        self.phase_seconds = Counter("smolvision_phase_seconds", "Engine seconds by phase", ["phase"], registry=r)
        self.request_seconds = Histogram("smolvision_request_seconds", "Chat completion seconds, admission to end",
                                         registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.queue_depth = Gauge("smolvision_queue_depth", "Requests waiting for a turn", registry=r)
        self.running = Gauge("smolvision_running_sequences", "Requests generating now (decoding together)",
                             registry=r)

    def watch_model(self, model) -> None:
        """Adds the model's decode steps and rows (rows / steps: the mean batch width) to the series."""
        if hasattr(model, "scheduler_stats"):
            self.registry.register(_DecodeCollector(model))


class _DecodeCollector:
    """The model's decode counters, read at each scrape."""

    def __init__(self, model) -> None:
        self.model = model

    def collect(self):
        stats = self.model.scheduler_stats()
        yield CounterMetricFamily("smolvision_decode_steps", "Decode steps: passes over the weights that advanced "
                                  "every running request by a token", value=stats.decode_steps)
        yield CounterMetricFamily("smolvision_decode_rows", "Tokens produced by the decode steps (rows / steps is "
                                  "the mean batch width)", value=stats.decode_rows)


class ServerState:
    """The model (once loaded), its engine and the app's settings."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.metrics = Metrics()
        self.engine: Engine | None = None
        self.load_error: BaseException | None = None
        self.media = MediaPolicy(options.allowed_local_media_path, options.allow_remote_images,
                                 max_bytes=int(options.max_body_mb * 1024 * 1024))
        video_mb = options.max_body_mb if options.max_video_mb is None else options.max_video_mb
        self.video_media = dataclasses.replace(self.media, max_bytes=int(video_mb * 1024 * 1024))
        self.log = options.log or (lambda line: print(line, file=sys.stderr, flush=True))

    def attach(self, model) -> None:
        engine = Engine(model, self.options.parallel, self.options.max_queue, on_finished=self._finished)
        self.metrics.queue_depth.set_function(lambda: engine.queued)
        self.metrics.running.set_function(lambda: engine.running)
        self.metrics.watch_model(model)
        self.engine = engine

    def _finished(self, job: Job, finished: Finished) -> None:
        m = self.metrics
        if finished.cancelled:
            m.cancelled.inc()
        result = finished.result
        if result is not None:
            m.prompt_tokens.inc(result.prompt_tokens)
            m.completion_tokens.inc(len(result.token_ids))
            cached = int(getattr(result, "cached_tokens", 0) or 0)
            m.cached_tokens.inc(cached)
            if cached:
                m.cache_hits.inc()
            t = result.timings
            m.phase_seconds.labels("image_encode").inc(t.image_encode_s)
            m.phase_seconds.labels("prefill").inc(t.prefill_s)
            m.phase_seconds.labels("decode").inc(t.decode_s)


def create_app(model, **options) -> Starlette:
    """An ASGI app serving `model` (a smolvision.Model, or a no-argument callable that loads one: it is
    called on a thread at startup, and /health answers 503 until it returns).

    Options (all keywords, see ServerOptions and `smolvision serve -h`): model_name, api_key, parallel,
    max_queue, allowed_local_media_path, allow_remote_images (images and videos), max_body_mb, max_images,
    max_videos, max_video_mb, cors_origins, webui, defaults (a protocol.Defaults), log.  The app does not
    close the model.
    """
    state = ServerState(ServerOptions(**options))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()
        if callable(model) and not hasattr(model, "generate"):
            def load() -> None:
                try:
                    loaded = model()
                except BaseException as err:  # reported by /health and the caller's loader
                    state.load_error = err
                    return
                try:
                    loop.call_soon_threadsafe(state.attach, loaded)
                except RuntimeError:  # the server stopped while loading; the loader's owner closes it
                    pass

            threading.Thread(target=load, name="smolvision-load", daemon=True).start()
        else:
            state.attach(model)
        try:
            yield
        finally:
            if state.engine is not None:
                await state.engine.shutdown()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    if state.options.webui:
        routes.append(Route("/", webui, methods=["GET"]))
    middleware = [Middleware(RequestLog, state=state)]
    if state.options.cors_origins:
        origins = list(state.options.cors_origins)
        middleware.append(Middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "OPTIONS"],
                                     allow_headers=["*"], max_age=600))
    middleware.append(Middleware(ApiKeyCheck, api_key=state.options.api_key))
    middleware.append(Middleware(BodyLimit, max_bytes=state.media.max_bytes))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, APIError: api_error,
                                        ClientDisconnect: client_gone, Exception: internal_error})
    app.state.smolvision = state
    return app


def _state(request: Request) -> ServerState:
    return request.app.state.smolvision


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def api_error(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc)


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
    message = {404: f"no route {request.method} {request.url.path}",
               405: f"method {request.method} not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, str(exc.status_code))
    return JSONResponse(protocol.error_body(message, kind, code), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
    """The client left while sending its body: nobody reads this answer."""
    return Response(status_code=400)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    _state(request).log(f"smolvision: internal error on {request.method} {request.url.path}:\n"
                        + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
    return JSONResponse(protocol.error_body("internal server error", "server_error", "internal_error"),
                        status_code=500)


def _not_ready(state: ServerState) -> APIError:
    if state.load_error is not None:
        return APIError(503, f"the model failed to load: {state.load_error}", "unavailable_error", "model_load_failed")
    return APIError(503, "the model is loading", "unavailable_error", "model_loading", headers={"Retry-After": "2"})


# ---- routes ----

async def health(request: Request) -> JSONResponse:
    state = _state(request)
    if state.engine is None:
        status = "error" if state.load_error is not None else "loading"
        return JSONResponse({"status": status}, status_code=503, headers={"Retry-After": "2"})
    return JSONResponse({"status": "ok"})


def _model_card(state: ServerState) -> dict:
    return {"id": state.options.model_name, "object": "model", "created": 0, "owned_by": "smolvision"}


async def list_models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [_model_card(_state(request))]})


async def get_model(request: Request) -> JSONResponse:
    state = _state(request)
    if request.path_params["model_id"] != state.options.model_name:
        raise APIError(404, f"no model {request.path_params['model_id']!r}; this server serves "
                            f"{state.options.model_name!r}", "not_found_error", "model_not_found")
    return JSONResponse(_model_card(state))


async def metrics(request: Request) -> Response:
    return Response(generate_latest(_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def webui(request: Request) -> HTMLResponse:
    page = resources.files(__package__).joinpath("webui.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


async def chat_completions(request: Request):
    state = _state(request)
    if state.engine is None:
        raise _not_ready(state)
    try:
        state.engine.check_room()  # a full server refuses before reading and decoding the body
        body = protocol.parse_json(await request.body())
        chat = protocol.parse_chat_request(body, state.options.defaults, state.options.max_images,
                                           state.options.max_videos)
        if chat.video_urls:
            _check_video_support(state.engine.model)
        images = [await _load(url, state.media, "image") for url in chat.image_urls]
        videos = [await _load(url, state.video_media, "video") for url in chat.video_urls]
        job = state.engine.submit(Generation(chat.messages, images, chat.options, videos))
    except QueueFull as full:
        state.metrics.rejected.inc()
        raise APIError(503, str(full), "overloaded_error", "queue_full",
                       headers={"Retry-After": str(full.retry_after)}) from None
    return CompletionResponse(job, chat, state)


async def _load(url: str, policy: MediaPolicy, kind: str) -> bytes:
    if url.startswith(("data:", "DATA:")):
        return load_media_bytes(url, policy, kind)
    # file reads and remote fetches block: off the event loop
    return await asyncio.to_thread(load_media_bytes, url, policy, kind)


def _check_video_support(model) -> None:
    """Refuses video_url parts, before fetching anything, when the model or the install cannot take video."""
    family = getattr(getattr(model, "config", None), "family", None)
    if family != "smolvlm2":
        raise APIError(400, f"this model ({family or 'unknown'} family) has no video support: video_url parts "
                            "need a SmolVLM2 model", "invalid_request_error", "video_unsupported")
    try:
        video.import_av()
    except errors.InputError:
        raise APIError(400, 'this server cannot decode video: PyAV is not installed (pip install '
                            '"smolvision[video]" on the server)', "invalid_request_error", "video_unsupported") from None


class CompletionResponse:
    """Runs an admitted job to the client: one JSON object, or SSE chunks as pieces arrive.

    A task watches the connection meanwhile; when the client goes away the job is cancelled (at its
    next text piece, or before it starts if still queued).  The status line is sent only once the
    job has produced something, so an error found by the model (a prompt beyond the context window,
    an undecodable image) is still answered with its 4xx status, streaming or not.
    """

    def __init__(self, job: Job, chat: protocol.ChatRequest, state: ServerState) -> None:
        self.job, self.chat, self.state = job, chat, state
        self.started = time.perf_counter()

    async def __call__(self, scope, receive, send) -> None:
        job = self.job
        watcher = asyncio.create_task(_cancel_on_disconnect(receive, job, scope.setdefault("state", {})))
        try:
            if self.chat.stream:
                await self._stream(scope, send)
            else:
                await self._whole(scope, send)
        finally:
            watcher.cancel()
            job.cancel()  # no-op when it ended; stops it when this response was cancelled (shutdown)
            self.state.metrics.request_seconds.observe(time.perf_counter() - self.started)

    def _record(self, scope, finished: Finished) -> None:
        note = scope.setdefault("state", {})
        note["queued_s"] = finished.queued_s
        result = finished.result
        if result is not None:
            note["tokens"] = (result.prompt_tokens, len(result.token_ids))
        if finished.cancelled:
            note["cancelled"] = True

    async def _whole(self, scope, send) -> None:
        while True:
            event = await self.job.next_event()
            if isinstance(event, Finished):
                break
        self._record(scope, event)
        if event.cancelled:
            if not scope.get("state", {}).get("disconnected"):  # cancelled by a shutdown: say so
                await error_response(_shutting_down())(scope, None, send)
            return
        if event.error is not None:
            response = error_response(_generation_error(event.error, self.state))
        else:
            body = protocol.completion(event.result, self.state.options.model_name, protocol.completion_id(),
                                       int(time.time()))
            response = JSONResponse(body)
        await response(scope, None, send)

    async def _stream(self, scope, send) -> None:
        first = await self.job.next_event()
        if isinstance(first, Finished) and first.error is not None:
            self._record(scope, first)
            await error_response(_generation_error(first.error, self.state))(scope, None, send)
            return
        writer = protocol.ChunkWriter(self.state.options.model_name, self.chat.include_usage)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]})
        await send({"type": "http.response.body", "body": writer.role(), "more_body": True})
        event = first
        while not isinstance(event, Finished):
            await send({"type": "http.response.body", "body": writer.content(event), "more_body": True})
            event = await self.job.next_event()
        self._record(scope, event)
        if event.cancelled:  # the client is gone, or the server is stopping: tell a client still there
            tail = b"" if scope.get("state", {}).get("disconnected") else protocol.sse(_shutting_down().body())
        elif event.error is not None:
            tail = protocol.sse(_generation_error(event.error, self.state).body())
        else:
            tail = writer.end(event.result)
        await send({"type": "http.response.body", "body": tail, "more_body": False})


async def _cancel_on_disconnect(receive, job: Job, note: dict) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            note["disconnected"] = True
            job.cancel()
            return


def _shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", "unavailable_error", "shutting_down",
                    headers={"Retry-After": "5"})


def _generation_error(err: BaseException, state: ServerState) -> APIError:
    if isinstance(err, (errors.InputError, errors.ImageError, errors.TokenizerError)):
        return APIError(400, str(err), "invalid_request_error",
                        "invalid_image" if isinstance(err, errors.ImageError) else "invalid_value")
    if isinstance(err, errors.ResourceError):
        return APIError(503, str(err), "unavailable_error", "out_of_resources", headers={"Retry-After": "5"})
    state.log("smolvision: generation failed:\n" + "".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip())
    return APIError(500, f"generation failed: {err}", "server_error", "generation_failed")


# ---- middleware (plain ASGI, so they see every response, streamed or not) ----

class RequestLog:
    """One line per request on the log: client, method, path, status, tokens, seconds."""

    def __init__(self, app, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [0]

        async def send_noting_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            path = scope["path"]
            known = path in ("/", "/health", "/metrics", "/v1/models", "/v1/chat/completions")
            self.state.metrics.requests.labels(path if known else "other", str(status[0])).inc()
            note = scope.get("state", {})
            extra = ""
            if "tokens" in note:
                extra += f" prompt={note['tokens'][0]} completion={note['tokens'][1]}"
            if note.get("cancelled"):
                extra += " cancelled"
            if note.get("queued_s", 0) >= 0.01:
                extra += f" queued={note['queued_s']:.2f}s"
            client = scope.get("client") or ("-", 0)
            self.state.log(f"smolvision: {client[0]} {scope['method']} {path} {status[0] or '-'}{extra} "
                           f"{time.perf_counter() - start:.3f} s")


class ApiKeyCheck:
    """With an API key: `Authorization: Bearer KEY` or `X-Api-Key: KEY` on every route but / and /health."""

    def __init__(self, app, api_key: str | None) -> None:
        self.app, self.key = app, (api_key or "").encode()

    async def __call__(self, scope, receive, send) -> None:
        if (not self.key or scope["type"] != "http" or scope["path"] in EXEMPT_PATHS
                or scope["method"] == "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if given is None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        if given is not None and hmac.compare_digest(given, self.key):
            return await self.app(scope, receive, send)
        message = "missing API key: send Authorization: Bearer KEY or X-Api-Key: KEY" if given is None \
            else "invalid API key"
        err = APIError(401, message, "authentication_error", "invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
        await error_response(err)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuses bodies over `max_bytes` with 413: by Content-Length before reading any of it, or as soon as
    a chunked body passes the limit."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(scope, send, int(length) if length.isdigit() else None)
        seen = 0
        started = [False]

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        async def noting_send(message) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, noting_send)
        except _BodyTooLarge:
            if not started[0]:
                await self._refuse(scope, send, None)

    async def _refuse(self, scope, send, length: int | None) -> None:
        size = f" ({length} bytes)" if length is not None else ""
        err = APIError(413, f"the request body{size} is over the limit of {self.max_bytes} bytes "
                            f"(the server's --max-body-mb)", "invalid_request_error", "request_too_large")
        await error_response(err)(scope, None, send)
