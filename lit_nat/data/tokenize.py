"""``python -m lit_nat tokenize``: an image folder (ImageNet class-folder layout) -> token shards of one split.

Resumable and parallel (a SLURM array: ``--task_index/--num_tasks``), with shard contents that depend only on the
image list and the plan, never on the number of tasks or workers, nor on the batch size as long as the tokenizer's
ids do not (the VQGAN encodes image by image by default for that reason). Files in the output root::

    tokenize_<split>_plan.json    # the plan: tokenizer, resolution, flip, order, images per shard, image-list hash
    classes.txt                   # the class names, label = line index (pass it as --classes for another split)
    <split>-000003.json           # the record of a complete shard: sample count, skipped files, sha256 of the tar
    <split>-000003.tar            # the shard (the format of lit_nat.data.shards)
    tokenize_<split>_report.json  # written by tokenize-verify (counts, token histogram, problems)
    tokenize_<split>_skipped.txt  # unreadable files and why ("path<TAB>reason"), written by tokenize-verify
    meta.json                     # the split and its codebook usage are added only by finalisation (tokenize-verify
                                  # --finalize), the usage counted from the verified shards (a resumed run's too)

Shard ``i`` holds images ``[i * S, (i + 1) * S)`` of the image list in plan order (class folders and files sorted,
then, by default, a hash shuffle so every shard mixes classes; ``--sorted`` keeps the sorted order); with ``--flip``
every image is followed by its horizontal flip, as its own sample (key ``<key>_flip``). Shards are dealt to tasks
round-robin (shard ``i`` to task ``i mod num_tasks``).

Crash ordering, per shard: the tar is built in memory; its record (with the tar's sha256) is written atomically;
then the tar, atomically too (:func:`lit_nat.core.io.atomic_write`: a temporary file beside it, fsync, rename). So a
``.tar`` always has its record and is whole; a crash leaves at most a record without tar (and a temporary file that
the next write of that shard removes), and the shard is redone on restart. A ``.tar`` without a record is not ours:
the run stops rather than touch it.

Finalisation (adding the split to ``meta.json``) is a separate, single step: ``tokenize-verify --finalize`` checks
every shard first and publishes only a verified split, under a file lock, merging with splits already listed. A
run with ``--num_tasks 1`` does it itself when it completes the split; array tasks never do (deciding which task is
last needs a lock that works across nodes, which NFS/Lustre do not promise), so run it after the array, e.g. as a
job with ``--dependency=afterok:<array job id>`` (see ``scripts/slurm/tokenize.sbatch``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lit_nat.conditioning.text import text_encoder_from_config
from lit_nat.core.io import atomic_write_text
from lit_nat.data.captioned import (
    has_caption_files,
    list_caption_files,
    list_caption_table,
    list_coco,
    list_img2dataset,
)
from lit_nat.data.imagefolder import (
    FLIP_SUFFIX,
    CroppedImages,
    ImageList,
    collate_crops,
    list_image_folder,
    read_class_list,
    sample_keys,
)
from lit_nat.data.meta import META_FILE
from lit_nat.data.shards import make_sample, shard_name
from lit_nat.data.tokenize_plan import (
    PATCH,
    TokenizeError,
    build_tokenizer,
    claim_root,
    make_plan,
    shard_complete,
    write_shard,
)
from lit_nat.data.tokenize_verify import verify_split
from lit_nat.models.amused_folder import read_amused_folder


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def tokenize_folder(images: str | os.PathLike, out: str | os.PathLike, tokenizer: Any, *, split: str = "train",
                    resolution: int = 256, flip: bool | None = None, images_per_shard: int = 1000,
                    classes: list[str] | None = None, shuffle_seed: int | None = 0, task_index: int = 0,
                    num_tasks: int = 1, device: str = "cpu", batch_size: int = 64, num_workers: int = 4,
                    dry_run: bool = False, captions: str | os.PathLike | None = None,
                    text_encoder: dict[str, Any] | None = None,
                    cache_text: bool = False) -> dict[str, Any]:  # fmt: skip
    """Tokenise this task's shards of ``images`` into ``out`` (see the module docstring); returns a summary.

    The options mean what :class:`TokenizeRequest`'s do (``python -m lit_nat tokenize``), but for these, given as
    objects: ``tokenizer`` a :class:`~lit_nat.tokenizers.Tokenizer` whose ``image_size`` is ``(resolution,
    resolution)``; ``classes`` the class names (label = index; default: the sorted class folders); ``shuffle_seed``
    None for the sorted order; ``text_encoder`` the encoder's config dict; ``device``/``num_workers`` as given.
    """
    check_arguments(split, resolution, tokenizer, task_index, num_tasks, images_per_shard, batch_size, num_workers)
    try:
        listing, unlisted = list_source(images, classes, captions)
    except ValueError as err:
        raise TokenizeError(str(err)) from None
    flip = check_text_options(listing.captions is not None, split, flip, text_encoder, cache_text)
    order = "sorted"
    if shuffle_seed is not None:
        listing, order = listing.shuffled(shuffle_seed), f"shuffled:{shuffle_seed}"
    plan = make_plan(listing, split, tokenizer, resolution, flip, images_per_shard, order, text_encoder, cache_text)
    mine = list(range(task_index, plan.num_shards, num_tasks))
    summary = {"plan": plan.to_dict(), "num_shards": plan.num_shards, "task_shards": len(mine),
               "unlisted": len(unlisted)}  # fmt: skip
    if dry_run:
        return summary
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    claim_root(root, plan)
    if unlisted:  # e.g. images of a captions json that are not in the folder
        atomic_write_text(root / f"tokenize_{split}_unlisted.txt", "".join(f"{f}\t{r}\n" for f, r in unlisted))
        _progress(f"tokenize {split}: {len(unlisted)} listed images skipped (missing or without caption), "
                  f"see {root / f'tokenize_{split}_unlisted.txt'}")  # fmt: skip
    pending = [i for i in mine if not shard_complete(root, plan, i)]
    tag = f"tokenize {split} [task {task_index}/{num_tasks}]"
    _progress(
        f"{tag}: {plan.num_images} images in {plan.num_shards} shards; this task: {len(mine)} shards, "
        f"{len(mine) - len(pending)} already complete, {len(pending)} to write"
    )
    if pending:
        encoder = text_encoder_from_config(text_encoder).to(device) if cache_text else None
        _run(root, plan, listing, tokenizer, pending, device, batch_size, num_workers, tag, encoder)
    summary["written"] = len(pending)
    summary["complete"] = all(shard_complete(root, plan, i) for i in range(plan.num_shards))
    return finish_split(root, split, summary, tag, num_tasks)


def check_text_options(captioned: bool, split: str, flip: bool | None, text_encoder: dict[str, Any] | None,
                       cache_text: bool) -> bool:  # fmt: skip
    """Whether to store flips (default: for ``train`` without captions: a text may say "left"), after checking that
    the text options fit the images."""
    if cache_text and text_encoder is None:
        raise TokenizeError("--cache_text needs --text_encoder (the encoder whose states are stored)")
    if text_encoder is not None and not captioned:
        raise TokenizeError("--text_encoder was given but the images have no captions (--captions or a webdataset)")
    return split == "train" and not captioned if flip is None else flip


def check_arguments(split: str, resolution: int, tokenizer: Any, task_index: int, num_tasks: int,
                    images_per_shard: int, batch_size: int, num_workers: int) -> None:  # fmt: skip
    """Refuse, before any work, arguments that cannot make a valid split (one line naming the value)."""
    if not split or any(c in split for c in "-./\\"):
        raise TokenizeError(f"split name must be non-empty without '-', '.', '/' or '\\', got {split!r}")
    if resolution < PATCH or resolution % PATCH:
        raise TokenizeError(f"--resolution must be a positive multiple of {PATCH} (e.g. 256 or 512), got {resolution}")
    if tuple(tokenizer.image_size) != (resolution, resolution):
        raise TokenizeError(
            f"the tokenizer encodes {tuple(tokenizer.image_size)} images but --resolution is {resolution}; "
            f"they must agree (load the tokenizer for {resolution} px)"
        )
    if tokenizer.channels != 3:
        raise TokenizeError(f"the tokenizer takes {tokenizer.channels}-channel images; image folders give RGB")
    if not 0 <= task_index < num_tasks:
        raise TokenizeError(f"need 0 <= task_index < num_tasks, got task {task_index} of {num_tasks}")
    if images_per_shard < 1 or batch_size < 1 or num_workers < 0:
        raise TokenizeError("images_per_shard and batch_size must be >= 1 and num_workers >= 0")


def finish_split(root: Path, split: str, summary: dict[str, Any], tag: str, num_tasks: int) -> dict[str, Any]:
    """A single task that completed the split verifies it and adds it to ``meta.json``; an array task says how."""
    if summary["complete"] and num_tasks == 1:
        report = summary["report"] = verify_split(root, split, finalize=True)
        if not report["ok"]:
            raise TokenizeError(f"the shards failed verification: {report['problems'][:3]} (see {report['path']})")
        _progress(
            f"{tag}: verified and added to {root / META_FILE}: {report['num_samples']} samples, "
            f"{report['skipped_images']} unreadable files skipped (tokenize_{split}_skipped.txt)"
        )
    elif num_tasks > 1:
        _progress(
            f"{tag}: done. When all tasks are, run `python -m lit_nat tokenize-verify --root {root} "
            f"--split {split} --finalize` to check the shards and add the split to {META_FILE}"
        )
    return summary


def list_source(images: Any, classes: list[str] | None, captions: Any) -> tuple[ImageList, list[tuple[str, str]]]:
    """The images to tokenise: a folder with its captions (a COCO json, or a file,caption CSV or JSON-lines table), an
    img2dataset webdataset folder (``*.tar``), a folder with a ``.txt`` caption beside each image, or an
    ImageNet-layout class folder; and the listed images that were skipped (missing, no caption)."""
    folder = Path(images)
    if captions is not None:
        return list_coco(folder, captions) if Path(captions).suffix == ".json" else list_caption_table(folder, captions)
    if folder.is_dir() and any(folder.glob("*.tar")):
        return list_img2dataset(folder)
    if has_caption_files(folder):
        return list_caption_files(folder)
    return list_image_folder(folder, classes), []


def _run(root, plan, listing, tokenizer, pending, device, batch_size, num_workers, tag, encoder=None) -> None:
    dev = torch.device(device)
    tokenizer = tokenizer.to(dev).eval()
    keys = sample_keys(listing.files)
    # a batch never straddles two shards, so each shard is published as soon as its last batch is encoded
    batches = [
        list(r[j : j + batch_size])
        for i in pending
        for r in [plan.shard_images(i)]
        for j in range(0, len(r), batch_size)
    ]
    loader = torch.utils.data.DataLoader(
        CroppedImages(listing.root, listing.files, plan.resolution),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate_crops,
        pin_memory=dev.type == "cuda",
    )
    token_space = {"num_tokens": plan.grid_size[0] * plan.grid_size[1], "codebook_size": plan.codebook_size}
    total = sum(len(plan.shard_images(i)) for i in pending)
    done, start, written = 0, time.monotonic(), 0
    samples: list[dict] = []
    skipped: list[tuple[str, str]] = []
    for batch in loader:
        ids = flipped = None
        if batch["images"] is not None:
            ids, flipped = _encode(tokenizer, batch["images"], dev, plan.flip, token_space["num_tokens"])
        good = [i for i, ok in zip(batch["index"], batch["ok"]) if ok]
        text = _text_states(encoder, [listing.captions[i] for i in good]) if encoder is not None else None
        j = 0
        for i, ok in zip(batch["index"], batch["ok"]):
            if not ok:
                skipped.append((listing.files[i], batch["errors"][i]))
                continue
            label = listing.labels[i]
            extra = {"num_classes": len(plan.classes), **token_space}
            if listing.captions is not None:
                extra.update(captions=listing.captions[i], text_states=None if text is None else text[j])
            samples.append(make_sample(keys[i], ids[j], label, **extra))
            if flipped is not None:
                samples.append(make_sample(keys[i] + FLIP_SUFFIX, flipped[j], label, **extra))
            j += 1
        done += len(batch["index"])
        index = batch["index"][-1] // plan.images_per_shard
        if batch["index"][-1] + 1 == plan.shard_images(index).stop:
            write_shard(root, plan, index, samples, skipped)
            written += 1
            rate = done / max(time.monotonic() - start, 1e-9)
            _progress(
                f"{tag}: {shard_name(plan.split, index)} ({len(samples)} samples, {len(skipped)} skipped) | "
                f"{written}/{len(pending)} shards, {done}/{total} images | {rate:.1f} images/s | "
                f"ETA {_duration((total - done) / rate)}"
            )
            samples, skipped = [], []


def _text_states(encoder: Any, captions: list[tuple[str, ...]]) -> list[dict[str, Any]]:
    """The text encoder's states of every caption of each image, one ``{tokens, mask, pooled}`` per image."""
    flat = [c for image in captions for c in image]
    if not flat:
        return []
    with torch.inference_mode():
        states = encoder.encode(flat)
    out, start = [], 0
    for image in captions:
        rows = slice(start, start + len(image))
        out.append({"tokens": states.tokens[rows], "mask": states.mask[rows], "pooled": states.pooled[rows]})
        start += len(image)
    return out


