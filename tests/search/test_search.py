"""Generation-strategy search: xi layout and projection, FD gradients, momentum SGD, NaN handling, the callback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lit_nat.callbacks import GenerativeEvaluation, ScheduleSearch
from lit_nat.generation.schedule import GenerationSchedule
from lit_nat.metrics.digits import DigitsClassifier, save_digits_classifier
from lit_nat.search import SearchSettings, SearchSpace, estimate_gradient
from lit_nat.search.report import search_curve
from lit_nat.training.module import NATModule
from tests.helpers.tiny import EVAL_MODULE, eval_module, eval_trainer, shards_datamodule


# ---------------------------------------------------------------------------------------------------- layout
def test_official_layout_and_round_trip():
    space = SearchSpace(8)
    schedule = GenerationSchedule.heuristic(8)
    xi = space.to_vector(schedule)
    assert space.size == 30 and xi.dtype == np.float64
    assert space.slices == {"ratio": slice(0, 7), "remask_temp": slice(7, 14), "sample_temp": slice(14, 22),
                            "guidance": slice(22, 30)}  # fmt: skip
    assert xi.tolist() == [*schedule.mask_ratio[:7], *schedule.remask_temperature[:7], *schedule.sample_temperature,
                           *schedule.guidance]  # fmt: skip
    back = space.to_schedule(xi)
    assert back.to_official() == schedule.to_official()  # the official file carries exactly xi
    assert back.mask_ratio[-1] == 0.0 and back.remask_temperature[-1] == 0.0
    assert space.fd_steps[:7].tolist() == [0.01] * 7 and space.fd_steps[7:].tolist() == [0.1] * 23
    assert space.lrs[:7].tolist() == [1e-3] * 7 and space.lrs[7:].tolist() == [0.1] * 23
    assert space.names[0] == "ratio_0" and space.names[7] == "remask_temp_0" and space.names[-1] == "guidance_7"


def test_wrong_length_for_t_is_a_clear_error():
    space = SearchSpace(8)
    with pytest.raises(ValueError, match="has 6 steps but the search space has T = 8"):
        space.to_vector(GenerationSchedule.heuristic(6))
    with pytest.raises(ValueError, match=r"T = 8 needs 30 = 4T - 2 values"):
        space.to_schedule(np.ones(29))
    search = SearchSettings().start(GenerationSchedule.heuristic(4))
    state = SearchSettings().start(GenerationSchedule.heuristic(8)).state_dict()
    with pytest.raises(ValueError, match="state is for T = 8 steps but this search has T = 4"):
        search.load_state_dict(state)
    with pytest.raises(ValueError, match="T >= 2"):
        SearchSpace(1)


# ---------------------------------------------------------------------------------------------------- projection
def _adversarial(space: SearchSpace) -> list[np.ndarray]:
    n, r = space.size, space.slices["ratio"]
    cases = [np.full(n, -5.0), np.full(n, 7.0), np.zeros(n)]
    increasing = np.ones(n)
    increasing[r] = np.linspace(-0.5, 1.5, r.stop)  # every ratio violates monotonicity and half the box
    zigzag = np.ones(n)
    zigzag[r] = [1.2, -0.1] * (r.stop // 2) + [0.5] * (r.stop % 2)
    huge = np.full(n, 1e12)
    huge[r] = [1e12, -1e12] * (r.stop // 2) + [3.0] * (r.stop % 2)
    return [*cases, increasing, zigzag, huge]


def test_projection_keeps_every_constraint_and_is_the_euclidean_projection():
    rng = np.random.default_rng(0)
    for steps in (2, 3, 8):
        space = SearchSpace(steps)
        points = [rng.normal(0.5, 1.5, space.size) for _ in range(200)] + _adversarial(space)
        for xi in points:
            p = space.project(xi)
            ratios = p[space.slices["ratio"]]
            assert np.all((ratios >= 0) & (ratios <= 0.99)) and np.all(np.diff(ratios) <= 0)
            assert np.all(p[space.slices["ratio"].stop :] >= 1e-4)
            assert space.is_feasible(p) and np.array_equal(space.project(p), p)  # idempotent
            GenerationSchedule.validate(space.to_schedule(p))  # the sampler accepts it
            # variational inequality of a projection onto a convex set: <x - p, y - p> <= 0 for every feasible y;
            # a running minimum violates it (e.g. [0.9, 0.1, 0.8] -> [0.9, 0.1, 0.1] instead of [0.9, 0.45, 0.45])
            for _ in range(5):
                y = space.project(rng.normal(0.5, 1.0, space.size))
                assert np.dot(xi - p, y - p) <= 1e-9
    space = SearchSpace(4)
    assert space.project(np.array([0.9, 0.1, 0.8, *[1.0] * 11]))[:3] == pytest.approx([0.9, 0.45, 0.45])
    assert space.project(np.array([0.2, 0.4, 0.6, *[1.0] * 11]))[:3] == pytest.approx([0.4, 0.4, 0.4])  # all pooled
    with pytest.raises(ValueError, match="non-finite"):
        space.project(np.full(space.size, np.nan))


# ---------------------------------------------------------------------------------------------------- FD gradient, SGD
class Quadratic:
    """F(xi) = sum w (xi - c)^2, read back from the schedule (so the xi <-> schedule mapping is exercised too)."""

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.space, self.w, self.c = space, rng.uniform(0.5, 2.0, space.size), rng.uniform(0.2, 0.8, space.size)
        self.calls = 0

    def __call__(self, schedule: GenerationSchedule) -> float:
        self.calls += 1
        xi = self.space.to_vector(schedule)
        return float(np.sum(self.w * (xi - self.c) ** 2))

    def grad(self, xi: np.ndarray) -> np.ndarray:
        return 2 * self.w * (xi - self.c)


def test_forward_difference_matches_the_analytic_gradient():
    space = SearchSpace(4)
    f = Quadratic(space)
    xi = space.to_vector(GenerationSchedule.heuristic(4))
    estimate = estimate_gradient(f, space, xi)
    assert estimate.evaluations == f.calls == 1 + space.size
    h = space.fd_steps
    # forward difference of a quadratic: exactly grad + w h (the O(h) truncation term)
    np.testing.assert_allclose(estimate.grad, f.grad(xi) + f.w * h, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(estimate.grad, f.grad(xi), atol=np.max(f.w * h) * 1.01)

    # a ratio tied with its predecessor has no room upward: a backward step, still divided by the step taken
    tied = xi.copy()
    tied[1] = tied[0]
    estimate = estimate_gradient(f, space, tied)
    assert estimate.steps[1] == pytest.approx(-0.01)
    assert estimate.grad[1] == pytest.approx(f.grad(tied)[1] - f.w[1] * 0.01)
    # a clamped step: 0.005 of room below 0.99 -> the step is 0.005 and the difference is divided by it
    near_top = xi.copy()
    near_top[0] = 0.985
    estimate = estimate_gradient(f, space, near_top)
    assert estimate.steps[0] == pytest.approx(0.005)
    assert estimate.grad[0] == pytest.approx(f.grad(near_top)[0] + f.w[0] * 0.005)
    # pinned between equal neighbours: no evaluation spent, gradient 0
    pinned = xi.copy()
    pinned[:3] = 0.5
    estimate = estimate_gradient(f, space, pinned, base=f(space.to_schedule(pinned)))
    assert estimate.steps[1] == 0 and estimate.grad[1] == 0 and estimate.evaluations == space.size - 1


def test_sgd_momentum_matches_torch_and_descends():
    space = SearchSpace(4)
    f = Quadratic(space, seed=1)
    search = SearchSettings(momentum=0.5).start(GenerationSchedule.heuristic(4))
    xi0 = search.xi.copy()
    param = torch.nn.Parameter(torch.tensor(xi0))
    ratios = space.slices["ratio"].stop  # two groups, as the official code: ratios lr 1e-3, the rest lr 0.1
    optimiser = torch.optim.SGD([{"params": [param], "lr": 1.0}], momentum=0.5)
    lrs = torch.tensor(space.lrs)
    values = []
    for _ in range(3):
        grad = estimate_gradient(f, space, param.detach().numpy()).grad
        param.grad = torch.tensor(grad) * lrs  # per-coordinate lr folded into the gradient (SGD is linear in it)
        optimiser.step()
        with torch.no_grad():  # projected SGD: the projection follows every step
            param.copy_(torch.tensor(space.project(param.detach().numpy())))
        record = search.step(f)
        values.append(record.fid)
        np.testing.assert_allclose(search.xi, param.detach().numpy(), rtol=1e-12, atol=1e-12)
    assert ratios == 3 and search.updates == 3 and values[2] < values[0]
    assert search.best_fid == min(values) and len(search.history) == 3


def test_nan_objective_skips_the_update_without_corrupting_xi():
    space = SearchSpace(4)
    f = Quadratic(space)
    search = SearchSettings().start(GenerationSchedule.heuristic(4))
    search.step(f)  # one applied update: a momentum buffer exists
    xi, buffer = search.xi.copy(), search.buffer.copy()

    def nan_at_guidance(schedule: GenerationSchedule) -> float:
        return float("nan") if schedule.name == "search guidance_2" else f(schedule)

    record = search.step(nan_at_guidance)
    assert record.skipped and "guidance_2" in record.reason and np.isnan(record.grad_norm)
    assert np.array_equal(search.xi, xi) and np.array_equal(search.buffer, buffer) and search.updates == 1
    assert record.evaluations == 1 + space.slices["guidance"].start + 3  # stopped at the first NaN
    record = search.step(lambda schedule: float("inf"))
    assert record.skipped and "base point" in record.reason and record.evaluations == 1
    assert np.array_equal(search.xi, xi) and search.updates == 1
    assert not search.step(f).skipped and search.updates == 2  # and it recovers


def test_backtracking_halves_an_overshooting_step_until_the_objective_falls():
    """A learning rate far too large for the quadratic: the plain step raises F, backtracking halves it until F falls,
    and the accepted point's F is recorded (the next update's base at no extra evaluation)."""
    settings = SearchSettings(other_lr=3.0, ratio_lr=3e-3)
    space = settings.space(4)
    f = Quadratic(space, seed=2)
    start = space.to_schedule(space.project(f.c + 0.05))  # near the minimum, where a large step overshoots
    plain = settings.start(start)
    base = plain.step(f).fid
    assert f(plain.schedule) > base  # overshoot
    search = SearchSettings(other_lr=3.0, ratio_lr=3e-3, backtrack=6).start(start)
    f.calls, tries = 0, []
    record = search.step(lambda s: (tries.append(s.name) if s.name.startswith("search step") else None) or f(s),
                         backtrack=6)  # fmt: skip
    assert 0 < record.step_scale < 1 and record.fid_after < base
    assert record.fid_after == pytest.approx(f(search.schedule))
    assert tries == [f"search step x{0.5**k:g}" for k in range(round(-np.log2(record.step_scale)) + 1)]
    assert record.evaluations == f.calls - 1  # the tries are counted
    assert search.best_fid == record.fid_after and np.array_equal(search.best_xi, search.xi)
    assert search.history[-1]["step_scale"] == record.step_scale
    assert search.step(f, base=record.fid_after, backtrack=6).fid == record.fid_after


def test_a_measured_step_records_the_new_points_value_and_the_best_point():
    settings = SearchSettings(other_lr=0.05)
    search = settings.start(GenerationSchedule.heuristic(4))
    f, names = Quadratic(search.space, seed=1), []
    record = search.step(f, measure=lambda s: names.append(s.name) or f(s))  # the search command's new point
    assert names == ["searched update 1"] and record.evaluations == 1 + search.space.size + 1
    assert record.fid_after == pytest.approx(f(search.schedule)) and record.fid_after < record.fid
    assert record.step_scale == 1
    assert search.best_fid == record.fid_after and np.array_equal(search.best_xi, search.xi)
    unmeasured = settings.start(GenerationSchedule.heuristic(4)).step(f)  # inside fit: the same move, not measured
    assert unmeasured.fid_after is None and unmeasured.xi == record.xi


def test_backtracking_that_finds_no_descent_stays_and_drops_the_momentum():
    search = SearchSettings(backtrack=2).start(GenerationSchedule.heuristic(4))
    xi = search.xi.copy()
    record = search.step(lambda s: 2.0 if s.name.startswith("search step") else 1.0, backtrack=2)  # every try worse
    assert record.step_scale == 0 and record.reason == "no descent" and record.fid_after == record.fid
    assert np.array_equal(search.xi, xi) and search.buffer is None and search.updates == 1
    assert record.evaluations == 1 + search.space.size + 3  # the step, its half and its quarter
    with pytest.raises(ValueError, match="backtrack must be >= 0"):
        SearchSettings(backtrack=-1)


# ---------------------------------------------------------------------------------------------------- callback
@pytest.fixture
def evaluator(tmp_path: Path) -> GenerativeEvaluation:
    torch.manual_seed(1)
    clf = save_digits_classifier(DigitsClassifier(), tmp_path / "clf.pt")
    return GenerativeEvaluation(extractor="digits", weights_path=str(clf), reference_stats=str(tmp_path / "ref.npz"),
                                reference_split="val", num_samples=12, batch_size=6, seed=3,
                                inception_score=False)  # fmt: skip


def test_common_random_numbers_same_schedule_same_fid(tiny_shards, evaluator, tmp_path):
    model, search = eval_module(), ScheduleSearch(settings=SearchSettings(num_samples=6), evaluation=evaluator)
    fit = eval_trainer(tmp_path, [evaluator, search])
    fit.validate(model, datamodule=shards_datamodule(tiny_shards), verbose=False)  # builds extractor and reference
    fid = search.prepare(fit, model).objective(fit, model)
    schedule = GenerationSchedule.heuristic(4)
    first, second = fid(schedule), fid(GenerationSchedule.heuristic(4))
    assert first == second and np.isfinite(first)
    assert fid(GenerationSchedule.heuristic(4, guidance=0.0, remask_temperature=0.5)) != first
    assert evaluator.num_samples == 12  # the search's smaller N never leaks into validation


def two_step_module(seed: int = 0) -> NATModule:
    torch.manual_seed(seed)
    return NATModule(**{**EVAL_MODULE, "schedule_params": {"steps": 2}})  # xi has 6 values: 7 evaluations per update


def test_callback_updates_writes_files_and_resumes_from_a_checkpoint(tiny_shards, evaluator, tmp_path):
    fit_args = dict(limit_train_batches=2, limit_val_batches=0, enable_checkpointing=False)
    # large FD steps: on an untrained tiny model the official 0.01 / 0.1 change no token and the gradient is 0
    options = dict(settings=SearchSettings(num_samples=6, ratio_step=0.2, other_step=1.0))
    search = ScheduleSearch(**options)
    model = two_step_module()
    first = eval_trainer(tmp_path / "a", [evaluator, search], max_epochs=1, **fit_args)
    first.fit(model, datamodule=shards_datamodule(str(tiny_shards)))
    record = search.last
    assert search.search.updates == 1 and not record.skipped and record.evaluations == 1 + 6
    print(f"one update (T=2, 7 evaluations x 6 images): {record.seconds:.2f} s")
    assert model.schedule.to_official() == search.search.schedule.to_official()  # installed
    logged = first.callback_metrics
    assert logged["search/fid"] == pytest.approx(record.fid) and logged["search/grad_norm"] > 0
    assert logged["search/xi/ratio_0"] == pytest.approx(model.schedule.mask_ratio[0])
    out = tmp_path / "a" / "searched_strategies"
    assert GenerationSchedule.load(out / "stp_1.yaml").to_official() == model.schedule.to_official()
    assert GenerationSchedule.load(out / "search_1.yaml").to_official() == model.schedule.to_official()
    assert (out / "best.yaml").exists() and (out / "state.json").exists()
    assert search_curve(out) == [(0, pytest.approx(record.fid))]  # the same state file as the search command's
    saved = search.state_dict()
    assert saved["momentum_buffer"] is not None and len(saved["xi"]) == 6 and record.grad_norm > 0
    ckpt = tmp_path / "a" / "epoch1.ckpt"
    first.save_checkpoint(ckpt)

    # a fit resumed to the same epoch restores the state as it was
    again = ScheduleSearch(**options)
    resumed = eval_trainer(tmp_path / "b", [evaluator, again], max_epochs=1, **fit_args)
    resumed.fit(two_step_module(seed=5), datamodule=shards_datamodule(str(tiny_shards)), ckpt_path=ckpt)
    assert again.state_dict() == saved

    # ... and one resumed further continues: the second update uses the restored momentum buffer
    further = ScheduleSearch(**options)
    resumed = eval_trainer(tmp_path / "c", [evaluator, further], max_epochs=2, **fit_args)
    model = two_step_module(seed=5)
    resumed.fit(model, datamodule=shards_datamodule(str(tiny_shards)), ckpt_path=ckpt)
    state = further.state_dict()
    assert state["updates"] == 2 and state["history"][0] == saved["history"][0]
    grad = np.array(state["momentum_buffer"]) - 0.5 * np.array(saved["momentum_buffer"])
    assert np.linalg.norm(grad) == pytest.approx(further.last.grad_norm, rel=1e-9)
    assert model.schedule.to_official() == further.search.schedule.to_official()
    fids = [pytest.approx(h["fid"]) for h in state["history"]]  # inside fit the curve is each update's base FID
    assert search_curve(tmp_path / "c" / "searched_strategies") == [(0, fids[0]), (1, fids[1])]


class SaveAtLastBatch(__import__("lightning").Callback):
    """Saves a checkpoint at the end of the first epoch's last batch, as ModelCheckpoint(every_n_train_steps) or a
    preemption does: before that epoch's end hooks."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == 0 and batch_idx + 1 == trainer.num_training_batches:
            trainer.save_checkpoint(self.path)


