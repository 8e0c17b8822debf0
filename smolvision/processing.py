"""Images in: load an image, turn it into SmolVLM's tiles, and expand the prompt's <image> markers.

The oracle is transformers' Idefics3 processing. In transformers 5.x `Idefics3ImageProcessor` is the torchvision
backend and `Idefics3ImageProcessorPil` the PIL/NumPy one; without torchvision installed (our case: it is not a
dependency) `Idefics3ImageProcessor` and `AutoProcessor` fall back to `Idefics3ImageProcessorPil`. That PIL variant
is the one matched here, bit for bit: every resize is a Pillow resize of an 8-bit RGB image, and rescale/normalize
repeat its float64-then-float32 arithmetic. (The torchvision backend resizes tensors with its own kernels and does
not give the same pixels.)

Only Pillow and NumPy are used at run time.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from ._files import read_json
from .errors import ImageError, InputError, ModelError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FAKE_IMAGE_TOKEN",
    "GLOBAL_IMAGE_TOKEN",
    "IMAGE_TOKEN",
    "ImageInput",
    "ImageProcessor",
    "PreprocessedImage",
    "expand_image_tokens",
    "image_prompt",
    "load_image",
    "processor_image_seq_len",
]

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

# Larger images are refused before they are decoded. 64 Mi pixels (8192 x 8192) admits every camera photo up to
# about 64 megapixels while keeping the decoded RGB copy under 200 MiB; the reference would resize anything to at
# most 4096 pixels a side anyway. It sits below Pillow's own bomb threshold (about 89 megapixels), so Pillow's
# global setting never decides for us.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

# The largest side the reference lets the longest-edge resize produce ("4k resolution as absolute maximum").
_MAX_RESIZED_SIDE = 4096

IMAGE_TOKEN = "<image>"
FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
GLOBAL_IMAGE_TOKEN = "<global-img>"


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def load_image(image: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Return `image` as an 8-bit RGB PIL image, converted the way the reference processor converts it.

    `image` may be a path, the bytes of an encoded file, a PIL image, or a uint8 NumPy array of shape HxW, HxWx1,
    HxWx3 or HxWx4 (channels last). Transparency is composited onto white. EXIF orientation is *not* applied: the
    reference leaves a PIL image as it was opened, so a file gives the pixels of `PIL.Image.open(path)`.

    Raises ImageError when the image cannot be read, is empty, or has more than `max_pixels` pixels (checked from
    the header, before decoding), and InputError when `image` is of an unsupported type, dtype or shape.
    """
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, max_pixels)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        if len(image) == 0:
            raise ImageError("cannot read an image from empty bytes")
        return _decode(io.BytesIO(image), "the given bytes", max_pixels)
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            with open(path, "rb") as file:
                return _decode(file, repr(path), max_pixels)
        except OSError as err:  # _decode raises only ImageError, so this is the open() failing
            raise ImageError(f"cannot open image file {path!r}: {err.strerror or err}") from err
    raise InputError(
        f"an image must be a path, bytes, a PIL image or a uint8 NumPy array, not {type(image).__name__}"
    )


def _decode(file: IO[bytes], source: str, max_pixels: int) -> Image.Image:
    """Open an encoded image, refuse it from its header if it is too large, then decode it to RGB."""
    try:
        # We check the size ourselves right after this; Pillow's warning about large images would only be noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(file)
    except Exception as err:  # Pillow raises many types for bad input: unidentified, bomb, OSError, ...
        raise ImageError(f"cannot decode image from {source}: {err}") from err
    with opened:
        return _pil_to_rgb(opened, max_pixels, source)


def _pil_to_rgb(image: Image.Image, max_pixels: int, source: str = "the PIL image") -> Image.Image:
    """Convert like transformers' `convert_to_rgb`: anything with alpha or a transparency key goes onto white."""
    _check_size(image.width, image.height, max_pixels)
    try:
        has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
        if has_alpha:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        # convert() always returns a new image, so the caller's image is never modified.
        return image.convert("RGB")
    except Exception as err:  # truncated data, broken streams and unsupported modes surface here
        raise ImageError(f"cannot decode image from {source}: {err}") from err


