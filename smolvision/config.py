"""The model's parsed config.json, as plain frozen dataclasses.

Field names follow transformers' Idefics3 config so they read familiarly.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VisionConfig:
    """The SigLIP vision tower."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    patch_size: int
    image_size: int
    layer_norm_eps: float


@dataclass(frozen=True)
class TextConfig:
    """The Llama (SmolLM2) text decoder."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    attention_bias: bool
    mlp_bias: bool


# sv_family -> (family, model_type in config.json)
_FAMILIES = {0: ("smolvlm", "idefics3"), 1: ("smolvlm2", "smolvlm")}


@dataclass(frozen=True)
class Config:
    """An Idefics3 / SmolVLM / SmolVLM2 model: vision tower, pixel-shuffle connector, text decoder."""

    vision: VisionConfig
    text: TextConfig
    scale_factor: int
    image_seq_len: int
    """Tokens per image tile after the pixel shuffle."""
    image_token_id: int
    family: str = "smolvlm"
    """"smolvlm" (model_type "idefics3": SmolVLM-Instruct, -256M/-500M-Instruct) or "smolvlm2"
    (model_type "smolvlm": the SmolVLM2 models, which also take video)."""

    @property
    def model_type(self) -> str:
        """The config.json model_type of the family: "idefics3" or "smolvlm"."""
        return next(model_type for family, model_type in _FAMILIES.values() if family == self.family)

    @classmethod
    def _from_c(cls, c) -> Config:
        """Builds a Config from a C `sv_config` struct."""
        vision = VisionConfig(
            hidden_size=c.vision_hidden,
            intermediate_size=c.vision_intermediate,
            num_hidden_layers=c.vision_layers,
            num_attention_heads=c.vision_heads,
            patch_size=c.patch_size,
            image_size=c.image_size,
            layer_norm_eps=float(c.vision_norm_eps),
        )
        text = TextConfig(
            hidden_size=c.text_hidden,
            intermediate_size=c.text_intermediate,
            num_hidden_layers=c.text_layers,
            num_attention_heads=c.text_heads,
            num_key_value_heads=c.text_kv_heads,
            head_dim=c.head_dim,
            vocab_size=c.vocab_size,
            max_position_embeddings=c.max_position_embeddings,
            rms_norm_eps=float(c.rms_norm_eps),
            rope_theta=float(c.rope_theta),
            tie_word_embeddings=bool(c.tie_word_embeddings),
            attention_bias=bool(c.attention_bias),
            mlp_bias=bool(c.mlp_bias),
        )
        return cls(vision=vision, text=text, scale_factor=c.scale_factor, image_seq_len=c.image_seq_len,
                   image_token_id=c.image_token_id, family=_FAMILIES[c.family][0])
