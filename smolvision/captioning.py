"""One image's caption record, shared by the local `smolvision caption` and the Ray actors.

A record is what one JSON line of a caption file holds: {"image", "text", "finish_reason",
"seconds"} for a caption, {"image", "error"} for an image that failed.  Both runners build it
here, so a cluster run writes exactly the lines a local run writes.
"""
from __future__ import annotations

import io
import time
from typing import Any, Callable

from . import errors


def caption_record(path: str, caption: Callable[[Any], Any], image: Any = None) -> dict:
    """The record for `path` from `caption(image) -> result` (.text, .finish_reason).

    `image` is what `caption` is given (the path itself when None).  A smolvision.Error or OSError
    becomes the record's "error" ("ImageError: cannot decode ..."); anything else propagates.
    """
    start = time.perf_counter()
    try:
        result = caption(path if image is None else image)
    except (errors.Error, OSError) as err:
        return {"image": path, "error": f"{type(err).__name__}: {err}"}
    return {"image": path, "text": result.text, "finish_reason": result.finish_reason,
            "seconds": round(time.perf_counter() - start, 3)}


def decode_image_bytes(data: bytes, path: str) -> Any:
    """The bytes of an image file read from `path`, decoded as load_image(path) would decode the file.

    Errors name `path` the way reading the file names it ("cannot decode image from 'path': ..."),
    so an image read elsewhere (a Ray reader, object storage) fails with the message a local read gives.
    Returns an RGB PIL image.
    """
    from . import processing
    return processing._decode(_BytesFile(data, path), repr(path), processing.DEFAULT_MAX_PIXELS)


class _BytesFile(io.BytesIO):
    """In-memory file bytes that name their file, in Pillow's messages too ("cannot identify image file ...")."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def __repr__(self) -> str:
        return f"<the bytes of {self.name!r}>"
