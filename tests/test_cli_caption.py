"""smolvision caption's pieces: input expansion and the resumable JSON-lines output, with a stand-in
caption function or model (the end-to-end runs on the tiny models are in test_cli.py)."""
from __future__ import annotations

import json
import os

import pytest

import smolvision
from helpers import FakeResult, assert_one_line_error, read_lines, write_image
from smolvision import cli
from smolvision.cli import caption as caption_cli


def test_expand_inputs_dirs_globs_and_duplicates(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / "d" / name).write_bytes(b"x")
    (tmp_path / "d" / "sub").mkdir()
    (tmp_path / "d" / "sub" / "c.png").write_bytes(b"x")
    (tmp_path / "d" / "sub.png").mkdir()  # a directory with an image-like name is not an image
    paths, unmatched = caption_cli.expand_inputs([
        str(tmp_path / "d"), str(tmp_path / "d" / "*.png"), str(tmp_path / "d" / "**" / "c.png"),
        str(tmp_path / "missing.png"), str(tmp_path / "none" / "*.png"), str(tmp_path / "d" / "sub")])
    d = tmp_path / "d"
    assert paths == [str(d / "a.JPG"), str(d / "b.png"), str(d / "sub" / "c.png"), str(tmp_path / "missing.png")]
    assert unmatched == [str(tmp_path / "none" / "*.png")]


