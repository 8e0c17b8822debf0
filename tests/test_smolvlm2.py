"""SmolVLM2 (model_type "smolvlm"): loading, images and video against transformers, in the same test.

The reference is transformers' own SmolVLM code. `SmolVLMProcessor` itself cannot be built here: without
torchvision transformers' video-processor registry is a placeholder and the processor's constructor fails on
it. So the reference is assembled from the pieces it calls: `SmolVLMImageProcessorPil` for images, the
processor's own `replace_video_token` (called on an object holding the attributes its constructor sets) for the
video prompt, `SmolVLMVideoProcessor.sample_frames` / `get_resize_output_image_size` /
`_fuse_mean_std_and_rescale_factor` for frames. The one kernel transformers reaches through torchvision,
`tvF.resize` on uint8 CPU tensors, is torchvision 0.28's `resize_image`, which calls
`torch.nn.functional.interpolate(mode="lanczos", antialias=True)` on the uint8 tensor: the test calls that.
"""
from __future__ import annotations

import json
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import modelgen
import smolvision
from helpers import write_clip
from smolvision.video import VideoFrames, VideoProcessor, number_in_words

HAVE_BF16 = smolvision.cpu_features()["bf16_matmul"]

_refs: dict = {}


def reference(model_dir, dtype=torch.float32):
    from transformers import SmolVLMForConditionalGeneration

    key = (str(model_dir), dtype)
    if key not in _refs:
        _refs[key] = SmolVLMForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).eval()
    return _refs[key]


@pytest.fixture(scope="module", params=["smolvlm2", "smolvlm2-gqa"])
def v2_dir(request, model_factory):
    return model_factory(request.param)


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    return modelgen.write_model(tmp_path_factory.mktemp("smolvlm2-saved"), "smolvlm2", layout="saved")


def rel(ours, ref) -> float:
    return float(np.abs(np.asarray(ours) - np.asarray(ref)).max() / np.abs(np.asarray(ref)).max())


# ---- loading ----


def test_smolvlm2_config_matches_transformers(v2_dir):
    from transformers import AutoConfig

    ref = AutoConfig.from_pretrained(v2_dir)
    assert ref.model_type == "smolvlm" and ref.vision_config.model_type == "smolvlm_vision"
    with smolvision.load(v2_dir, precision="fp32") as model:
        c = model.config
        assert (c.family, c.model_type) == ("smolvlm2", "smolvlm")
        assert (c.vision.hidden_size, c.vision.intermediate_size, c.vision.num_hidden_layers,
                c.vision.num_attention_heads, c.vision.patch_size, c.vision.image_size) == (
            ref.vision_config.hidden_size, ref.vision_config.intermediate_size, ref.vision_config.num_hidden_layers,
            ref.vision_config.num_attention_heads, ref.vision_config.patch_size, ref.vision_config.image_size)
        assert (c.scale_factor, c.image_token_id, c.text.tie_word_embeddings) == (
            ref.scale_factor, ref.image_token_id, ref.tie_word_embeddings)


def test_smolvlm_v1_still_reports_its_family(mha_dir):
    with smolvision.load(mha_dir, precision="fp32") as model:
        assert (model.config.family, model.config.model_type) == ("smolvlm", "idefics3")