def _array_to_rgb(array: np.ndarray, max_pixels: int) -> Image.Image:
    """Convert a channels-last uint8 array like transformers' `convert_to_rgb` does for NumPy input."""
    if array.dtype != np.uint8:
        raise InputError(f"an image array must have dtype uint8, not {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InputError(f"an image array must have shape HxW, HxWx1, HxWx3 or HxWx4, not {array.shape}")
    height, width = array.shape[:2]
    _check_size(width, height, max_pixels)
    # uint8 HxW, HxWx3 and HxWx4 arrays are PIL modes L, RGB and RGBA. The reference blends RGBA arrays onto
    # white in float64 and rounds; PIL's integer compositing gives the same bytes for all 256 x 256 value/alpha
    # pairs (a test checks this), so arrays share the PIL path.
    return _pil_to_rgb(Image.fromarray(np.ascontiguousarray(array)), max_pixels, "the array")


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"the image is empty ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"the image is {width}x{height} = {width * height} pixels, more than the limit of {max_pixels}"
        )


# ---------------------------------------------------------------------------------------------------------------
# Geometry (the reference's formulas, kept with its int() truncations and even-rounding)
# ---------------------------------------------------------------------------------------------------------------


def _longest_edge_size(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """Size after scaling the longest side to `longest_edge` (up or down), then capping sides at 4096."""
    aspect_ratio = width / height
    if width >= height:
        width = longest_edge
        height = int(width / aspect_ratio)
        height += height % 2  # the reference rounds the short side up to an even number
    else:
        height = longest_edge
        width = int(height * aspect_ratio)
        width += width % 2
    height, width = max(height, 1), max(width, 1)

    aspect_ratio = width / height
    if width >= height and width > _MAX_RESIZED_SIDE:
        width = _MAX_RESIZED_SIDE
        height = int(width / aspect_ratio)
    elif height > width and height > _MAX_RESIZED_SIDE:
        height = _MAX_RESIZED_SIDE
        width = int(height * aspect_ratio)
    return max(height, 1), max(width, 1)


def _tile_multiple_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """Size rounded up to whole tiles, keeping the aspect ratio as the reference does."""
    aspect_ratio = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect_ratio) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect_ratio) / tile) * tile
    return height, width


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # eq on arrays would be ambiguous
class PreprocessedImage:
    """One image ready for the vision encoder.

    `pixel_values` is float32 [n_tiles, 3, S, S]: the `rows` x `cols` tiles in row-major order followed by the
    whole image scaled to S x S. When the image was not split, `rows == cols == 0` and there is one tile.
    """

    pixel_values: np.ndarray
    rows: int
    cols: int

    @property
    def n_tiles(self) -> int:
        return self.pixel_values.shape[0]


