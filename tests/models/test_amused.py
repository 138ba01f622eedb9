"""aMUSEd in lit_nat: equivalence with diffusers' classes on random tiny weights, its schedule preset, import,
sampling, editing and the strategy search from a local diffusers folder, and the errors of bad folders and inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import AmusedScheduler, UVit2DModel, VQModel  # noqa: E402

from lit_nat.commands.cli import main  # noqa: E402
from lit_nat.core.checkpointing import read_diffusers_weights  # noqa: E402
from lit_nat.core.errors import CheckpointError, UsageError  # noqa: E402
from lit_nat.generation.decoding import guided_log_probs  # noqa: E402
from lit_nat.generation.schedule import GenerationSchedule  # noqa: E402
from lit_nat.models.amused_folder import read_amused_folder, save_random_amused  # noqa: E402
from lit_nat.tokenizers import AmusedVQTokenizer  # noqa: E402
from lit_nat.training.importer import amused_module  # noqa: E402
from lit_nat.training.loading import load_model  # noqa: E402

PROMPTS = ["a red bus", "two cats on a sofa", ""]
GRID, K = 8, 8  # the random folder's token grid (8 x 8 of 16 px images) and codebook


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_random_amused(tmp_path_factory.mktemp("amused") / "amused-tiny", hidden=16, layers=2)


@pytest.fixture(scope="module")
def model(folder):
    return amused_module(folder)


def random_ids(batch: int, seed: int = 0, masked_every: int | None = 3) -> torch.Tensor:
    ids = torch.randint(0, K, (batch, GRID * GRID), generator=torch.Generator().manual_seed(seed))
    if masked_every:
        ids[:, ::masked_every] = K  # lit_nat's [MASK] = K
    return ids


# ------------------------------------------------------------------------------------------------------ equivalence
def test_backbone_logits_equal_uvit2dmodel(folder, model):
    reference = UVit2DModel.from_pretrained(folder / "transformer").eval()
    condition = model.conditioner.encode(PROMPTS, torch.device("cpu"))
    ids = random_ids(len(PROMPTS))
    ours, state = model.ema_backbone(ids, condition)
    mask_id = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["mask_token_id"]
    theirs = reference(ids.masked_fill(ids == K, mask_id).view(-1, GRID, GRID),
                       encoder_hidden_states=condition.tokens, pooled_text_emb=condition.pooled,
                       micro_conds=torch.tensor([[16.0, 16.0, 0.0, 0.0, 6.0]]).expand(len(PROMPTS), -1))  # fmt: skip
    theirs = theirs.flatten(2).transpose(1, 2)  # (B, K, h, w) -> (B, N, K)
    assert state is None and ours.shape == (len(PROMPTS), GRID * GRID, K)
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-5
    other, _ = model.ema_backbone(ids, model.conditioner.encode(PROMPTS[::-1], torch.device("cpu")))
    assert not torch.allclose(other[0], ours[0])  # the prompt reaches the logits


def test_text_states_are_the_pipelines(folder, model):
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    encoder = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder").eval()
    ids = tokenizer(PROMPTS, return_tensors="pt", padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length).input_ids  # fmt: skip
    with torch.no_grad():
        out = encoder(ids, return_dict=True, output_hidden_states=True)  # as AmusedPipeline encodes prompts
    ours = model.conditioner.encode(PROMPTS, torch.device("cpu"))
    assert torch.allclose(ours.tokens, out.hidden_states[-2]) and torch.allclose(ours.pooled, out.text_embeds)


def test_vq_decode_and_encode_equal_vqmodel(folder):
    reference = VQModel.from_pretrained(folder / "vqvae").eval()
    tokenizer = AmusedVQTokenizer(folder / "vqvae", image_size=16)
    assert (tokenizer.codebook_size, tokenizer.grid_size, tokenizer.image_size) == (K, (GRID, GRID), (16, 16))
    ids = random_ids(2, masked_every=None)
    images = tokenizer.decode(ids)
    with torch.no_grad():
        shape = (2, GRID, GRID, reference.config.latent_channels)
        theirs = reference.decode(ids.view(2, GRID, GRID), force_not_quantize=True, shape=shape).sample.clip(0, 1)
        latents = reference.encode(images).latents  # as AmusedImg2ImgPipeline encodes
        codes = reference.quantize(latents)[2][2].view(2, -1)
    assert images.shape == (2, 3, 16, 16) and torch.equal(images, theirs)
    assert torch.equal(tokenizer.encode(images), codes)
    assert AmusedVQTokenizer.space_of(checkpoint=folder / "vqvae", image_size=32) == (K, (16, 16))


def test_bf16_decodes_and_fp16_is_refused_with_the_reason(folder):
    bf16 = AmusedVQTokenizer(folder / "vqvae", image_size=16, dtype="bf16")
    ids = random_ids(1, masked_every=None)
    assert bf16.decode(ids).dtype == torch.float32 and torch.isfinite(bf16.decode(ids)).all()
    with pytest.raises(UsageError, match="overflows to NaN in float16; use fp32 or bf16"):
        AmusedVQTokenizer(folder / "vqvae", dtype="fp16")


def test_fp16_weight_files_are_read_and_upcast(folder, tmp_path):
    vq = tmp_path / "vqvae"
    shutil.copytree(folder / "vqvae", vq)
    VQModel.from_pretrained(vq).half().save_pretrained(vq, variant="fp16")
    (vq / "diffusion_pytorch_model.safetensors").unlink()  # only the fp16 variant is left, as some downloads have
    state = read_diffusers_weights(vq)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert torch.isfinite(AmusedVQTokenizer(vq, image_size=16).decode(random_ids(1, masked_every=None))).all()


# ------------------------------------------------------------------------------------------------------ the preset
def test_the_amused_preset_reproduces_amused_scheduler():
    steps, n = 12, GRID * GRID
    schedule = GenerationSchedule.preset("amused")
    scheduler = AmusedScheduler(mask_token_id=K)
    scheduler.set_timesteps(steps, temperature=(2, 0))
    assert np.allclose(schedule.remask_temperature, scheduler.temperatures.numpy(), atol=1e-6)
    assert schedule.sample_temperature == [1.0] * steps  # aMUSEd draws from the plain softmax
    # counts: run AmusedScheduler's own loop on random logits and count what it leaves masked after each step
    sample, generator = torch.full((2, n), K), torch.Generator().manual_seed(0)
    masked = []
    for timestep in scheduler.timesteps:
        logits = torch.randn(2, n, K, generator=generator)
        sample = scheduler.step(logits, timestep, sample, generator=generator).prev_sample
        masked.append((sample == K).sum(dim=1).tolist())
    assert [m[0] for m in masked] == [m[1] for m in masked] == schedule.masked_counts(n)
    # guidance: aMUSEd's uncond + g (cond - uncond) at g = 10 is ours cond + w (cond - uncond) at w = 9
    cond, uncond = torch.randn(2, 5, K), torch.randn(2, 5, K)
    theirs = torch.log_softmax(uncond + 10.0 * (cond - uncond), dim=-1)
    assert schedule.guidance == [9.0] * steps
    assert torch.allclose(guided_log_probs(cond, uncond, schedule.guidance[0]), theirs, atol=1e-5)
    assert GenerationSchedule.preset("amused", guidance_scale=1.0).guidance == [0.0] * steps  # g <= 1: no guidance
    assert GenerationSchedule.preset("amused", steps=4, masking_schedule="linear").mask_ratio == [0.75, 0.5, 0.25, 0.0]


# ------------------------------------------------------------------------------------------ import, sample and edit
def test_import_checkpoint_then_sample_and_edit_from_the_checkpoint_alone(folder, model, tmp_path):
    ckpt = tmp_path / "amused.ckpt"
    main(["import-checkpoint", "--format", "amused", "--src", str(folder), "--dst", str(ckpt)])
    loaded = load_model(str(ckpt))
    assert loaded.schedule.name == "amused" and loaded.conditioner.is_text
    assert torch.equal(loaded.backbone.model.embed.embeddings.weight, model.backbone.model.embed.embeddings.weight)
    first = loaded.generate(prompts=PROMPTS, seed=4).ids
    assert first.shape == (3, GRID * GRID) and int(first.max()) < K
    assert torch.equal(first, loaded.generate(prompts=PROMPTS, seed=4).ids)
    with pytest.raises(UsageError, match="text-conditioned: give prompts"):
        loaded.generate(torch.tensor([0]))
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(["import-checkpoint", "--format", "amused", "--src", str(folder), "--dst", str(ckpt)])

    quiet = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]
    main(["sample", f"--ckpt_path={ckpt}", "--num_samples=3", "--batch_size=2", f"--out={tmp_path / 's'}",
          "--prompts", "a red bus", "a cat", *quiet])  # fmt: skip
    with np.load(tmp_path / "s" / "samples.npz") as data:
        assert data["arr_0"].shape == (3, 16, 16, 3)
    assert json.loads((tmp_path / "s" / "samples.json").read_text())["image_prompts"] == ["a red bus", "a cat",
                                                                                         "a red bus"]  # fmt: skip
    np.savez(tmp_path / "inputs.npz", data_array := (np.random.default_rng(0).random((2, 16, 16, 3)) * 255).astype(
        np.uint8))  # fmt: skip
    main(["edit", f"--ckpt_path={ckpt}", f"--images={tmp_path / 'inputs.npz'}", "--mask=half:top",
          "--prompts", "a red bus", "--seeds", "0", "1", f"--out={tmp_path / 'e'}", *quiet])  # fmt: skip
    record = json.loads((tmp_path / "e" / "edits.json").read_text())
    assert len(record["edits"]) == 2 and record["edits"][0]["kept_tokens"] == GRID * GRID // 2
    assert data_array.shape == (2, 16, 16, 3) and (tmp_path / "e" / "grid.png").exists()


# ------------------------------------------------------------------------------------------------------ bad folders
def test_bad_folders_are_one_line_errors_naming_what_is_wrong(folder, tmp_path):
    broken = tmp_path / "no-vq"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "vqvae")
    with pytest.raises(UsageError, match=r"no-vq: the sub-folder vqvae/ \(with config.json\) is missing"):
        read_amused_folder(broken)
    other = tmp_path / "sd"
    shutil.copytree(folder, other)
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(UsageError, match="a StableDiffusionPipeline folder, not aMUSEd's"):
        read_amused_folder(other)
    (other / "model_index.json").unlink()
    config = json.loads((other / "transformer" / "config.json").read_text())
    (other / "transformer" / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DConditionModel"}))
    with pytest.raises(UsageError, match=r"transformer: config of a UNet2DConditionModel, expected UVit2DModel"):
        read_amused_folder(other)
    with pytest.raises(UsageError, match="no such folder"):
        read_amused_folder(tmp_path / "missing")


def test_weights_that_do_not_fit_the_config_are_refused_by_name(folder, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    weights = bad / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state.pop("encoder_proj.weight")
    save_file(state, weights)
    with pytest.raises(CheckpointError, match=r"transformer: the weights do not fit .* 1 missing \(encoder_proj"):
        amused_module(bad)
    (bad / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    with pytest.raises(CheckpointError, match="cannot read the weights"):
        amused_module(bad)


def test_prompts_for_a_class_model_and_labels_for_amused_are_errors(model):
    from lit_nat.conditioning import Conditioner

    with pytest.raises(UsageError, match="class-conditional .*: give labels, not prompts"):
        Conditioner(None, null_class=10).of(prompts=["a cat"])
    with pytest.raises(UsageError, match="text-conditioned: give prompts, not labels"):
        model.conditioner.of(labels=[0])


# ------------------------------------------------------------------------------------------------------ the search
@pytest.mark.slow
def test_the_shipped_cc3m_config_searches_amused_deterministically_and_moves_the_schedule(folder, tmp_path):
    """configs/amused_cc3m.yaml at tiny size on CPU: CC3M-style val shards tokenised with ``--amused``, FID (a random
    digits classifier in place of Inception) with the CLIP score beside it, one search update from aMUSEd's own
    12-step strategy, run twice: the same captions and seeds give the same update."""
    from tests.helpers.cli import command

    tokenize = command("tokenize")
    from lit_nat.metrics.clip_score import save_random_clip_model
    from lit_nat.metrics.digits import DigitsClassifier, save_digits_classifier
    from tests.conftest import REPO
    from tests.helpers.data import make_img2dataset

    ckpt = tmp_path / "amused.ckpt"
    main(["import-checkpoint", "--format", "amused", "--src", str(folder), "--dst", str(ckpt)])
    root = tmp_path / "cc3m-val"
    tokenize(["--images", str(make_img2dataset(tmp_path / "cc3m")), "--out", str(root), "--split", "val",
              "--resolution", "16", "--amused", str(folder), "--num_workers", "0", "--device", "cpu"])  # fmt: skip
    torch.manual_seed(1)
    tiny = [f"--data.root={root}", "--data.num_workers=0", "--data.batch_size=2", "--trainer.accelerator=cpu",
            "--trainer.precision=32-true", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path / 'run'}", "--evaluation.extractor=digits",
            f"--evaluation.weights_path={save_digits_classifier(DigitsClassifier(), tmp_path / 'clf.pt')}",
            f"--evaluation.reference_stats={tmp_path / 'ref.npz'}", "--evaluation.reference_split=val",
            "--evaluation.num_samples=6", "--evaluation.batch_size=6",
            f"--evaluation.clip_score_model={save_random_clip_model(tmp_path / 'clip')}"]  # fmt: skip
    config = REPO / "configs" / "amused_cc3m.yaml"
    states = []
    for out in ("s1", "s2"):
        main(["search", f"--config={config}", f"--ckpt_path={ckpt}", f"--out={tmp_path / out}", "--updates=1",
              "--ratio_step=0.2", "--other_step=1.0", *tiny])  # fmt: skip
        state = json.loads((tmp_path / out / "state.json").read_text())["search"]
        state["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in state["history"]]
        states.append(state)
    assert states[0] == states[1] and states[0]["updates"] == 1  # same captions and seeds: deterministic
    assert states[0]["history"][0]["grad_norm"] > 0
    assert 0 <= states[0]["history"][0]["clip_score_after"] <= 100  # each new point's CLIP score beside its FID
    start = GenerationSchedule.load(tmp_path / "s1" / "search_0.yaml")
    assert start.steps == 12 and start.guidance == GenerationSchedule.preset("amused").guidance  # aMUSEd's own start
    assert GenerationSchedule.load(tmp_path / "s1" / "search_1.yaml").to_dict() != start.to_dict()
    main(["validate", f"--config={config}", f"--ckpt_path={ckpt}", *tiny])
    (report,) = (tmp_path / "run").rglob("eval_report.json")
    values = json.loads(report.read_text())
    assert np.isfinite(values["fid"]) and 0 <= values["clip_score"] <= 100
