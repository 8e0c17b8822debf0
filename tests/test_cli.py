"""The command line: parsing and usage errors, the commands against a stand-in model, and end to end
runs of `python -m smolvision` on the tiny models compared with Model.generate in the same test.
(Hub resolution: test_hub.py; caption's bookkeeping: test_cli_caption.py; run_cli: helpers.py.)
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

import smolvision
from helpers import (assert_one_line_error, assert_usage_error, cli_env, fake_hf_cache, read_lines, run_cli,
                     write_image)
from smolvision import cli, hub
from smolvision.cli import common

# ------------------------------------------------------------------------------------------------
# Parsing and usage (no generation needed)

@pytest.mark.parametrize("argv,needle", [
    ([], "give an image"),
    (["--max-tokens", "-3", "-p", "hi"], "--max-tokens"),
    (["--max-tokens", "many", "-p", "hi"], "--max-tokens"),
    (["--bogus", "-p", "hi"], "unrecognized arguments: --bogus"),
    (["-d", "a", "-m", "b", "-p", "hi"], "not allowed"),
    (["--silent", "--debug", "-p", "hi"], "not allowed"),
    (["-t", "0", "-p", "hi"], "--threads"),
    (["--temperature", "-1", "-p", "hi"], "--temperature"),
    (["--top-p", "0", "-p", "hi"], "--top-p"),
    (["--min-p", "1.5", "-p", "hi"], "--min-p"),
    (["--repetition-penalty", "0", "-p", "hi"], "--repetition-penalty"),
    (["--max-edge", "-1", "-i", "x.png"], "--max-edge"),
    (["caption", "a.png"], "--output"),
    (["caption", "-o", "out.jsonl"], "PATH_OR_GLOB"),
    (["chat", "-p", "hi"], "unrecognized arguments"),
    (["download", "a/b", "c/d"], "unrecognized arguments"),
])
def test_usage_errors_exit_2_with_the_usage_line(capsys, argv, needle):
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_usage_error(2, err, needle)


def test_usage_error_names_the_subcommand(capsys):
    assert cli.main(["chat", "--bogus"]) == 2
    assert "usage: smolvision chat" in capsys.readouterr().err


def test_bare_form_and_explicit_run_parse_the_same():
    bare = cli.parse_args(["-d", "M", "-i", "a.png", "-i", "b.png", "-p", "Q", "--stop", "x", "--stop", "y",
                           "--temperature", "0.5", "--top-k", "5", "--seed", "7", "--no-split", "--max-edge", "512"])
    explicit = cli.parse_args(["run", "-d", "M", "-i", "a.png", "-i", "b.png", "-p", "Q", "--stop", "x", "--stop",
                               "y", "--temperature", "0.5", "--top-k", "5", "--seed", "7", "--no-split",
                               "--max-edge", "512"])
    assert vars(bare).keys() == vars(explicit).keys()
    assert all(getattr(bare, k) == getattr(explicit, k) for k in vars(bare) if k not in ("handler", "parser"))
    assert bare.command == "run" and bare.images == ["a.png", "b.png"]
    assert common.generation_kwargs(bare) == dict(
        max_tokens=256, temperature=0.5, top_k=5, top_p=1.0, min_p=0.0, repetition_penalty=1.0, seed=7,
        stop=("x", "y"), system_prompt=None, do_image_splitting=False, longest_edge=512)


def test_defaults_map_to_the_api_defaults():
    args = cli.parse_args(["-p", "hi"])
    assert args.model_dir is None and args.model is None and args.threads is None
    assert common.generation_kwargs(args) == dict(
        max_tokens=256, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, seed=None,
        stop=(), system_prompt=None, do_image_splitting=None, longest_edge=None)


def test_subcommands_are_detected_only_in_first_position():
    assert cli.parse_args(["chat", "-d", "M"]).command == "chat"
    assert cli.parse_args(["caption", "-o", "o.jsonl", "a.png", "b.png"]).inputs == ["a.png", "b.png"]
    assert cli.parse_args(["download"]).repo_id == hub.DEFAULT_REPO
    assert cli.parse_args(["download", "ORG/NAME", "--dir", "x"]).dir == "x"
    assert cli.parse_args(["-p", "chat"]).command == "run"


def test_help_lists_every_command(capsys):
    assert cli.main(["-h"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "chat", "caption", "download"):
        assert command in out
    for command in ("chat", "caption", "download"):
        assert cli.main([command, "-h"]) == 0
        assert f"usage: smolvision {command}" in capsys.readouterr().out


def test_version_subprocess(tmp_path):
    proc = run_cli("--version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(f"smolvision {smolvision.__version__}")
    assert smolvision.build_info() in proc.stdout


def test_missing_model_dir_is_a_one_line_error(tmp_path):
    proc = run_cli("-d", tmp_path / "no-such-model", "-p", "hi", cwd=tmp_path)
    assert proc.stdout == ""
    assert_one_line_error(proc.returncode, proc.stderr, "no-such-model")


def test_debug_adds_the_traceback(tmp_path):
    proc = run_cli("-d", tmp_path / "no-such-model", "-p", "hi", "--debug", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "smolvision: error:" in proc.stderr


def test_missing_image_fails_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(smolvision, "load", lambda *a, **k: pytest.fail("the model must not be loaded"))
    assert cli.main(["-d", str(tmp_path), "-i", str(tmp_path / "nope.png")]) == 1
    assert_one_line_error(1, capsys.readouterr().err, "nope.png")


# ------------------------------------------------------------------------------------------------
# The command flow against a stand-in model that keeps the generate contract

def test_run_streams_the_answer_and_reports_on_stderr(tmp_path, image, capsys, fake_model):
    assert cli.main(["-d", str(tmp_path), "-i", str(image), "--max-tokens", "9", "--stop", "##"]) == 0
    out, err = capsys.readouterr()
    assert out == " Describe this image. with 1 images.\n"
    assert fake_model.calls == [dict(prompt=common.DEFAULT_PROMPT, images=[str(image)], messages=None,
                                     **dict(common.generation_kwargs(cli.parse_args(["-p", "x", "--max-tokens", "9"])),
                                            stop=("##",)))]
    assert "loaded" in err and "2 image tiles encoded in 0.50 s" in err
    assert "prefill 11 tokens" in err and "(40.0 tok/s)" in err and "decode 3 tokens" in err
    assert fake_model.closed


def test_run_silent_prints_only_the_answer(tmp_path, capsys, fake_model):
    assert cli.main(["-d", str(tmp_path), "-p", "Hello", "--silent"]) == 0
    assert capsys.readouterr() == (" Hello with 0 images.\n", "")


def test_run_json_prints_one_object(tmp_path, image, capsys, fake_model):
    assert cli.main(["-d", str(tmp_path), "-i", str(image), "-i", str(image), "-p", "Two?", "--json", "--silent"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    data = json.loads(out)
    assert data["text"] == " Two? with 2 images." and data["finish_reason"] == "stop"
    assert (data["prompt_tokens"], data["completion_tokens"], data["n_tiles"]) == (12, 3, 4)
    assert set(data["timings"]) == {"image_encode_s", "prefill_s", "decode_s", "prefill_tokens_per_s",
                                    "decode_tokens_per_s", "load_s"}


def test_run_engine_error_is_one_line(tmp_path, capsys, fake_model):
    bad = tmp_path / "broken.bad"
    bad.write_bytes(b"not an image")
    assert cli.main(["-d", str(tmp_path), "-i", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_line_error(1, err, "cannot decode image")


def test_interrupt_exits_130(tmp_path, capsys, monkeypatch, fake_model):
    def interrupted(**kwargs):
        kwargs["on_token"](" partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(fake_model, "generate", interrupted)
    assert cli.main(["-d", str(tmp_path), "-p", "hi"]) == 130
    assert capsys.readouterr().out == " partial\n"


def test_m_resolves_through_the_cache(tmp_path, capsys, monkeypatch, fake_model):
    snapshot = fake_hf_cache(tmp_path / "hub", "ORG/NAME")
    seen = []
    monkeypatch.setattr(smolvision, "load", lambda model_dir, **options: seen.append(model_dir) or fake_model)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["-m", "ORG/NAME", "-p", "hi", "-t", "3"]) == 0
    assert cli.main(["-m", str(tmp_path), "-p", "hi"]) == 0  # a directory works too
    assert seen == [str(snapshot), str(tmp_path)]
    assert cli.main(["-m", "ORG/ABSENT", "-p", "hi"]) == 1
    assert "smolvision download ORG/ABSENT" in capsys.readouterr().err


def chat_script(monkeypatch, lines: list[str]) -> None:
    """Feeds `lines` to input(); a KeyboardInterrupt instance is raised instead of returned; then EOF."""
    feed = iter(lines)

    def fake_input(prompt=""):
        line = next(feed, None)
        if line is None:
            raise EOFError
        if isinstance(line, BaseException):
            raise line
        return line
    monkeypatch.setattr("builtins.input", fake_input)


def test_chat_keeps_history_and_images(tmp_path, image, capsys, monkeypatch, fake_model):
    chat_script(monkeypatch, ["/image " + str(image), "What is it?", "/help", "", "And now?", "/reset", "Fresh"])
    assert cli.main(["chat", "-d", str(tmp_path), "--max-tokens", "5", "--silent"]) == 0
    first, second, third = fake_model.calls
    user1 = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}
    assistant1 = {"role": "assistant", "content": [{"type": "text", "text": "What is it? with 1 images."}]}
    user2 = {"role": "user", "content": [{"type": "text", "text": "And now?"}]}
    assert (first["messages"], first["images"]) == ([user1], [str(image)])
    assert (second["messages"], second["images"]) == ([user1, assistant1, user2], [str(image)])
    fresh = {"role": "user", "content": [{"type": "text", "text": "Fresh"}]}
    assert (third["messages"], third["images"]) == ([fresh], [])
    assert all(call["max_tokens"] == 5 and call["prompt"] is None for call in fake_model.calls)
    out, err = capsys.readouterr()
    assert " What is it? with 1 images.\n" in out and "/reset" in out and "(conversation reset)" in out
    assert err == ""


def test_chat_ctrl_c_stops_the_answer_not_the_session(tmp_path, capsys, monkeypatch, fake_model):
    real_generate = fake_model.generate

    def generate(**kwargs):
        if len(fake_model.calls) < 2:
            fake_model.calls.append(kwargs)
            if len(fake_model.calls) == 2:
                kwargs["on_token"](" half")
            raise KeyboardInterrupt
        return real_generate(**kwargs)
    monkeypatch.setattr(fake_model, "generate", generate)
    chat_script(monkeypatch, ["Zeroth", "First", KeyboardInterrupt(), "Second"])
    assert cli.main(["chat", "-d", str(tmp_path)]) == 0
    # Stopped before any text: not kept.  Stopped mid-answer: the partial answer is kept.
    assert [m["content"][-1]["text"] for m in fake_model.calls[1]["messages"]] == ["First"]
    second = fake_model.calls[2]["messages"]
    assert second[0]["content"][-1]["text"] == "First"
    assert second[1] == {"role": "assistant", "content": [{"type": "text", "text": "half"}]}
    assert second[2]["content"][-1]["text"] == "Second" and len(second) == 3
    out, err = capsys.readouterr()
    assert " half\n" in out and "(stopped)" in err and "not kept" in err


def test_chat_error_leaves_the_conversation_unchanged(tmp_path, capsys, monkeypatch, fake_model):
    bad = tmp_path / "x.bad"
    bad.write_bytes(b"junk")
    chat_script(monkeypatch, ["/image " + str(bad), "Look", "/image " + str(tmp_path / "missing.png"), "Again"])
    assert cli.main(["chat", "-d", str(tmp_path)]) == 0
    assert fake_model.calls[1]["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Again"}]}]
    out, err = capsys.readouterr()
    assert "cannot decode image" in err and "no such file" in out


# ------------------------------------------------------------------------------------------------
# End to end on the tiny models: the real engine through `python -m smolvision`

def generate_text(model_dir, **kwargs) -> str:
    with smolvision.load(model_dir) as model:
        return model.generate(**kwargs).text


def test_stream_equals_generate(any_model_dir, image, tmp_path):
    expected = generate_text(any_model_dir, prompt="What is this?", images=[str(image)], max_tokens=12)
    proc = run_cli("-d", any_model_dir, "-i", image, "-p", "What is this?", "--max-tokens", 12, "--silent",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected + "\n"
    assert proc.stderr == ""


def test_default_prompt_status_and_text_only(mha_dir, image, tmp_path):
    expected = generate_text(mha_dir, prompt=common.DEFAULT_PROMPT, images=[str(image)], max_tokens=6)
    proc = run_cli("-d", mha_dir, "-i", image, "--max-tokens", 6, "-t", 2, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected + "\n"
    for needle in ("loaded", "image tile", "prefill", "tok/s", "decode", "finish:"):
        assert needle in proc.stderr
    expected = generate_text(mha_dir, prompt="Say hello.", max_tokens=6)
    proc = run_cli("-d", mha_dir, "-p", "Say hello.", "--max-tokens", 6, "--silent", cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, expected + "\n", "")


def test_sampling_and_image_options_reach_generate(gqa_dir, image, tmp_path):
    settings = dict(max_tokens=10, temperature=0.9, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.2,
                    seed=1234, do_image_splitting=False, longest_edge=256)
    with smolvision.load(gqa_dir) as model:
        expected = model.generate(prompt="Look.", images=[str(image)], **settings)
    proc = run_cli("-d", gqa_dir, "-i", image, "-p", "Look.", "--max-tokens", 10, "--temperature", 0.9,
                   "--top-k", 40, "--top-p", 0.9, "--min-p", 0.05, "--repetition-penalty", 1.2, "--seed", 1234,
                   "--no-split", "--max-edge", 256, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["text"] == expected.text and data["finish_reason"] == expected.finish_reason
    assert data["completion_tokens"] == len(expected.token_ids)
    assert data["prompt_tokens"] == expected.prompt_tokens and data["n_tiles"] == expected.n_tiles == 1
    assert set(data["timings"]) >= {"image_encode_s", "prefill_s", "decode_s", "prefill_tokens_per_s",
                                    "decode_tokens_per_s"}


def test_profile_prints_a_table_and_adds_it_to_json(mha_dir, image, tmp_path):
    proc = run_cli("-d", mha_dir, "-i", image, "--max-tokens", 4, "--profile", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = proc.stderr[proc.stderr.index("profile:"):].splitlines()
    assert table[1].split()[:3] == ["phase", "calls", "seconds"]
    assert [line.split()[0] for line in table[2:5]] == ["vision", "prefill", "decode"]
    proc = run_cli("-d", mha_dir, "-p", "Hi", "--max-tokens", 4, "--profile", "--json", "--silent", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    profile = json.loads(proc.stdout)["profile"]
    assert profile["vision"]["calls"] == 0 and profile["prefill"]["calls"] == 1
    assert profile["decode"]["calls"] == json.loads(proc.stdout)["completion_tokens"] - 1
    assert "profile:" in proc.stderr  # --profile prints even with --silent: it was asked for


def test_json_and_stop(mha_dir, tmp_path):
    with smolvision.load(mha_dir) as model:
        free = model.generate(prompt="Count:", max_tokens=12).text
    stop = free.strip()[2:4] if len(free.strip()) >= 4 else None
    args = ["-d", mha_dir, "-p", "Count:", "--max-tokens", 12, "--json", "--silent"]
    if stop:
        args += ["--stop", stop]
    with smolvision.load(mha_dir) as model:
        expected = model.generate(prompt="Count:", max_tokens=12, stop=(stop,) if stop else ())
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    data = json.loads(proc.stdout)
    assert {"text", "finish_reason", "prompt_tokens", "completion_tokens", "timings"} <= set(data)
    assert (data["text"], data["finish_reason"]) == (expected.text, expected.finish_reason)


def test_unreadable_image_is_a_one_line_error(mha_dir, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    proc = run_cli("-d", mha_dir, "-i", bad, cwd=tmp_path)
    assert proc.stdout == ""
    assert_one_line_error(proc.returncode, proc.stderr, "broken.png")


def test_m_loads_a_cached_model_offline(mha_dir, tmp_path):
    fake_hf_cache(tmp_path / "hub", "ORG/TINY", source=Path(mha_dir))
    expected = generate_text(mha_dir, prompt="Hi.", max_tokens=5)
    proc = run_cli("-m", "ORG/TINY", "-p", "Hi.", "--max-tokens", 5, "--silent", cwd=tmp_path,
                   HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, expected + "\n", "")


def test_caption_resumes_after_interruption(mha_dir, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        write_image(folder / f"{i}.png", size=(60 + 20 * i, 80), seed=i)
    out = tmp_path / "captions.jsonl"
    args = ["caption", "-d", mha_dir, folder / "*.png", "-o", out, "--max-tokens", 5, "-p", "Caption it."]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first = read_lines(out)
    assert [r["image"] for r in first] == [str(folder / f"{i}.png") for i in range(3)]
    # Simulate an interruption during the third image: its line half written.
    text = out.read_text()
    out.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 1] + text.splitlines()[-1][:15])
    for i in range(3, 5):
        write_image(folder / f"{i}.png", size=(90, 50 + 10 * i), seed=i)
    (folder / "5.png").write_bytes(b"not an image at all")
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 1 and "1 of 4 images failed" in proc.stderr
    records = read_lines(out)
    assert [r["image"] for r in records] == [str(folder / f"{i}.png") for i in range(6)]
    assert records[:2] == first[:2]
    assert "error" in records[5] and "text" not in records[5]
    with smolvision.load(mha_dir) as model:
        for record in records[:5]:
            expected = model.generate(prompt="Caption it.", images=[record["image"]], max_tokens=5)
            assert (record["text"], record["finish_reason"]) == (expected.text, expected.finish_reason)


def test_chat_two_turns_in_a_terminal(mha_dir, image, tmp_path):
    import pexpect
    user1 = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}
    user2 = {"role": "user", "content": [{"type": "text", "text": "Tell me more."}]}
    with smolvision.load(mha_dir) as model:
        answer1 = model.generate(messages=[user1], images=[str(image)], max_tokens=8).text
        assistant1 = {"role": "assistant", "content": [{"type": "text", "text": answer1.strip()}]}
        answer2 = model.generate(messages=[user1, assistant1, user2], images=[str(image)], max_tokens=8).text
    child = pexpect.spawn(sys.executable, ["-m", "smolvision", "chat", "-d", str(mha_dir), "--max-tokens", "8",
                                           "--debug"], cwd=str(tmp_path), env=cli_env(), encoding="utf-8",
                          timeout=120)
    try:
        child.expect_exact("> ")
        child.sendline(f"/image {image}")
        child.expect_exact("attached to your next message")
        child.sendline("What is it?")
        child.expect_exact("turn 1: 1 messages, 1 images")
        child.expect_exact(answer1.replace("\n", "\r\n") + "\r\n")
        child.expect_exact("> ")
        child.sendline("Tell me more.")
        child.expect_exact("turn 2: 3 messages, 1 images")
        child.expect_exact(answer2.replace("\n", "\r\n") + "\r\n")
        child.expect_exact("> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


# ------------------------------------------------------------------------------------------------
# Small pieces: progress text, stdin images, quiet caption

def test_progress_text():
    from smolvision._term import ProgressBar, Spinner, format_duration
    assert [format_duration(s) for s in (0.4, 42, 187, 3723)] == ["0s", "42s", "3:07", "1:02:03"]
    bar = ProgressBar(sys.stderr, total=4, unit="img", width=8, enabled=False)
    assert bar.line().startswith("[........] 0/4   0% 0.00 img/s ETA ?")
    bar.advance()
    bar.advance()
    line = bar.line("b.png")
    assert line.startswith("[####....] 2/4  50% ") and " img/s ETA " in line and line.endswith("  b.png")
    assert not Spinner(sys.stderr, "x").start().enabled  # pytest's captured stderr is not a terminal


def test_image_from_stdin(tmp_path, image, capsys, monkeypatch, fake_model):
    class Stdin:
        buffer = open(image, "rb")
    monkeypatch.setattr(sys, "stdin", Stdin)
    try:
        assert cli.main(["-d", str(tmp_path), "-i", "-", "--silent"]) == 0
    finally:
        Stdin.buffer.close()
    assert fake_model.calls[0]["images"] == [image.read_bytes()]


def test_caption_silent_writes_nothing_on_stderr(tmp_path, image, capsys, fake_model):
    out = tmp_path / "out.jsonl"
    assert cli.main(["caption", "-d", str(tmp_path), str(image), "-o", str(out), "--silent"]) == 0
    assert capsys.readouterr() == ("", "")
    assert [r["image"] for r in read_lines(out)] == [str(image)]


def test_threads_and_precision_reach_the_loader(tmp_path, capsys, fake_model):
    assert cli.main(["-d", str(tmp_path), "-p", "hi", "-t", "3", "--precision", "bf16", "--silent"]) == 0
    assert fake_model.loaded_with == dict(threads=3, precision="bf16", profile=None)
    assert cli.main(["-d", str(tmp_path), "-p", "hi", "--precision", "fp16"]) == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["chat"], ["caption", "-o", "out.jsonl"]])
def test_quant_reaches_the_loader_and_its_messages_stderr(tmp_path, image, capsys, fake_model, command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = command + ["-d", str(tmp_path), "--quant", "q4"] + ([str(image)] if "caption" in command else [])
    if not command:
        args += ["-p", "hi"]
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    cli.main(args)
    assert fake_model.loaded_with["quant"] == "q4"
    assert "smolvision: quantizing (fake)" in capsys.readouterr().err
    assert cli.main(["-d", str(tmp_path), "-p", "hi", "--quant", "q5"]) == 2
    assert "invalid choice" in capsys.readouterr().err
