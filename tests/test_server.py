"""`smolvision serve` against the official `openai` client and raw HTTP, on the tiny model (loopback only).

Every answer is compared with Model.generate run in this process on the same model and request."""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import smolvision  # noqa: E402
from servers import ServerProcess, data_url, image_bytes  # noqa: E402
from smolvision.server import media  # noqa: E402
from smolvision.server.protocol import APIError  # noqa: E402

PROMPT = "Describe the picture in detail."


# The server and the in-process model it is compared with run precision fp32: a resumed sequence (the second
# turn continues the first's cache) gives the one-shot path's ids exactly only there; in bf16 the prefill
# chunks differ, and so do the BF16 kernels' sums (AMX for long chunks, the dot kernel for short ones).
@pytest.fixture(scope="module")
def model(mha_dir):
    with smolvision.load(mha_dir, threads=1, precision="fp32") as m:
        yield m


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    allowed = root / "allowed"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "a.png").write_bytes(image_bytes(60, 40, seed=1))
    (root / "secret.png").write_bytes(image_bytes(60, 40, seed=2))
    (allowed / "link.png").symlink_to(root / "secret.png")
    (allowed / "sub" / "up").symlink_to(root)
    return allowed


@pytest.fixture(scope="module")
def server(mha_dir, media_dir):
    """The main server: local media allowed in media_dir, small limits, CORS for any origin."""
    proc = ServerProcess(mha_dir, "--allowed-local-media-path", media_dir, "--max-images", "3", "--max-body-mb", "1",
                         "--cors-origin", "*", "--alias", "tiny", "--precision", "fp32")
    yield proc
    assert proc.stop(signal.SIGTERM) == 0, proc.log
    assert "Traceback" not in proc.log, proc.log


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def hf_user(text=None, n_images=0):
    content = [{"type": "image"} for _ in range(n_images)]
    if text is not None:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def collect_stream(stream):
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


def assert_error_shape(response: httpx.Response, status: int, code=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert "code" in error
    if code is not None:
        assert error["code"] == code, body
    return error


# ---- answers ----

def test_text_streamed_equals_whole_equals_generate(client, model):
    expected = model.generate(messages=[hf_user(PROMPT)], max_tokens=24)
    whole = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPT}],
                                           max_tokens=24, temperature=0)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == expected.text
    assert whole.choices[0].finish_reason == ("length" if expected.finish_reason == "length" else "stop")
    assert whole.usage.prompt_tokens == expected.prompt_tokens
    assert whole.usage.completion_tokens == len(expected.token_ids)
    assert whole.usage.total_tokens == expected.prompt_tokens + len(expected.token_ids)
    assert whole.usage.prompt_tokens_details.cached_tokens == 0

    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPT}],
                                            max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks, text = collect_stream(stream)
    assert text == expected.text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert len(finals) == 1 and finals[0] is chunks[-2]
    assert finals[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected.token_ids)
    assert chunks[-1].usage.prompt_tokens == expected.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_ends_with_done(server):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert "usage" not in chunks[0] and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_images_as_data_urls(client, model):
    images = [image_bytes(120, 90, seed=3), image_bytes(70, 150, seed=4, format="JPEG")]
    expected = model.generate(messages=[hf_user("Compare these.", 2)], images=images, max_tokens=16)
    content = [{"type": "image_url", "image_url": {"url": data_url(images[0])}},
               {"type": "image_url", "image_url": {"url": data_url(images[1], "image/jpeg"), "detail": "high"}},
               {"type": "text", "text": "Compare these."}]
    whole = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                           max_tokens=16)
    assert whole.choices[0].message.content == expected.text
    assert whole.usage.prompt_tokens == expected.prompt_tokens
    _, text = collect_stream(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": content}], max_tokens=16, stream=True))
    assert text == expected.text


def test_multi_turn(client, model):
    image = image_bytes(100, 100, seed=5)
    first = client.chat.completions.create(model="tiny", max_tokens=10, messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                     {"type": "text", "text": "What is this?"}]}])
    answer = first.choices[0].message.content
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                             {"type": "text", "text": "What is this?"}]},
                {"role": "assistant", "content": answer},
                {"role": "user", "content": "And its colour?"}]
    second = client.chat.completions.create(model="tiny", max_tokens=12, messages=messages)
    expected = model.generate(messages=[
        {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
        hf_user("What is this?", 1),
        {"role": "assistant", "content": [{"type": "text", "text": answer.strip()}]},
        hf_user("And its colour?")], images=[image], max_tokens=12)
    assert second.choices[0].message.content == expected.text
    assert second.usage.prompt_tokens == expected.prompt_tokens > first.usage.prompt_tokens
    # The second turn continued the first's cached sequence: its whole prompt (image included) was not
    # computed again.
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens


def test_sampling_params_and_seed(client, model):
    params = dict(temperature=0.9, top_p=0.9, top_k=40, min_p=0.02, repetition_penalty=1.1, seed=1234)
    expected = model.generate(messages=[hf_user(PROMPT)], max_tokens=20, **params)
    extra = {k: params.pop(k) for k in ("top_k", "min_p", "repetition_penalty")}
    got = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPT}],
                                         max_completion_tokens=20, extra_body=extra, **params)
    assert got.choices[0].message.content == expected.text