def test_omitted_vision_keys_take_smolvlm_vision_defaults(model_factory):
    from transformers import AutoConfig
    from transformers.models.smolvlm.configuration_smolvlm import SmolVLMVisionConfig

    path = model_factory("smolvlm2-defaults")
    written = json.loads((path / "config.json").read_text())["vision_config"]
    assert set(written) & {"num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size",
                           "image_size"} == set()
    defaults, ref = SmolVLMVisionConfig(), AutoConfig.from_pretrained(path).vision_config
    with smolvision.load(path, precision="fp32") as model:
        v = model.config.vision
        assert (v.num_hidden_layers, v.num_attention_heads, v.intermediate_size, v.patch_size, v.image_size,
                v.layer_norm_eps) == (defaults.num_hidden_layers, defaults.num_attention_heads,
                                      defaults.intermediate_size, defaults.patch_size, defaults.image_size,
                                      defaults.layer_norm_eps)
        assert (v.num_hidden_layers, v.image_size) == (ref.num_hidden_layers, ref.image_size)
        # and the weights those defaults describe compute transformers' logits
        pixels = np.random.default_rng(3).uniform(-1, 1, (2, 3, v.image_size, v.image_size)).astype(np.float32)
        ids = model.tokenizer.encode("User:") + [model.config.image_token_id] * 2 * model.config.image_seq_len
        ids += model.tokenizer.encode("What?\nAssistant:")
        ours = model.logits(ids, image_embeds=model.encode_pixel_values(pixels))
    with torch.no_grad():
        theirs = reference(path)(input_ids=torch.tensor([ids]), pixel_values=torch.from_numpy(pixels)[None])
    assert rel(ours, theirs.logits[0, -1].numpy()) < 1e-3


def test_processor_settings_from_both_layouts(model_factory, saved_dir):
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    published = VideoProcessor.from_dir(model_factory("smolvlm2"))
    saved = VideoProcessor.from_dir(saved_dir)
    assert (published.fps, published.max_frames, published.max_image_size) == (1, 64, 90)
    assert (saved.fps, saved.max_frames, saved.max_image_size) == (1, 64, 90)
    # the published preprocessor_config.json's image "size" replaces video_sampling's video_size
    for ours, path in ((published, model_factory("smolvlm2")), (saved, saved_dir)):
        assert ours.longest_edge == SmolVLMVideoProcessor.from_pretrained(path).size["longest_edge"]
    assert (published.longest_edge, saved.longest_edge) == (360, 90)
    with smolvision.load(model_factory("smolvlm2"), precision="fp32") as a, \
            smolvision.load(saved_dir, precision="fp32") as b:
        assert a._prompts.image_processor == b._prompts.image_processor
        assert a._prompts.image_seq_len == b._prompts.image_seq_len
        assert a.apply_chat_template([{"role": "user", "content": "hi"}]) == \
            b.apply_chat_template([{"role": "user", "content": "hi"}])


def test_video_size_is_replaced_by_size_as_transformers_does():
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    config = {"size": {"longest_edge": 200}, "max_image_size": {"longest_edge": 50},
              "video_sampling": {"fps": 2, "max_frames": 10, "video_size": {"longest_edge": 50}}}
    ref = SmolVLMVideoProcessor(**json.loads(json.dumps(config)))
    ours = VideoProcessor.from_dict(config)
    assert (ours.longest_edge, ours.fps, ours.max_frames) == (ref.size["longest_edge"], ref.fps, ref.num_frames)


# ---- images ----


def reference_image_text(text: str, rows_cols: list, image_seq_len: int) -> str:
    from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

    pieces = text.split("<image>")
    out = [pieces[0]]
    for (rows, cols), piece in zip(rows_cols, pieces[1:]):
        out += [get_image_prompt_string(rows, cols, image_seq_len, "<fake_token_around_image>", "<image>",
                                        "<global-img>"), piece]
    return "".join(out)


