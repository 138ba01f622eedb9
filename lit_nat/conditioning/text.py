"""Frozen text encoders behind one interface: prompts -> :class:`~lit_nat.conditioning.condition.TextCondition`.

Registry (:data:`TEXT_ENCODERS`, built from a JSON-able config with :func:`text_encoder_from_config`, the way shard
metadata and checkpoints record them):

- ``clip``: a CLIP text tower through ``transformers`` (``CLIPTokenizer`` + ``CLIPTextModel``, or
  ``CLIPTextModelWithProjection`` with ``pooled: projection``) from a **local** folder (nothing is downloaded), frozen,
  in fp32 or bf16; ``layer: last`` is U-ViT's ``last_hidden_state``, ``penultimate`` Muse/aMUSEd's. Prompts are padded
  to ``max_length`` (77) as U-ViT and aMUSEd do; longer ones are truncated with a warning, as CLIP does.
- ``words``: a small encoder that needs no files, for the digits demo and tests: each lower-cased word of a fixed
  vocabulary is a fixed random unit vector (seeded), plus sinusoidal positions; unknown words share one vector.

Every encoder gives the *empty prompt* its own encoding, which is the null condition of classifier-free guidance
(U-ViT's recipe; not zeros).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_nat.conditioning.condition import TextCondition, masked_mean
from lit_nat.errors import UsageError
from lit_nat.io import atomic_write_json, atomic_write_text


class TextEncoder(nn.Module, ABC):
    """Frozen prompts -> token states. Subclasses set ``name`` and implement :meth:`encode_batch` and :meth:`config`."""

    name = "abstract"
    dim: int
    max_length: int

    @abstractmethod
    def encode_batch(self, prompts: list[str]) -> TextCondition:
        """Encode on the encoder's device; no gradient."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable description (with ``name``), stored in shard metadata and checkpoints."""

    @torch.no_grad()
    def encode(self, prompts: Sequence[str] | str) -> TextCondition:
        """``B`` prompts -> a :class:`TextCondition` of ``B`` rows (float32 pooled/tokens in the encoder's dtype)."""
        prompts = [prompts] if isinstance(prompts, str) else [str(p) for p in prompts]
        if not prompts:
            raise UsageError("no prompts to encode")
        return self.encode_batch(prompts)

    def train(self, mode: bool = True) -> TextEncoder:
        return super().train(False)  # frozen: always in eval mode


def warn_truncated(prompts: Sequence[str], lengths: Sequence[int], max_length: int) -> None:
    long = [(p, n) for p, n in zip(prompts, lengths) if n > max_length]
    if long:
        prompt, n = long[0]
        warnings.warn(
            f"{len(long)} prompt(s) longer than the text encoder's {max_length} tokens are truncated, e.g. {prompt!r} "
            f"({n} tokens)",
            stacklevel=3,
        )


# ----------------------------------------------------------------------------------------------------------------------
class WordsEncoder(TextEncoder):
    """Each word of ``vocab`` is a fixed random unit vector (seeded), plus a sinusoidal position; no files needed.

    Args:
        vocab: the known words (lower case); anything else maps to one shared "unknown" vector.
        dim: embedding width E.
        max_length: tokens per prompt (longer prompts are truncated with a warning).
        seed: seed of the vectors.
    """

    name = "words"

    def __init__(self, vocab: Sequence[str], dim: int = 64, max_length: int = 16, seed: int = 0) -> None:
        super().__init__()
        words = [str(w).lower() for w in vocab]
        if len(set(words)) != len(words) or not words:
            raise ValueError(f"words encoder: the vocabulary must be non-empty without duplicates, got {list(vocab)}")
        if dim < 2 or max_length < 1:
            raise ValueError(f"words encoder: need dim >= 2 and max_length >= 1, got {dim} and {max_length}")
        self.vocab, self.dim, self.max_length, self.seed = words, int(dim), int(max_length), int(seed)
        self.index = {w: i + 2 for i, w in enumerate(words)}  # 0 = padding, 1 = unknown word
        generator = torch.Generator().manual_seed(self.seed)
        table = torch.randn(len(words) + 2, self.dim, generator=generator)
        self.register_buffer("table", table / table.norm(dim=1, keepdim=True), persistent=False)
        position = torch.arange(self.max_length, dtype=torch.float32)[:, None]
        freq = torch.exp(-math.log(1e4) * torch.arange(0, self.dim, 2, dtype=torch.float32) / self.dim)
        pe = torch.zeros(self.max_length, self.dim)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(position * freq), torch.cos(position * freq)[:, : self.dim // 2]
        self.register_buffer("positions", 0.5 * pe, persistent=False)

    def words(self, prompt: str) -> list[str]:
        return re.findall(r"[a-z0-9']+", prompt.lower())

    def encode_batch(self, prompts: list[str]) -> TextCondition:
        tokenized = [[self.index.get(w, 1) for w in self.words(p)] for p in prompts]
        warn_truncated(prompts, [len(t) for t in tokenized], self.max_length)
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        for row, tokens in enumerate(tokenized):
            tokens = tokens[: self.max_length]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        ids = ids.to(self.table.device)
        mask = ids != 0
        tokens = self.table[ids] + self.positions  # (B, L, E); padding rows are the padding vector + position
        return TextCondition(tokens, mask, masked_mean(tokens, mask))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "vocab": list(self.vocab), "dim": self.dim, "max_length": self.max_length,
                "seed": self.seed}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
