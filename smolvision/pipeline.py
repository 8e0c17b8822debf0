"""The text level around the token loop: from messages and images to prompt ids, and from generated ids
back to text.

Before: chat template -> prompt text -> `<image>` expansion -> tokenizer ids, images -> tiles
(`PromptBuilder`).  After: generated ids -> incremental UTF-8 text cut at stop strings
(`TextAssembler`).  `Model.generate` runs prepare -> generation.decode -> assemble with these.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np

from . import errors
from . import video as _video
from ._files import read_json
from .chat_template import load_chat_template, render_chat_template
from .generation import Result
from .processing import ImageProcessor, PreprocessedImage, expand_image_tokens, image_prompt, processor_image_seq_len
from .tokenizer import Tokenizer

DEFAULT_PROMPT = "Describe this image."


class Inputs(NamedTuple):
    """What the decoder consumes for one prompt."""

    input_ids: list[int]
    """The prompt's token ids, image tokens expanded."""
    pixel_values: np.ndarray | None
    """float32 [n_tiles, 3, S, S], every image's tiles in order; None without images."""
    images: list[PreprocessedImage]
    """Each image's tiles and grid (rows, cols)."""
    text: str
    """The prompt text the ids encode (template applied, image markers expanded)."""
    tile_groups: list[PreprocessedImage]
    """What the vision encoder runs, in prompt order: each image, and each video frame as a one-tile group
    (the image cache keys these); the images alone without videos."""


class PromptBuilder:
    """A model directory's chat template and image processor, read once.

    image_seq_len (tokens per tile) is the engine's, from the config.json the C engine parsed: the encoder
    produces exactly that many rows per tile, so the prompt must hold exactly that many image tokens.  A
    processor_config.json that says otherwise describes another model and is refused."""

    def __init__(self, model_dir: str, tokenizer: Tokenizer, image_seq_len: int) -> None:
        self.model_dir = model_dir
        self.tokenizer = tokenizer
        self._template: str | None = None
        self._processor: ImageProcessor | None = None
        self._video_processor: _video.VideoProcessor | None = None
        declared = processor_image_seq_len(model_dir)
        if declared is not None and declared != image_seq_len:
            raise errors.ModelError(f"{model_dir}: processor_config.json's image_seq_len {declared} does not match "
                                    f"the {image_seq_len} tokens per tile that config.json's vision tower gives")
        self.image_seq_len = image_seq_len
        self.special_tokens = _special_tokens(model_dir)

    @property
    def image_processor(self) -> ImageProcessor:
        if self._processor is None:
            self._processor = ImageProcessor.from_dir(self.model_dir)
        return self._processor

    def video_processor(self, fps: float | None = None, max_frames: int | None = None) -> _video.VideoProcessor:
        """The model's video settings, with `fps` / `max_frames` overridden when given."""
        if self._video_processor is None:
            self._video_processor = _video.VideoProcessor.from_dir(self.model_dir)
        if fps is None and max_frames is None:
            return self._video_processor
        import dataclasses
        changes = {k: v for k, v in (("fps", fps), ("max_frames", max_frames)) if v is not None}
        return dataclasses.replace(self._video_processor, **changes)

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        if _video.has_video(messages):  # transformers renders any conversation with a video this way
            return _video.render_video_chat(messages, add_generation_prompt)
        if self._template is None:
            self._template = load_chat_template(self.model_dir)
        return render_chat_template(self._template, messages, add_generation_prompt=add_generation_prompt,
                                    **self.special_tokens)

    def preprocess(self, image, do_image_splitting: bool | None = None,
                   longest_edge: int | None = None) -> PreprocessedImage:
        return self.image_processor.preprocess(image, do_image_splitting=do_image_splitting,
                                               longest_edge=longest_edge)

    def build(self, text: str, images: Sequence = (), do_image_splitting: bool | None = None,
              longest_edge: int | None = None, videos: Sequence = (), fps: float | None = None,
              max_frames: int | None = None) -> Inputs:
        """Inputs for prompt text holding one `<image>` marker per image and one `<video>` marker per video (the
        processor's convention); the tiles follow the markers' order in the text."""
        if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
            images = [images] if images is not None else []
        processed = [self.preprocess(image, do_image_splitting, longest_edge) for image in images]
        if not videos:
            expanded = expand_image_tokens(text, processed, self.image_seq_len)
            pixels = np.concatenate([p.pixel_values for p in processed]) if processed else None
            groups = processed
        else:
            expanded, groups = self._expand_with_videos(text, processed, list(videos), fps, max_frames)
            pixels = np.concatenate([group.pixel_values for group in groups])
        # Like Idefics3Processor: the tokenizer adds what its post-processor declares (nothing for SmolVLM).
        ids = self.tokenizer.encode(expanded, add_special_tokens=True)
        return Inputs(ids, pixels, processed, expanded, groups)

    def _expand_with_videos(self, text: str, images: list, videos: list, fps,
                            max_frames) -> tuple[str, list[PreprocessedImage]]:
        """The text with every marker expanded, and the tile groups in marker order (a frame is one group)."""
        import re

        pieces = re.split(f"({re.escape(_video.VIDEO_TOKEN)}|{re.escape('<image>')})", text)
        markers = pieces[1::2]
        n_videos = markers.count(_video.VIDEO_TOKEN)
        if n_videos != len(videos) or len(markers) - n_videos != len(images):
            raise errors.InputError(f"the prompt has {len(markers) - n_videos} <image> and {n_videos} "
                                    f"{_video.VIDEO_TOKEN} markers but {len(images)} images and {len(videos)} videos "
                                    "were given; put one marker in the text for each")
        processor = self.video_processor(fps, max_frames)
        clips = [processor.preprocess(v) for v in videos]
        # transformers pads every video of a call to the longest and names that padded count in each intro.
        said = max(clip.n_frames for clip in clips)
        out, groups, next_image, next_video = [pieces[0]], [], iter(images), iter(clips)
        for marker, piece in zip(markers, pieces[2::2]):
            if marker == _video.VIDEO_TOKEN:
                clip = next(next_video)
                out.append(_video.video_prompt(said, clip.duration, clip.timestamps, self.image_seq_len))
                groups += [PreprocessedImage(frame[None], 0, 0) for frame in clip.pixel_values]
            else:
                image = next(next_image)
                out.append(image_prompt(image.rows, image.cols, self.image_seq_len))
                groups.append(image)
            out.append(piece)
        return "".join(out), groups


