"""Video in: decode a clip, sample its frames, turn them into tiles and expand the prompt's <video> markers.

The oracle is transformers' SmolVLM2 video path (`SmolVLMVideoProcessor` + `SmolVLMProcessor`):

- Frames are sampled from the container's declared frame count and average rate, as transformers' PyAV reader
  (`read_video_pyav`) reads them: at `fps` frames a second, at most `max_frames`, skipping the first and last
  second when the clip is long enough, indices `unique(linspace(start, end, n))` truncated to int.
- Each frame is resized twice, never split: its longest edge to `longest_edge` (short side rounded up to even),
  then to the square tile. transformers does this with torchvision's `resize` on uint8 tensors, which on CPU
  with torchvision >= 0.27 is torch's own antialiased uint8 LANCZOS kernel (`interpolate(mode="lanczos",
  antialias=True)`), not Pillow's: measured on 360x640 frames through both resizes, the two differ by at most
  2 levels (a mean of 0.001-0.03), and by up to ~40 on high-contrast detail where a Pillow resize runs its
  vertical pass first (the clipped intermediate then differs). `_resize_uint8` repeats torch's integer arithmetic so the pixels are
  equal. (With torchvision < 0.27 or on a GPU, transformers falls back to BICUBIC, another answer.)
- Rescale and normalize are fused as transformers' torchvision backend fuses them: (x - 255 mean) / (255 std)
  in float32.
- The prompt: an intro naming the frame count in words and the duration as H:MM:SS, then per frame
  "\\nFrame from mm:ss:" and one global-image block, then "\\n\\n".

Decoding uses PyAV (the optional extra `smolvision[video]`); everything else is NumPy and Pillow.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Union

import numpy as np

from smolvision._files import read_json
from smolvision.errors import ImageError, InputError, ModelError
from smolvision.processing import DEFAULT_MAX_PIXELS, load_image

__all__ = ["VIDEO_TOKEN", "PreprocessedVideo", "VideoFrames", "VideoProcessor", "import_av", "number_in_words",
           "render_video_chat", "video_prompt"]

VIDEO_TOKEN = "<video>"

# A clip declaring more frames than this (about 12 hours at 60 fps) is refused as absurd.
MAX_DECLARED_FRAMES = 2_600_000
# The most frames one call may sample (every one becomes a tile and image_seq_len tokens).
MAX_SAMPLED_FRAMES = 4096


@dataclass(frozen=True)
class VideoFrames:
    """Frames a caller decoded itself: PIL images or HxWx3 uint8 arrays, with each frame's time in seconds.

    They are used as given (not sampled again). `duration` (seconds) goes into the prompt's intro; without it
    the last timestamp is used, as transformers does when the metadata has no duration.
    """

    frames: Sequence[Any]
    timestamps: Sequence[float]
    duration: float | None = None


VideoInput = Union[str, "os.PathLike[str]", bytes, VideoFrames]


@dataclass(frozen=True, eq=False)
class PreprocessedVideo:
    """One video ready for the vision encoder: float32 [n_frames, 3, S, S], one tile per frame."""

    pixel_values: np.ndarray
    timestamps: tuple
    """Each frame's time in seconds."""
    duration: float
    frame_indices: tuple
    """The sampled frames' indices in the decoded stream (empty for VideoFrames)."""

    @property
    def n_frames(self) -> int:
        return self.pixel_values.shape[0]