def test_image_prompt_pixels_and_logits_equal_transformers(v2_dir):
    from PIL import Image
    from transformers import AutoTokenizer, SmolVLMImageProcessorPil

    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (151, 233, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    with smolvision.load(v2_dir, precision="fp32") as model:
        inputs = model.build_inputs(messages, [image])
        text = model.apply_chat_template(messages)
        seq_len = model.config.image_seq_len
        ours = model.logits(inputs.input_ids, image_embeds=model.encode_pixel_values(inputs.pixel_values))
    processor = SmolVLMImageProcessorPil.from_pretrained(v2_dir)
    ref = processor([image], return_row_col_info=True, return_tensors="pt")
    pixels = ref["pixel_values"][0].numpy()
    assert np.array_equal(inputs.pixel_values, pixels)
    expanded = reference_image_text(text, [(ref["rows"][0][0], ref["cols"][0][0])], seq_len)
    ids = AutoTokenizer.from_pretrained(v2_dir)(expanded)["input_ids"]
    assert inputs.input_ids == ids
    with torch.no_grad():
        theirs = reference(v2_dir)(input_ids=torch.tensor([ids]), pixel_values=ref["pixel_values"]).logits[0, -1]
    err = rel(ours, theirs.numpy())
    print(f"{v2_dir.name} image logits: max relative error {err:.2e}")
    assert err < 1e-3


def test_image_logits_bf16_within_the_contract(model_factory):
    """The bf16 contract of test_precision: no worse than 1.5x transformers' own bfloat16 run (floor 4e-3).
    On CPUs without AVX512_BF16 (this AVX2 machine) precision="bf16" computes as fp32."""
    path = model_factory("smolvlm2")
    with smolvision.load(path, precision="bf16") as model:
        size = model.config.vision.image_size
        pixels = np.random.default_rng(5).uniform(-1, 1, (3, 3, size, size)).astype(np.float32)
        ids = model.tokenizer.encode("User:") + [model.config.image_token_id] * 3 * model.config.image_seq_len
        ids += model.tokenizer.encode("Describe.\nAssistant:")
        ours = model.logits(ids, image_embeds=model.encode_pixel_values(pixels))
    with torch.no_grad():
        ref = reference(path)(input_ids=torch.tensor([ids]), pixel_values=torch.from_numpy(pixels)[None])
        bf16 = reference(path, torch.bfloat16)(input_ids=torch.tensor([ids]),
                                              pixel_values=torch.from_numpy(pixels).bfloat16()[None])
    ref_logits = ref.logits[0, -1].numpy()
    theirs = rel(bf16.logits[0, -1].float().numpy(), ref_logits)
    print(f"bf16 image logits: ours {rel(ours, ref_logits):.2e} (bf16 kernels: {HAVE_BF16}), "
          f"transformers bfloat16 {theirs:.2e}")
    assert rel(ours, ref_logits) <= max(1.5 * theirs, 4e-3)


# ---- video ----


def decode_all(path):
    """Every frame with PyAV and the metadata transformers' PyAV reader reports."""
    import av
    from transformers.video_utils import VideoMetadata

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total, rate = stream.frames, float(stream.average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return frames, VideoMetadata(total_num_frames=total, fps=rate, duration=total / rate, video_backend="pyav")


def reference_video(model_dir, frames, metadata, image_seq_len, tile, num_frames=None):
    """transformers' frames (indices, pixel values) and prompt text for one video (num_frames: the processor
    kwarg that overrides video_sampling's max_frames)."""
    import torch.nn.functional as F
    from transformers.image_utils import SizeDict
    from transformers.models.smolvlm.processing_smolvlm import SmolVLMProcessor
    from transformers.models.smolvlm.video_processing_smolvlm import (SmolVLMVideoProcessor,
                                                                      get_resize_output_image_size)

    vp = SmolVLMVideoProcessor.from_pretrained(model_dir)
    indices = vp.sample_frames(metadata, num_frames=num_frames)
    metadata.frames_indices = indices
    video = torch.from_numpy(frames[indices]).permute(0, 3, 1, 2).contiguous()
    size = get_resize_output_image_size(video, resolution_max_side=SizeDict(**vp.size).longest_edge)
    # tvF.resize(uint8 CPU tensor, LANCZOS, antialias=True) in torchvision 0.28 is exactly this call
    video = F.interpolate(video, size=list(size), mode="lanczos", antialias=True, align_corners=False)
    video = F.interpolate(video, size=[tile, tile], mode="lanczos", antialias=True, align_corners=False)
    mean, std, _ = vp._fuse_mean_std_and_rescale_factor(do_normalize=True, image_mean=vp.image_mean,
                                                        image_std=vp.image_std, do_rescale=True,
                                                        rescale_factor=vp.rescale_factor)
    pixels = video.to(torch.float32).sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))
    processor = SimpleNamespace(image_seq_len=image_seq_len, image_token="<image>",
                                fake_image_token="<fake_token_around_image>", global_image_token="<global-img>")
    text = SmolVLMProcessor.replace_video_token(processor, {"pixel_values": pixels[None],
                                                            "video_metadata": [metadata]}, 0)
    return indices, pixels, text