@dataclass(frozen=True)
class ImageProcessor:
    """SmolVLM's image preprocessing, equal to transformers' `Idefics3ImageProcessor` (PIL backend).

    Field names follow `preprocessor_config.json`; `longest_edge` is its `size["longest_edge"]` and
    `max_image_size` its `max_image_size["longest_edge"]` (the tile side S). Defaults are the reference's.
    """

    longest_edge: int = 4 * 364
    max_image_size: int = 364
    resample: int = int(Image.Resampling.LANCZOS)
    do_resize: bool = True
    do_image_splitting: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        _require_positive_int(self.longest_edge, "size.longest_edge", ModelError)
        _require_positive_int(self.max_image_size, "max_image_size.longest_edge", ModelError)
        try:
            Image.Resampling(self.resample)
        except ValueError:
            raise ModelError(f"unknown resample filter {self.resample!r}") from None
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ModelError(f"{name} must have 3 values, not {len(value)}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if 0.0 in self.image_std:
            raise ModelError("image_std must not contain 0")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> ImageProcessor:
        """Build from the contents of a `preprocessor_config.json`; unknown keys are ignored, as the reference does."""
        fields: dict[str, Any] = {}
        size = config.get("size")
        if size is not None:
            if not isinstance(size, Mapping) or "longest_edge" not in size:
                raise ModelError(f'size must be {{"longest_edge": N}}, not {size!r}')
            fields["longest_edge"] = size["longest_edge"]
        max_image_size = config.get("max_image_size")
        if max_image_size is not None:
            if not isinstance(max_image_size, Mapping) or "longest_edge" not in max_image_size:
                raise ModelError(f'max_image_size must be {{"longest_edge": N}}, not {max_image_size!r}')
            fields["max_image_size"] = max_image_size["longest_edge"]
        for key in ("resample", "do_resize", "do_image_splitting", "do_rescale", "rescale_factor", "do_normalize",
                    "image_mean", "image_std"):
            if config.get(key) is not None:
                fields[key] = config[key]
        for key in ("image_mean", "image_std"):
            if isinstance(fields.get(key), (int, float)):
                fields[key] = (fields[key],) * 3  # the reference broadcasts a scalar over the channels
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike, **overrides: Any) -> ImageProcessor:
        """Build from a model directory's `preprocessor_config.json` (or the `image_processor` entry of a
        `processor_config.json`, where newer transformers save it)."""
        model_dir = Path(model_dir)
        config = _read_json(model_dir / "preprocessor_config.json")
        if config is None:
            config = (_read_json(model_dir / "processor_config.json") or {}).get("image_processor")
        if config is None:
            raise ModelError(f"{model_dir} has no preprocessor_config.json")
        return cls.from_dict(config, **overrides)

    def preprocess(
        self,
        image: ImageInput,
        do_image_splitting: bool | None = None,
        longest_edge: int | None = None,
    ) -> PreprocessedImage:
        """Load `image` and turn it into tiles; the arguments override the config for this call only.

        `longest_edge` is the reference's `size={"longest_edge": N}`: the target of the first resize.
        """
        if do_image_splitting is None:
            do_image_splitting = self.do_image_splitting
        if longest_edge is None:
            longest_edge = self.longest_edge
        _require_positive_int(longest_edge, "longest_edge", InputError)

        rgb = load_image(image, max_pixels=self.max_pixels)
        tile = self.max_image_size
        if self.do_resize:
            rgb = self._resize(rgb, *_longest_edge_size(rgb.height, rgb.width, longest_edge))

        rows = cols = 0
        if do_image_splitting:
            rgb = self._resize(rgb, *_tile_multiple_size(rgb.height, rgb.width, tile))
            if rgb.height > tile or rgb.width > tile:
                rows, cols = rgb.height // tile, rgb.width // tile
                whole = np.asarray(rgb)
                tiles = [whole[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
                         for r in range(rows) for c in range(cols)]
                tiles.append(np.asarray(self._resize(rgb, tile, tile)))
            else:
                tiles = [np.asarray(rgb)]
        else:
            tiles = [np.asarray(self._resize(rgb, tile, tile))]

        # [n, H, W, 3] -> [n, 3, H, W]
        pixels: np.ndarray = np.stack(tiles).transpose(0, 3, 1, 2)
        return PreprocessedImage(pixel_values=self._rescale_and_normalize(pixels), rows=rows, cols=cols)

    def _resize(self, image: Image.Image, height: int, width: int) -> Image.Image:
        # Pillow returns a copy when the size is unchanged, exactly as in the reference.
        return image.resize((width, height), resample=Image.Resampling(self.resample))

    def _rescale_and_normalize(self, pixels: np.ndarray) -> np.ndarray:
        """[n, C, H, W] pixels -> float32.  8-bit pixels take 256 values per channel: those are computed once
        and the pixels looked up (the same bits, 5-7x faster than converting every pixel)."""
        if pixels.dtype != np.uint8:
            return self._rescale_and_normalize_values(pixels)
        channels = pixels.shape[1]
        levels = np.broadcast_to(np.arange(256, dtype=np.uint8), (1, channels, 1, 256))
        table = self._rescale_and_normalize_values(levels).reshape(channels, 256)
        out = np.empty(pixels.shape, np.float32)
        for c in range(channels):
            np.take(table[c], pixels[:, c], out=out[:, c])
        return out

    def _rescale_and_normalize_values(self, pixels: np.ndarray) -> np.ndarray:
        # The reference rescales in float64 and stores float32, then normalizes in float32; doing the same
        # operations in the same order keeps the result bit-identical.
        if self.do_rescale:
            values = (pixels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            values = pixels.astype(np.float32)
        if self.do_normalize:
            mean = np.array(self.image_mean, dtype=np.float32)[:, None, None]
            std = np.array(self.image_std, dtype=np.float32)[:, None, None]
            values = (values - mean) / std
        return np.ascontiguousarray(values, dtype=np.float32)


def _require_positive_int(value: Any, name: str, error: type[Exception]) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise error(f"{name} must be a positive integer, not {value!r}")


def _read_json(path: Path) -> dict[str, Any] | None:
    """The parsed JSON object in `path`, or None when the file does not exist."""
    data = read_json(path)
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ModelError(f"{path} must hold a JSON object")
    return data


# ---------------------------------------------------------------------------------------------------------------
# Prompt expansion
# ---------------------------------------------------------------------------------------------------------------


def processor_image_seq_len(model_dir: str | os.PathLike) -> int | None:
    """The tokens per tile a model's `processor_config.json` declares, or None where it does not.

    The engine's own count comes from config.json (`Model.config.image_seq_len`, parsed by the C engine);
    this is only read to check that the processor agrees."""
    processor_config = _read_json(Path(model_dir) / "processor_config.json") or {}
    value = processor_config.get("image_seq_len")
    if value is None:
        return None
    _require_positive_int(value, "image_seq_len", ModelError)
    return int(value)


def image_prompt(rows: int, cols: int, image_seq_len: int) -> str:
    """The text that stands for one image of `rows` x `cols` tiles (0 x 0: not split)."""
    image_tokens = IMAGE_TOKEN * image_seq_len
    global_image = f"{FAKE_IMAGE_TOKEN}{GLOBAL_IMAGE_TOKEN}{image_tokens}{FAKE_IMAGE_TOKEN}"
    if rows == 0 and cols == 0:
        return global_image
    grid = "".join(
        "".join(f"{FAKE_IMAGE_TOKEN}<row_{r + 1}_col_{c + 1}>{image_tokens}" for c in range(cols)) + "\n"
        for r in range(rows)
    )
    return f"{grid}\n{global_image}"


def expand_image_tokens(
    text: str,
    images: Sequence[PreprocessedImage | tuple[int, int]],
    image_seq_len: int,
) -> str:
    """Replace the i-th `<image>` in `text` by the prompt of the i-th image, as `Idefics3Processor` does.

    `images` holds PreprocessedImage results or (rows, cols) pairs. Raises InputError when the number of
    `<image>` markers differs from the number of images.
    """
    pieces = text.split(IMAGE_TOKEN)
    if len(pieces) - 1 != len(images):
        raise InputError(
            f"the prompt has {len(pieces) - 1} {IMAGE_TOKEN} markers but {len(images)} images were given; "
            f"put one {IMAGE_TOKEN} in the text for each image"
        )
    out = [pieces[0]]
    for image, piece in zip(images, pieces[1:], strict=True):
        rows, cols = (image.rows, image.cols) if isinstance(image, PreprocessedImage) else image
        out.append(image_prompt(rows, cols, image_seq_len))
        out.append(piece)
    return "".join(out)
