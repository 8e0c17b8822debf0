"""Images in: loading, tiling and processor configs, checked against transformers (prompt expansion and
chat templates: test_prompts.py).

The oracle is transformers' Idefics3 processing. Its default `Idefics3ImageProcessor` falls back to
`Idefics3ImageProcessorPil` when torchvision is absent (as here); the PIL class is named explicitly so the oracle
does not change if torchvision gets installed.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import PIL.ImageFile
from PIL import Image
from transformers import Idefics3ImageProcessorPil
from transformers.image_transforms import convert_to_rgb

from helpers import INSTRUCT_CONFIG, smooth_rgb, write_json
from smolvision.errors import ImageError, InputError, ModelError
from smolvision.processing import ImageProcessor, PreprocessedImage, load_image, processor_image_seq_len

SMALL_CONFIG = {**INSTRUCT_CONFIG, "max_image_size": {"longest_edge": 512}, "size": {"longest_edge": 1024}}
GEOMETRIES = {"instruct-384": INSTRUCT_CONFIG, "256m-512": SMALL_CONFIG}

TOLERANCE = 1e-5


def reference_processor(config: dict[str, Any]) -> Idefics3ImageProcessorPil:
    return Idefics3ImageProcessorPil(**config)


def reference_tiles(config: dict[str, Any], image: Any, **kwargs: Any) -> tuple[np.ndarray, int, int]:
    """pixel_values [n, 3, S, S], rows and cols from the reference for one image."""
    out = reference_processor(config)(image, return_row_col_info=True, **kwargs)
    return np.asarray(out["pixel_values"])[0], out["rows"][0][0], out["cols"][0][0]


def assert_matches_reference(ours: PreprocessedImage, reference: tuple[np.ndarray, int, int]) -> None:
    pixels, rows, cols = reference
    assert ours.pixel_values.dtype == np.float32
    assert ours.pixel_values.shape == pixels.shape
    assert (ours.rows, ours.cols) == (rows, cols)
    assert np.abs(ours.pixel_values - pixels).max() < TOLERANCE


# ---------------------------------------------------------------------------------------------------------------
# Test images. Each maker writes a file and returns its path; the reference gets PIL.Image.open(path).
# ---------------------------------------------------------------------------------------------------------------

def save(image: Image.Image, path: Path, **kwargs: Any) -> Path:
    image.save(path, **kwargs)
    return path


def make_rgb(width: int, height: int) -> Callable[[Path], Path]:
    return lambda d: save(Image.fromarray(smooth_rgb(width, height)), d / "rgb.png")


def make_grayscale(d: Path) -> Path:
    return save(Image.fromarray(smooth_rgb(320, 240)).convert("L"), d / "gray.png")


def rgba_image() -> Image.Image:
    alpha = np.linspace(0, 255, 200 * 150).reshape(150, 200).astype(np.uint8)
    return Image.fromarray(np.dstack([smooth_rgb(200, 150), alpha]))


def make_rgba(d: Path) -> Path:
    return save(rgba_image(), d / "rgba.png")


def make_gray_alpha(d: Path) -> Path:
    return save(rgba_image().convert("LA"), d / "la.png")


def make_palette(d: Path) -> Path:
    return save(Image.fromarray(smooth_rgb(260, 180)).quantize(64), d / "palette.png")


def make_palette_transparent(d: Path) -> Path:
    return save(Image.fromarray(smooth_rgb(260, 180)).quantize(64), d / "palette_t.png", transparency=3)


def make_16bit(d: Path) -> Path:
    values = (np.linspace(0, 65535, 240 * 180).reshape(180, 240)).astype(np.uint16)
    path = save(Image.fromarray(values), d / "deep.png")
    with Image.open(path) as image:
        assert image.mode == "I;16"
    return path


def make_exif_rotated_jpeg(d: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return save(Image.fromarray(smooth_rgb(300, 100)), d / "exif.jpg", exif=exif, quality=90)


def make_cmyk_jpeg(d: Path) -> Path:
    path = save(Image.fromarray(smooth_rgb(220, 160)).convert("CMYK"), d / "cmyk.jpg", quality=90)
    with Image.open(path) as image:
        assert image.mode == "CMYK"
    return path


def make_animated_gif(d: Path) -> Path:
    frames = [Image.fromarray(smooth_rgb(150, 100) // (i + 1)).quantize(32) for i in range(3)]
    return save(frames[0], d / "anim.gif", save_all=True, append_images=frames[1:], transparency=0, duration=50)


def make_photo(name: str) -> Callable[[Path], Path]:
    return lambda d: save(Image.fromarray(getattr(skimage.data, name)()), d / f"{name}.png")


IMAGE_MAKERS: dict[str, Callable[[Path], Path]] = {
    "portrait": make_rgb(300, 500),
    "landscape": make_rgb(640, 360),
    "square": make_rgb(400, 400),
    "tiny-1x1": make_rgb(1, 1),
    "tiny-5x3": make_rgb(5, 3),
    "tiny-3x5": make_rgb(3, 5),
    "very-wide-2000x50": make_rgb(2000, 50),
    "very-tall-40x1200": make_rgb(40, 1200),
    "grayscale": make_grayscale,
    "rgba": make_rgba,
    "gray-alpha": make_gray_alpha,
    "palette": make_palette,
    "palette-transparent": make_palette_transparent,
    "16-bit": make_16bit,
    "exif-rotated-jpeg": make_exif_rotated_jpeg,
    "cmyk-jpeg": make_cmyk_jpeg,
    "animated-gif": make_animated_gif,
    "astronaut": make_photo("astronaut"),
    "coffee": make_photo("coffee"),
    "chelsea": make_photo("chelsea"),
    "camera-gray": make_photo("camera"),
}


@pytest.mark.parametrize("split", [True, False], ids=["split", "unsplit"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("kind", IMAGE_MAKERS)
def test_pixel_values_match_reference(tmp_path: Path, kind: str, geometry: str, split: bool) -> None:
    config = GEOMETRIES[geometry]
    path = IMAGE_MAKERS[kind](tmp_path)
    ours = ImageProcessor.from_dict(config).preprocess(path, do_image_splitting=split)
    with Image.open(path) as image:
        assert_matches_reference(ours, reference_tiles(config, image, do_image_splitting=split))
    if not split:
        assert (ours.rows, ours.cols, ours.n_tiles) == (0, 0, 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    width=st.integers(1, 400),
    height=st.integers(1, 400),
    longest_edge=st.integers(16, 1100),
    tile=st.sampled_from([384, 512]),
    split=st.booleans(),
)
def test_random_geometries_match_reference(width: int, height: int, longest_edge: int, tile: int, split: bool) -> None:
    config = {**INSTRUCT_CONFIG, "max_image_size": {"longest_edge": tile}, "size": {"longest_edge": longest_edge}}
    image = smooth_rgb(width, height)
    ours = ImageProcessor.from_dict(config).preprocess(image, do_image_splitting=split)
    # The reference gets a PIL image: it would read a 3-row array as channels-first.
    assert_matches_reference(ours, reference_tiles(config, Image.fromarray(image), do_image_splitting=split))


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(640, 360, (2, 2)), (300, 500, (2, 2)), (2000, 50, (1, 2)), (40, 1200, (2, 1)), (1, 1, (2, 2))],
)
def test_rows_and_cols(width: int, height: int, expected: tuple[int, int]) -> None:
    out = ImageProcessor.from_dict(INSTRUCT_CONFIG).preprocess(smooth_rgb(width, height))
    assert (out.rows, out.cols) == expected
    assert out.pixel_values.shape == (expected[0] * expected[1] + 1, 3, 384, 384)


def test_exif_orientation_is_not_applied(tmp_path: Path) -> None:
    # A 300x100 file tagged "rotate 90": shown upright it would be tall (2 rows, 1 column).
    out = ImageProcessor.from_dict(INSTRUCT_CONFIG).preprocess(make_exif_rotated_jpeg(tmp_path))
    assert (out.rows, out.cols) == (1, 2)


def test_real_instruct_geometry_and_longest_edge_override() -> None:
    photo = Image.fromarray(skimage.data.chelsea())
    processor = ImageProcessor.from_dict({**INSTRUCT_CONFIG, "size": {"longest_edge": 1536}})
    ours = processor.preprocess(photo)
    assert_matches_reference(ours, reference_tiles({**INSTRUCT_CONFIG, "size": {"longest_edge": 1536}}, photo))
    assert (ours.rows, ours.cols) == (3, 4)

    # The override is the reference's size={"longest_edge": N}, for this call only.
    smaller = processor.preprocess(photo, longest_edge=384 * 2)
    assert_matches_reference(smaller, reference_tiles(INSTRUCT_CONFIG, photo, size={"longest_edge": 768}))
    assert processor.preprocess(photo).n_tiles == ours.n_tiles


def test_longest_edge_at_most_one_tile_gives_a_single_unsplit_tile() -> None:
    photo = Image.fromarray(skimage.data.astronaut())
    ours = ImageProcessor.from_dict(INSTRUCT_CONFIG).preprocess(photo, longest_edge=300)
    assert_matches_reference(ours, reference_tiles(INSTRUCT_CONFIG, photo, size={"longest_edge": 300}))
    assert (ours.rows, ours.cols, ours.n_tiles) == (0, 0, 1)


def test_resize_is_capped_at_4096_pixels() -> None:
    # A longest_edge above 4096 is capped by the reference: 5000x125 becomes 4096x102, then 1 x 8 tiles of 512.
    wide = smooth_rgb(2000, 50)
    ours = ImageProcessor.from_dict(SMALL_CONFIG).preprocess(wide, longest_edge=5000)
    assert_matches_reference(ours, reference_tiles(SMALL_CONFIG, wide, size={"longest_edge": 5000}))
    assert (ours.rows, ours.cols) == (1, 8)


def test_tile_rounding_truncates_like_the_reference() -> None:
    # 60x20 at longest_edge 1024 becomes 1024x342, then 1152 wide; 1152 / 3 = 342.x truncates to 342 -> one row.
    # Without the int() truncation it would round up to two rows.
    image = smooth_rgb(60, 20)
    ours = ImageProcessor.from_dict(INSTRUCT_CONFIG).preprocess(image, longest_edge=1024)
    assert_matches_reference(ours, reference_tiles(INSTRUCT_CONFIG, image, size={"longest_edge": 1024}))
    assert (ours.rows, ours.cols) == (1, 3)


def test_clip_mean_and_std_match_reference() -> None:
    config = {**SMALL_CONFIG, "image_mean": [0.48145466, 0.4578275, 0.40821073],
              "image_std": [0.26862954, 0.26130258, 0.27577711]}
    photo = Image.fromarray(skimage.data.chelsea())
    assert_matches_reference(ImageProcessor.from_dict(config).preprocess(photo), reference_tiles(config, photo))


@pytest.mark.parametrize("flag", ["do_resize", "do_rescale", "do_normalize"])
def test_config_flags_match_reference(flag: str) -> None:
    config = {**INSTRUCT_CONFIG, flag: False, "resample": 3}
    photo = Image.fromarray(skimage.data.coffee())
    assert_matches_reference(ImageProcessor.from_dict(config).preprocess(photo), reference_tiles(config, photo))


# ---------------------------------------------------------------------------------------------------------------
# Input types
# ---------------------------------------------------------------------------------------------------------------


def test_array_inputs_match_reference() -> None:
    processor = ImageProcessor.from_dict(INSTRUCT_CONFIG)
    rgb = smooth_rgb(210, 130)
    rgba = np.dstack([rgb, np.linspace(0, 255, 210 * 130).reshape(130, 210).astype(np.uint8)])
    gray = rgb[..., 0].copy()
    # The reference composites RGBA arrays in float64, unlike PIL images: both paths must follow it.
    assert_matches_reference(processor.preprocess(rgb), reference_tiles(INSTRUCT_CONFIG, rgb))
    assert_matches_reference(processor.preprocess(rgba), reference_tiles(INSTRUCT_CONFIG, rgba))
    # The reference refuses 2-D arrays; an HxWx1 array is its equivalent.
    assert_matches_reference(processor.preprocess(gray), reference_tiles(INSTRUCT_CONFIG, gray[..., None]))
    assert_matches_reference(processor.preprocess(gray[..., None]), reference_tiles(INSTRUCT_CONFIG, gray[..., None]))
    # Non-contiguous views are fine.
    view = smooth_rgb(420, 130)[:, ::2]
    assert_matches_reference(processor.preprocess(view), reference_tiles(INSTRUCT_CONFIG, np.ascontiguousarray(view)))


def test_rgba_arrays_composite_exactly_like_the_reference() -> None:
    # Every (value, alpha) pair: the reference's float64 blend of arrays against our conversion.
    values, alphas = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    rgba = np.dstack([values, 255 - values, values // 2, alphas])
    assert np.array_equal(np.asarray(load_image(rgba)), convert_to_rgb(rgba, return_numpy=True))


def test_bytes_pathlike_str_and_pil_inputs_agree(tmp_path: Path) -> None:
    path = make_palette_transparent(tmp_path)
    processor = ImageProcessor.from_dict(SMALL_CONFIG)
    expected = processor.preprocess(path).pixel_values
    for image in (str(path), path.read_bytes(), bytearray(path.read_bytes())):
        assert np.array_equal(processor.preprocess(image).pixel_values, expected)
    with Image.open(path) as image:
        assert np.array_equal(processor.preprocess(image).pixel_values, expected)


def test_caller_image_is_not_modified() -> None:
    image = Image.fromarray(smooth_rgb(64, 48)).convert("RGBA")
    before = np.array(image)
    rgb = load_image(image)
    assert rgb.mode == "RGB" and rgb is not image
    assert image.mode == "RGBA" and np.array_equal(np.array(image), before)


def test_load_image_returns_rgb(tmp_path: Path) -> None:
    for kind in ("grayscale", "16-bit", "cmyk-jpeg", "gray-alpha"):
        image = load_image(IMAGE_MAKERS[kind](tmp_path))
        assert image.mode == "RGB"


# ---------------------------------------------------------------------------------------------------------------
# Bad images and bad arguments
# ---------------------------------------------------------------------------------------------------------------


def png_bytes(width: int, height: int, rows: int) -> bytes:
    """A 1-bit grayscale PNG whose header claims width x height; `rows` rows of data follow (zeros)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * rows))
            + chunk(b"IEND", b""))


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_small_hand_made_png_decodes() -> None:
    # Guards the helper: the 100-megapixel file below is refused for its size, not for being malformed.
    assert load_image(png_bytes(20, 10, rows=10)).size == (20, 10)


