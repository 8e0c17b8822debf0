"""smolvision.server.create_app in-process, with stand-in models for what a real tiny model cannot be made
to do on cue: fail mid-stream, load slowly, fail to load."""
from __future__ import annotations

import base64
import json
import sys
import threading
from types import SimpleNamespace

import pytest

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

import smolvision  # noqa: E402
from smolvision import server  # noqa: E402
from smolvision.generation import SamplingParams, Timings  # noqa: E402
from smolvision import Result  # noqa: E402

BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


class PiecesThenFailure:
    """Generates two pieces, then fails inside the engine."""

    def __init__(self) -> None:
        self.calls = []

    def generate(self, messages, images, on_token, on_progress, **options):
        self.calls.append((messages, images, options))
        on_token("Hel")
        on_token("lo")
        raise smolvision.GenerationError("the engine failed (simulated)")


class Echo:
    def generate(self, messages, images, on_token, on_progress, **options):
        text = messages[-1]["content"][-1]["text"]
        on_token(text)
        return Result(text=text, token_ids=[1, 2], finish_reason="stop", n_tiles=0,
                      timings=Timings(prompt_tokens=5, generated_tokens=2, prefill_s=0.01, decode_s=0.02))


def test_error_mid_stream_is_an_sse_error_event():
    model = PiecesThenFailure()
    with TestClient(server.create_app(model, log=lambda line: None)) as client:
        with client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as r:
            assert r.status_code == 200
            events = [line for line in r.iter_lines() if line]
        chunks = [json.loads(e[len("data: "):]) for e in events]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert [c["choices"][0]["delta"]["content"] for c in chunks[1:3]] == ["Hel", "lo"]
        assert chunks[-1]["error"]["code"] == "generation_failed" and chunks[-1]["error"]["type"] == "server_error"
        assert "data: [DONE]" not in events
        # Not streaming: the engine's failure is a 500 in the OpenAI shape (it is not the client's fault).
        r = client.post("/v1/chat/completions", json=BODY)
        assert r.status_code == 500 and r.json()["error"]["code"] == "generation_failed"
    messages, images, options = model.calls[0]
    assert messages == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}] and images == []
    assert options["max_tokens"] == 8 and options["temperature"] == 0.0


def test_health_is_503_while_loading_then_ok():
    release = threading.Event()

    def load():
        release.wait(30)
        return Echo()

    with TestClient(server.create_app(load, log=lambda line: None)) as client:
        r = client.get("/health")
        assert r.status_code == 503 and r.json() == {"status": "loading"} and r.headers["retry-after"]
        r = client.post("/v1/chat/completions", json=BODY)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading" and r.headers["retry-after"]
        release.set()
        for _ in range(300):
            if client.get("/health").status_code == 200:
                break
            threading.Event().wait(0.01)
        assert client.get("/health").json() == {"status": "ok"}
        r = client.post("/v1/chat/completions", json=BODY)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hi"


def test_a_failed_load_is_reported():
    def load():
        raise smolvision.ModelError("config.json: not a SmolVLM")

    with TestClient(server.create_app(load, log=lambda line: None)) as client:
        for _ in range(300):
            if client.get("/health").json()["status"] == "error":
                break
            threading.Event().wait(0.01)
        assert client.get("/health").status_code == 503
        r = client.post("/v1/chat/completions", json=BODY)
        assert r.status_code == 503 and "not a SmolVLM" in r.json()["error"]["message"]