TEXT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class CLIPTextEncoder(TextEncoder):
    """A CLIP text tower from a local ``transformers`` folder (``config.json``, weights, tokenizer files), frozen.

    Args:
        path: the folder (e.g. a download of ``openai/clip-vit-large-patch14`` or its ``text_encoder`` +
            ``tokenizer`` sub-folders); never fetched from the network.
        tokenizer_path: the tokenizer's folder, if not ``path`` (diffusers layouts keep it in ``tokenizer/``).
        layer: ``last`` (``last_hidden_state``: U-ViT's COCO recipe) or ``penultimate`` (Muse/aMUSEd).
        pooled: ``pooler`` (the EOS token's final state), ``projection`` (``text_embeds`` of
            ``CLIPTextModelWithProjection``, as aMUSEd) or ``mean`` (masked mean of the token states).
        dtype: ``fp32`` or ``bf16``.
        max_length: tokens per prompt, padded and truncated (77 for CLIP).
    """

    name = "clip"

    def __init__(
        self,
        path: str,
        tokenizer_path: str | None = None,
        layer: str = "last",
        pooled: str = "pooler",
        dtype: str = "fp32",
        max_length: int = 77,
    ) -> None:
        super().__init__()
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        if layer not in ("last", "penultimate") or pooled not in ("pooler", "projection", "mean"):
            raise ValueError(f"clip encoder: layer must be last|penultimate and pooled pooler|projection|mean, got "
                             f"{layer!r}, {pooled!r}")  # fmt: skip
        if dtype not in TEXT_DTYPES:
            raise ValueError(f"clip encoder: dtype must be one of {sorted(TEXT_DTYPES)}, got {dtype!r}")
        self.path, self.tokenizer_path = str(path), str(tokenizer_path or path)
        for folder, what in ((self.path, "text encoder"), (self.tokenizer_path, "tokenizer")):
            if not (Path(folder) / ("config.json" if what == "text encoder" else "")).exists():
                raise UsageError(f"{folder}: no CLIP {what} folder here (a local transformers folder is needed; "
                                 "nothing is downloaded)")  # fmt: skip
        self.layer, self.pooled_kind, self.dtype_name, self.max_length = layer, pooled, dtype, int(max_length)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its per-load bars would interleave with training logs
        self.tokenizer = CLIPTokenizer.from_pretrained(self.tokenizer_path, local_files_only=True)
        model_class = CLIPTextModelWithProjection if pooled == "projection" else CLIPTextModel
        self.model = model_class.from_pretrained(self.path, local_files_only=True, dtype=TEXT_DTYPES[dtype])
        self.model.requires_grad_(False).eval()
        self.dim = int(self.model.config.hidden_size)

    def encode_batch(self, prompts: list[str]) -> TextCondition:
        batch = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                               return_tensors="pt")  # fmt: skip
        full = [p for p, last in zip(prompts, batch["attention_mask"][:, -1].tolist()) if last]
        if full:  # only a row that fills every position may have been cut: measure those untruncated, for the warning
            warn_truncated(full, [len(ids) for ids in self.tokenizer(full)["input_ids"]], self.max_length)
        batch = batch.to(self.model.device)
        out = self.model(input_ids=batch["input_ids"], output_hidden_states=self.layer == "penultimate")
        states = out.last_hidden_state if self.layer == "last" else out.hidden_states[-2]
        mask = batch["attention_mask"].bool()
        if self.pooled_kind == "projection":
            pooled = out.text_embeds
        elif self.pooled_kind == "pooler":
            pooled = out.pooler_output
        else:
            pooled = masked_mean(states, mask)
        return TextCondition(states.float(), mask, pooled.float())

    def config(self) -> dict[str, Any]:
        config = {"name": self.name, "path": self.path, "layer": self.layer, "pooled": self.pooled_kind,
                  "dtype": self.dtype_name, "max_length": self.max_length}  # fmt: skip
        if self.tokenizer_path != self.path:
            config["tokenizer_path"] = self.tokenizer_path
        return config


