"""The search vector xi of AutoNAT's generation-strategy optimisation (Sec. 4.2) and its feasible set.

Layout, that of the official search (``train.py``, class DisPatcher), for T steps::

    xi = [ratios (T-1) | remask temperatures (T-1) | sample temperatures (T) | guidance (T)]    # 4T - 2 values

The last step's ratio is fixed to 0 (everything revealed) and its re-mask temperature is unused, so neither is a
parameter. Each block is a :class:`Group` with its own finite-difference step and SGD learning rate; the defaults are
the official ones (ratios: step 0.01, lr 1e-3; everything else: step 0.1, lr 0.1).

Feasible set (:meth:`SearchSpace.project`): ratios in [0, 0.99] and non-increasing over the steps, temperatures and
guidance >= 1e-4. The official code only clips the ratios into the box; we also keep them non-increasing because the
count rule (:meth:`GenerationSchedule.masked_counts`) silently turns an increasing ratio into "reveal one token", so
ratios above their predecessor are wasted search directions. The projection is the exact Euclidean one: isotonic
regression (scikit-learn's pool-adjacent-violators) followed by clipping into the box, which is the projection onto the
intersection of the monotone cone and the box (a clipped isotonic fit stays monotone, and the clip commutes with the
pooling). A running minimum would also be feasible but is not a projection: one too-small early ratio drags every
later ratio down with it, i.e. one noisy gradient coordinate would rewrite the whole tail of the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.isotonic import isotonic_regression

from lit_nat.generation.schedule import GenerationSchedule

RATIO_MAX = 0.99  # official clip: a step that keeps everything masked reveals nothing
POSITIVE_MIN = 1e-4  # official clip of temperatures and guidance


@dataclass(frozen=True)
class Group:
    """One block of xi with its own finite-difference step and learning rate.

    Args:
        name: block name, also the prefix of the coordinate names (``ratio_0``, ...).
        field: the :class:`GenerationSchedule` field the block fills.
        fd_step: forward-difference step size.
        lr: SGD learning rate.
        lower: lower bound of every coordinate.
        upper: upper bound of every coordinate.
    """

    name: str
    field: str
    fd_step: float
    lr: float
    lower: float
    upper: float = float("inf")


def default_groups(
    ratio_step: float = 0.01, ratio_lr: float = 1e-3, other_step: float = 0.1, other_lr: float = 0.1
) -> tuple[Group, ...]:
    """The four blocks in the official order, with the official step sizes and learning rates as defaults."""
    return (
        Group("ratio", "mask_ratio", ratio_step, ratio_lr, 0.0, RATIO_MAX),
        Group("remask_temp", "remask_temperature", other_step, other_lr, POSITIVE_MIN),
        Group("sample_temp", "sample_temperature", other_step, other_lr, POSITIVE_MIN),
        Group("guidance", "guidance", other_step, other_lr, POSITIVE_MIN),
    )


#: the schedule fields a search keeps from its start schedule, with their defaults: not continuous, so never searched
#: (a probe under another reveal policy or token draw would see other images)
KEPT_FIELDS = {"reveal": "confidence", "draw": "auto"}


class SearchSpace:
    """xi <-> :class:`GenerationSchedule` for T steps, per-coordinate steps/learning rates, and the projection.

    Args:
        steps: T, the number of generation steps.
        groups: the four blocks in the official order (default: :func:`default_groups`).
        kept: the :data:`KEPT_FIELDS` of every schedule of the space (``reveal``: the policy, whose continuous knobs
            are tau1/tau2 above; ``draw``: the token draw), each also an attribute of the space.
    """

    def __init__(self, steps: int, groups: tuple[Group, ...] | None = None, **kept: str) -> None:
        if steps < 2:
            raise ValueError(f"SearchSpace: a search needs T >= 2 steps (T = 1 has no free ratio), got {steps}")
        unknown = sorted(set(kept) - set(KEPT_FIELDS))
        if unknown:
            raise ValueError(f"SearchSpace: {unknown} are not kept schedule fields; expected {list(KEPT_FIELDS)}")
        self.steps = steps
        self.kept = {**KEPT_FIELDS, **kept}
        self.reveal, self.draw = self.kept["reveal"], self.kept["draw"]
        self.groups = tuple(groups or default_groups())
        if [g.field for g in self.groups] != ["mask_ratio", "remask_temperature", "sample_temperature", "guidance"]:
            raise ValueError("SearchSpace: groups must be ratio, remask_temp, sample_temp, guidance (official order)")
        self.sizes = (steps - 1, steps - 1, steps, steps)
        self.slices: dict[str, slice] = {}
        start = 0
        for group, size in zip(self.groups, self.sizes):
            self.slices[group.name] = slice(start, start + size)
            start += size
        self.size = start  # 4T - 2

        def per_coordinate(attribute: str) -> np.ndarray:
            return np.concatenate([np.full(n, getattr(g, attribute), float) for g, n in zip(self.groups, self.sizes)])

        self.fd_steps, self.lrs = per_coordinate("fd_step"), per_coordinate("lr")
        self.lower, self.upper = per_coordinate("lower"), per_coordinate("upper")
        self.names = [f"{g.name}_{t}" for g, n in zip(self.groups, self.sizes) for t in range(n)]

    # ------------------------------------------------------------------------------------------------------------------
    def to_vector(self, schedule: GenerationSchedule) -> np.ndarray:
        """The xi of a schedule (float64, official order); the schedule must have exactly T steps."""
        if schedule.steps != self.steps:
            raise ValueError(
                f"schedule {schedule.name!r} has {schedule.steps} steps but the search space has T = {self.steps}; "
                f"start the search from a {self.steps}-step schedule (or build the space with steps={schedule.steps})"
            )
        blocks = [getattr(schedule, g.field)[:n] for g, n in zip(self.groups, self.sizes)]
        return np.concatenate([np.asarray(b, dtype=np.float64) for b in blocks])

    def to_schedule(self, xi: np.ndarray, name: str = "searched") -> GenerationSchedule:
        """The schedule of xi; the last step gets ratio 0 and re-mask temperature 0 (as the official loop)."""
        xi = self.check(xi)
        ratio, remask, sample, guidance = (xi[self.slices[g.name]].tolist() for g in self.groups)
        return GenerationSchedule(
            mask_ratio=[*ratio, 0.0],
            remask_temperature=[*remask, 0.0],
            sample_temperature=sample,
            guidance=guidance,
            name=name,
            **self.kept,
        )

    def check(self, xi: np.ndarray) -> np.ndarray:
        """xi as a float64 vector of the right length, or a clear error."""
        xi = np.asarray(xi, dtype=np.float64)
        if xi.shape != (self.size,):
            raise ValueError(
                f"xi has shape {xi.shape}; T = {self.steps} needs {self.size} = 4T - 2 values "
                f"(ratios {self.sizes[0]}, remask temps {self.sizes[1]}, sample temps {self.sizes[2]}, "
                f"guidance {self.sizes[3]})"
            )
        return xi

    # ------------------------------------------------------------------------------------------------------------------
    def project(self, xi: np.ndarray) -> np.ndarray:
        """Euclidean projection onto the feasible set (see the module docstring). NaNs are rejected, not projected."""
        xi = self.check(xi).copy()
        if not np.all(np.isfinite(xi)):
            raise ValueError(f"cannot project a non-finite xi: {xi.tolist()}")
        ratios = self.slices["ratio"]
        if np.any(np.diff(xi[ratios]) > 0):  # a monotone part is its own fit: left bit-exact (idempotent projection)
            xi[ratios] = isotonic_regression(xi[ratios], increasing=False)
        xi[ratios] = np.clip(xi[ratios], 0.0, RATIO_MAX)
        rest = slice(ratios.stop, None)
        xi[rest] = np.maximum(xi[rest], self.lower[rest])
        return xi

    def is_feasible(self, xi: np.ndarray, atol: float = 0.0) -> bool:
        xi = self.check(xi)
        ratios = xi[self.slices["ratio"]]
        return bool(
            np.all(xi >= self.lower - atol) and np.all(xi <= self.upper + atol) and np.all(np.diff(ratios) <= atol)
        )

    def coordinate_bounds(self, xi: np.ndarray, i: int) -> tuple[float, float]:
        """The interval coordinate i may move in with the others fixed, staying feasible (FD perturbations use it).

        For a ratio that is the box cut by its neighbours (the next ratio below, the previous above); the last free
        ratio's lower neighbour is the fixed final 0.
        """
        lower, upper = float(self.lower[i]), float(self.upper[i])
        ratios = self.slices["ratio"]
        if ratios.start <= i < ratios.stop:
            if i > ratios.start:
                upper = min(upper, float(xi[i - 1]))
            if i + 1 < ratios.stop:
                lower = max(lower, float(xi[i + 1]))
        return lower, upper