def test_system_prompt_default_and_options_reach_the_model():
    model = PiecesThenFailure()
    defaults = server.protocol.Defaults(system_prompt="Be brief.", sampling=SamplingParams(max_tokens=3), stop=("END",))
    with TestClient(server.create_app(model, defaults=defaults, log=lambda line: None)) as client:
        client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "top_k": -1})
        client.post("/v1/chat/completions", json={"messages": [{"role": "developer", "content": "Mine."},
                                                               {"role": "user", "content": "hi"}], "stop": "x"})
    (first, _, opts1), (second, _, opts2) = model.calls
    assert first[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert opts1["max_tokens"] == 3 and opts1["stop"] == ("END",) and opts1["top_k"] == 0
    assert second[0] == {"role": "system", "content": [{"type": "text", "text": "Mine."}]} and len(second) == 2
    assert opts2["stop"] == ("x",)


class VideoRecorder:
    """A SmolVLM2 stand-in that records what reaches it."""

    config = SimpleNamespace(family="smolvlm2")

    def __init__(self) -> None:
        self.calls = []

    def generate(self, messages, images, videos, on_token, on_progress, **options):
        self.calls.append((messages, images, videos))
        return Result(text="ok", token_ids=[1], finish_reason="stop", n_tiles=0,
                      timings=Timings(prompt_tokens=5, generated_tokens=1, prefill_s=0.01, decode_s=0.02))


def _url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def test_videos_reach_the_model_as_bytes_in_order():
    model = VideoRecorder()
    content = [{"type": "video_url", "video_url": {"url": _url(b"first clip", "video/mp4")}},
               {"type": "image_url", "image_url": {"url": _url(b"an image", "image/png")}},
               {"type": "video_url", "video_url": _url(b"second clip", "video/webm")},  # the bare-string form too
               {"type": "text", "text": "Compare."}]
    with TestClient(server.create_app(model, log=lambda line: None)) as client:
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]})
        assert r.status_code == 200, r.text
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content + content}]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_videos"  # the default --max-videos 2
    [(messages, images, videos)] = model.calls
    assert messages == [{"role": "user", "content": [{"type": "video"}, {"type": "image"}, {"type": "video"},
                                                     {"type": "text", "text": "Compare."}]}]
    assert images == [b"an image"] and videos == [b"first clip", b"second clip"]


def test_video_without_pyav_is_400_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    model = VideoRecorder()
    content = [{"type": "video_url", "video_url": {"url": _url(b"clip", "video/mp4")}}]
    with TestClient(server.create_app(model, log=lambda line: None)) as client:
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "video_unsupported"
    assert 'pip install "smolvision[video]"' in r.json()["error"]["message"]
    assert model.calls == []


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(smolvision.Error, match=r'smolvision\[server\]'):
        server.create_app(Echo())


def test_cli_serve_without_the_extra_names_it(monkeypatch, capsys, tmp_path):
    from smolvision import cli
    monkeypatch.setitem(sys.modules, "starlette", None)
    assert cli.main(["serve", "-d", str(tmp_path)]) == cli.EXIT_ERROR
    assert 'pip install "smolvision[server]"' in capsys.readouterr().err


def test_cli_serve_options(capsys, tmp_path):
    from smolvision import cli
    assert cli.main(["serve", "-h"]) == 0
    help_text = capsys.readouterr().out
    for option in ("--host", "--port", "--api-key", "--api-key-file", "--parallel", "--max-queue",
                   "--allowed-local-media-path", "--allow-remote-images", "--allow-remote-media", "--max-body-mb",
                   "--max-images", "--max-videos", "--max-video-mb", "--cors-origin", "--no-webui", "--threads", "--quant", "--max-tokens", "--temperature"):
        assert option in help_text
    args = cli.parse_args(["serve", "-d", "M", "--allow-remote-media", "--max-videos", "0", "--max-video-mb", "50"])
    assert (args.allow_remote_images, args.max_videos, args.max_video_mb) == (True, 0, 50.0)
    args = cli.parse_args(["serve", "-d", "M", "--allow-remote-images"])
    assert (args.allow_remote_images, args.max_videos, args.max_video_mb) == (True, 2, None)
    assert cli.main(["serve", "--api-key", "a", "--api-key-file", "f"]) == cli.EXIT_USAGE
    assert cli.main(["serve", "--parallel", "0"]) == cli.EXIT_USAGE
    assert cli.main(["serve", "--allowed-local-media-path", str(tmp_path / "nope")]) == cli.EXIT_USAGE
    (tmp_path / "empty").write_text("\n")
    assert cli.main(["serve", "--api-key-file", str(tmp_path / "empty")]) == cli.EXIT_USAGE
    assert "is empty" in capsys.readouterr().err