def test_number_in_words_is_num2words():
    num2words = pytest.importorskip("num2words").num2words
    for n in list(range(0, 1200)) + [1234, 20000, 100001, 1000000, 1002003, 987654321]:
        assert number_in_words(n) == num2words(n), n


@pytest.mark.parametrize("seconds,fps,max_frames", [(5, 10, 64), (5, 10, 3), (14.5, 4, 8)])
def test_video_frames_prompt_and_logits_equal_transformers(v2_dir, tmp_path, seconds, fps, max_frames):
    from transformers import AutoTokenizer
    from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

    clip = tmp_path / "clip.mp4"
    write_clip(clip, seconds, fps)
    frames, metadata = decode_all(clip)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    with smolvision.load(v2_dir, precision="fp32") as model:
        processor = model._prompts.video_processor(max_frames=max_frames)
        ours_video = processor.preprocess(str(clip))
        inputs = model.build_inputs(messages, videos=[str(clip)], max_frames=max_frames)
        ours = model.logits(inputs.input_ids, image_embeds=model.encode_pixel_values(inputs.pixel_values))
        seq_len, tile = model.config.image_seq_len, model.config.vision.image_size
    indices, pixels, video_text = reference_video(v2_dir, frames, metadata, seq_len, tile, num_frames=max_frames)
    assert list(ours_video.frame_indices) == [int(i) for i in indices]
    assert np.array_equal(ours_video.pixel_values, pixels.numpy())
    assert np.array_equal(inputs.pixel_values, pixels.numpy())
    tokenizer = AutoTokenizer.from_pretrained(v2_dir)
    text = tokenizer.apply_chat_template(messages, chat_template=DEFAULT_CHAT_TEMPLATE, tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text.replace("<video>", video_text))["input_ids"]
    assert inputs.text == text.replace("<video>", video_text)
    assert inputs.input_ids == ids
    with torch.no_grad():
        theirs = reference(v2_dir)(input_ids=torch.tensor([ids]), pixel_values=pixels[None]).logits[0, -1]
    err = rel(ours, theirs.numpy())
    print(f"{v2_dir.name} video {seconds}s@{fps} max_frames={max_frames}: {len(indices)} frames, "
          f"logits max relative error {err:.2e}")
    assert err < 1e-3


def test_video_frames_given_by_the_caller(v2_dir, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (41, 67, 3), dtype=np.uint8) for _ in range(3)]
    video = VideoFrames([frames[0], Image.fromarray(frames[1]), frames[2]], [0.0, 61.5, 123.0], duration=125.2)
    with smolvision.load(v2_dir, precision="fp32") as model:
        inputs = model.build_inputs(prompt="<video>Go", videos=[video])
    assert inputs.text.startswith("You are provided the following series of three frames from a 0:02:05 "
                                  "[H:MM:SS] video.\n\nFrame from 00:00:")
    assert "\nFrame from 01:01:" in inputs.text and "\nFrame from 02:03:" in inputs.text
    assert inputs.text.endswith("<fake_token_around_image>\n\nGo")
    assert inputs.pixel_values.shape[0] == 3


