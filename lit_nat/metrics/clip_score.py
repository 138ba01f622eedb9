"""CLIP score of generated images against their prompts, with a CLIP model from a local folder or a hub id
(``openai/clip-vit-large-patch14``, through huggingface_hub's cache: :mod:`lit_nat.core.assets`).

``CLIPScore`` = mean over images of ``max(100 * cos(image embedding, prompt embedding), 0)`` (Hessel et al. 2021, as
torchmetrics defines it). It is written here, on torchmetrics' ``Metric`` (sums synced across ranks), because
torchmetrics' own ``CLIPScore`` accepts only hub model names and reads the embeddings in a way that
transformers 5 no longer returns.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchmetrics import Metric

from lit_nat.conditioning.text import save_random_clip
from lit_nat.core.assets import resolve
from lit_nat.core.errors import UsageError


def _embeds(output: object) -> torch.Tensor:
    """Projected embeddings from ``get_*_features`` (a tensor in transformers 4, an output object in 5)."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot read embeddings from {type(output).__name__}")


class LocalCLIPScore(Metric):
    """CLIP score with ``transformers``' ``CLIPModel`` + ``CLIPProcessor`` from ``path``.

    Args:
        path: a folder holding a whole CLIP model (vision and text towers) and its processor files, or its hub id
            (``openai/clip-vit-large-patch14``; ``HF_HUB_OFFLINE=1``: from the cache alone).
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, path: str, **kwargs) -> None:
        super().__init__(**kwargs)
        from transformers import CLIPModel, CLIPProcessor

        path = resolve(path, "the CLIP score model", "clip_score_model", kinds=("path", "hub"))
        if not (path / "config.json").is_file():
            raise UsageError(f"{path}: no CLIP model folder here (config.json is missing)")
        self.model = CLIPModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        self.processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        self.add_state("score", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, images: torch.Tensor, prompts: list[str]) -> None:
        """``images`` ``(B, 3, H, W)`` in [0, 1] (grey repeated to RGB) and their ``B`` prompts."""
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images for {len(prompts)} prompts")
        pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).cpu()
        inputs = self.processor(text=list(prompts), images=list(pixels), return_tensors="pt", padding=True,
                                truncation=True)  # fmt: skip
        device = self.score.device
        image = _embeds(self.model.get_image_features(pixel_values=inputs["pixel_values"].to(device)))
        text = _embeds(self.model.get_text_features(input_ids=inputs["input_ids"].to(device),
                                                    attention_mask=inputs["attention_mask"].to(device)))  # fmt: skip
        cosine = torch.nn.functional.cosine_similarity(image.float(), text.float(), dim=-1)
        self.score += (100 * cosine).clamp_min(0).double().sum()
        self.count += cosine.numel()

    def compute(self) -> torch.Tensor:
        return (self.score / self.count.clamp_min(1)).float()


def save_random_clip_model(path: str | Path, width: int = 32, image_size: int = 32, seed: int = 0) -> Path:
    """A whole CLIP model (both towers) with random weights and its processor in a local folder, for tests: the
    character-level tokenizer of :func:`lit_nat.conditioning.save_random_clip` and a tiny vision tower."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer


    path = Path(path)
    save_random_clip(path, hidden=width, layers=1, heads=2, max_length=32, seed=seed)
    tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
    text = dict(vocab_size=tokenizer.vocab_size, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1, num_attention_heads=2,
                  image_size=image_size, patch_size=image_size // 4)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=width)).save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})  # fmt: skip
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path
