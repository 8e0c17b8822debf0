"""smolvision: a fast, exact CPU inference engine for SmolVLM vision-language models.

    import smolvision
    with smolvision.load("path/to/SmolVLM-Instruct") as model:
        ...
"""
from __future__ import annotations

from ._native import build_info, cpu_features, version
from .config import Config, TextConfig, VisionConfig
from .errors import (Error, GenerationError, ImageError, InputError, ModelError, ResourceError,
                     TokenizerError)
from .generation import Result, SamplingParams, Timings
from .model import Model, load
from .profile import PhaseProfile, Profile
from .sequence import Sequence
from .tokenizer import IncrementalDecoder, Tokenizer

__version__ = version()

__all__ = [
    "Config", "Error", "GenerationError", "ImageError", "IncrementalDecoder", "InputError", "Model", "ModelError",
    "PhaseProfile", "Profile", "ResourceError", "Result", "SamplingParams", "Sequence", "TextConfig", "Timings", "Tokenizer",
    "TokenizerError", "VisionConfig", "build_info", "cpu_features", "load",
]
