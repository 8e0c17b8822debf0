"""`smolvision serve` with `video_url` content parts, on a tiny SmolVLM2 model (loopback only).

The video pipeline itself is checked against transformers in test_smolvlm2.py; here every answer is compared
with Model.generate(videos=[the same file]) run in this process on the same model and request."""
from __future__ import annotations

import signal

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("av")

import smolvision  # noqa: E402
from helpers import write_clip  # noqa: E402
from servers import ServerProcess, data_url  # noqa: E402
from test_server import assert_error_shape, collect_stream, post, user  # noqa: E402

QUESTION = "What happens in this video?"
MAX_VIDEO_BYTES = 200_000  # the server's --max-video-mb (in MB: / 2**20); its body limit stays 1 MB


@pytest.fixture(scope="module")
def v2_dir(model_factory):
    return model_factory("smolvlm2")


@pytest.fixture(scope="module")
def model(v2_dir):
    with smolvision.load(v2_dir, threads=1) as m:
        yield m


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    """allowed/clip.mp4 (2 s at 5 fps: two frames sampled), a clip outside and links to it, a file too big."""
    root = tmp_path_factory.mktemp("video-media")
    allowed = root / "allowed"
    allowed.mkdir()
    write_clip(allowed / "clip.mp4", seconds=2, fps=5, width=48, height=32)
    write_clip(root / "secret.mp4", seconds=2, fps=5, width=40, height=40)
    (allowed / "link.mp4").symlink_to(root / "secret.mp4")
    (allowed / "big.mp4").write_bytes(b"\0" * (MAX_VIDEO_BYTES + 1))
    return allowed


@pytest.fixture(scope="module")
def server(v2_dir, media_dir):
    proc = ServerProcess(v2_dir, "--allowed-local-media-path", media_dir, "--max-videos", "1", "--max-body-mb", "1",
                         "--max-video-mb", str(MAX_VIDEO_BYTES / 1024 / 1024), "--alias", "tiny2")
    yield proc
    assert proc.stop(signal.SIGTERM) == 0, proc.log
    assert "Traceback" not in proc.log, proc.log


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def video_part(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def video_request(url: str, max_tokens: int = 4) -> dict:
    return {**user([video_part(url), {"type": "text", "text": QUESTION}]), "max_tokens": max_tokens}


def expected_answer(model, clip, max_tokens: int):
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    return model.generate(messages=messages, videos=[str(clip)], max_tokens=max_tokens)


def test_video_data_url_streamed_equals_whole_equals_generate(client, model, media_dir):
    clip = media_dir / "clip.mp4"
    expected = expected_answer(model, clip, 12)
    assert expected.n_tiles == 2  # one tile per sampled frame: the video is in the prompt
    content = [video_part(data_url(clip.read_bytes(), "video/mp4")), {"type": "text", "text": QUESTION}]
    whole = client.chat.completions.create(model="tiny2", messages=[{"role": "user", "content": content}],
                                           max_tokens=12, temperature=0)
    assert whole.choices[0].message.content == expected.text
    assert whole.usage.prompt_tokens == expected.prompt_tokens
    assert whole.usage.completion_tokens == len(expected.token_ids)
    chunks, text = collect_stream(client.chat.completions.create(
        model="tiny2", messages=[{"role": "user", "content": content}], max_tokens=12, stream=True,
        stream_options={"include_usage": True}))
    assert text == expected.text
    assert chunks[-1].usage.prompt_tokens == expected.prompt_tokens


def test_local_video_inside_the_allowed_directory(server, media_dir, model):
    expected = expected_answer(model, media_dir / "clip.mp4", 4)
    for url in ("clip.mp4", str(media_dir / "clip.mp4"), f"file://{media_dir}/clip.mp4"):
        r = post(server, video_request(url))
        assert r.status_code == 200, (url, r.text)
        assert r.json()["choices"][0]["message"]["content"] == expected.text
        assert r.json()["usage"]["prompt_tokens"] == expected.prompt_tokens


def test_local_video_escapes_refused(server, media_dir):
    secret = media_dir.parent / "secret.mp4"
    for url in (str(secret), f"file://{secret}", "../secret.mp4", f"file://{media_dir}/../secret.mp4", "link.mp4"):
        error = assert_error_shape(post(server, video_request(url)), 400, "local_media_forbidden")
        assert "outside the allowed" in error["message"], url
    assert_error_shape(post(server, video_request("missing.mp4")), 400, "video_not_found")


def test_remote_video_refused_by_default(server):
    error = assert_error_shape(post(server, video_request("https://example.com/clip.mp4")), 400,
                               "remote_media_disabled")
    assert "remote video URLs are disabled" in error["message"] and "--allow-remote-media" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_undecodable_video_is_400_streaming_or_not(server, stream):
    garbage = data_url(b"not a video at all" * 50, "video/mp4")
    error = assert_error_shape(post(server, {**video_request(garbage), "stream": stream}), 400, "invalid_image")
    assert "cannot decode video" in error["message"]


def test_video_limits(server, media_dir):
    clip = data_url((media_dir / "clip.mp4").read_bytes(), "video/mp4")
    two = user([video_part(clip), video_part(clip), {"type": "text", "text": QUESTION}])
    error = assert_error_shape(post(server, two), 400, "too_many_videos")
    assert "--max-videos" in error["message"] and error["param"] == "messages[0].content[1]"
    # One video over --max-video-mb, in a body under --max-body-mb, and a local file over it.
    big = data_url(b"\0" * (MAX_VIDEO_BYTES + 1000), "video/mp4")
    assert_error_shape(post(server, video_request(big)), 400, "video_too_large")
    assert_error_shape(post(server, video_request("big.mp4")), 400, "video_too_large")
    # An image data URL is not a video; a video part in an assistant turn is refused.
    assert_error_shape(post(server, video_request(data_url(b"\x89PNG", "image/png"))), 400, "invalid_video_url")
    turn = {"messages": [{"role": "assistant", "content": [video_part(clip)]}]}
    assert_error_shape(post(server, turn), 400, "invalid_value")


def test_remote_video_fetch_keeps_the_image_rules():
    """With remote media allowed, a video URL goes through the same SSRF-checked fetch as an image."""
    from smolvision.server.media import MediaPolicy, load_media_bytes
    from smolvision.server.protocol import APIError

    policy = MediaPolicy(allow_remote=True, max_bytes=1000)
    for url in ("http://127.0.0.1:9/clip.mp4", "http://[::1]:9/clip.mp4", "http://169.254.169.254/clip.mp4"):
        with pytest.raises(APIError) as info:
            load_media_bytes(url, policy, "video")
        assert info.value.code == "remote_media_forbidden", url
    with pytest.raises(APIError) as info:
        load_media_bytes("http://user:pw@example.com/clip.mp4", policy, "video")
    assert info.value.code == "invalid_video_url"