def test_video_frames_go_through_the_image_cache(model_factory, tmp_path):
    """A second question about the same clip encodes nothing (each frame is cached like an image), a new
    image beside it is the only thing encoded, and the answers equal those of a model without a cache."""
    v2 = model_factory("smolvlm2")
    clip = tmp_path / "clip.mp4"
    write_clip(clip, 5, 10)
    image = np.random.default_rng(3).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    ask = {"max_tokens": 6, "max_frames": 4}
    with smolvision.load(v2, precision="fp32") as cached, smolvision.load(v2, precision="fp32",
                                                                          cache_bytes=0) as fresh:
        first = cached.generate("What happens?", videos=[str(clip)], **ask)
        assert first.cached_images == 0 and first.timings.image_encode_s > 0
        again = cached.generate("And then?", videos=[str(clip)], **ask)
        assert again.cached_images == 4 and again.timings.image_encode_s == 0
        assert again.token_ids == fresh.generate("And then?", videos=[str(clip)], **ask).token_ids
        mixed = cached.generate("Compare them.", images=[image], videos=[str(clip)], **ask)
        assert mixed.cached_images == 4 and mixed.timings.image_encode_s > 0
        assert mixed.token_ids == fresh.generate("Compare them.", images=[image], videos=[str(clip)],
                                                 **ask).token_ids


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100, b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64])
def test_undecodable_video_is_an_image_error(v2_dir, tmp_path, content):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with smolvision.load(v2_dir, precision="fp32") as model, pytest.raises(smolvision.ImageError):
        model.build_inputs(prompt="<video>", videos=[str(bad)])


def test_video_bytes_decode_as_the_file(model_factory, tmp_path):
    """A file's bytes (what the server receives) give the same frames, times and pixels as the file."""
    clip = tmp_path / "clip.mkv"  # no declared frame count: the packets are counted in memory too
    write_clip(clip, 3, 5, 50, 30)
    processor = VideoProcessor.from_dir(model_factory("smolvlm2"))
    from_file, from_bytes = processor.preprocess(str(clip)), processor.preprocess(clip.read_bytes())
    assert from_bytes.frame_indices == from_file.frame_indices and len(from_file.frame_indices) == 3
    assert (from_bytes.timestamps, from_bytes.duration) == (from_file.timestamps, from_file.duration)
    assert np.array_equal(from_bytes.pixel_values, from_file.pixel_values)
    for content in (b"", b"not a video at all" * 100, clip.read_bytes()[:200]):
        with pytest.raises(smolvision.ImageError, match="<video bytes>"):
            processor.preprocess(content)


def test_hostile_videos_are_refused_before_decoding(v2_dir, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, 1, 10)
    with smolvision.load(v2_dir, precision="fp32") as model:
        with pytest.raises(smolvision.ImageError, match="pixels"):  # resolution over the limit, from the header
            VideoProcessor(max_pixels=1000).preprocess(str(clip))
        with pytest.raises(smolvision.ImageError, match="no such file"):
            model.build_inputs(prompt="<video>", videos=[str(tmp_path / "missing.mp4")])
        with pytest.raises(smolvision.InputError):
            model.build_inputs(prompt="<video>", videos=[str(clip)], max_frames=10**9)
        with pytest.raises(smolvision.InputError):
            model.build_inputs(prompt="<video>", videos=[str(clip)], fps=0)
        with pytest.raises(smolvision.InputError, match="markers"):
            model.build_inputs(prompt="no marker", videos=[str(clip)])
        with pytest.raises(smolvision.InputError):
            model.build_inputs(prompt="<video>", videos=[VideoFrames([], [])])


