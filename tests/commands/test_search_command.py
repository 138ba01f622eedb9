"""``python -m lit_nat search``: the generation-strategy search on a checkpoint, its files, resume and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_nat.commands.cli import main
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.metrics.digits import DigitsClassifier, save_digits_classifier
from lit_nat.search.report import search_curve
from tests.conftest import fit_tiny_checkpoint, write_random_shards


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """Tiny shards, a config with a digits GenerativeEvaluation, and a checkpoint after one step (T = 2: xi has 6)."""
    root = write_random_shards(tmp_path / "shards", codebook_size=12, grid=4, num_classes=3)
    torch.manual_seed(1)
    clf = save_digits_classifier(DigitsClassifier(), tmp_path / "clf.pt")
    evaluation = {
        "class_path": "lit_nat.callbacks.GenerativeEvaluation",
        "init_args": {
            "extractor": "digits",
            "weights_path": str(clf),
            "reference_stats": str(tmp_path / "ref.npz"),
            "reference_split": "val",
            "num_samples": 12,
            "batch_size": 6,
            "seed": 3,
            "inception_score": False,
        },  # fmt: skip
    }
    return fit_tiny_checkpoint(tmp_path, root, steps=2, callbacks=[evaluation])


# large FD steps: on an almost untrained tiny model the official 0.01 / 0.1 change no token and the gradient is 0
FAST = ["--num_samples=6", "--ratio_step=0.2", "--other_step=1.0"]


def search(config: Path, ckpt: Path, out: Path, *extra: str) -> None:
    main(["search", f"--config={config}", f"--ckpt_path={ckpt}", f"--out={out}", *FAST, *extra])


def test_search_writes_files_resumes_and_checks_the_schedule_length(setup, tmp_path, monkeypatch):
    config, ckpt = setup
    out = tmp_path / "search"
    search(config, ckpt, out, "--updates=2")
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # (not the lock file)
    assert names == ["best.yaml", "search_0.yaml", "search_1.yaml", "search_2.yaml", "state.json", "stp_0.yaml",
                     "stp_1.yaml", "stp_2.yaml"]  # fmt: skip
    state = json.loads((out / "state.json").read_text())
    first = state["search"]
    assert first["updates"] == 2 and len(first["xi"]) == 6 and first["momentum_buffer"] is not None
    assert len(first["history"]) == 2 and not any(h["skipped"] for h in first["history"])
    assert all(h["grad_norm"] > 0 for h in first["history"]) and first["xi"] != first["history"][0]["xi"]
    initial = first["history"][0]["fid"]
    assert first["best_fid"] <= initial and first["best_fid"] == min(
        [initial, *(h["fid_after"] for h in first["history"])]
    )
    xi2 = GenerationSchedule.load(out / "stp_2.yaml")
    assert np.allclose(xi2.mask_ratio[:-1], first["xi"][:1])  # the official file carries xi
    assert state["fingerprint"]["num_samples"] == 6 and len(state["cache"]) >= 1 + 2 * 7
    best = GenerationSchedule.load(out / "best.yaml")
    assert best.steps == 2
    # the FID-vs-update curve of the report: the start, then the point after each update
    curve = search_curve(out, offset=3)
    assert curve == [(3, initial), *((4 + k, h["fid_after"]) for k, h in enumerate(first["history"]))]

    # the same command resumes: nothing recomputed that was saved (the evaluator is never called)
    from lit_nat.callbacks.evaluation import GenerativeEvaluation

    calls = []
    original = GenerativeEvaluation.evaluate

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GenerativeEvaluation, "evaluate", counting)
    search(config, ckpt, out, "--updates=2")
    assert calls == [] and json.loads((out / "state.json").read_text())["search"] == first

    # a larger --updates continues from the saved xi and momentum: one update = 6 FD points + the new point
    search(config, ckpt, out, "--updates=3")
    state = json.loads((out / "state.json").read_text())["search"]
    assert state["updates"] == 3 and state["history"][:2] == first["history"]
    assert state["history"][2]["fid"] == first["history"][1]["fid_after"]  # the cached base of update 3
    assert len(calls) <= 7 and (out / "stp_3.yaml").exists()

    # a --schedule with another T than the saved state is a clear error, before any evaluation
    four = GenerationSchedule.heuristic(4).save(tmp_path / "four.yaml")
    with pytest.raises(ValueError, match="has 4 steps but the state to resume .* is for T = 2"):
        search(config, ckpt, out, "--updates=4", f"--schedule={four}")
    # other evaluation settings cannot reuse the cached FIDs
    with pytest.raises(ValueError, match="other weights, statistics or settings"):
        main(["search", f"--config={config}", f"--ckpt_path={ckpt}", f"--out={out}", "--num_samples=8"])


def test_a_saved_search_config_reruns_the_same_search(setup, tmp_path, capsys):
    """``search ... --print_config`` saves the whole search (the fit config's sections, the checkpoint, the settings);
    ``search --config saved.yaml`` runs it and finds what the command line found."""
    config, ckpt = setup
    search(config, ckpt, tmp_path / "direct", "--updates=1")
    with pytest.raises(SystemExit):
        search(config, ckpt, tmp_path / "saved_run", "--updates=1", "--print_config")
    saved = tmp_path / "search.yaml"
    saved.write_text(capsys.readouterr().out)
    main(["search", "--config", str(saved)])
    direct, rerun = (json.loads((tmp_path / d / "state.json").read_text())["search"] for d in ("direct", "saved_run"))
    untimed = [[{k: v for k, v in h.items() if k != "seconds"} for h in s["history"]] for s in (direct, rerun)]
    assert rerun["xi"] == direct["xi"] and untimed[0] == untimed[1] and rerun["updates"] == 1


def test_search_needs_an_evaluator(setup, tmp_path):
    config, ckpt = setup
    with pytest.raises(ValueError, match="no GenerativeEvaluation"):
        main(["search", f"--config={config}", f"--ckpt_path={ckpt}", f"--out={tmp_path / 'x'}",
              "--trainer.callbacks=[]"])  # fmt: skip


def test_a_search_state_belongs_to_its_weights_and_statistics_by_content(setup, tmp_path):
    config, ckpt = setup
    out = tmp_path / "search"
    search(config, ckpt, out, "--updates=1")
    original = ckpt.read_bytes()
    checkpoint = torch.load(ckpt, weights_only=False)
    key = next(k for k in checkpoint["state_dict"] if k.startswith("ema_backbone."))
    checkpoint["state_dict"][key] += 1
    torch.save(checkpoint, ckpt)  # another model under the same path
    with pytest.raises(ValueError, match="other weights, statistics or settings .*'weights'"):
        search(config, ckpt, out, "--updates=2")
    ckpt.write_bytes(original)
    reference = tmp_path / "ref.npz"
    with np.load(reference) as data:
        arrays = {k: data[k] for k in data.files}
    np.savez(reference, **{**arrays, "mu": arrays["mu"] + 1})  # other statistics under the same name
    with pytest.raises(ValueError, match="'reference_stats'"):
        search(config, ckpt, out, "--updates=2")


def test_sigterm_stops_a_search_within_an_evaluation_and_the_rerun_recomputes_nothing(setup, tmp_path, monkeypatch):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lit_nat.callbacks.evaluation import GenerativeEvaluation

    config, ckpt = setup
    out = tmp_path / "search"
    original = GenerativeEvaluation.evaluate
    calls = []

    def evaluate(self, trainer, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # SIGTERM arrives during the fourth evaluation: it stops at its next batch
            trainer._signal_connector.received_sigterm = True
        return original(self, trainer, *args, **kwargs)

    monkeypatch.setattr(GenerativeEvaluation, "evaluate", evaluate)
    with pytest.raises(SIGTERMException):
        search(config, ckpt, out, "--updates=1")
    state = json.loads((out / "state.json").read_text())
    assert len(state["cache"]) == 3  # every finished evaluation was saved at once
    calls.clear()
    monkeypatch.setattr(GenerativeEvaluation, "evaluate", lambda self, *a, **k: calls.append(1) or original(
        self, *a, **k))  # fmt: skip
    search(config, ckpt, out, "--updates=1")
    assert len(calls) == 1 + 6 + 1 - 3  # the start, 6 finite differences and the new point, minus the saved 3


def test_search_shows_its_own_progress_not_an_idle_validation_bar(setup, tmp_path, capfd):
    config, ckpt = setup
    search(config, ckpt, tmp_path / "search", "--updates=1", "--trainer.enable_progress_bar=true")
    err = capfd.readouterr().err
    assert "search: 100%|" in err and "1/1 [" in err  # the updates, with the FID reached
    assert "update 1:   0%|" in err and "/7 [" in err  # its FID evaluations: 6 forward differences + the new point
    assert "digits-FID-6:   0%|" in err and "0/6 [" in err  # the images of each FID
    assert "Validation" not in err


def test_search_with_adapters_searches_the_merged_weights(setup, tmp_path):
    """``--adapters`` merges LoRA adapters before the search: the same search, FID for FID, as on the checkpoint that
    merge-adapter writes; and the state belongs to the merged weights (resuming without the adapter is refused)."""
    from lit_nat import load_model
    from lit_nat.training.lora import LoraSettings, adapter_parameters, add_adapters, base_identity, write_adapter

    config, ckpt = setup
    backbone = load_model(str(ckpt)).ema_backbone
    lora = {"base": base_identity(str(ckpt)), "peft_config": add_adapters(backbone, LoraSettings(rank=2, alpha=2))}
    torch.manual_seed(0)
    for parameter in adapter_parameters(backbone):  # (B starts at zero: an adapter that changes nothing)
        parameter.data.normal_(std=0.5)
    adapter = write_adapter(tmp_path / "adapter", backbone, lora).parent
    merged = tmp_path / "merged.ckpt"
    main(["merge-adapter", f"--ckpt_path={ckpt}", f"--out={merged}", "--adapters", str(adapter)])
    search(config, ckpt, tmp_path / "with_adapter", "--updates=1", "--adapters", str(adapter))
    search(config, merged, tmp_path / "merged", "--updates=1")
    history = [[{k: v for k, v in update.items() if k != "seconds"}  # (the wall time of each update differs)
                for update in json.loads((tmp_path / run / "state.json").read_text())["search"]["history"]]
               for run in ("with_adapter", "merged")]  # fmt: skip
    assert history[0] == history[1] and history[0][0]["fid"] > 0
    with pytest.raises(ValueError, match="other weights"):
        search(config, ckpt, tmp_path / "with_adapter", "--updates=1")  # the base alone is other weights


def test_a_search_from_another_reveal_policy_keeps_it_in_its_files(setup, tmp_path):
    """The official strategy format has no reveal policy: a halton search writes lit_nat's files only, each with
    the policy, and no stp_k.yaml (it used to stop at the first update trying to write one)."""
    config, ckpt = setup
    start = GenerationSchedule.preset("heuristic", steps=2, reveal="halton").save(tmp_path / "halton.yaml")
    out = tmp_path / "search"
    search(config, ckpt, out, "--updates=1", f"--schedule={start}")
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == ["best.yaml", "search_0.yaml", "search_1.yaml", "state.json"]
    assert {GenerationSchedule.load(out / n).reveal for n in names if n.endswith(".yaml")} == {"halton"}


def test_a_backtracking_search_never_moves_to_a_worse_point_and_resumes_free(setup, tmp_path):
    """--backtrack: every update either lowers the FID of the point it moves to or stays; the state records each
    update's step fraction, and a resumed search re-evaluates nothing (the accepted points' FIDs are cached)."""
    config, ckpt = setup
    out = tmp_path / "search"
    options = ["--updates=2", "--backtrack=3", "--other_lr=1000", "--ratio_lr=1.0"]  # steps that change tokens
    search(config, ckpt, out, *options)
    history = json.loads((out / "state.json").read_text())["search"]["history"]
    assert len(history) == 2 and all(h["step_scale"] in (0, 1, 0.5, 0.25, 0.125) for h in history)
    assert all(h["fid_after"] <= h["fid"] for h in history) and history[-1]["fid_after"] < history[0]["fid"]
    cache = json.loads((out / "state.json").read_text())["cache"]
    search(config, ckpt, out, *options)  # done: nothing to evaluate
    assert json.loads((out / "state.json").read_text())["cache"] == cache
