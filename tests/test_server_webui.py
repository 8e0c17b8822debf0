"""The web page at / in a real browser: headless Chromium (Debian's, driven by Playwright) against a real
`smolvision serve` on the tiny model.  Screenshots go to tests/artifacts/ (printed; gitignored)."""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("starlette")

import smolvision  # noqa: E402
from servers import ServerProcess, image_bytes  # noqa: E402

CHROMIUM = os.environ.get("SMOLVISION_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"

# CI installs Chromium (.ci/run), so there a missing one fails rather than skips.
pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM) and not os.environ.get("CI"),
                                reason=f"no Chromium at {CHROMIUM} (apt install chromium)")


@pytest.fixture(scope="module")
def server(mha_dir):
    proc = ServerProcess(mha_dir)
    yield proc
    assert proc.stop() == 0, proc.log


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    context.grant_permissions(["camera"], origin=server.url)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server.url + "/")
    playwright_api.expect(page.locator("#server-status")).to_have_text(re.compile("model: "))
    yield page
    context.close()
    assert not errors, errors


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_page_asks_about_an_image_streams_and_stops(page, server, mha_dir, tmp_path):
    expect = playwright_api.expect
    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(160, 120, seed=11))
    with smolvision.load(mha_dir, threads=1) as model:
        expected = model.generate(messages=[{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": "What is in this image?"}]}], images=[photo], max_tokens=12)

    page.locator("summary").click()
    page.fill("#max-tokens", "12")
    page.set_input_files("#file", str(photo))
    expect(page.locator("#attachments img")).to_have_count(1)
    page.fill("#question", "What is in this image?")
    page.press("#question", "Enter")
    answer = page.locator("#log .turn").nth(1).locator(".text")
    expect(page.locator("#send")).to_be_enabled()
    expect(answer).to_have_text(expected.text)
    expect(page.locator("#stats")).to_contain_text("tokens/s")
    expect(page.locator("#log .turn").first.locator("img")).to_have_count(1)
    screenshot(page, "webui-answer.png")

    # Second turn, long: stop it with the button once text has streamed in.  The page clicks it itself, on the
    # first change that shows six words: the tiny model streams its 6000 tokens in ~5 s, and a click from
    # Playwright (which waits for the button to be stable) can land after the answer has ended on a slow CI.
    page.fill("#max-tokens", "6000")
    page.fill("#question", "Tell me more.")
    page.evaluate("""() => {
        const log = document.getElementById('log');
        const watcher = new MutationObserver(() => {
            const turn = log.querySelectorAll('.turn')[3];
            if (turn && /\\S+( \\S+){5,}/.test(turn.querySelector('.text').textContent)) {
                watcher.disconnect();
                document.getElementById('stop').click();
            }
        });
        watcher.observe(log, {childList: true, subtree: true, characterData: true});
    }""")
    page.click("#send")
    long_answer = page.locator("#log .turn").nth(3).locator(".text")
    expect(long_answer).to_have_text(re.compile(r"\[stopped\]$"))
    expect(page.locator("#send")).to_be_enabled()
    line = server.wait_for_line(r"POST /v1/chat/completions 200 prompt=\d+ completion=\d+ cancelled")
    assert int(line.split("completion=")[1].split()[0]) < 6000
    first_prompt = int(server.request_lines()[0].split("prompt=")[1].split()[0])
    assert int(line.split("prompt=")[1].split()[0]) > first_prompt  # the history went with the second turn
    screenshot(page, "webui-stopped.png")


def test_drop_and_keyboard_only(page, server):
    expect = playwright_api.expect
    # Drag-and-drop a PNG made in the page onto the form.
    page.evaluate("""async () => {
        const canvas = document.createElement('canvas'); canvas.width = 40; canvas.height = 30;
        canvas.getContext('2d').fillRect(5, 5, 20, 10);
        const blob = await new Promise((r) => canvas.toBlob(r, 'image/png'));
        const data = new DataTransfer(); data.items.add(new File([blob], 'drop.png', {type: 'image/png'}));
        document.getElementById('ask-form').dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true}));
    }""")
    expect(page.locator("#attachments img")).to_have_count(1)
    # Remove it with the keyboard, then ask by keyboard alone.
    page.focus("#attachments button")
    page.keyboard.press("Enter")
    expect(page.locator("#attachments img")).to_have_count(0)
    page.focus("#question")
    page.keyboard.type("Hello?")
    page.keyboard.press("Enter")
    expect(page.locator("#log .turn")).to_have_count(2)
    expect(page.locator("#send")).to_be_enabled(timeout=60_000)
    # Every form control has a label.
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, textarea, select')]
        .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map((e) => e.id)""")
    assert unlabelled == []


def test_webcam_mode_asks_about_live_frames(page, server):
    expect = playwright_api.expect
    before = len(server.request_lines())
    page.fill("#webcam-interval", "200")
    page.fill("#question", "What do you see?")
    page.click("#webcam-toggle")
    expect(page.locator("#webcam-toggle")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#webcam-answer")).not_to_be_empty(timeout=60_000)
    screenshot(page, "webui-webcam.png")
    page.click("#webcam-toggle")
    expect(page.locator("#webcam-toggle")).to_have_attribute("aria-pressed", "false")
    # The server logs a request once its response has ended, which can be after the page shows the answer.
    deadline = time.monotonic() + 30
    while len(server.request_lines()) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    new = server.request_lines()[before:]
    assert new and all(" 200 " in line for line in new), new
