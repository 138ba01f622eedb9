"""Text as a condition: encoders, both backbones, guidance's empty prompt, cached vs on-the-fly states, captions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lit_nat.conditioning import CLIPTextEncoder, TextCondition, save_random_clip, text_encoder_from_config, text_space
from lit_nat.core.errors import UsageError
from lit_nat.data import ShardWriter, TokenShardDataModule, read_metadata
from lit_nat.data.labels import plan_generation
from lit_nat.data.meta import MetadataError
from lit_nat.data.samples import pick_caption
from lit_nat.training.module import NATModule
from tests.helpers.tiny import ENAT_ARCH, ENAT_OPTIONS, UVIT_ARCH

WORDS = {"name": "words", "vocab": ["a", "red", "bus", "cat", "digit", "seven"], "dim": 16, "max_length": 6}
ARCHS = {"autonat-tiny": (UVIT_ARCH, {}), "enat-tiny": (ENAT_ARCH, ENAT_OPTIONS)}


def text_model(arch: str, encoder=WORDS) -> NATModule:
    overrides, extra = ARCHS[arch]
    torch.manual_seed(0)
    model = NATModule(arch=arch, arch_overrides=overrides, codebook_size=12, grid_size=4, num_classes=1,
                      text_encoder=encoder, **extra).eval()  # fmt: skip
    with torch.no_grad():  # as if trained: ENAT's adaLN-Zero starts every block as the identity, blind to conditions
        for p in model.backbone.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    return model


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_the_prompt_changes_the_logits_and_the_null_condition_is_the_empty_prompt(arch):
    model = text_model(arch)
    ids = torch.full((2, 16), 12)
    ids[:, :5] = torch.arange(5)  # a few visible tokens (ENAT encodes them)
    text = model.conditioner.encode(["a red bus", "a cat"], model.device)
    logits, state = model.backbone(ids, text, num_masked=11)
    assert not torch.allclose(logits[0], logits[1])  # only the prompts differ
    null = model.conditioner.null(2, model.device)
    empty = model.conditioner.encode(["", ""], model.device)
    assert torch.equal(null.tokens, empty.tokens) and torch.equal(null.pooled, empty.pooled)
    if model.backbone.supports_reuse:  # the text context works with feature reuse
        ids2 = ids.clone()
        ids2[:, 5:8] = 3
        reused, _ = model.backbone(ids2, text, state=state, num_masked=8)
        other, _ = model.backbone(ids2, model.conditioner.encode(["a cat", "a red bus"], model.device), state=state,
                                  num_masked=8)  # fmt: skip
        assert not torch.allclose(reused, other)
    with pytest.raises(UsageError, match="text-conditioned: give prompts"):
        model.generate(torch.tensor([0, 0]))
    out = model.generate(prompts=["a red bus", "seven"], seed=3).ids
    assert out.shape == (2, 16) and torch.equal(out, model.generate(prompts=["a red bus", "seven"], seed=3).ids)


def test_a_class_model_refuses_prompts():
    model = NATModule(arch="autonat-tiny", arch_overrides=ARCHS["autonat-tiny"][0], codebook_size=12, grid_size=4,
                      num_classes=3)  # fmt: skip
    with pytest.raises(UsageError, match="class-conditional .* give labels, not prompts"):
        model.generate(prompts=["a cat"])


def test_words_encoder_truncates_with_a_warning_and_maps_unknown_words():
    encoder = text_encoder_from_config(WORDS)
    with pytest.warns(UserWarning, match="longer than the text encoder's 6 tokens are truncated"):
        long = encoder.encode("a red bus a red bus a cat")
    assert long.mask.sum() == 6
    unknown = encoder.encode(["zebra", "giraffe"])
    assert torch.equal(unknown.tokens[0], unknown.tokens[1])  # one shared vector for unknown words
    assert text_space(WORDS) == (16, 6)


def test_clip_encoder_from_a_local_folder(tmp_path):
    folder = save_random_clip(tmp_path / "clip", hidden=32, layers=2, heads=2, max_length=16)
    encoder = CLIPTextEncoder(str(folder), max_length=16)
    out = encoder.encode(["a cat", "a red bus"])
    assert out.tokens.shape == (2, 16, 32) and out.pooled.shape == (2, 32)
    assert out.mask[0].sum() < out.mask[1].sum()  # "a cat" is shorter
    assert text_space(encoder.config()) == (32, 16)
    penultimate = CLIPTextEncoder(str(folder), layer="penultimate", pooled="mean", max_length=16).encode(["a cat"])
    assert not torch.allclose(penultimate.tokens, out.tokens[:1])
    with pytest.warns(UserWarning, match="truncated"):
        encoder.encode("a very long prompt that does not fit")
    with pytest.raises(UsageError, match=r"text encoder .*missing does not exist .*with --text_encoder$"):
        CLIPTextEncoder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no CLIP text encoder folder"):
        CLIPTextEncoder(str(tmp_path / "empty"))
    model = text_model("autonat-tiny", encoder.config())  # a backbone sized from the folder's config
    assert model.generate(prompts=["a cat"], seed=0).ids.shape == (1, 16)


# ------------------------------------------------------------------------------------------------------ captioned data
def write_captioned(root, encoder=None, cache=False, n=24):
    """n samples (4x4 grid, 12 codes), 3 captions each; with ``cache`` the encoder's states of every caption."""
    rng = np.random.default_rng(0)
    config = WORDS if encoder is None else encoder.config()
    encoder = encoder or text_encoder_from_config(WORDS)
    tokenizer = {"name": "pixel", "levels": 12, "image_size": 4, "channels": 1}
    for split in ("train", "val"):
        with ShardWriter(root, split, codebook_size=12, grid_size=(4, 4), num_classes=1, tokenizer_config=tokenizer,
                         samples_per_shard=8, text_encoder=config) as writer:  # fmt: skip
            for i in range(n):
                captions = [f"a red bus {i}", "a cat", f"seven {i}"]
                states = None
                if cache:
                    s = encoder.encode(captions)
                    states = {"tokens": s.tokens, "mask": s.mask, "pooled": s.pooled}
                writer.write(rng.integers(0, 12, 16), 0, captions=captions, text_states=states)
    return root