def test_a_checkpoint_from_an_epochs_last_batch_resumes_with_that_epochs_update(tiny_shards, evaluator, tmp_path):
    """Lightning resumes such a checkpoint at the next epoch without calling the end of the one it was saved in;
    the search takes the update it missed at the next epoch's start, so the resumed run ends like the uninterrupted
    one (two updates, the same strategy and momentum)."""
    fit_args = dict(limit_train_batches=2, limit_val_batches=0, enable_checkpointing=False, max_epochs=2)
    options = dict(settings=SearchSettings(num_samples=6, ratio_step=0.2, other_step=1.0))
    whole = ScheduleSearch(**options)
    eval_trainer(tmp_path / "whole", [evaluator, whole], **fit_args).fit(
        two_step_module(), datamodule=shards_datamodule(str(tiny_shards)))
    ckpt = tmp_path / "last_batch.ckpt"
    cut = ScheduleSearch(**options)
    first = eval_trainer(tmp_path / "cut", [evaluator, cut, SaveAtLastBatch(ckpt)], **{**fit_args, "max_epochs": 1})
    first.fit(two_step_module(), datamodule=shards_datamodule(str(tiny_shards)))
    assert torch.load(ckpt, weights_only=False)["callbacks"]  # saved before epoch 0's update
    resumed = ScheduleSearch(**options)
    eval_trainer(tmp_path / "resumed", [evaluator, resumed], **fit_args).fit(
        two_step_module(seed=5), datamodule=shards_datamodule(str(tiny_shards)), ckpt_path=ckpt)
    state, expected = resumed.state_dict(), whole.state_dict()
    assert state["updates"] == expected["updates"] == 2
    assert [h["epoch"] for h in state["history"]] == [h["epoch"] for h in expected["history"]] == [0, 1]
    np.testing.assert_array_equal(state["xi"], expected["xi"])
    np.testing.assert_array_equal(state["momentum_buffer"], expected["momentum_buffer"])
