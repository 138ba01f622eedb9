"""``python -m lit_nat sample``: generate N images on every device of the Trainer and write them for evaluators.

Output under ``--out`` (a folder; or ``--out x.npz``: that file, with ``x.png``, ``x.json`` and ``x.parts/`` beside
it):

- ``samples.npz``: the ADM / DiT layout read by the ADM evaluation suite and torch-fidelity wrappers: ``arr_0`` uint8
  (N, H, W, 3) and ``arr_1`` int64 (N,) labels, in sample order (grey images are repeated to RGB);
- ``grid.png``: the first ``grid_samples`` images (class-balanced labels: column c shows class c when the row length
  equals the class count);
- ``samples.json``: what was generated (checkpoint, schedule and the masked counts it gives, seed, batch size, N, labels
  rule, precision, world size);
- ``images/NNNNNN.png`` with ``--save_png true``.

Which images: the plan of :mod:`lit_nat.data.labels` (batch b = samples [bB, (b+1)B), seeded ``seed + b B``), so the
file is the same for any number of devices. Every generated batch is written at once to ``parts/batch_NNNNNN.npz``
(atomically, by the rank that made it); a run that is killed or stopped (SIGTERM stops it after the current batch)
keeps them, and the same command resumes with the batches still missing (``parts/plan.json`` records what the parts
depend on, the sampled weights by content included, and a resume with anything else is refused). At the end rank 0
merges the parts by sample index through a memory map (never more than one batch in memory) and removes them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image

from lit_nat.callbacks.reliability import raise_if_stopped
from lit_nat.commands.sample_parts import (
    PLAN_FILE,
    SampleFiles,
    done_batches,
    merge_parts,
    save_grid,
    to_uint8_hwc,
    write_part,
)
from lit_nat.core.checkpointing import weights_digest
from lit_nat.core.errors import UsageError
from lit_nat.core.io import DirectoryLock, atomic_write, atomic_write_json, changed_entries, remove_stale_temps
from lit_nat.data.datamodule import generation_loader
from lit_nat.generation.compiled import SamplingCompiler
from lit_nat.generation.schedule import DRAWS, GenerationSchedule
from lit_nat.training.loading import AssetLocations
from lit_nat.training.lora import AdapterSet
from lit_nat.training.trainer import NATTrainer


class SampleWriter(BasePredictionWriter):
    """Writes every generated batch as a part file, checks a resumed run's parts, and merges them at the end.

    Args:
        out: output folder, or the ``.npz`` to write (see :class:`SampleFiles`).
        num_samples: total number of samples over all ranks (for the merge's completeness check).
        batch_size: images per generation batch (batch b starts at sample b * batch_size).
        settings: what the parts depend on besides the weights and the schedule (N, batch size, seed, labels,
            precision).
        schedule: schedule to install at predict start, after the checkpoint (which carries its own) is restored.
        draw: the token draw to give that schedule (or the checkpoint's), None to keep its own.
        save_png: also write every image to ``images/NNNNNN.png``.
        grid_samples: images in ``grid.png``.
        info: extra facts for ``samples.json``.
    """

    def __init__(
        self,
        out: str | Path | SampleFiles,
        num_samples: int,
        batch_size: int,
        settings: dict[str, Any],
        schedule: GenerationSchedule | None = None,
        save_png: bool = False,
        grid_samples: int = 100,
        info: dict[str, Any] | None = None,
        draw: str | None = None,
    ) -> None:
        super().__init__(write_interval="batch")
        self.draw = draw
        self.files = SampleFiles.at(out)
        self.num_samples, self.batch_size, self.settings = num_samples, batch_size, dict(settings)
        self.schedule = schedule
        self.save_png = save_png
        self.grid_samples = grid_samples
        self.info = dict(info or {})

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        schedule = self.schedule or pl_module.schedule
        if self.draw is not None:
            schedule = replace(schedule, draw=self.draw)
        if schedule is not pl_module.schedule:
            pl_module.set_schedule(schedule)  # validated against the model's token count
        plan = {**self.settings, "schedule": pl_module.schedule.to_dict(),
                "weights": weights_digest(pl_module.ema_backbone.state_dict())}  # fmt: skip
        path = self.files.parts / PLAN_FILE
        trainer.strategy.barrier("lit_nat-sample-check")
        if path.exists():  # every rank reads the same file and raises together
            check_parts_plan(path, plan)
        trainer.strategy.barrier("lit_nat-sample-start")
        if trainer.is_global_zero and not path.exists():
            atomic_write_json(path, plan)
        if self.save_png:
            self.files.images.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.files.images, "*.png")  # one listing here, not one per image written

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if "images" not in prediction:
            raise RuntimeError("the model has no tokenizer config, so samples cannot be decoded into images")
        images = to_uint8_hwc(prediction["images"])
        index = batch["index"].cpu().numpy().astype(np.int64)
        labels = prediction["label"].cpu().numpy().astype(np.int64)
        if self.save_png:
            for i, image in zip(index, images):
                atomic_write(self.files.images / f"{i:06d}.png", lambda f, im=image: Image.fromarray(im).save(
                    f, format="PNG"), sweep=False)  # fmt: skip
        write_part(self.files, int(index[0]) // self.batch_size, images, labels, index)
        # SIGTERM: stop after this batch, whose part is on disk (per rank: ranks may hold one batch more than others)
        raise_if_stopped(trainer, synced=False)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("lit_nat-sample-parts")  # every part is on disk before rank 0 merges
        if not trainer.is_global_zero:
            return
        merged = merge_parts(self.files, self.num_samples, keep_first=self.grid_samples)
        prompts, path, shape = self.settings.get("prompts"), merged.path, list(merged.shape)
        save_grid(merged.first, self.files.grid, prompts=prompts)
        schedule: GenerationSchedule = pl_module.schedule
        info = {
            **self.info,
            "schedule": schedule.to_dict(),
            "masked_counts": schedule.masked_counts(pl_module.num_tokens),  # what the loop did with the ratios
            "arr_0_shape": shape,
            "world_size": trainer.world_size,
        }
        if prompts:
            info["image_prompts"] = [prompts[i % len(prompts)] for i in range(self.num_samples)]
        atomic_write_json(self.files.info, info)
        rank_zero_info(f"sample: wrote {path} (arr_0 {shape} uint8, arr_1 labels) and {self.files.grid}")


def read_prompts(prompts: list[str] | None, prompts_file: str | None, model: Any, labels: Any) -> list[str] | None:
    """The prompts of a ``sample`` run (``--prompts`` or ``--prompts_file``), checked against the model's condition."""
    if prompts is not None and prompts_file is not None:
        raise UsageError("give --prompts or --prompts_file, not both")
    if prompts_file is not None:
        path = Path(prompts_file)
        if not path.is_file():
            raise UsageError(f"{path}: no such prompts file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:  # (its own message names no file)
            raise UsageError(f"{path}: the prompts file is not UTF-8 text (byte {err.start}: {err.reason}); save it "
                             "as UTF-8, one prompt per line") from None  # fmt: skip
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
        if not prompts:
            raise UsageError(f"{path}: the prompts file holds no prompt (one per line)")
    is_text = model.conditioner.is_text
    if prompts is not None and not is_text:
        raise UsageError("this model is class-conditional (no text encoder): pass --labels, not --prompts")
    if is_text and prompts is None:
        raise UsageError("this model is text-conditioned: pass --prompts \"a red bus\" ... or --prompts_file FILE")
    if is_text and labels is not None:
        raise UsageError("this model is text-conditioned: --labels do not apply, pass --prompts")
    if prompts is not None and not prompts:
        raise UsageError("--prompts is empty")
    return None if prompts is None else [str(p) for p in prompts]


def check_parts_plan(path: Path, plan: dict[str, Any]) -> None:
    """The parts of an interrupted run may be resumed only by the same generation (settings, schedule, weights). The
    saved schedule is read as a schedule file is (a plan written before a schedule field existed has its default)."""
    saved = json.loads(path.read_text())
    if isinstance(saved, dict) and isinstance(saved.get("schedule"), dict):
        try:
            saved["schedule"] = GenerationSchedule.from_dict(saved["schedule"], source=str(path)).to_dict()
        except ValueError:
            pass  # an unreadable schedule is simply another one: refused below
    changed = sorted(changed_entries(saved, plan))
    if changed:
        raise UsageError(
            f"{path.parent}: parts of an interrupted run with other {', '.join(changed)}; rerun it as it was to "
            "resume, or pass --overwrite true (or another --out) to start again"
        )


@dataclass(frozen=True)
class SampleRequest:
    """What a ``sample`` run is asked for.

    Args:
        num_samples: number of images over all devices.
        batch_size: images per generation batch (fixed composition: the output does not depend on the devices).
        labels: class labels, cycled (sample i gets labels[i mod len]); default class-balanced, i mod num_classes.
            The null class (num_classes) gives unconditional samples.
        schedule: generation schedule for this run: a schedule YAML (ours or the official AutoNAT format) or a
            preset name (heuristic, enat, amused); default: the checkpoint's schedule.
        seed: base seed: batch b is generated with seed + b * batch_size.
        out: output folder, or an .npz file to write (grid, record and parts beside it: x.png, x.json, x.parts/).
        save_png: also write each image as out/images/NNNNNN.png.
        grid_samples: number of images in grid.png.
        overwrite: replace an existing out/samples.npz, and drop the parts of an interrupted run instead of
            resuming it.
        prompts: for a text-conditioned model, the prompts, cycled (sample i gets prompts[i mod P]).
        prompts_file: a UTF-8 file with one prompt per line (blank lines skipped), instead of --prompts.
        draw: how tokens are drawn, for this run's schedule: auto, gumbel (a Gumbel per code) or inverse_cdf (one
            uniform per token: the same distribution, faster on large codebooks, other images for a seed); default
            the schedule's own.
        compile: torch.compile the sampling backbone: false (default), true, freeze (inductor's freezing: the
            fastest on a CPU, see docs/measurements.md) or cuda_graphs (CUDA only). The images equal eager's up to
            float rounding (a token may differ where two scores tie within an ulp); recorded in samples.json, and
            an interrupted run resumes under its own mode only.
    """

    num_samples: int = 50_000
    batch_size: int = 100
    labels: list[int] | None = None
    schedule: str | None = None
    seed: int = 0
    out: str = "samples"
    save_png: bool = False
    grid_samples: int = 100
    overwrite: bool = False
    prompts: list[str] | None = None
    prompts_file: str | None = None
    draw: str | None = None
    compile: str = "false"


def sample(trainer: NATTrainer, model: L.LightningModule, ckpt_path: str | None = None,
           request: SampleRequest = SampleRequest(), assets: AssetLocations = AssetLocations(),
           adapters: AdapterSet = AdapterSet()) -> Path:  # fmt: skip
    """Generate images on every device and write samples.npz (ADM layout), grid.png and samples.json.

    From a checkpoint alone (--ckpt_path K: its hyper-parameters describe the model) or with a config (--config,
    whose model the checkpoint's weights fill). A killed run resumes with the batches still missing. LoRA adapters
    (--adapters) are merged into the weights first.

    Args:
        ckpt_path: checkpoint to sample from (lit_nat's or imported official weights); the EMA weights are used.
    """
    assets.apply(model)
    with adapters.merged_in(trainer):  # after the checkpoint is restored, before the weights' digest is taken
        return run_sample(trainer, model, ckpt_path, request, adapters.record())


def run_sample(trainer: L.Trainer, model: L.LightningModule, ckpt_path: str | None, request: SampleRequest,
               adapters: dict[str, list] | None = None) -> Path:  # fmt: skip
    """:func:`sample` once the model's assets are in place; returns the written ``.npz``. ``adapters``: what
    :meth:`AdapterSet.record` says was merged, for ``samples.json``."""
    files, labels = SampleFiles.at(request.out), request.labels
    if files.npz.exists() and not request.overwrite:
        raise FileExistsError(f"{files.npz} exists; pass --overwrite true or another --out")
    parsed = GenerationSchedule.preset(request.schedule) if request.schedule else None  # bad files fail before work
    if request.draw is not None and request.draw not in DRAWS:
        raise UsageError(f"sample: --draw {request.draw!r} is not one of {', '.join(DRAWS)}")
    try:
        compiler = SamplingCompiler(request.compile, trainer.strategy.root_device)
    except ValueError as err:
        raise UsageError(f"sample: --compile: {err}") from None
    num_classes = int(model.hparams.num_classes)
    if labels is not None:
        bad = [v for v in labels if not 0 <= int(v) <= num_classes]
        if bad or not labels:
            raise ValueError(f"labels must be non-empty and in [0, {num_classes}] ({num_classes} = null), got {bad}")
    prompts = read_prompts(request.prompts, request.prompts_file, model, labels)
    if ckpt_path is None:
        rank_zero_warn("sample: no --ckpt_path; sampling from the model's initial (untrained) weights")
    settings = {"num_samples": request.num_samples, "batch_size": request.batch_size, "seed": request.seed,
                "labels": labels if labels is not None else f"class-balanced: i mod {num_classes}",
                "precision": str(trainer.precision)}  # fmt: skip  # bf16 samples are other images than fp32 ones
    if prompts is not None:
        settings = {**settings, "labels": None, "prompts": prompts}
    if compiler.mode != "false":  # (eager runs keep the settings of older parts plans, which resume)
        settings = {**settings, "compile": compiler.mode}
    info = {"checkpoint": ckpt_path, **(adapters or {}), **settings, "schedule_source": request.schedule or "checkpoint"}
    # one live sample per output folder (rank 0 writes it); released at the end or when the process dies
    lock = DirectoryLock(files.folder, "lit_nat sample").acquire() if trainer.is_global_zero else None
    try:
        if request.overwrite and trainer.is_global_zero:  # (before predict starts, so before any rank writes a part)
            shutil.rmtree(files.parts, ignore_errors=True)
        done = set() if request.overwrite else done_batches(files)
        if done:
            rank_zero_info(f"sample: resuming: {len(done)} batches already in {files.parts}")
        loader = generation_loader(request.num_samples, request.batch_size, request.seed, num_classes=num_classes,
                                   labels=labels, skip=done, prompts=prompts)  # fmt: skip
        writer = SampleWriter(files, request.num_samples, request.batch_size, settings, parsed, request.save_png,
                              request.grid_samples, info, request.draw)  # fmt: skip
        trainer.callbacks.append(writer)
        eager, model.sampling_compiler = model.sampling_compiler, compiler
        try:
            trainer.predict(model, dataloaders=loader, ckpt_path=ckpt_path, return_predictions=False)
        finally:
            trainer.callbacks.remove(writer)
            model.sampling_compiler = eager
    finally:
        if lock is not None:
            lock.release()
    return files.npz