@dataclass(frozen=True)
class VideoProcessor:
    """SmolVLM2's video preprocessing, equal to transformers' `SmolVLMVideoProcessor` on CPU.

    `fps` and `max_frames` are `video_sampling`'s; `longest_edge` is the first resize's target and
    `max_image_size` the tile side. Defaults are the published SmolVLM2 checkpoints'.
    """

    fps: float = 1.0
    max_frames: int = 64
    longest_edge: int = 4 * 364
    max_image_size: int = 364
    skip_secs: float = 1.0
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple = (0.5, 0.5, 0.5)
    image_std: tuple = (0.5, 0.5, 0.5)
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not 0 < self.fps < 1e6:
            raise InputError(f"fps must be a positive number, not {self.fps!r}")
        for name in ("max_frames", "longest_edge", "max_image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise InputError(f"{name} must be a positive integer, not {value!r}")
        if self.max_frames > MAX_SAMPLED_FRAMES:
            raise InputError(f"max_frames is {self.max_frames}; at most {MAX_SAMPLED_FRAMES} frames are sampled")
        if 0.0 in tuple(self.image_std):
            raise ModelError("image_std must not contain 0")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> VideoProcessor:
        """From a video processor's settings: a published `preprocessor_config.json` (with `video_sampling`) or
        the `video_processor` entry transformers 5 saves in `processor_config.json`.

        As in transformers, a `size` key replaces `video_sampling`'s `video_size`."""
        fields: dict = {}
        sampling = config.get("video_sampling") or {}
        if not isinstance(sampling, Mapping):
            raise ModelError(f"video_sampling must be an object, not {sampling!r}")
        fps = sampling.get("fps", config.get("fps"))
        max_frames = sampling.get("max_frames", config.get("num_frames"))
        size = config.get("size") or sampling.get("video_size")
        if fps is not None:
            fields["fps"] = fps
        if max_frames is not None:
            fields["max_frames"] = max_frames
        for key, name in ((size, "longest_edge"), (config.get("max_image_size"), "max_image_size")):
            if key is not None:
                if not isinstance(key, Mapping) or "longest_edge" not in key:
                    raise ModelError(f'video {name} must be {{"longest_edge": N}}, not {key!r}')
                fields[name] = key["longest_edge"]
        for key in ("do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std"):
            if config.get(key) is not None:
                fields[key] = config[key]
        for key in ("image_mean", "image_std"):
            if isinstance(fields.get(key), (int, float)):
                fields[key] = (fields[key],) * 3
            elif key in fields:
                fields[key] = tuple(fields[key])
        fields.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**fields)
        except InputError as err:
            raise ModelError(f"bad video settings: {err}") from err

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike[str], **overrides: Any) -> VideoProcessor:
        """From a model directory: `video_preprocessor_config.json`, else `processor_config.json`'s
        `video_processor`, else `preprocessor_config.json` (the published SmolVLM2 layout)."""
        model_dir = Path(model_dir)
        config = read_json(model_dir / "video_preprocessor_config.json")
        if config is None:
            saved = read_json(model_dir / "processor_config.json")
            config = saved.get("video_processor") if isinstance(saved, dict) else None
        if config is None:
            config = read_json(model_dir / "preprocessor_config.json")
        if not isinstance(config, dict):
            raise ModelError(f"{model_dir} has no video processor settings")
        return cls.from_dict(config, **overrides)

    # ---- sampling ----

    def sample_indices(self, total_frames: int, fps: float, duration: float) -> np.ndarray:
        """The frame indices transformers' `SmolVLMVideoProcessor.sample_frames` picks."""
        wanted = max(min(int(round(self.fps * duration)), self.max_frames), 1)
        start, end = 0, total_frames - 1
        if self.skip_secs > 0 and duration - 2 * self.skip_secs > self.max_frames * self.fps:
            start = int(self.skip_secs * fps)
            end = int(total_frames - self.skip_secs * fps)
        start, end = max(0, start), min(end, total_frames - 1)
        if start >= end:
            start, end = 0, total_frames - 1
        return np.unique(np.linspace(start, end, wanted, dtype=int))

    # ---- preprocessing ----

    def preprocess(self, video: VideoInput) -> PreprocessedVideo:
        """A file, or a file's bytes (decoded with PyAV, frames sampled), or VideoFrames (used as given) as the
        model's tiles."""
        if isinstance(video, VideoFrames):
            return self._from_frames(video)
        if isinstance(video, (str, os.PathLike, bytes, bytearray, memoryview)):
            frames, indices, fps, duration = self.decode(video)
            timestamps = tuple(float(i) / fps for i in indices)
            return PreprocessedVideo(self._tiles(frames), timestamps, duration, tuple(int(i) for i in indices))
        raise InputError(f"a video must be a path, bytes or VideoFrames, not {type(video).__name__}")

    def _from_frames(self, video: VideoFrames) -> PreprocessedVideo:
        frames, timestamps = list(video.frames), list(video.timestamps)
        if not frames:
            raise InputError("VideoFrames has no frames")
        if len(frames) != len(timestamps):
            raise InputError(f"VideoFrames has {len(frames)} frames but {len(timestamps)} timestamps")
        if len(frames) > MAX_SAMPLED_FRAMES:
            raise InputError(f"VideoFrames has {len(frames)} frames; at most {MAX_SAMPLED_FRAMES} are taken")
        for t in timestamps + ([video.duration] if video.duration is not None else []):
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < 1e9:
                raise InputError(f"timestamps and duration must be non-negative seconds, not {t!r}")
        rgb = [np.asarray(load_image(frame, max_pixels=self.max_pixels)) for frame in frames]
        duration = video.duration if video.duration is not None else timestamps[-1]
        return PreprocessedVideo(self._tiles(rgb), tuple(float(t) for t in timestamps), float(duration), ())

    def decode(self, source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> tuple:
        """(sampled uint8 HxWx3 frames, their indices, the stream's fps, its duration) of a video file, or of
        the bytes of one (e.g. a server's upload: PyAV reads them from memory)."""
        av = import_av()
        if isinstance(source, (bytes, bytearray, memoryview)):
            name, source = "<video bytes>", io.BytesIO(source)  # `name` names the input in messages
        else:
            source = os.fspath(source)
            name = repr(source)
        try:
            container = av.open(source)
        except FileNotFoundError as err:
            raise ImageError(f"cannot open video file {name}: no such file") from err
        except Exception as err:  # PyAV raises many types for bad input
            raise ImageError(f"cannot decode video {name}: {err}") from err
        with container:
            if not container.streams.video:
                raise ImageError(f"{name} has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width <= 0 or height <= 0:
                raise ImageError(f"{name}: the video is empty ({width}x{height})")
            if width * height > self.max_pixels:
                raise ImageError(f"{name}: frames are {width}x{height} = {width * height} pixels, more than the "
                                 f"limit of {self.max_pixels}")
            fps = float(stream.average_rate) if stream.average_rate else 0.0
            if not fps > 0 or not math.isfinite(fps):
                raise ImageError(f"{name}: the video stream declares no frame rate")
            total = int(stream.frames)
            if total <= 0:  # Matroska / WebM declare no count: count the packets (no decoding)
                total = _count_frames(container, stream, name)
                container.seek(0)
            if total <= 0:
                raise ImageError(f"{name}: the video has no frames")
            if total > MAX_DECLARED_FRAMES:
                raise ImageError(f"{name}: the stream declares {total} frames, more than {MAX_DECLARED_FRAMES}")
            duration = total / fps
            indices = self.sample_indices(total, fps, duration)
            wanted = set(int(i) for i in indices)
            frames, found = [], []
            try:
                for i, frame in enumerate(container.decode(video=0)):
                    if i > indices[-1]:
                        break
                    if i in wanted:
                        if frame.width * frame.height > self.max_pixels:
                            raise ImageError(f"{name}: frame {i} is {frame.width}x{frame.height}, more than "
                                             f"{self.max_pixels} pixels")
                        frames.append(frame.to_ndarray(format="rgb24"))
                        found.append(i)
            except ImageError:
                raise
            except Exception as err:
                raise ImageError(f"cannot decode video {name}: {err}") from err
        if not frames:
            raise ImageError(f"{name}: no frame could be decoded")
        return frames, np.array(found), fps, duration

    def _tiles(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        tile = self.max_image_size
        out = np.empty((len(frames), 3, tile, tile), dtype=np.float32)
        for n, frame in enumerate(frames):
            height, width = frame.shape[:2]
            first = _longest_edge_size(height, width, self.longest_edge)
            resized = _resize_uint8(_resize_uint8(frame, *first), tile, tile)
            out[n] = self._rescale_and_normalize(resized.transpose(2, 0, 1))
        return out

    def _rescale_and_normalize(self, pixels: np.ndarray) -> np.ndarray:
        values = pixels.astype(np.float32)
        mean = np.array(self.image_mean, dtype=np.float32)
        std = np.array(self.image_std, dtype=np.float32)
        if self.do_rescale and self.do_normalize:  # fused: (x - mean / rescale) / (std / rescale)
            scale = np.float32(1.0 / self.rescale_factor)
            mean, std = mean * scale, std * scale
        elif self.do_rescale:
            return values * np.float32(self.rescale_factor)
        if self.do_normalize:
            values = (values - mean[:, None, None]) / std[:, None, None]
        return values


def _count_frames(container, stream, name: str) -> int:
    """Video packets in the stream, each one frame, counted up to MAX_DECLARED_FRAMES + 1."""
    count = 0
    try:
        for packet in container.demux(stream):
            if packet.size:
                count += 1
                if count > MAX_DECLARED_FRAMES:
                    break
    except Exception as err:
        raise ImageError(f"cannot decode video {name}: {err}") from err
    return count


def import_av():
    """The `av` module (PyAV); InputError naming the `video` extra when it is not installed."""
    try:
        import av
    except ImportError as err:
        raise InputError('reading video files needs PyAV: pip install "smolvision[video]" '
                         "(or pass VideoFrames you decoded yourself)") from err
    return av


def _longest_edge_size(height: int, width: int, longest_edge: int) -> tuple:
    """transformers' video `get_resize_output_image_size`: longest edge to min(longest_edge, 4096), the other
    side truncated and rounded up to even."""
    side = min(4096, longest_edge)
    aspect_ratio = width / height
    if width >= height:
        width, height = side, int(side / aspect_ratio)
        height += height % 2
    else:
        height, width = side, int(side * aspect_ratio)
        width += width % 2
    return max(height, 1), max(width, 1)


# ---------------------------------------------------------------------------------------------------------------
# torch's antialiased uint8 LANCZOS resize, in NumPy
# ---------------------------------------------------------------------------------------------------------------


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)


def _int16_weights(in_size: int, out_size: int) -> tuple:
    """Per output pixel: the first input index and the int16 weights (with their precision in bits), computed
    as torch's separable antialiased kernel computes them: float64 weights normalised to sum 1, then scaled
    by the largest power of two that keeps the largest weight within int16, and rounded half away from 0."""
    scale = in_size / out_size
    support = 3.0 * scale if scale >= 1.0 else 3.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    max_size = int(math.ceil(support)) * 2 + 1
    starts = np.empty(out_size, dtype=np.int64)
    weights = np.zeros((out_size, max_size), dtype=np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        size = min(max(min(int(center + support + 0.5), in_size) - lo, 0), max_size)
        w = _lanczos((np.arange(size) + lo - center + 0.5) * invscale)
        total = w.sum()
        starts[i] = lo
        weights[i, :size] = w / total if total != 0 else w
    precision = 0
    w_max = weights.max()
    while precision < 22 and int(0.5 + w_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    ints = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int64)
    return starts, ints, precision


# Output pixels per BLAS product: each block multiplies only the band of input pixels its windows cover.
_BLOCK = 64


@functools.lru_cache(maxsize=16)
def _weight_blocks(in_size: int, out_size: int) -> tuple:
    """The integer weights as blocks of _BLOCK output pixels: (output start, output end, input start, input
    end, float64 [inputs, outputs] matrix), and the weights' precision in bits."""
    starts, weights, precision = _int16_weights(in_size, out_size)
    sizes = np.minimum(weights.shape[1], in_size - starts)
    blocks = []
    for first in range(0, out_size, _BLOCK):
        last = min(first + _BLOCK, out_size)
        lo, hi = int(starts[first:last].min()), int((starts[first:last] + sizes[first:last]).max())
        matrix = np.zeros((hi - lo, last - first), dtype=np.float64)
        for i in range(first, last):
            matrix[starts[i] - lo:starts[i] - lo + sizes[i], i - first] = weights[i, :sizes[i]]
        matrix.setflags(write=False)
        blocks.append((first, last, lo, hi, matrix))
    return tuple(blocks), precision


def _resize_axis(pixels: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    in_size = pixels.shape[axis]
    if in_size == out_size:
        return pixels
    blocks, precision = _weight_blocks(in_size, out_size)
    src = np.ascontiguousarray(np.moveaxis(pixels, axis, -1), dtype=np.float64)
    flat = src.reshape(-1, in_size)
    acc = np.empty((flat.shape[0], out_size), dtype=np.float64)
    # float64 products and sums of 8-bit pixels and 16-bit weights stay below 2**53: the sums are torch's
    # exact integer sums, and adding half and scaling by a power of two before the floor is exact too.
    for first, last, lo, hi, matrix in blocks:
        np.matmul(flat[:, lo:hi], matrix, out=acc[:, first:last])
    acc += float(1 << (precision - 1))
    acc *= 1.0 / (1 << precision)
    np.floor(acc, out=acc)
    np.clip(acc, 0, 255, out=acc)
    out = acc.astype(np.uint8).reshape(src.shape[:-1] + (out_size,))
    return np.moveaxis(out, -1, axis)


def _resize_uint8(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """HxWx3 uint8 resized like torch's `interpolate(mode="lanczos", antialias=True)` on uint8: horizontal pass,
    rounded to uint8, then vertical pass."""
    return _resize_axis(_resize_axis(pixels, width, 1), height, 0)


# ---------------------------------------------------------------------------------------------------------------
# Prompt
# ---------------------------------------------------------------------------------------------------------------

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_in_words(n: int) -> str:
    """English words for 0 <= n < 10**9 in British style ("one hundred and one", "one thousand, two hundred")."""
    if not 0 <= n < 10**9:
        raise InputError(f"cannot write {n} in words")

    def below_thousand(k: int) -> str:
        hundreds, rest = divmod(k, 100)
        words = []
        if hundreds:
            words.append(f"{_ONES[hundreds]} hundred")
        if rest or not hundreds:
            tail = _ONES[rest] if rest < 20 else _TENS[rest // 10] + (f"-{_ONES[rest % 10]}" if rest % 10 else "")
            words.append(("and " if hundreds else "") + tail)
        return " ".join(words)

    parts = []
    for value, name in ((10**6, "million"), (10**3, "thousand")):
        if n >= value:
            parts.append(f"{below_thousand(n // value)} {name}")
            n %= value
    if not parts or n >= 100:
        parts.append(below_thousand(n))
    elif n:  # a last group below a hundred joins with "and": "one thousand and one"
        return ", ".join(parts) + f" and {below_thousand(n)}"
    return ", ".join(parts)


def video_prompt(n_frames_said: int, duration: float, timestamps: Sequence[float], image_seq_len: int) -> str:
    """What stands for one video: intro, one "Frame from mm:ss:" + global-image block per frame, "\\n\\n"."""
    from smolvision.processing import image_prompt

    block = image_prompt(0, 0, image_seq_len)
    parts = [f"You are provided the following series of {number_in_words(n_frames_said)} frames from a "
             f"{timedelta(seconds=int(duration))} [H:MM:SS] video.\n"]
    for t in timestamps:
        parts.append(f"\nFrame from {int(t // 60):02d}:{int(t % 60):02d}:{block}")
    parts.append("\n\n")
    return "".join(parts)


def render_video_chat(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """Messages rendered the way transformers renders a conversation holding a video: with SmolVLM2's default
    template (a video block becomes `<video>`), whatever template the model ships."""
    out = ["<|im_start|>"]
    for message in messages:
        content = message.get("content")
        out.append(str(message["role"]).capitalize())
        if isinstance(content, str):
            out.append(": " + content)
        else:
            blocks = list(content or [])
            out.append(":" if blocks and blocks[0].get("type") == "image" else ": ")
            for block in blocks:
                kind = block.get("type")
                if kind == "text":
                    out.append(str(block.get("text", "")))
                elif kind == "image":
                    out.append("<image>")
                elif kind == "video":
                    out.append(VIDEO_TOKEN)
        out.append("<end_of_utterance>\n")
    if add_generation_prompt:
        out.append("Assistant:")
    return "".join(out)


def has_video(messages: Any) -> bool:
    """Whether any message holds a {"type": "video"} block."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        return False
    return any(isinstance(block, Mapping) and block.get("type") == "video"
               for message in messages if isinstance(message, Mapping)
               for block in (message.get("content") if isinstance(message.get("content"), list) else []))
