"""Frozen text encoders behind one interface: prompts -> :class:`~lit_nat.conditioning.condition.TextCondition`.

Registry (:data:`TEXT_ENCODERS`, built from a JSON-able config with :func:`text_encoder_from_config`, the way shard
metadata and checkpoints record them):

- ``clip``: a CLIP text tower through ``transformers`` (``CLIPTokenizer`` + ``CLIPTextModel``, or
  ``CLIPTextModelWithProjection`` with ``pooled: projection``) from a local folder or a hub id
  (``openai/clip-vit-large-patch14``, through huggingface_hub's cache: :mod:`lit_nat.core.assets`), frozen,
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
import os
import posixpath
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_nat.conditioning.condition import TextCondition, masked_mean
from lit_nat.core.assets import pin, resolve
from lit_nat.core.errors import UsageError
from lit_nat.core.io import atomic_write_json, atomic_write_text


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


#: the option of sample, edit, search and validate that points a recorded text encoder elsewhere
OVERRIDE_FLAG = "--text_encoder"


class CLIPTextEncoder(TextEncoder):
    """A CLIP text tower from a ``transformers`` folder (``config.json``, weights, tokenizer files), frozen.

    Args:
        path: the folder (e.g. a download of ``openai/clip-vit-large-patch14`` or aMUSEd's ``text_encoder/``), or a
            hub location (``openai/clip-vit-large-patch14``, ``hf://amused/amused-256/text_encoder``) resolved through
            huggingface_hub's cache (:func:`lit_nat.core.assets.resolve`; ``HF_HUB_OFFLINE=1``: the cache alone).
        tokenizer_path: the tokenizer's folder or hub location, if not ``path`` (diffusers layouts keep it in
            ``tokenizer/``).
        sha256, tokenizer_sha256: the recorded digests of the two folders (:func:`lit_nat.core.assets.sha256_of`); what
            the locations resolve to must match them.
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
        sha256: str | None = None,
        tokenizer_sha256: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        if layer not in ("last", "penultimate") or pooled not in ("pooler", "projection", "mean"):
            raise ValueError(f"clip encoder: layer must be last|penultimate and pooled pooler|projection|mean, got "
                             f"{layer!r}, {pooled!r}")  # fmt: skip
        if dtype not in TEXT_DTYPES:
            raise ValueError(f"clip encoder: dtype must be one of {sorted(TEXT_DTYPES)}, got {dtype!r}")
        self.path, self.tokenizer_path = str(path), str(tokenizer_path or path)
        self.sha256, self.tokenizer_sha256 = sha256, tokenizer_sha256
        folder = resolve(self.path, "the CLIP text encoder", OVERRIDE_FLAG, sha256, kinds=("path", "hub"))
        tokenizer_folder = resolve(self.tokenizer_path, "the CLIP tokenizer", OVERRIDE_FLAG, tokenizer_sha256,
                                   kinds=("path", "hub"))  # fmt: skip
        if not (folder / "config.json").is_file():
            raise UsageError(f"{folder}: no CLIP text encoder folder here (config.json is missing)")
        self.layer, self.pooled_kind, self.dtype_name, self.max_length = layer, pooled, dtype, int(max_length)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its per-load bars would interleave with training logs
        self.tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
        model_class = CLIPTextModelWithProjection if pooled == "projection" else CLIPTextModel
        self.model = model_class.from_pretrained(folder, local_files_only=True, dtype=TEXT_DTYPES[dtype])
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
        config.update({k: v for k, v in (("sha256", self.sha256), ("tokenizer_sha256", self.tokenizer_sha256)) if v})
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
    if name == "clip":  # (its config.json only; the hash is checked when the encoder is loaded)
        path = resolve(str(config.get("path")), "the CLIP text encoder", OVERRIDE_FLAG, kinds=("path", "hub"))
        path = path / "config.json"
        if not path.is_file():
            raise UsageError(f"{path.parent}: no CLIP text encoder folder here (config.json is missing)")
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
    """What makes two encoder configs give the same embeddings (all but the dtype, which changes precision only, and
    the recorded digests, which only check the files)."""
    ignored = ("dtype", "sha256", "tokenizer_sha256")
    return None if config is None else {k: v for k, v in config.items() if k not in ignored}


def pinned(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """A text encoder config as a checkpoint records it: CLIP's local folders absolute and with their digests
    (:func:`lit_nat.core.assets.pin`); hub locations as they are."""
    if not config or config.get("name") != "clip":
        return config
    out = dict(config)
    for key, digest in (("path", "sha256"), ("tokenizer_path", "tokenizer_sha256")):
        if out.get(key) is not None:
            out[key], sha256 = pin(out[key], out.get(digest))
            if sha256:
                out[digest] = sha256
    return out


def relocate(config: dict[str, Any] | None, location: str | os.PathLike | None) -> dict[str, Any] | None:
    """A recorded text encoder config pointed at ``location`` (``--text_encoder``: a folder or hub id). A tokenizer
    recorded apart (aMUSEd's ``tokenizer/`` beside ``text_encoder/``) keeps its place relative to the encoder. The
    recorded digests stay, so the new folders are checked against them when the encoder is loaded."""
    if location is None:
        return config
    if config is None:
        raise UsageError(f"{OVERRIDE_FLAG} {location}: the model has no text encoder (it is class-conditional)")
    if config.get("name") != "clip":
        raise UsageError(f"{OVERRIDE_FLAG} {location}: the model's text encoder {config.get('name')!r} reads no files")
    new, old = os.fspath(location), str(config["path"])
    moved = {**config, "path": new}
    tokenizer = config.get("tokenizer_path")
    if tokenizer is not None and str(tokenizer) != old:
        moved["tokenizer_path"] = _beside(new, old, str(tokenizer))
    return moved


def _beside(new: str, old: str, target: str) -> str:
    """``target``, recorded relative to ``old``, at the same place relative to ``new`` (``hf://`` or paths)."""
    hub = "hf://"
    if old.startswith(hub) != target.startswith(hub):
        return target
    relative = posixpath.relpath(target.removeprefix(hub), old.removeprefix(hub))
    joined = posixpath.normpath(posixpath.join(new.removeprefix(hub), relative))
    return f"{hub}{joined}" if new.startswith(hub) else joined