def test_missing_pyav_names_the_extra(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    with pytest.raises(smolvision.InputError, match=r"smolvision\[video\]"):
        VideoProcessor().preprocess(str(tmp_path / "clip.mp4"))


def test_cli_answers_about_a_video(model_factory, tmp_path):
    from helpers import run_cli

    clip = tmp_path / "clip.mp4"
    write_clip(clip, 3, 10)
    done = run_cli("-d", model_factory("smolvlm2"), "-V", clip, "-V", clip, "--max-frames", "2", "--fps", "1",
                   "-p", "Same?", "--max-tokens", "3", "--json", "--precision", "fp32", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["n_tiles"] == 4  # two frames from each video


def test_a_container_without_a_frame_count_is_counted(v2_dir, tmp_path):
    """Matroska declares no frame count (PyAV reports 0; transformers' PyAV reader would then sample only the
    first frame): the packets are counted, and the clip samples like the same frames in an mp4."""
    mkv, mp4 = tmp_path / "clip.mkv", tmp_path / "clip.mp4"
    write_clip(mkv, 4, 5)
    write_clip(mp4, 4, 5)
    import av
    with av.open(str(mkv)) as container:
        assert container.streams.video[0].frames == 0
    processor = VideoProcessor.from_dir(v2_dir)
    a, b = processor.preprocess(str(mkv)), processor.preprocess(str(mp4))
    assert a.frame_indices == b.frame_indices and len(a.frame_indices) == 4
    assert np.array_equal(a.pixel_values, b.pixel_values)


class _FakeStream:
    def __init__(self, frames=50, rate=Fraction(10), width=64, height=48):
        self.frames, self.average_rate = frames, rate
        self.codec_context = SimpleNamespace(width=width, height=height)


class _FakeContainer:
    """Stands for a file whose header declares hostile values; decoding it would fail the test."""

    def __init__(self, stream):
        self.streams = SimpleNamespace(video=[stream])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def decode(self, **kwargs):
        raise AssertionError("decoded a video that should have been refused from its header")

    def demux(self, stream):
        return iter(())

    def seek(self, offset):
        pass


@pytest.mark.parametrize("stream,match", [
    (_FakeStream(frames=10**9), "declares 1000000000 frames"),
    (_FakeStream(rate=None), "no frame rate"),
    (_FakeStream(rate=Fraction(0)), "no frame rate"),
    (_FakeStream(frames=0), "has no frames"),
    (_FakeStream(width=100000, height=100000), "pixels"),
    (_FakeStream(width=0, height=0), "empty"),
])
def test_hostile_headers_are_refused_before_decoding(monkeypatch, stream, match):
    import av

    monkeypatch.setattr(av, "open", lambda path: _FakeContainer(stream))
    with pytest.raises(smolvision.ImageError, match=match):
        VideoProcessor().preprocess("hostile.mp4")


def test_cli_video_options_parse():
    from smolvision import cli

    args = cli.parse_args(["-d", "M", "-V", "a.mp4", "--video", "b.mp4", "--fps", "0.5", "--max-frames", "8"])
    assert (args.videos, args.fps, args.max_frames) == (["a.mp4", "b.mp4"], 0.5, 8)
    for bad in (["--fps", "0"], ["--max-frames", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.parse_args(["-d", "M", "-V", "a.mp4"] + bad)
        assert exit_info.value.code == 2


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}],
    [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
     {"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Same scene?"}]},
     {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]},
     {"role": "user", "content": "And now? <video>"}],
    [{"role": "USER", "content": [{"type": "text", "text": "first "}, {"type": "video"}, {"type": "video"}]}],
])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_video_conversations_render_as_transformers_default_template(model_factory, messages,
                                                                     add_generation_prompt):
    from transformers import AutoTokenizer
    from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

    path = model_factory("smolvlm2")
    theirs = AutoTokenizer.from_pretrained(path).apply_chat_template(
        messages, chat_template=DEFAULT_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=add_generation_prompt)
    with smolvision.load(path, precision="fp32") as model:
        assert model.apply_chat_template(messages, add_generation_prompt) == theirs


def test_videos_on_a_model_without_video_support_are_refused(mha_dir, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, seconds=1, fps=4)
    with smolvision.load(mha_dir) as model:
        assert model.config.family != "smolvlm2"
        for call in (lambda: model.generate("What happens?", videos=[clip], max_tokens=2),
                     lambda: model.build_inputs(prompt="<video>", videos=[clip])):
            with pytest.raises(smolvision.InputError, match="no video support"):
                call()
