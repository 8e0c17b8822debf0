"""The exception hierarchy: every failure smolvision reports is a subclass of Error."""
from __future__ import annotations


class Error(Exception):
    """Base class of every error smolvision raises."""


class ModelError(Error):
    """A model directory, config or weight file is missing, malformed or unsupported."""


class TokenizerError(Error):
    """A tokenizer.json is missing or malformed, or text cannot be tokenized."""


class ImageError(Error):
    """An image cannot be read, is empty, or is too large to process safely."""


class InputError(Error):
    """Arguments are invalid: bad options, a prompt longer than the context window, and so on."""


class GenerationError(Error):
    """Generation failed inside the engine."""


class ResourceError(Error):
    """The engine ran out of memory or could not start its threads."""