@pytest.mark.filterwarnings("error")  # Pillow's DecompressionBombWarning must not leak out: we refuse it ourselves
@pytest.mark.parametrize("as_path", [False, True], ids=["bytes", "path"])
def test_100_megapixel_png_is_refused_before_decoding(tmp_path: Path, as_path: bool, monkeypatch) -> None:
    data = png_bytes(10000, 10000, rows=10000)  # a valid 10000x10000 image, 12 KB on disk
    assert len(data) < 100_000
    source: Any = data
    if as_path:
        source = tmp_path / "huge.png"
        source.write_bytes(data)
    # Decoding would take seconds and allocate 300 MB: the size must be refused from the header alone.
    def decode(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", decode)
    with pytest.raises(ImageError, match="10000x10000"):
        ImageProcessor.from_dict(INSTRUCT_CONFIG).preprocess(source)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # from our own Image.open here
def test_lazily_opened_huge_pil_image_is_refused_before_decoding() -> None:
    huge = io.BytesIO(png_bytes(10000, 10000, rows=10))  # decoding it would fail: the data is short
    with Image.open(huge) as image, pytest.raises(ImageError, match="more than the limit"):
        load_image(image)


def test_pixel_limit_is_configurable() -> None:
    photo = smooth_rgb(300, 200)
    with pytest.raises(ImageError):
        load_image(photo, max_pixels=300 * 200 - 1)
    assert load_image(photo, max_pixels=300 * 200).size == (300, 200)
    with pytest.raises(ImageError):
        ImageProcessor.from_dict(INSTRUCT_CONFIG, max_pixels=1000).preprocess(photo)


def test_pil_global_limit_is_left_alone() -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError):
        load_image(png_bytes(10000, 10000, rows=10))
    assert before == Image.MAX_IMAGE_PIXELS


