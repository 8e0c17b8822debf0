"""What a Model keeps between calls: finished sequences (for prefix reuse) and image features, one LRU
within one byte budget (load(..., cache_bytes=...)).

Prefix reuse compares *keys*: a prompt's token ids as int64, except that each image token carries a
hash of the image row it takes (negative, so it never equals a token id).  Two prompts share a cached
position only where their ids and image rows are the same, so a different image behind the same
<image> tokens never matches.  A sequence is taken out of the cache while a call extends it (no two
calls share one) and put back, keyed by what it then holds, when the call ends.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from .generation import Prompt
from .sequence import Sequence

#: load()'s default cache_bytes: 1 GiB (about 5k tokens of the 2.2B model's BF16 cache).
DEFAULT_CACHE_BYTES = 1 << 30


def prompt_key(prompt: Prompt) -> np.ndarray:
    """int64 [n]: the prompt's ids, image tokens replaced by a negative hash of their row."""
    key = prompt.ids.astype(np.int64)
    if prompt.image_embeds is not None:
        where = np.flatnonzero(prompt.ids == prompt.config.image_token_id)
        hashes = [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") >> 1
                  for row in prompt.image_embeds]
        key[where] = -1 - np.array(hashes, dtype=np.int64)
    return key


def image_key(image) -> bytes:
    """A PreprocessedImage's identity: a hash of its pixels (after resizing, splitting and normalizing,
    so the preprocessing settings are in them) and its tile grid."""
    pixels = np.ascontiguousarray(image.pixel_values)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((pixels.shape, str(pixels.dtype), image.rows, image.cols)).encode())
    digest.update(pixels.tobytes())
    return digest.digest()


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


class StateCache:
    """Finished sequences and image features, least recently used first out, within `budget` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[int, tuple[str, object, object]] = OrderedDict()  # id -> (kind, key, value)
        self._next = 0

    @property
    def nbytes(self) -> int:
        return sum(self._size(kind, value) for kind, _, value in self._entries.values())

    @staticmethod
    def _size(kind: str, value) -> int:
        return value.nbytes

    # ---- sequences ----

    def take_sequence(self, key: np.ndarray) -> tuple[Sequence | None, int]:
        """The cached sequence sharing the longest prefix with key (removed from the cache) and that
        prefix's length; (None, 0) if none shares a token."""
        best, best_len = None, 0
        for entry_id, (kind, entry_key, _) in self._entries.items():
            if kind == "seq":
                shared = common_prefix(entry_key, key)
                if shared > best_len:
                    best, best_len = entry_id, shared
        if best is None:
            return None, 0
        return self._entries.pop(best)[2], best_len

    def put_sequence(self, key: np.ndarray, seq: Sequence) -> None:
        """Caches a finished sequence under the key of what it holds (or frees it if it cannot fit).

        Cached sequences whose keys are prefixes of this one's (the same prompt finished by two calls at
        once, say) are freed: any prompt shares at least as long a prefix with the new one."""
        for entry_id, (kind, entry_key, old) in list(self._entries.items()):
            if kind == "seq" and len(entry_key) <= len(key) and common_prefix(entry_key, key) == len(entry_key):
                del self._entries[entry_id]
                old.close()
        self._put("seq", key, seq)

    # ---- images ----

    def get_image(self, key: bytes) -> np.ndarray | None:
        for entry_id, (kind, entry_key, value) in self._entries.items():
            if kind == "image" and entry_key == key:
                self._entries.move_to_end(entry_id)
                return value
        return None

    def put_image(self, key: bytes, features: np.ndarray) -> None:
        """Caches an image's features; an older copy (two calls encoding one new image at once) goes."""
        for entry_id, (kind, entry_key, _) in list(self._entries.items()):
            if kind == "image" and entry_key == key:
                del self._entries[entry_id]
        self._put("image", key, features)

    # ---- both ----

    def _put(self, kind: str, key, value) -> None:
        self._entries[self._next] = (kind, key, value)
        self._next += 1
        total = self.nbytes
        while total > self.budget and self._entries:
            _, (old_kind, _, old) = self._entries.popitem(last=False)
            total -= self._size(old_kind, old)
            if old_kind == "seq":
                old.close()

    def clear(self) -> None:
        while self._entries:
            kind, _, value = self._entries.popitem()[1]
            if kind == "seq":
                value.close()