def test_stop_strings(client, model):
    full = model.generate(messages=[hf_user(PROMPT)], max_tokens=24).text
    stop = full.split()[3]
    expected = model.generate(messages=[hf_user(PROMPT)], max_tokens=24, stop=[stop])
    assert stop not in expected.text and len(expected.text) < len(full)
    got = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPT}],
                                         max_tokens=24, stop=[stop, "never-there"])
    assert got.choices[0].message.content == expected.text
    assert got.choices[0].finish_reason == "stop"
    _, text = collect_stream(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": PROMPT}], max_tokens=24, stop=stop, stream=True))
    assert text == expected.text


def test_models_health_metrics(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other")
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    text = httpx.get(server.url + "/metrics").text
    for series in ("smolvision_requests_total", "smolvision_completion_tokens_total", "smolvision_queue_depth",
                   "smolvision_running_sequences", "smolvision_cache_hits_total", "smolvision_request_seconds_bucket",
                   'smolvision_phase_seconds_total{phase="decode"}'):
        assert series in text
    completion = [line for line in text.splitlines() if line.startswith("smolvision_completion_tokens_total")]
    assert float(completion[0].split()[-1]) > 0
    assert "<title>smolvision</title>" in httpx.get(server.url + "/").text
    assert any(" POST /v1/chat/completions 200 prompt=" in line for line in server.lines)


# ---- errors ----

def post(server, body, **kwargs) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(server.url + "/v1/chat/completions", content=data, timeout=60,
                      headers={"Content-Type": "application/json", **kwargs.pop("headers", {})}, **kwargs)


def user(content):
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4}


@pytest.mark.parametrize("body, code, param", [
    (b"{not json", "invalid_json", None),
    (b"[1, 2]", "invalid_json", None),
    (b"[" * 100_000, "invalid_json", None),
    (user("a literal <image> marker without an image"), "invalid_value", None),
    ({"max_tokens": 4}, "invalid_value", "messages"),
    ({"messages": []}, "invalid_value", "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "unsupported_role", "messages[0].role"),
    (user([{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]), "unsupported_content_type",
     "messages[0].content[0]"),
    (user([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]), "invalid_image_url", None),
    (user([{"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}]), "invalid_image_url", None),
    (user([{"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}]), "invalid_image_url", None),
    (user([{"type": "image_url", "image_url": {"url": data_url(image_bytes(8, 8, 0))}}] * 4), "too_many_images",
     "messages[0].content[3]"),
    ({**user("hi"), "temperature": -1}, "invalid_value", "temperature"),
    ({**user("hi"), "temperature": "hot"}, "invalid_value", "temperature"),
    ({**user("hi"), "top_p": 0}, "invalid_value", "top_p"),
    ({**user("hi"), "min_p": 2}, "invalid_value", "min_p"),
    ({**user("hi"), "top_k": -5}, "invalid_value", "top_k"),
    ({**user("hi"), "repetition_penalty": 0}, "invalid_value", "repetition_penalty"),
    ({**user("hi"), "max_tokens": 0}, "invalid_value", "max_tokens"),
    ({**user("hi"), "seed": 1.5}, "invalid_value", "seed"),
    ({**user("hi"), "stop": [""]}, "invalid_value", "stop"),
    ({**user("hi"), "n": 2}, "unsupported_parameter", "n"),
    ({**user("hi"), "logprobs": True}, "unsupported_parameter", "logprobs"),
    ({**user("hi"), "stream": "yes"}, "invalid_value", "stream"),
])
def test_bad_requests_are_400(server, body, code, param):
    error = assert_error_shape(post(server, body), 400, code)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


@pytest.mark.parametrize("stream", [False, True])
def test_errors_found_by_the_model_are_400_streaming_or_not(server, stream):
    garbage = data_url(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    error = assert_error_shape(post(server, {**user([{"type": "image_url", "image_url": {"url": garbage}}]),
                                             "stream": stream}), 400, "invalid_image")
    assert "decode" in error["message"]
    too_long = {**user("hi"), "max_tokens": 9000, "stream": stream}  # beyond the 8192-token window
    assert "context window" in assert_error_shape(post(server, too_long), 400, "invalid_value")["message"]


def test_openai_client_raises_on_errors(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], temperature=5)
    assert info.value.status_code == 400 and "temperature" in str(info.value)


def test_404_405(server):
    assert_error_shape(httpx.get(server.url + "/v1/nothing"), 404, "not_found")
    assert_error_shape(httpx.get(server.url + "/v1/chat/completions"), 405, "method_not_allowed")


def _raw_exchange(port: int, request: bytes, then: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        if then:
            sock.sendall(then)
        out = b""
        while b"\r\n\r\n" not in out or len(out.split(b"\r\n\r\n", 1)[1]) < 10:
            data = sock.recv(65536)
            if not data:
                break
            out += data
        return out


def test_413_refused_before_the_body_is_read(server):
    # Content-Length says 50 MB; only the headers are sent, and the answer comes anyway.
    reply = _raw_exchange(server.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                       b"Content-Type: application/json\r\nContent-Length: 52428800\r\n\r\n")
    head, body = reply.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 413"), reply[:200]
    assert json.loads(body[:body.rindex(b"}") + 1])["error"]["code"] == "request_too_large"
    # A chunked body without a length is cut off as soon as it passes the limit (1 MB here).
    chunk = b"x" * 300_000
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4))
    reply = _raw_exchange(server.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n", chunks)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    # The openai client sees it as an error, not a hang.
    big = data_url(b"\xff" * 1_200_000)
    assert_error_shape(post(server, user([{"type": "image_url", "image_url": {"url": big}}])), 413,
                       "request_too_large")


def test_cors_preflight_and_the_webcam_page_request(server):
    """What the SmolVLM real-time webcam page sends: from file:// (Origin: null), no key, no model,
    non-streaming, a full-resolution JPEG frame."""
    pre = httpx.options(server.url + "/v1/chat/completions", headers={
        "Origin": "null", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert pre.status_code == 200, pre.text
    assert pre.headers["access-control-allow-origin"] == "*"
    assert "POST" in pre.headers["access-control-allow-methods"]
    frame = image_bytes(640, 480, seed=9, format="JPEG")
    body = {"max_tokens": 100, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What do you see?"}, {"type": "image_url", "image_url": {"url": data_url(frame, "image/jpeg")}}]}]}
    r = httpx.post(server.url + "/v1/chat/completions", content=json.dumps(body), timeout=120,
                   headers={"Origin": "null", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == "*"
    assert isinstance(r.json()["choices"][0]["message"]["content"], str)


# ---- media policy ----

def image_part(url):
    return user([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what?"}])


def test_local_media_inside_the_allowed_directory(server, media_dir, model):
    expected = model.generate(messages=[hf_user("what?", 1)], images=[media_dir / "a.png"], max_tokens=4)
    for url in (f"file://{media_dir}/a.png", str(media_dir / "a.png"), "a.png", f"file://{media_dir}/sub/../a.png"):
        r = post(server, image_part(url))
        assert r.status_code == 200, (url, r.text)
        assert r.json()["choices"][0]["message"]["content"] == expected.text


def test_local_media_escapes_refused(server, media_dir):
    secret = media_dir.parent / "secret.png"
    for url in (f"file://{secret}", str(secret), "../secret.png", f"file://{media_dir}/../secret.png",
                "link.png",  # a symlink inside pointing outside
                "sub/up/secret.png",  # a directory symlink inside pointing outside
                "/etc/passwd"):
        error = assert_error_shape(post(server, image_part(url)), 400, "local_media_forbidden")
        assert "outside the allowed" in error["message"], url
    assert_error_shape(post(server, image_part("missing.png")), 400, "image_not_found")


def test_remote_images_refused_by_default(server):
    error = assert_error_shape(post(server, image_part("http://example.com/cat.png")), 400, "remote_media_disabled")
    assert "--allow-remote-images" in error["message"]


def test_video_to_a_model_without_video_is_400(server):
    """A SmolVLM (not SmolVLM2) model: refused before the video is read, whatever its source."""
    for url in ("data:video/mp4;base64,AAAA", "clip.mp4", "https://example.com/clip.mp4"):
        body = user([{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "what?"}])
        error = assert_error_shape(post(server, body), 400, "video_unsupported")
        assert "no video support" in error["message"] and "SmolVLM2" in error["message"], url


class _ImageHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/")
            self.end_headers()
            return
        body = image_bytes(30, 30, 0) if self.path == "/ok.png" else b"\0" * 5000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def image_host():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_remote_fetch_refuses_non_public_addresses(mha_dir, image_host):
    proc = ServerProcess(mha_dir, "--allow-remote-images", "--no-webui")
    try:
        for url in (image_host + "/ok.png", "http://localhost:9/x.png", "http://[::1]:9/x.png",
                    "http://[::ffff:127.0.0.1]:9/x.png", "http://10.1.2.3/x.png", "http://192.168.0.1/x.png",
                    "http://169.254.169.254/latest/meta-data", "http://100.64.0.1/x.png", "http://0.0.0.0/x.png"):
            error = assert_error_shape(post(proc, image_part(url)), 400, "remote_media_forbidden")
            assert "non-public" in error["message"], url
        assert_error_shape(post(proc, image_part("http://user:pw@example.com/x.png")), 400, "invalid_image_url")
        assert httpx.get(proc.url + "/").status_code == 404  # --no-webui
        # Without --allowed-local-media-path, local paths are refused.
        assert_error_shape(post(proc, image_part("/etc/passwd")), 400, "local_media_disabled")
    finally:
        assert proc.stop() == 0
        assert "Traceback" not in proc.log, proc.log


def test_fetch_remote_caps_and_redirects(image_host):
    """The fetcher itself, with the address check opened up for a loopback test host."""
    allow_all = lambda address: True  # noqa: E731
    assert media.fetch_remote(image_host + "/ok.png", 10_000, 5, allow_all) == image_bytes(30, 30, 0)
    with pytest.raises(APIError) as info:
        media.fetch_remote(image_host + "/redirect", 10_000, 5, allow_all)
    assert info.value.code == "remote_media_redirect"
    with pytest.raises(APIError) as info:
        media.fetch_remote(image_host + "/big", 1000, 5, allow_all)
    assert info.value.code == "image_too_large"
    with pytest.raises(APIError) as info:
        media.fetch_remote(image_host + "/ok.png", 10_000, 5)  # the real check: loopback refused
    assert info.value.code == "remote_media_forbidden"
    assert media.is_public_address("93.184.216.34") and media.is_public_address("2606:2800:220:1::1")
    assert not any(media.is_public_address(a) for a in ("127.0.0.1", "::1", "10.0.0.1", "172.16.0.1", "fe80::1",
                                                        "169.254.1.1", "::ffff:10.0.0.1", "224.0.0.1", "fc00::1"))


# ---- auth ----

def test_api_key(mha_dir, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    proc = ServerProcess(mha_dir, "--api-key-file", key_file)
    try:
        body = user("hi")
        assert_error_shape(post(proc, body), 401, "invalid_api_key")
        assert_error_shape(post(proc, body, headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
        assert_error_shape(httpx.get(proc.url + "/v1/models"), 401)
        assert_error_shape(httpx.get(proc.url + "/metrics"), 401)
        assert post(proc, body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert post(proc, body, headers={"X-Api-Key": "s3cret"}).status_code == 200
        assert httpx.get(proc.url + "/health").status_code == 200
        assert httpx.get(proc.url + "/").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=proc.url + "/v1", api_key="nope", max_retries=0).models.list()
        good = openai.OpenAI(base_url=proc.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=3).usage.completion_tokens > 0
    finally:
        assert proc.stop() == 0
        assert "Traceback" not in proc.log, proc.log


# ---- concurrency, disconnects, shutdown ----

LONG = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6000}


def completion_tokens_of_cancelled(proc) -> int:
    line = proc.wait_for_line(r"POST /v1/chat/completions \d+ prompt=\d+ completion=\d+ cancelled")
    return int(line.split("completion=")[1].split()[0])


def test_queue_full_is_503_with_retry_after_and_disconnect_cancels(mha_dir):
    proc = ServerProcess(mha_dir, "--parallel", "1", "--max-queue", "0", "--no-webui")
    try:
        with httpx.stream("POST", proc.url + "/v1/chat/completions", json={**LONG, "stream": True}, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # running now
            busy = post(proc, user("hi"))
            error = assert_error_shape(busy, 503, "queue_full")
            assert int(busy.headers["retry-after"]) >= 1 and error["type"] == "overloaded_error"
        # Leaving the stream disconnects; the generation stops long before its 6000 tokens.
        assert completion_tokens_of_cancelled(proc) < 6000
        assert post(proc, user("hi")).status_code == 200  # the slot is free again
        metrics = httpx.get(proc.url + "/metrics").text
        assert "smolvision_generations_cancelled_total 1.0" in metrics
        assert "smolvision_requests_rejected_total 1.0" in metrics
        # Non-streaming: the client gives up mid-generation; the server notices and stops too.
        with pytest.raises(httpx.TimeoutException):
            httpx.post(proc.url + "/v1/chat/completions", json=LONG, timeout=1.0)
        deadline = time.monotonic() + 30
        while "smolvision_generations_cancelled_total 2.0" not in httpx.get(proc.url + "/metrics").text:
            assert time.monotonic() < deadline, proc.log
            time.sleep(0.1)
        assert "smolvision_running_sequences 0.0" in httpx.get(proc.url + "/metrics").text
    finally:
        assert proc.stop() == 0
        assert "Traceback" not in proc.log, proc.log


def test_sigterm_mid_stream_ends_the_stream_and_exits_cleanly(mha_dir):
    proc = ServerProcess(mha_dir, "--no-webui")
    with httpx.stream("POST", proc.url + "/v1/chat/completions", json={**LONG, "stream": True}, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        start = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line]
    assert json.loads(rest[-1][len("data: "):])["error"]["code"] == "shutting_down"
    assert proc.stop(timeout=15) == 0
    assert time.monotonic() - start < 10
    assert "smolvision: stopped" in proc.log


def test_local_media_special_files_refused(server, media_dir):
    fifo = media_dir / "pipe.png"
    if not fifo.exists():
        os.mkfifo(fifo)
    assert_error_shape(post(server, image_part("pipe.png")), 400, "invalid_image_url")
    assert_error_shape(post(server, image_part("sub")), 400, "invalid_image_url")


def metric(text: str, name: str) -> float:
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


def test_parallel_requests_decode_together(mha_dir):
    """With --parallel 2, a request that arrives while another streams joins its decode steps (each of its
    steps carries both rows: the server's decode rows outnumber its steps by its token count), and its
    answer is still Model.generate's (fp32, cache off, the same settings)."""
    question = "Count to twenty, please."
    with smolvision.load(mha_dir, threads=1, precision="fp32", cache_bytes=0) as alone:
        expected = alone.generate(question, max_tokens=24)
    assert len(expected.token_ids) == 24  # no EOS: all 24 decode beside the long answer
    proc = ServerProcess(mha_dir, "--parallel", "2", "--precision", "fp32", "--cache-mb", "0", "--no-webui")
    try:
        with httpx.stream("POST", proc.url + "/v1/chat/completions", json={**LONG, "stream": True}, timeout=60) as r:
            lines = r.iter_lines()  # kept: a dropped iterator closes the stream, which cancels the answer
            assert next(lines).startswith("data: ")  # the long answer is decoding
            before = httpx.get(proc.url + "/metrics").text
            answer = post(proc, {"messages": [{"role": "user", "content": question}], "max_tokens": 24}).json()
            after = httpx.get(proc.url + "/metrics").text
        assert answer["choices"][0]["message"]["content"] == expected.text
        steps = metric(after, "smolvision_decode_steps_total") - metric(before, "smolvision_decode_steps_total")
        rows = metric(after, "smolvision_decode_rows_total") - metric(before, "smolvision_decode_rows_total")
        assert rows - steps >= 23, (steps, rows)  # its 23 decode steps (the first id comes from its prompt)
    finally:
        assert proc.stop() == 0
        assert "Traceback" not in proc.log, proc.log