PHOTO = Image.fromarray(smooth_rgb(120, 90))


@pytest.mark.parametrize(
    "data",
    [
        b"this is not an image",
        b"",
        b"\x89PNG\r\n\x1a\n",
        encoded(PHOTO, "PNG")[: len(encoded(PHOTO, "PNG")) // 2],
        encoded(PHOTO, "JPEG")[: len(encoded(PHOTO, "JPEG")) // 2],
    ],
    ids=["garbage", "empty", "png-signature-only", "truncated-png", "truncated-jpeg"],
)
def test_undecodable_bytes_raise_image_error(data: bytes) -> None:
    with pytest.raises(ImageError):
        load_image(data)


def test_unreadable_paths_raise_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError):
        load_image(str(tmp_path))  # a directory
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError):
        load_image(tmp_path / "empty.png")


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((8, 8, 3), np.float32),
        np.zeros((8, 8, 3), np.uint16),
        np.zeros((8, 8, 2), np.uint8),
        np.zeros((8, 8, 5), np.uint8),
        np.zeros((1, 8, 8, 3), np.uint8),
        np.zeros((8,), np.uint8),
    ],
    ids=["float32", "uint16", "2-channels", "5-channels", "4-d", "1-d"],
)
def test_bad_arrays_raise_input_error(array: np.ndarray) -> None:
    with pytest.raises(InputError):
        load_image(array)