def test_caption_draws_are_deterministic_and_cover_every_caption():
    sample = {"key": "000007", "captions": ["a", "b", "c"]}
    drawn = [pick_caption(dict(sample), seed=0, epoch=e)["text"] for e in range(30)]
    assert drawn == [pick_caption(dict(sample), seed=0, epoch=e)["text"] for e in range(30)]
    assert set(drawn) == {"a", "b", "c"}


def test_cached_and_on_the_fly_states_give_the_same_logits(tmp_path):
    root = write_captioned(tmp_path / "cached", cache=True)
    assert read_metadata(root).fields == ("tokens.npy", "cls", "captions.json", "text.npz")
    dm = TokenShardDataModule(str(root), batch_size=4, num_workers=0)
    batch = next(iter(dm.val_dataloader()))
    assert batch["text_emb"].dtype == torch.float16 and batch["text_emb"].shape == (4, 6, 16)
    model = text_model("autonat-tiny", dm.text_encoder_config)
    cached = model.conditioner.of_batch(batch, model.device)
    live = model.conditioner.of_batch({k: v for k, v in batch.items() if not k.startswith("text_")}, model.device)
    rounded = TextCondition(live.tokens.half().float(), live.mask, live.pooled.half().float())  # what the cache keeps
    ids = batch["ids"]
    logits = {name: model.backbone(ids, c)[0] for name, c in (("cached", cached), ("rounded", rounded),
                                                             ("live", live))}  # fmt: skip
    assert torch.equal(logits["cached"], logits["rounded"])
    assert torch.allclose(logits["cached"], logits["live"], atol=1e-2)


def test_shards_of_one_text_encoder_refuse_another(tmp_path):
    root = write_captioned(tmp_path / "cached", cache=True)
    other = {**WORDS, "seed": 1}
    with pytest.raises(MetadataError, match="cache the states of text encoder .* not of"):
        TokenShardDataModule(str(root), text_encoder=other)
    plain = write_captioned(tmp_path / "plain")
    assert TokenShardDataModule(str(plain), text_encoder=other).text_encoder_config == other  # no cache: free choice
    meta = json.loads((plain / "meta.json").read_text())
    meta["text_encoder"] = None
    (plain / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(MetadataError, match="captioned shards but no text encoder: pass --data.text_encoder"):
        TokenShardDataModule(str(plain))


def test_prompts_cycle_over_the_samples():
    plan = plan_generation(7, 3, seed=5, prompts=["a", "b", "c", "d", "e"])
    assert [p for b in plan for p in b.prompts] == ["a", "b", "c", "d", "e", "a", "b"]
    assert [b.seed for b in plan] == [5, 8, 11]


def test_evaluation_and_the_schedule_search_run_on_a_text_model(tmp_path):
    """FID with the val captions as prompts, the CLIP score beside it, and a search update that is deterministic."""
    from lit_nat.commands.cli import main
    from lit_nat.metrics.clip_score import save_random_clip_model
    from lit_nat.metrics.digits import DigitsClassifier, save_digits_classifier
    from tests.conftest import fit_tiny_checkpoint, write_random_shards

    root = write_random_shards(tmp_path / "shards", codebook_size=12, grid=4, num_classes=3, text_encoder=WORDS)
    torch.manual_seed(1)
    classifier = save_digits_classifier(DigitsClassifier(), tmp_path / "clf.pt")
    clip = save_random_clip_model(tmp_path / "clip")
    evaluation = {"class_path": "lit_nat.callbacks.GenerativeEvaluation", "init_args": {
        "extractor": "digits", "weights_path": str(classifier), "reference_stats": str(tmp_path / "ref.npz"),
        "reference_split": "val", "num_samples": 12, "batch_size": 6, "seed": 3, "inception_score": False,
        "clip_score_model": str(clip)}}  # fmt: skip
    config, ckpt = fit_tiny_checkpoint(tmp_path, root, steps=2, callbacks=[evaluation])
    main(["validate", f"--config={config}", f"--ckpt_path={ckpt}", "--trainer.limit_val_batches=1",
          f"--trainer.default_root_dir={tmp_path / 'val'}"])  # fmt: skip
    (report,) = (tmp_path / "val").rglob("eval_report.json")
    values = json.loads(report.read_text())
    assert np.isfinite(values["fid"]) and 0 <= values["clip_score"] <= 100
    states = []
    for out in ("s1", "s2"):
        main(["search", f"--config={config}", f"--ckpt_path={ckpt}", f"--out={tmp_path / out}", "--updates=1",
              "--num_samples=6", "--ratio_step=0.2", "--other_step=1.0"])  # fmt: skip
        state = json.loads((tmp_path / out / "state.json").read_text())["search"]
        state["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in state["history"]]
        states.append(state)
    assert states[0] == states[1] and states[0]["updates"] == 1  # the same prompts and seeds: deterministic
    assert states[0]["history"][0]["grad_norm"] > 0
    assert (tmp_path / "s1" / "search_0.yaml").read_text() != (tmp_path / "s1" / "search_1.yaml").read_text()
