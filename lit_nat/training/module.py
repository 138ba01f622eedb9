"""The LightningModule: glue of backbone + masked-token objective + EMA + optimiser + sampling with the schedule.

The algorithm lives in :mod:`lit_nat.training.objective`, :mod:`lit_nat.training.recipe` (optimiser, setting checks),
:mod:`lit_nat.generation.schedule` and :mod:`lit_nat.generation.decoding`; this file only wires them into Lightning's
hooks. Checkpoints hold ``backbone.*`` (online weights), ``ema_backbone.*`` (EMA weights, used for validation and
sampling; LoRA: the adapters alone) and the current generation schedule (:mod:`lit_nat.training.module_state`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_nat.conditioning import Condition, Conditioner, batch_size, text_space
from lit_nat.conditioning.text import relocate as relocate_text_encoder
from lit_nat.core.finite import NonFiniteGuard, gradient_norm_and_finite
from lit_nat.generation.compiled import SamplingCompiler
from lit_nat.generation.decoding import GenerationResult, generate, generate_by_unknown_count, make_generator
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.models import build_backbone
from lit_nat.tokenizers import Tokenizer
from lit_nat.training.ema import ema_decay_at, make_ema_copy, update_ema
from lit_nat.training.init_from import initialise_from
from lit_nat.training.lora import LoraSettings, adapter_parameters, attach, update_adapter_ema, write_adapter
from lit_nat.training.module_state import LazyTokenizer, check_batch_ids, restore_module_state, save_module_state
from lit_nat.training.objective import (
    apply_mask,
    build_mask_ratio_law,
    masked_token_loss,
    previous_step_mask,
    sample_training_mask,
    seed_training_step,
)
from lit_nat.training.recipe import adamw_with_warmup, check_reuse_settings


class NATModule(L.LightningModule):
    """A masked-token non-autoregressive Transformer (AutoNAT training strategy; U-ViT or ENAT backbone).

    Args:
        arch: backbone name in the registry (``autonat-s``, ``autonat-l``, ...); see ``lit_nat.models.ARCHITECTURES``.
        arch_overrides: keyword overrides of the registry entry, e.g. ``{width: 64, num_layers: 3}`` for a tiny run.
        codebook_size: number of token codes K (mask id = K). Linked from the data's meta.json by the CLI.
        grid_size: token grid side (or ``[h, w]``). Linked from the data's meta.json by the CLI.
        num_classes: number of classes (null class id = num_classes). Linked from the data's meta.json by the CLI.
        tokenizer: tokenizer config used to decode samples into images (from meta.json); None = no image decoding.
        text_encoder: text encoder config for text-to-image (linked from the data module; None = class labels). The
            backbone is built for its width and token count; the encoder itself (frozen) is loaded on first use and
            never enters checkpoints.
        mask_ratio_law: training mask-ratio law p(r): ``beta`` (AutoNAT), ``arccos`` (heuristic), ``fixed``,
            ``uniform``.
        mask_ratio_params: parameters of the law, e.g. ``{alpha: 12, beta: 3}`` (the default Beta(12, 3)).
        mask_ratio_per_sample: one ratio per sample (AutoNAT) or one per batch (ENAT needs equal counts).
        min_visible_tokens: at least this many tokens stay visible in training (0 for AutoNAT, 1 for ENAT).
        label_smoothing: label smoothing of the cross-entropy on masked tokens.
        p_uncond: classifier-free-guidance label dropout probability (labels become the null class).
        lr: peak AdamW learning rate.
        betas: AdamW betas (the papers use (0.99, 0.99)).
        weight_decay: AdamW weight decay, applied to every parameter as in the official recipe.
        warmup_steps: linear warmup steps, then constant.
        ema_decay: EMA decay per optimiser step.
        ema_warmup: ramp the EMA decay as min(decay, (1+n)/(10+n)) (for short runs; the papers do not).
        schedule: initial generation schedule: ``heuristic``, ``enat``, ``amused``, a path to a schedule YAML (ours or
            the official AutoNAT format), or the schedule itself (``GenerationSchedule.to_dict()``). The hparams hold
            it by value once resolved, and a checkpoint the current (possibly searched) one, so no checkpoint needs
            the file.
        schedule_params: keyword parameters of the schedule preset, e.g. ``{steps: 8, guidance: 2.0}``.
        schedule_source: which schedule wins when a checkpoint is loaded (``--ckpt_path`` of fit/validate/test/
            predict): ``checkpoint`` (default: the schedule the model was trained or searched with, as saved) or
            ``config`` (``schedule``/``schedule_params`` above, e.g. to validate a checkpoint with another schedule).
        reuse_prob: ENAT reuse training: with this probability a step trains the online model on features of a
            "previous step" (a random part of the visible tokens re-masked) computed by the EMA model without
            gradient. ENAT uses 0.5; ignored (must be 0) for backbones without reuse.
        nonfinite: a training step whose loss or gradients are NaN/inf: ``skip`` it (weights, optimiser moments and
            EMA unchanged; counted in ``train/nonfinite_steps``) or ``stop`` the run at once. Checked once per
            optimiser step (one host read), over all ranks.
        max_nonfinite_steps: with ``skip``, this many non-finite steps in a row stop the run with an error naming the
            steps (no checkpoint with non-finite weights is ever written).
        init_from: fine-tune: start a new run (new optimizer, step 0) from this checkpoint's online and EMA weights
            (lit_nat's or imported); another class count or token grid is adapted, see ``training/init_from.py``.
        lora: LoRA fine-tuning of ``init_from`` (needs peft): ``{rank, alpha, dropout, target_modules}``; only the
            adapters train and are saved (checkpoints name the base by path and sha256), see ``training/lora.py``.

    Every random draw of a training step comes from a seed derived from (run seed, epoch, batch index, rank)
    (:func:`~lit_nat.training.objective.seed_training_step`), so a resumed run repeats the uninterrupted run's draws
    exactly.
    """

    def __init__(
        self,
        arch: str = "autonat-s",
        arch_overrides: dict[str, Any] | None = None,
        codebook_size: int = 1024,
        grid_size: int | tuple[int, int] = 16,
        num_classes: int = 1000,
        tokenizer: dict[str, Any] | None = None,
        text_encoder: dict[str, Any] | None = None,
        mask_ratio_law: str = "beta",
        mask_ratio_params: dict[str, float] | None = None,
        mask_ratio_per_sample: bool = True,
        min_visible_tokens: int = 0,
        label_smoothing: float = 0.1,
        p_uncond: float = 0.15,
        lr: float = 4e-4,
        betas: tuple[float, float] = (0.99, 0.99),
        weight_decay: float = 0.03,
        warmup_steps: int = 5000,
        ema_decay: float = 0.9999,
        ema_warmup: bool = False,
        schedule: str | dict[str, Any] = "heuristic",
        schedule_params: dict[str, Any] | None = None,
        schedule_source: str = "checkpoint",
        reuse_prob: float = 0.0,
        nonfinite: str = "skip",
        max_nonfinite_steps: int = 10,
        init_from: str | None = None,
        lora: LoraSettings | None = None,
    ) -> None:
        super().__init__()
        if isinstance(grid_size, list):
            grid_size = tuple(grid_size)
        self.save_hyperparameters()
        context = text_space(text_encoder) if text_encoder else None
        self.backbone = build_backbone(arch, codebook_size=codebook_size, grid_size=grid_size, num_classes=num_classes,
                                       overrides=arch_overrides, context=context)  # fmt: skip
        self.ema_backbone = make_ema_copy(self.backbone)
        self.lora = attach(self, lora)  # None; or LoRA: the base loaded now, its identity and peft's config
        self.supports_reuse = bool(getattr(self.backbone, "supports_reuse", False))
        check_reuse_settings(arch, self.supports_reuse, reuse_prob, mask_ratio_per_sample)
        self.mask_ratio_law = build_mask_ratio_law(mask_ratio_law, mask_ratio_params)
        self.schedule = GenerationSchedule.preset(schedule, **(schedule_params or {}))
        self.hparams.update(schedule=self.schedule.to_dict(), schedule_params=None)  # by value: no file needed later
        if schedule_source not in ("checkpoint", "config"):
            raise ValueError(f"schedule_source must be 'checkpoint' or 'config', got {schedule_source!r}")
        self.schedule_source = schedule_source
        self._tokenizer = LazyTokenizer(tokenizer)  # not a submodule: its weights never enter the NAT's checkpoints
        # Not an nn.Module either: the frozen text encoder is loaded from its folder, never saved with the NAT.
        self.conditioner = Conditioner(text_encoder, self.null_class)
        self.nonfinite_guard = NonFiniteGuard(nonfinite, max_nonfinite_steps)
        self.sampling_compiler = SamplingCompiler()  # eager; ``sample --compile`` installs another mode
        self._train_seed: int | None = None  # the run's seed, fixed at the first step and kept in checkpoints
        self._loss_finite: torch.Tensor | None = None  # all losses of the current optimiser step finite (on device)
        self._skip_ema = False
        self._restored = False  # weights restored from a checkpoint (a resume): init_from is not applied
        self.bad_samples = 0  # replaced bad data samples seen so far (the data module's skip policy)

    # ------------------------------------------------------------------------------------------------------------------
    # Properties of the token space
    @property
    def codebook_size(self) -> int:
        return self.backbone.codebook_size

    @property
    def mask_id(self) -> int:
        return self.backbone.mask_id

    @property
    def null_class(self) -> int:
        return self.backbone.null_class

    @property
    def num_tokens(self) -> int:
        return self.backbone.num_tokens

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The data's tokenizer, built on first use and kept on the module's device (not a submodule)."""
        return self._tokenizer.on(self.device)

    def relocate_assets(self, tokenizer_checkpoint: str | None = None, text_encoder: str | None = None) -> None:
        """Point the recorded tokenizer weights and text encoder elsewhere (``--tokenizer_checkpoint``,
        ``--text_encoder``: a moved file or folder, a hub id); what they resolve to is checked against the recorded
        digests when first loaded."""
        if tokenizer_checkpoint is not None:
            self._tokenizer.relocate(tokenizer_checkpoint)
        if text_encoder is not None:
            moved = relocate_text_encoder(self.conditioner.config, text_encoder)
            self.conditioner = Conditioner(moved, self.null_class)

    def train(self, mode: bool = True) -> NATModule:
        super().train(mode)
        self.ema_backbone.eval()  # the EMA model is only ever evaluated (no dropout)
        return self

    def forward(self, ids: torch.Tensor, condition: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        return self.backbone(ids, condition, state)

    # ------------------------------------------------------------------------------------------------------------------
    # Training
    def masked_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample masks from p(r) and return (inputs, targets, mask) for a batch of ``ids`` (B, N)."""
        ids = batch["ids"]
        mask = sample_training_mask(
            self.mask_ratio_law,
            ids.shape[0],
            ids.shape[1],
            ids.device,
            per_sample=self.hparams.mask_ratio_per_sample,
            min_visible=self.hparams.min_visible_tokens,
        )
        inputs, targets = apply_mask(ids, mask, self.mask_id)
        return inputs, targets, mask

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._train_seed is None:
            self._train_seed = int(torch.initial_seed())  # what seed_everything set
        seed_training_step(self._train_seed, self.current_epoch, batch_idx, self.global_rank)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        check_batch_ids(batch, self.num_tokens)
        if "bad_samples" in batch:
            self.bad_samples += int(batch.pop("bad_samples"))
            self.log("train/bad_samples", float(self.bad_samples), batch_size=len(batch["ids"]))
        inputs, targets, mask = self.masked_batch(batch)
        condition = self.conditioner.of_batch(batch, self.device)
        condition = self.conditioner.drop(condition, self.hparams.p_uncond)  # CFG: null class / empty prompt
        state, num_masked = None, None
        if self.supports_reuse:
            num_masked = int(mask[0].sum())  # one read per step; every row has this count
            # CPU draws: deciding whether to reuse must not wait for the device.
            if float(torch.rand(())) < self.hparams.reuse_prob:
                state = self.previous_step_state(batch["ids"], mask, num_masked, condition, float(torch.rand(())))
            self.log("train/reuse", float(state is not None), batch_size=len(batch["ids"]))
        logits, _ = self.backbone(inputs, condition, state, num_masked=num_masked)  # (B, N, K)
        loss, accuracy = masked_token_loss(logits, targets, self.hparams.label_smoothing)
        finite = torch.isfinite(loss.detach())  # no host read here: checked once per optimiser step
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite
        size = len(batch["ids"])  # given: a batch with captions (a list of strings) makes Lightning's guess ambiguous
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/masked_acc", accuracy, prog_bar=True, batch_size=size)
        self.log("train/mask_ratio", mask.float().mean(), batch_size=size)
        lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self._trainer else self.hparams.lr
        self.log("train/lr", lr, batch_size=size)
        return loss

    @torch.no_grad()
    def previous_step_state(
        self, ids: torch.Tensor, mask: torch.Tensor, num_masked: int, condition: Condition, fraction: float
    ) -> Any:
        """ENAT reuse training: the EMA model's state on a previous step with ``fraction`` of the visible tokens
        re-masked (no gradient, eval mode; the same condition the online model sees after dataset-level dropout)."""
        previous_mask, previous_count = previous_step_mask(mask, num_masked, fraction)
        previous_inputs = ids.masked_fill(previous_mask, self.mask_id)
        _, state = self.ema_backbone(previous_inputs, condition, num_masked=previous_count)
        return state

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The non-finite guard: after backward (and DDP's all-reduce), before the weights change."""
        grad_norm, finite = gradient_norm_and_finite(self.backbone.parameters(), self._loss_finite, self.trainer)
        self._loss_finite = None
        self.log("train/grad_norm", grad_norm)
        skip = self.nonfinite_guard.update(finite, self.global_step)
        if skip:
            for p in self.backbone.parameters():
                p.grad = None  # the optimiser then leaves every parameter and its moments as they are
            self._skip_ema = True
            rank_zero_warn(f"non-finite loss or gradients at step {self.global_step}: step skipped "
                           f"({self.nonfinite_guard.consecutive} in a row)")  # fmt: skip
        self.log("train/nonfinite_steps", float(self.nonfinite_guard.total))

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimiser step, then the EMA update of that step (once per optimiser step, also under gradient
        accumulation). Here rather than in ``on_train_batch_end``: callbacks' batch-end hooks (ModelCheckpoint) run
        before the module's, so a checkpoint taken there would hold the step's weights without its EMA update."""
        super().optimizer_step(*args, **kwargs)
        if self._skip_ema:  # a skipped (non-finite) step leaves the EMA as it is too
            self._skip_ema = False
            return
        decay = ema_decay_at(self.global_step - 1, self.hparams.ema_decay, self.hparams.ema_warmup)
        (update_adapter_ema if self.lora else update_ema)(self.ema_backbone, self.backbone, decay)  # what trains

    def configure_optimizers(self) -> dict[str, Any]:
        hparams, backbone = self.hparams, self.backbone
        trained = adapter_parameters(backbone) if self.lora else backbone.parameters()
        return adamw_with_warmup(trained, hparams.lr, hparams.betas, hparams.weight_decay, hparams.warmup_steps)

    # ------------------------------------------------------------------------------------------------------------------
    # Evaluation: the EMA backbone on held-out tokens, with masks that are the same at every validation
    def _eval_step(self, batch: dict[str, torch.Tensor], batch_idx: int, prefix: str) -> torch.Tensor:
        check_batch_ids(batch, self.num_tokens)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(10_007 * batch_idx + self.global_rank)
            inputs, targets, mask = self.masked_batch(batch)
        logits, _ = self.ema_backbone(inputs, self.conditioner.of_batch(batch, self.device))
        loss, accuracy = masked_token_loss(logits, targets, self.hparams.label_smoothing)
        self.log(f"{prefix}/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["ids"]))
        self.log(f"{prefix}/masked_acc", accuracy, sync_dist=True, batch_size=len(batch["ids"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, batch_idx, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Generate for ``batch['prompts']`` (text models) or ``batch['label']``; the generator is seeded by
        ``batch['seed'][0]`` (default: the batch index)."""
        labels = batch["label"]
        seed = int(batch["seed"][0]) if "seed" in batch else batch_idx
        if "prompts" in batch:
            result = self.generate(prompts=batch["prompts"], seed=seed)
        else:
            result = self.generate(labels, seed=seed)
        out = {"ids": result.ids, "label": labels}
        if self.tokenizer is not None:
            out["images"] = self.decode(result.ids)
        return out

    # ------------------------------------------------------------------------------------------------------------------
    # Sampling API (used by callbacks, the CLI and users)
    def set_schedule(self, schedule: GenerationSchedule) -> None:
        """Install a new generation schedule (the schedule search calls this between epochs)."""
        schedule.validate()
        if schedule.steps > self.num_tokens:
            raise ValueError(f"schedule has {schedule.steps} steps but there are only {self.num_tokens} tokens")
        self.schedule = schedule

    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor | Sequence[int] | None = None,
        schedule: GenerationSchedule | None = None,
        seed: int = 0,
        return_history: bool = False,
        use_ema: bool = True,
        *,
        prompts: Sequence[str] | None = None,
        init_ids: torch.Tensor | None = None,
        keep_mask: torch.Tensor | None = None,
    ) -> GenerationResult:
        """Generate one image's tokens per label (class-conditional models) or per prompt (text models, e.g.
        ``model.generate(prompts=["a red bus"], seed=0)``), with the current (or a given) schedule and the EMA
        weights. Guidance's unconditional branch is the null class or the empty prompt.

        Editing: ``init_ids`` ``(B, N)`` and ``keep_mask`` ``(B, N)`` (True = kept) start from a partial canvas (see
        :func:`lit_nat.generation.decoding.generate`). ENAT gathers every row's tokens into dense blocks, so its rows
        are generated in groups of equal unknown count, each with the generator seeded ``seed + first row index``
        (:func:`~lit_nat.generation.decoding.generate_by_unknown_count`).
        """
        condition = self.conditioner.of(labels, prompts, self.device)
        if keep_mask is not None and init_ids is not None:  # on the model's device before rows are grouped below
            init_ids, keep_mask = init_ids.to(self.device), keep_mask.to(self.device)
        decode = functools.partial(self._decode_loop, schedule=schedule or self.schedule, use_ema=use_ema,
                                   return_history=return_history)  # fmt: skip
        if keep_mask is not None and self.supports_reuse:
            return generate_by_unknown_count(decode, condition, seed, init_ids, keep_mask,
                                             return_history=return_history)  # fmt: skip
        return decode(condition, seed, init_ids, keep_mask)

    def _decode_loop(self, condition, seed, init_ids, keep_mask, *, schedule, use_ema, return_history):
        backbone = self.ema_backbone if use_ema else self.backbone
        was_training = backbone.training
        backbone.eval()
        try:
            return generate(self.sampling_compiler(backbone), condition, schedule, make_generator(seed, self.device),
                            num_tokens=self.num_tokens, mask_id=self.mask_id, init_ids=init_ids, keep_mask=keep_mask,
                            null_condition=self.conditioner.null(batch_size(condition), self.device),
                            return_history=return_history)  # fmt: skip
        finally:
            backbone.train(was_training)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, N) -> images (B, C, H, W) in [0, 1] with the data's tokenizer."""
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer config; pass `tokenizer` (linked from the data meta.json)")
        return self.tokenizer.decode(ids.to(self.device)).clamp(0, 1)

    # ------------------------------------------------------------------------------------------------------------------
    # Checkpoints carry the schedule and the training counters (:mod:`lit_nat.training.module_state`)
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_module_state(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._restored = True
        restore_module_state(self, checkpoint)

    def on_fit_start(self) -> None:  # (after a resume's restore, which on_load_checkpoint marks: then not again)
        if self.hparams.get("init_from") and not self._restored and not self.lora:  # (LoRA: loaded at __init__)
            for note in initialise_from(self, self.hparams["init_from"]):
                rank_zero_info(f"init_from {self.hparams['init_from']}: {note}")

    def on_train_end(self) -> None:
        if self.lora and self.trainer.is_global_zero:  # the EMA adapters (what samples), in peft's layout
            folder = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "adapter"
            rank_zero_info(f"LoRA adapter: {write_adapter(folder, self.ema_backbone, self.lora)}")