# ----------------------------------------------------------------------------------------------------------------------
TEXT_ENCODERS: dict[str, type[TextEncoder]] = {"clip": CLIPTextEncoder, "words": WordsEncoder}


def text_encoder_from_config(config: dict[str, Any]) -> TextEncoder:
    """Rebuild a text encoder from its :meth:`TextEncoder.config` (as stored in ``meta.json`` and checkpoints)."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in TEXT_ENCODERS:
        raise UsageError(f"text encoder config: unknown name {name!r}; expected one of {sorted(TEXT_ENCODERS)}")
    try:
        return TEXT_ENCODERS[name](**config)
    except TypeError as err:
        raise UsageError(f"text encoder {name!r}: bad config {config}: {err}") from None


def text_space(config: dict[str, Any]) -> tuple[int, int]:
    """``(width E, tokens L)`` of the encoder a config describes, without loading it (so a backbone can be built
    for it on every rank cheaply): from the config itself, or from the CLIP folder's ``config.json``."""
    name = config.get("name")
    if name == "words":
        return int(config.get("dim", 64)), int(config.get("max_length", 16))
    if name == "clip":
        path = Path(str(config.get("path"))) / "config.json"
        if not path.is_file():
            raise UsageError(f"{path.parent}: no CLIP text encoder folder here (config.json is missing; nothing is "
                             "downloaded)")  # fmt: skip
        data = json.loads(path.read_text())
        data = data.get("text_config", data)  # a whole CLIPModel folder nests the text tower's config
        return int(data["hidden_size"]), int(config.get("max_length", 77))
    raise UsageError(f"text encoder config: unknown name {name!r}; expected one of {sorted(TEXT_ENCODERS)}")


def save_random_clip(path: str | Path, hidden: int = 768, layers: int = 12, heads: int = 12, max_length: int = 77,
                     projection: int | None = None, seed: int = 0) -> Path:  # fmt: skip
    """Write a local ``transformers`` CLIP text folder with *random* weights (built from a config: nothing downloaded)
    and a tokenizer whose vocabulary is single characters (CLIP's BPE without merges), for tests and benchmarks. The
    defaults are the size of CLIP ViT-L/14's text tower; ``projection`` adds ``CLIPTextModelWithProjection``'s head."""
    import string

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + ".,'!?-"
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(chars) + [c + "</w>" for c in chars]
    atomic_write_json(path / "vocab.json", {t: i for i, t in enumerate(tokens)}, indent=None)
    atomic_write_text(path / "merges.txt", "#version: 0.2\n")
    atomic_write_json(path / "tokenizer_config.json", {"model_max_length": max_length}, indent=None)
    config = CLIPTextConfig(vocab_size=len(tokens), hidden_size=hidden, intermediate_size=4 * hidden,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_length,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1,
                            projection_dim=projection or hidden)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    model.save_pretrained(path)
    return path


def encoder_identity(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """What makes two encoder configs give the same embeddings (all but the dtype, which changes precision only)."""
    return None if config is None else {k: v for k, v in config.items() if k != "dtype"}