def _encode(tokenizer, images: torch.Tensor, device: torch.device, flip: bool, num_tokens: int):
    """uint8 ``(B, H, W, 3)`` -> ids ``(B, L)`` of the images and (with ``flip``) of their mirror images."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)  # (B, 3, H, W) in [0, 1]
    if flip:
        x = torch.cat([x, x.flip(-1)])  # originals then horizontal flips, encoded together as upstream does
    with torch.inference_mode():
        ids = tokenizer.encode(x)
    ids = ids.cpu().numpy()
    if ids.shape != (x.shape[0], num_tokens):
        raise TokenizeError(f"the tokenizer returned ids of shape {ids.shape}, expected {(x.shape[0], num_tokens)}")
    n = images.shape[0]
    return ids[:n], (ids[n:] if flip else None)


# ------------------------------------------------------------------------------------------------------ command line
@dataclass(frozen=True)
class TokenizeRequest:
    """What a ``tokenize`` run is asked for.

    Args:
        images: the split's image folder, e.g. /data/ILSVRC2012/train; or a COCO image folder (with --captions), or an
            img2dataset webdataset folder of *.tar (CC3M, CC12M).
        out: the data root to write (shards, plan, records).
        split: split name.
        resolution: centre-crop side in pixels, a multiple of 16.
        tokenizer: registry name of the tokenizer.
        checkpoint: the tokenizer's weights (passed as checkpoint=...).
        tokenizer_arg: further tokenizer arguments as KEY=VALUE (value parsed as YAML); image_size defaults to
            --resolution.
        captions: the images' captions: an MS-COCO captions json (e.g. annotations/captions_train2014.json), or your
            own table of file,caption rows (.csv with that header, or .jsonl of {"file": ..., "caption": ...}). A
            folder with a .txt beside each image needs none.
        text_encoder: the text encoder the captions are for, as JSON, e.g. '{"name": "clip", "path":
            "assets/clip-vit-large-patch14"}' (recorded in meta.json).
        amused: tokenise for an aMUSEd model: its VQ-GAN (FOLDER/vqvae) and CLIP text encoder, instead of
            --tokenizer/--checkpoint/--text_encoder.
        cache_text: also store the encoder's states of every caption (text.npz: 118 KB per caption for CLIP-L;
            training then runs no text encoder).
        classes: class list file (one name per line, label = line index; first word counts); default: the sorted
            class folders.
        flip: also store each image's horizontal flip (default: true for split train, false otherwise).
        images_per_shard: images per shard.
        shuffle_seed: seed of the image order's hash shuffle.
        sorted: keep the sorted order (shards hold one class or two).
        task_index: this task's index (default: SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, or 0).
        num_tasks: number of tasks (default: SLURM_ARRAY_TASK_COUNT, or 1).
        device: cpu, cuda or cuda:N (default: cuda when there is one).
        batch_size: images per encoder call.
        num_workers: image decoding processes (default: the CPU count, at most 8).
        dry_run: list the images, print the plan and shard count, exit.
    """

    images: str
    out: str
    split: str = "train"
    resolution: int = 256
    tokenizer: str = "vqgan"
    checkpoint: str | None = None
    tokenizer_arg: list[str] | None = None
    captions: str | None = None
    text_encoder: str | None = None
    amused: str | None = None
    cache_text: bool = False
    classes: str | None = None
    flip: bool | None = None
    images_per_shard: int = 1000
    shuffle_seed: int = 0
    sorted: bool = False
    task_index: int | None = None
    num_tasks: int | None = None
    device: str | None = None
    batch_size: int = 64
    num_workers: int | None = None
    dry_run: bool = False


def tokenize(request: TokenizeRequest) -> dict[str, Any]:
    """Tokenise an image folder (<images>/<class>/**/*.{jpg,jpeg,png,gif}, the ImageNet layout) into token shards of
    one split: ADM centre crop, horizontal flips as extra samples, resumable, and parallel as a SLURM array
    (--task_index/--num_tasks). Array runs are finalised by `tokenize-verify --finalize`.
    """
    r, env = request, os.environ
    task_index = int(env.get("SLURM_ARRAY_TASK_ID", 0)) - int(env.get("SLURM_ARRAY_TASK_MIN", 0)) if \
        r.task_index is None else r.task_index  # fmt: skip
    num_tasks = int(env.get("SLURM_ARRAY_TASK_COUNT", 1)) if r.num_tasks is None else r.num_tasks
    try:
        encoder = json.loads(r.text_encoder) if r.text_encoder else None
        tokenizer, checkpoint = r.tokenizer, r.checkpoint
        if r.amused is not None:
            if checkpoint or encoder or tokenizer != "vqgan":
                raise TokenizeError("--amused sets the tokenizer and the text encoder: drop --tokenizer, --checkpoint "
                                    "and --text_encoder")  # fmt: skip
            spec = read_amused_folder(r.amused)
            tokenizer, checkpoint, encoder = "amused_vq", spec["tokenizer"]["checkpoint"], spec["text_encoder"]
        if not Path(r.images).exists():  # before the (possibly slow) tokenizer load
            raise TokenizeError(f"--images {r.images}: no such folder")
        summary = tokenize_folder(
            r.images, r.out, build_tokenizer(tokenizer, checkpoint, r.tokenizer_arg or [], r.resolution),
            split=r.split, resolution=r.resolution, flip=r.flip, images_per_shard=r.images_per_shard,
            classes=read_class_list(r.classes) if r.classes else None,
            shuffle_seed=None if r.sorted else r.shuffle_seed, task_index=task_index, num_tasks=num_tasks,
            device=r.device or default_device(), batch_size=r.batch_size,
            num_workers=min(8, os.cpu_count() or 1) if r.num_workers is None else r.num_workers,
            dry_run=r.dry_run, captions=r.captions, text_encoder=encoder, cache_text=r.cache_text,
        )  # fmt: skip
    except FileNotFoundError as err:  # a missing image folder, captions file or class list: the user's path
        raise TokenizeError(str(err)) from None
    if r.dry_run:
        plan = summary["plan"]
        print(json.dumps({k: v for k, v in plan.items() if k != "classes"}, indent=2))
        print(f"{plan['num_images']} images -> {summary['num_shards']} shards; e.g. sbatch --array=0-"
              f"{min(summary['num_shards'], 64) - 1} (at most one task per shard is useful)")  # fmt: skip
    return summary


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