def test_empty_array_raises_image_error() -> None:
    with pytest.raises(ImageError, match="empty"):
        load_image(np.zeros((0, 5, 3), np.uint8))


@pytest.mark.parametrize("value", [42, [1, 2, 3], None])
def test_unsupported_input_types_raise_input_error(value: Any) -> None:
    with pytest.raises(InputError):
        load_image(value)


@pytest.mark.parametrize("longest_edge", [0, -5, 1.5, True])
def test_bad_longest_edge_raises_input_error(longest_edge: Any) -> None:
    with pytest.raises(InputError):
        ImageProcessor.from_dict(INSTRUCT_CONFIG).preprocess(PHOTO, longest_edge=longest_edge)


@pytest.mark.parametrize(
    "change",
    [{"resample": 99}, {"image_std": [0.5, 0.0, 0.5]}, {"image_mean": [0.5]}, {"size": {"height": 10, "width": 10}},
     {"max_image_size": {"longest_edge": 0}}],
    ids=["resample", "zero-std", "short-mean", "height-width-size", "zero-tile"],
)
def test_bad_config_raises_model_error(change: dict[str, Any]) -> None:
    with pytest.raises(ModelError):
        ImageProcessor.from_dict({**INSTRUCT_CONFIG, **change})


# ---------------------------------------------------------------------------------------------------------------
# Loading configs from a model directory
# ---------------------------------------------------------------------------------------------------------------


def test_image_processor_from_dir(tmp_path: Path) -> None:
    write_json(tmp_path / "preprocessor_config.json", SMALL_CONFIG)
    processor = ImageProcessor.from_dir(tmp_path)
    assert (processor.longest_edge, processor.max_image_size, processor.resample) == (1024, 512, 1)

    nested = tmp_path / "nested"
    nested.mkdir()
    write_json(nested / "processor_config.json", {"image_seq_len": 64, "image_processor": INSTRUCT_CONFIG})
    assert ImageProcessor.from_dir(nested).max_image_size == 384

    with pytest.raises(ModelError):
        ImageProcessor.from_dir(tmp_path / "does-not-exist")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "preprocessor_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelError):
        ImageProcessor.from_dir(broken)


def test_image_seq_len(tmp_path: Path) -> None:
    assert processor_image_seq_len(tmp_path) is None  # no processor_config.json
    write_json(tmp_path / "processor_config.json", {"image_seq_len": 81, "processor_class": "Idefics3Processor"})
    assert processor_image_seq_len(tmp_path) == 81
    write_json(tmp_path / "processor_config.json", {"image_seq_len": 0})
    with pytest.raises(ModelError):
        processor_image_seq_len(tmp_path)
