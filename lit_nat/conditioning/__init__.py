"""Conditions of the backbones: class ids or text, and the frozen text encoders that turn prompts into text."""

from lit_nat.conditioning.condition import (
    Condition,
    TextCondition,
    batch_size,
    concat,
    masked_mean,
    select,
)
from lit_nat.conditioning.conditioner import Conditioner
from lit_nat.conditioning.text import (
    TEXT_ENCODERS,
    CLIPTextEncoder,
    TextEncoder,
    WordsEncoder,
    encoder_identity,
    save_random_clip,
    text_encoder_from_config,
    text_space,
)

__all__ = [
    "Condition", "Conditioner", "TextCondition", "batch_size", "concat", "masked_mean", "select",
    "TEXT_ENCODERS", "CLIPTextEncoder", "TextEncoder", "WordsEncoder", "encoder_identity", "save_random_clip",
    "text_encoder_from_config", "text_space",
]  # fmt: skip