def chat_messages(prompt: str | None, n_images: int, system_prompt: str | None, n_videos: int = 0) -> list[dict]:
    """One user turn (videos, images, then the text, as SmolVLM's examples do), after an optional system turn."""
    content: list[dict] = [{"type": "video"} for _ in range(n_videos)] + [{"type": "image"} for _ in range(n_images)]
    if prompt:
        content.append({"type": "text", "text": prompt})
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": content})
    return messages


class TextAssembler:
    """Turns generated ids into text pieces: UTF-8-safe, special tokens dropped, cut at the first stop string.

    Text that could still become a stop string is held back until it cannot, so no piece handed out is
    ever taken back.  `on_id` is the token loop's callback; each piece goes to `on_text`, which may return
    True to stop.  `finish` turns the loop's Result into the text Result.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str],
                 on_text: Callable[[str], Any] | None = None) -> None:
        self.decoder = tokenizer.incremental_decoder(skip_special_tokens=True)
        self.stop = [s for s in stop if s]
        self.on_text = on_text
        self.text = ""
        self.emitted = 0
        self.stopped = False
        self.cancelled = False

    def on_id(self, token_id: int) -> bool:
        """Takes one generated id, hands on the text now safe to show; True stops the token loop."""
        piece = self.push(token_id)
        if piece and self.on_text is not None and self.on_text(piece):
            self.cancelled = True
        return self.stopped or self.cancelled

    def finish(self, result: Result, n_tiles: int, image_encode_s: float) -> Result:
        """The token loop's `result` with the text (the rest handed on first), a stop string's
        finish_reason, the prompt's tiles and their encoding time."""
        rest = self.finish_text()
        if rest and self.on_text is not None:
            self.on_text(rest)
        return replace(result, text=self.text, finish_reason="stop" if self.stopped else result.finish_reason,
                       n_tiles=n_tiles, timings=replace(result.timings, image_encode_s=image_encode_s))

    def push(self, token_id: int) -> str:
        """Adds one id; returns the text now safe to show (maybe '')."""
        return self._advance(self.decoder.push(token_id), final=False)

    def finish_text(self) -> str:
        """Returns the rest of the text once generation has ended."""
        if self.stopped:
            return ""
        return self._advance(self.decoder.flush(), final=True)

    def _advance(self, piece: str, final: bool) -> str:
        if self.stopped:
            return ""
        self.text += piece
        longest = max((len(s) for s in self.stop), default=0)
        start = max(0, self.emitted - longest + 1)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True
            end = len(self.text)
        elif final:
            end = len(self.text)
        else:
            end = len(self.text) - self._partial_stop_suffix()
        out = self.text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return out

    def _partial_stop_suffix(self) -> int:
        """The length of the longest end of the text that begins some stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best


def stop_token_ids(eos_from_config: Sequence[int], tokenizer: Tokenizer) -> tuple:
    """generation_config's EOS ids plus the chat end markers the tokenizer knows."""
    ids = list(eos_from_config)
    for marker in ("<end_of_utterance>", "<|im_end|>"):
        token = tokenizer.token_to_id(marker)
        if token is not None and token not in ids:
            ids.append(token)
    return tuple(ids)


def _special_tokens(model_dir: str) -> dict:
    """bos_token / eos_token etc. from tokenizer_config.json, which transformers passes to templates."""
    path = os.path.join(model_dir, "tokenizer_config.json")
    data = read_json(path)
    if data is None:
        return {}
    out = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out
