"""FID (and IS) of generated images in validation, with the module's *current* generation schedule.

At every ``every_n_validations``-th validation, each rank generates its share of a fixed, class-balanced plan
(:func:`lit_nat.data.labels.plan_generation`: fixed batches, batch b seeded with ``seed + b * batch_size``, batch b on
rank ``b mod W``), decodes the tokens with the data's tokenizer, extracts features in float32 outside autocast, and
accumulates float64 sums; ``compute()`` all-gathers those sums on *every* rank, so each rank logs the same value.
Two validations therefore differ only because the weights or ``pl_module.schedule`` changed, and the images do not
depend on the number of devices.

The reference statistics it reads and the JSON report it writes are in :mod:`lit_nat.callbacks.evaluation_files`.
The extractor and the metric live here, in the callback, so their weights never enter the LightningModule's
``state_dict`` or checkpoints. Everything (generation, metric updates, reset) runs under ``torch.inference_mode`` so
metric states are always inference tensors, whichever hook calls :meth:`GenerativeEvaluation.evaluate` (a schedule
search may call it from a training hook).
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from lit_nat.callbacks.cost import measure_image_gflops, print_evaluation_cost
from lit_nat.callbacks.evaluation_files import (
    count_label,
    evaluation_record,
    history_entry,
    metric_name,
    missing_reference_message,
    reference_from_shards,
)
from lit_nat.callbacks.reliability import raise_if_stopped
from lit_nat.core.errors import UsageError
from lit_nat.core.io import atomic_write_json
from lit_nat.core.progress import progress, trainer_shows_progress
from lit_nat.data.labels import GenerationBatch, plan_generation
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.metrics.clip_score import LocalCLIPScore
from lit_nat.metrics.extractors import FeatureExtractor, build_extractor, full_precision
from lit_nat.metrics.fid import InceptionScore, ReferenceFID
from lit_nat.metrics.reference import ReferenceStats, load_reference_stats

if TYPE_CHECKING:
    from tqdm import tqdm


def check_settings(num_samples: int, batch_size: int, every_n_validations: int, reference_stats: str | None,
                   reference_split: str | None) -> None:  # fmt: skip
    if num_samples < 2:
        raise ValueError(f"GenerativeEvaluation: num_samples must be >= 2 (a covariance), got {num_samples}")
    if batch_size < 1 or every_n_validations < 1:
        raise ValueError(
            f"GenerativeEvaluation: batch_size and every_n_validations must be >= 1, "
            f"got {batch_size} and {every_n_validations}"
        )
    if reference_stats is None and reference_split is None:
        raise ValueError("GenerativeEvaluation: give reference_stats (an .npz) and/or reference_split")


def find_evaluation(callbacks: list[L.Callback]) -> GenerativeEvaluation | None:
    """The first enabled :class:`GenerativeEvaluation` of a Trainer's callbacks (a config's ``evaluation:`` section
    or one in ``trainer.callbacks``), or None."""
    return next((cb for cb in callbacks if isinstance(cb, GenerativeEvaluation) and cb.enabled), None)


class GenerativeEvaluation(L.Callback):
    """FID/IS of ``num_samples`` generated images against reference statistics, logged as ``val/<prefix>fid`` and
    ``val/<prefix>is`` (prefix ``digits_`` for the digits extractor) and written to a JSON report.

    Args:
        extractor: registered feature extractor (``inception``, ``digits``; see ``lit_nat.metrics.EXTRACTORS``).
        weights_path: weights file of the extractor (None: the Inception weights through torch.hub's cache).
            ``{data_root}`` in this path or in ``reference_stats`` stands for the data module's root (the digits files
            live beside the shards).
        extractor_options: extra keyword arguments of the extractor, e.g. ``{protocol: torch-fidelity}``.
        reference_stats: ``.npz`` with ``mu`` and ``sigma`` of the real data (ADM / U-ViT files work as they are).
        reference_split: if ``reference_stats`` does not exist, compute the statistics from this split of the data's
            token shards (decoded with the tokenizer; every rank reads its part) and cache them there.
        num_samples: images generated per evaluation over all ranks (the N of FID-N); class-balanced.
        batch_size: images per generation batch (global composition: changing it changes the images).
        seed: base seed of the decoding loops.
        every_n_validations: evaluate at every n-th validation of fit (``validate`` always evaluates).
        inception_score: also compute the Inception Score (needs an extractor with class logits).
        clip_score_model: for text-conditioned models, the whole CLIP model (vision + text) that scores the images
            against their prompts, logged as ``val/clip_score`` beside the FID (e.g. ``openai/clip-vit-large-patch14``;
            resolved by :class:`~lit_nat.metrics.clip_score.LocalCLIPScore`). One that cannot be loaded stops the run
            at its start.
        report: JSON file written into the run's log directory after each evaluation (None: none).
        enabled: False turns the callback off (``--evaluation.enabled false`` for the ``evaluation:`` section of a
            config): no files are read, nothing is generated or logged, and a ``ScheduleSearch`` has no FID to minimise.

    Everything the evaluation reads (the reference statistics, the extractor's weights, the CLIP model, a text model's
    captions) is loaded in ``setup``, so a missing file stops ``fit``/``validate`` before the first training step;
    the cost of one evaluation is printed when training starts.
    """

    def __init__(
        self,
        extractor: str = "inception",
        weights_path: str | None = None,
        extractor_options: dict[str, Any] | None = None,
        reference_stats: str | None = None,
        reference_split: str | None = None,
        num_samples: int = 10_000,
        batch_size: int = 100,
        seed: int = 0,
        every_n_validations: int = 1,
        inception_score: bool = True,
        report: str | None = "eval_report.json",
        clip_score_model: str | None = None,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        self.enabled = enabled
        if enabled:
            check_settings(num_samples, batch_size, every_n_validations, reference_stats, reference_split)
        self.extractor_name = extractor
        self.weights_path = weights_path
        self.extractor_options = dict(extractor_options or {})
        self.reference_stats = reference_stats
        self.reference_split = reference_split
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.every_n_validations = every_n_validations
        self.inception_score = inception_score
        self.clip_score_model = clip_score_model
        self.clip_score: LocalCLIPScore | None = None
        self.report = report
        self.extractor: FeatureExtractor | None = None
        self.fid: ReferenceFID | None = None
        self.inception: InceptionScore | None = None
        self.reference: ReferenceStats | None = None
        self.validations = 0  # validations seen in fit (checkpointed, so every_n survives a resume)
        self._prompts: list[str] | None = None  # a text model's evaluation prompts, read once
        self.show_progress: bool | None = None  # None: the Trainer decides (rank 0, progress bar on)
        self.history: list[dict[str, Any]] = []
        self.last: dict[str, Any] | None = None
        self.checkpoint_progress: tuple[int | None, int | None] = (None, None)  # (global_step, epoch) of a loaded ckpt
        self._image_gflops: dict[str, float] | None = None  # one evaluated image's cost by part, measured once
        # The value is synced by the metric itself (identical on every rank); Lightning's generic advice does not apply.
        warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('val/(digits_)?(fid|is)'")

    @property
    def state_key(self) -> str:
        return self._generate_state_key(extractor=self.extractor_name, num_samples=self.num_samples)

    # ------------------------------------------------------------------------------------------------------------------
    # Set-up: extractor, reference statistics, metrics (on every rank; may all-gather when computing the reference)
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.enabled and stage in ("fit", "validate") and self.fid is None:
            self.build(trainer, pl_module)

    def resolve_path(self, trainer: L.Trainer, path: str | None) -> str | None:
        """Replace ``{data_root}`` by the data module's root (files that live beside the shards follow --data.root)."""
        if path is None or "{data_root}" not in path:
            return path
        root = getattr(trainer.datamodule, "root", None)
        if root is None:
            raise ValueError(
                f"GenerativeEvaluation: {path!r} uses {{data_root}} but the trainer has no data module root"
            )
        return path.replace("{data_root}", str(root))

    def build(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Load the extractor and the reference statistics (computing and caching them if asked) onto the device."""
        try:  # fail now, not at the first validation hours later
            tokenizer = pl_module.tokenizer
        except (ValueError, OSError) as err:
            raise ValueError(
                f"GenerativeEvaluation: cannot build the model's tokenizer to decode samples: {err}"
            ) from err
        if tokenizer is None:
            raise ValueError("GenerativeEvaluation: the model has no tokenizer config, so samples cannot be decoded")
        device = trainer.strategy.root_device
        reference_stats = self.resolve_path(trainer, self.reference_stats)
        path = Path(reference_stats) if reference_stats else None
        if path is not None and not path.exists() and self.reference_split is None:
            raise FileNotFoundError(self.missing_reference(trainer, pl_module, path))
        weights = self.resolve_path(trainer, self.weights_path)
        extractor = build_extractor(self.extractor_name, weights, **self.extractor_options).to(device)
        if path is not None and path.exists():
            reference = load_reference_stats(path, extractor.num_features, extractor.identity)
        else:
            reference = reference_from_shards(trainer, tokenizer, extractor, self.reference_split,
                                              self.batch_size, path)  # fmt: skip
        self.extractor, self.reference = extractor, reference
        if pl_module.conditioner.is_text:  # the captions and the CLIP model, read now rather than at a validation
            self.prompts(trainer, pl_module)
            self.clip_metric(trainer, pl_module)
        self.fid = ReferenceFID(reference.mu, reference.sigma, source=reference.path or "computed").to(device)
        self.inception = None
        if self.inception_score and extractor.num_logits:
            self.inception = InceptionScore(extractor.num_logits).to(device)
        elif self.inception_score:
            rank_zero_info(f"GenerativeEvaluation: extractor {self.extractor_name!r} has no class logits; no IS")

    def missing_reference(self, trainer: L.Trainer, pl_module: L.LightningModule, path: Path) -> str:
        """The one-line error of a missing reference file: its name and the command that makes it."""
        weights = self.resolve_path(trainer, self.weights_path) if self.weights_path else None
        return missing_reference_message(path, self.extractor_name, self.extractor_options, weights,
                                         getattr(pl_module.tokenizer, "image_size", None),
                                         getattr(trainer.datamodule, "root", None))  # fmt: skip

    # ------------------------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            print_evaluation_cost(self, trainer, pl_module)

    def image_gflops(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """GFLOPs of one evaluated image by part, measured once (rank 0; {} elsewhere): see
        :func:`lit_nat.callbacks.cost.measure_image_gflops`."""
        if self._image_gflops is None and trainer.is_global_zero:
            if self.fid is None:  # (an evaluator given to a ScheduleSearch directly, not in trainer.callbacks)
                self.build(trainer, pl_module)
            self._image_gflops = measure_image_gflops(self, trainer, pl_module)
        return self._image_gflops or {}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.enabled:
            return
        if trainer.state.fn == "fit":
            self.validations += 1
            if self.validations % self.every_n_validations:
                return
        values = self.evaluate(trainer, pl_module)
        prefix = self.extractor.metric_prefix
        # sync_dist=False: every rank holds the same, already synced value
        pl_module.log(f"val/{prefix}fid", values["fid"], sync_dist=False)
        if values.get("inception_score") is not None:
            pl_module.log(f"val/{prefix}is", values["inception_score"], sync_dist=False)
        if values.get("clip_score") is not None:
            pl_module.log("val/clip_score", values["clip_score"], sync_dist=False)
        self._write_report(trainer, pl_module, values)

    def evaluate(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        schedule: GenerationSchedule | None = None,
        fid_only: bool = False,
    ) -> dict[str, Any]:
        """Generate this rank's share with ``schedule`` (default: ``pl_module.schedule``) and return the synced
        ``{"fid", "inception_score", "clip_score", "num_samples", "seconds", "schedule"}``; ``fid_only`` skips the IS
        and the CLIP score (None then), e.g. for the search's finite-difference probes. Call it on every rank (the
        metrics all-gather)."""
        if self.fid is None:
            self.build(trainer, pl_module)
        schedule = schedule or pl_module.schedule
        plan = plan_generation(
            self.num_samples,
            self.batch_size,
            self.seed,
            num_classes=pl_module.hparams.num_classes,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            prompts=self.prompts(trainer, pl_module),
        )
        clip = None if fid_only else self.clip_metric(trainer, pl_module)
        inception_metric = None if fid_only else self.inception
        metrics = [m for m in (self.fid, inception_metric, clip) if m is not None]
        # ranks hold at most one batch more than others: the stop check (a collective) runs as often on every rank
        rounds = math.ceil(math.ceil(self.num_samples / self.batch_size) / trainer.world_size)
        start = time.perf_counter()
        bar = self._progress_bar(trainer)
        with torch.inference_mode(), bar:
            for metric in metrics:
                metric.reset()
            for index in range(rounds):
                raise_if_stopped(trainer)  # a SIGTERM stops an evaluation within one batch, on every rank together
                if index >= len(plan):
                    continue
                self._update_metrics(trainer, pl_module, plan[index], schedule, inception_metric, clip)
                bar.update(min(len(plan[index].indices) * trainer.world_size, bar.total - bar.n))  # (rank 0's view)
            fid = float(self.fid.compute())
            inception = float(inception_metric.compute()) if inception_metric is not None else None
            clip_score = float(clip.compute()) if clip is not None else None
            for metric in metrics:
                metric.reset()
        return {
            "fid": fid,
            "inception_score": inception,
            "clip_score": clip_score,
            "num_samples": self.num_samples,
            "seconds": round(time.perf_counter() - start, 3),
            "schedule": schedule,
        }

    def _progress_bar(self, trainer: L.Trainer) -> tqdm:
        """The evaluation's progress bar over all ranks' images (shown where the Trainer shows its own, unless
        ``show_progress`` says otherwise)."""
        return progress(
            self.num_samples,
            f"{self.extractor.metric_prefix.replace('_', '-')}FID-{count_label(self.num_samples)}",
            unit="img",
            enabled=trainer_shows_progress(trainer) if self.show_progress is None else self.show_progress,
        )

    def _update_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: GenerationBatch,
                        schedule: GenerationSchedule, inception_metric: InceptionScore | None,
                        clip: LocalCLIPScore | None) -> None:  # fmt: skip
        """Generate one batch of the plan, decode it and add it to the metrics (FID always; IS and CLIP score if
        given)."""
        device = pl_module.device
        prompts = list(batch.prompts) if batch.prompts else None
        # the transformer runs as in validation_step (e.g. bf16 autocast), but outside inference mode (under
        # no_grad), where autocast keeps each weight's cast for the whole call instead of re-casting it at every
        # step (lit_nat.generation.precision); the metric never runs under autocast
        with torch.inference_mode(False), torch.no_grad(), trainer.precision_plugin.forward_context():
            labels = None if batch.prompts else torch.tensor(batch.labels, device=device)
            ids = pl_module.generate(labels, schedule=schedule, seed=batch.seed, prompts=prompts).ids
        with full_precision(device.type):
            images = pl_module.decode(ids).float()
            features, logits = self.extractor(images)
            if clip is not None:
                clip.update(images, prompts)
        self.fid.update(features)
        if inception_metric is not None:
            inception_metric.update(logits)

    def clip_metric(self, trainer: L.Trainer, pl_module: L.LightningModule) -> LocalCLIPScore | None:
        """The CLIP score metric (built once) for a text model with ``clip_score_model``; None otherwise."""
        if self.clip_score is None and self.clip_score_model and pl_module.conditioner.is_text:
            path = self.resolve_path(trainer, self.clip_score_model)
            self.clip_score = LocalCLIPScore(path).to(trainer.strategy.root_device)  # an error names what is missing
        return self.clip_score

    def prompts(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[str] | None:
        """For a text model, the evaluation's prompts: one caption per validation sample (sample i of the plan gets
        prompt i mod len), read once from the data module; None for a class-conditional model."""
        if not pl_module.conditioner.is_text:
            return None
        if self._prompts is None:
            captions = getattr(trainer.datamodule, "captions", None)
            if captions is None:
                raise UsageError("GenerativeEvaluation of a text-conditioned model needs a data module with captions")
            self._prompts = captions()
        return self._prompts

    # ------------------------------------------------------------------------------------------------------------------
    def _write_report(self, trainer: L.Trainer, pl_module: L.LightningModule, values: dict[str, Any]) -> None:
        name = metric_name(self.extractor.metric_prefix, self.num_samples)
        fitting = trainer.state.fn == "fit"
        # validate/test do not restore the loops' counters: take the step of the checkpoint being evaluated
        step, epoch = self.checkpoint_progress
        if fitting or step is None:
            step, epoch = trainer.global_step, trainer.current_epoch
        if fitting:  # the training curve; a validate run reports without extending it
            self.history.append(history_entry(values, step, epoch))
        self.last = evaluation_record(self, trainer, values, name, step, epoch)
        if self.report is None:
            return
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # every rank: log_dir broadcasts
        if trainer.is_global_zero:
            log_dir.mkdir(parents=True, exist_ok=True)
            path = atomic_write_json(log_dir / self.report, self.last)
            is_text = f", IS {values['inception_score']:.3f}" if values["inception_score"] is not None else ""
            rank_zero_info(
                f"GenerativeEvaluation: {name} {values['fid']:.4f}{is_text} ({values['seconds']} s) -> {path}"
            )

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.checkpoint_progress = (checkpoint.get("global_step"), checkpoint.get("epoch"))

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations, "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict.get("validations", 0))
        self.history = list(state_dict.get("history", []))