def test_expand_inputs_matches_the_same_file_however_named(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    paths, _ = caption_cli.expand_inputs(["a.png", "./a.png", str(tmp_path / "a.png")])
    assert paths == ["a.png"]


def fake_caption(path: str):
    if path.endswith(".bad"):
        raise smolvision.ImageError(f"cannot decode {path}")
    if path.endswith(".missing"):
        raise FileNotFoundError(2, "No such file or directory", path)
    return FakeResult(f"caption of {os.path.basename(path)}", [1], "length", 5, 1)


def test_caption_images_writes_a_flushed_line_per_image_and_records_errors(tmp_path):
    out = tmp_path / "out.jsonl"
    seen_on_disk = []

    def caption(path):
        seen_on_disk.append(len(out.read_text().splitlines()))  # earlier lines are already flushed
        return fake_caption(path)

    assert caption_cli.caption_images(["x.png", "y.bad", "z.missing", "w.png"], str(out), caption) == (2, 2)
    assert seen_on_disk == [0, 1, 2, 3]
    records = read_lines(out)
    assert [r["image"] for r in records] == ["x.png", "y.bad", "z.missing", "w.png"]
    assert records[0]["text"] == "caption of x.png" and records[0]["finish_reason"] == "length"
    assert records[0]["seconds"] >= 0
    assert records[1] == {"image": "y.bad", "error": "ImageError: cannot decode y.bad"}
    assert "z.missing" in records[2]["error"] and "text" not in records[2]


def test_prepare_output_repairs_a_truncated_last_line(tmp_path):
    out = tmp_path / "out.jsonl"
    good = [{"image": "a.png", "text": "A", "finish_reason": "stop", "seconds": 1.0},
            {"image": "b.png", "text": "B", "finish_reason": "stop", "seconds": 1.0}]
    out.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"image": "c.png", "te')
    state = caption_cli.prepare_output(str(out))
    assert state.done == {caption_cli.image_key("a.png"), caption_cli.image_key("b.png")}
    assert (state.kept_lines, state.dropped_lines) == (2, 1)
    assert read_lines(out) == good and out.read_text().endswith("\n")
    assert not (tmp_path / "out.jsonl.tmp").exists()


def test_prepare_output_keeps_a_complete_last_line_without_newline(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"image": "a.png", "text": "A"}')
    state = caption_cli.prepare_output(str(out))
    assert state.done == {caption_cli.image_key("a.png")} and state.dropped_lines == 0
    assert out.read_text() == '{"image": "a.png", "text": "A"}\n'


def test_prepare_output_drops_only_the_errors_being_retried(tmp_path):
    out = tmp_path / "out.jsonl"
    lines = ['{"image": "a.png", "error": "ImageError: x"}', '{"image": "b.png", "error": "ImageError: y"}',
             '{"image": "c.png", "text": "C"}', "garbage", ""]
    out.write_text("\n".join(lines) + "\n")
    state = caption_cli.prepare_output(str(out), retry=["a.png", "c.png"])
    assert state.done == {caption_cli.image_key("c.png")}
    assert out.read_text() == lines[1] + "\n" + lines[2] + "\n"


def test_prepare_output_leaves_a_clean_file_untouched(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"image": "a.png", "text": "A"}\n')
    before = out.stat().st_mtime_ns, out.stat().st_ino
    assert caption_cli.prepare_output(str(out), retry=["a.png"]).done == {caption_cli.image_key("a.png")}
    assert (out.stat().st_mtime_ns, out.stat().st_ino) == before
    assert caption_cli.prepare_output(str(tmp_path / "new.jsonl")).done == set()


def test_caption_fails_fast_on_an_unwritable_output(tmp_path, image, capsys, monkeypatch):
    monkeypatch.setattr(smolvision, "load", lambda *a, **k: pytest.fail("the model must not be loaded"))
    assert cli.main(["caption", "-d", str(tmp_path), str(image), "-o", str(tmp_path / "no" / "out.jsonl")]) == 1
    assert_one_line_error(1, capsys.readouterr().err, "out.jsonl")


def test_caption_command_resumes_without_repeats_or_losses(tmp_path, capsys, fake_model):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        write_image(folder / f"{i}.png", seed=i)
    out = tmp_path / "out.jsonl"
    argv = ["caption", "-d", str(tmp_path), str(folder), "-o", str(out), "-p", "Caption:"]
    assert cli.main(argv) == 0
    assert [r["image"] for r in read_lines(out)] == [str(folder / f"{i}.png") for i in range(3)]
    # An interrupted run: the last line half-written.
    text = out.read_text()
    out.write_text(text[: text.rindex("{") + 12])
    for i in range(3, 5):
        write_image(folder / f"{i}.png", seed=i)
    (folder / "5.png").write_bytes(b"not a png")
    fake_model.calls.clear()
    monkey_bad = str(folder / "5.png")
    real_generate = fake_model.generate

    def generate(**kwargs):
        if kwargs["images"] == [monkey_bad]:
            raise smolvision.ImageError(f"cannot decode image {monkey_bad}")
        return real_generate(**kwargs)
    fake_model.generate = generate
    assert cli.main(argv) == 1  # one image failed
    records = read_lines(out)
    assert [r["image"] for r in records] == [str(folder / f"{i}.png") for i in range(6)]
    assert all(r["text"] == " Caption: with 1 images." for r in records[:5]) and "error" in records[5]
    assert [call["images"] for call in fake_model.calls] == [[str(folder / f"{i}.png")] for i in (2, 3, 4)]
    err = capsys.readouterr().err
    assert "1 of 4 images failed" in err
    # Fixed image: only it is retried; its error line is replaced.
    write_image(folder / "5.png", seed=5)
    fake_model.generate = real_generate
    assert cli.main(argv) == 0
    records = read_lines(out)
    assert [r["image"] for r in records] == [str(folder / f"{i}.png") for i in range(6)]
    assert all("text" in r for r in records)
    assert cli.main(argv) == 0 and len(read_lines(out)) == 6
    assert "0 to caption" in capsys.readouterr().err


def test_caption_parallel_matches_one_at_a_time(tmp_path, capsys, mha_dir):
    """--parallel N decodes N images together (Model.generate_many): the same captions as one at a time,
    and a broken image is its own error line."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        write_image(folder / f"{i}.png", seed=i)
    (folder / "3.png").write_bytes(b"not a png")
    common = ["-d", str(mha_dir), str(folder), "--precision", "fp32", "--max-tokens", "5", "-t", "2"]
    one, many = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    assert cli.main(["caption", *common, "-o", str(one)]) == 1
    assert cli.main(["caption", *common, "-o", str(many), "--parallel", "3"]) == 1
    by_one, by_many = read_lines(one), read_lines(many)
    assert [r["image"] for r in by_many] == [r["image"] for r in by_one] == [str(folder / f"{i}.png") for i in range(4)]
    assert [r.get("text") for r in by_many[:3]] == [r["text"] for r in by_one[:3]]
    assert "error" in by_many[3] and "ImageError" in by_many[3]["error"]
    assert "1 of 4 images failed" in capsys.readouterr().err
