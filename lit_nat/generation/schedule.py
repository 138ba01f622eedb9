"""The generation strategy (AutoNAT Sec. 3.1): T per-step values of r(t), tau1(t), tau2(t), s(t).

A :class:`GenerationSchedule` is plain data. The decoding loop (:mod:`lit_nat.generation.decoding`) reads it, the
schedule search (a later callback) perturbs it, and YAML files store it in our format or in the official AutoNAT
strategy format.

Conventions (those of both official code bases):

- ``mask_ratio[t]`` is the fraction of the N tokens still masked *after* step t; the last entry is 0.
- ``sample_temperature[t]`` (tau1) divides the guided log-probabilities before a token is drawn.
- ``remask_temperature[t]`` (tau2) scales the Gumbel noise added to confidences before the least confident are
  re-masked (Gumbel-top-k = sampling without replacement from softmax(C / tau2)); it is unused at the last step.
- ``guidance[t]`` (s) is the classifier-free guidance scale w in ``cond + w * (cond - uncond)`` (0 = no guidance).
- ``reveal`` names the policy that picks which drawn tokens stay (:mod:`lit_nat.generation.reveal`): ``confidence``
  (the default, the one both official code bases use; tau2 is its only knob), ``halton``, ``halton_roll`` or
  ``random``.
- ``draw`` names how a token is drawn from its distribution (:data:`DRAWS`; both draw exactly softmax(log p / tau1)):
  ``gumbel`` (one Gumbel per code, the official codes' draw), ``inverse_cdf`` (one uniform per token), or ``auto``
  (the default: ``inverse_cdf`` from :data:`INVERSE_CDF_MIN_CODES` codes on, so ImageNet VQGAN samples stay what
  earlier releases drew for a seed). The two draws give other images for the same seed, not other statistics.

Count rule, :meth:`GenerationSchedule.masked_counts`: after step t < T-1 the number kept masked is
``max(1, min(m_prev - 1, floor(N * r[t])))`` (the official AutoNAT guard: every step reveals at least one token and
keeps at least one masked until the end); after the last step it is 0. The counts depend only on the schedule and N,
so the loop knows them as Python ints and never reads a device value.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from lit_nat.core.io import atomic_write_text
from lit_nat.generation.reveal import POLICIES

FORMAT = "lit_nat.schedule/1"
OFFICIAL_KEYS = ("manual_ratios", "manual_temp", "manual_samp_temp", "manual_cfg")
FIELDS = ("mask_ratio", "sample_temperature", "remask_temperature", "guidance")
DRAWS = ("auto", "gumbel", "inverse_cdf")
#: From this many codes on (aMUSEd's 8,192), ``draw: auto`` draws a token with one uniform (inverse CDF) instead of one
#: Gumbel per code: K times fewer random numbers and logarithms. Smaller codebooks (the VQGAN's 1,024) keep the
#: Gumbel-max draw under ``auto``, so their samples stay bit-identical to earlier releases for a given seed.
INVERSE_CDF_MIN_CODES = 4096


def resolve_draw(draw: str, codes: int) -> str:
    """The token draw a schedule's ``draw`` means for a codebook of ``codes`` codes: ``gumbel`` or ``inverse_cdf``."""
    if draw == "auto":
        return "inverse_cdf" if codes >= INVERSE_CDF_MIN_CODES else "gumbel"
    if draw not in DRAWS:
        raise ValueError(f"unknown token draw {draw!r}; expected one of {list(DRAWS)}")
    return draw


@dataclass
class GenerationSchedule:
    """Per-step generation strategy; every list has length T (the number of steps)."""

    mask_ratio: list[float]
    sample_temperature: list[float]
    remask_temperature: list[float]
    guidance: list[float]
    #: free-form provenance ("heuristic", "enat", "searched step 12", a file name); not used by the loop
    name: str = field(default="custom", compare=False)
    #: which drawn tokens each step keeps (:data:`~lit_nat.generation.reveal.POLICIES`)
    reveal: str = "confidence"
    #: how each token is drawn (:data:`DRAWS`): the same distribution, other random numbers
    draw: str = "auto"

    def __post_init__(self) -> None:
        for key in FIELDS:
            setattr(self, key, [float(v) for v in getattr(self, key)])
        self.validate()

    # ------------------------------------------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        return len(self.mask_ratio)

    def validate(self, source: str = "schedule") -> None:
        """Raise ``ValueError`` naming the source, the field and the step for any out-of-range value."""
        steps = len(self.mask_ratio)
        if steps < 1:
            raise ValueError(f"{source}: mask_ratio is empty; a schedule needs at least one step")
        if self.reveal not in POLICIES:
            raise ValueError(f"{source}: reveal is {self.reveal!r}; expected one of {list(POLICIES)}")
        if self.draw not in DRAWS:
            raise ValueError(f"{source}: draw is {self.draw!r}; expected one of {list(DRAWS)}")
        for key in FIELDS:
            values = getattr(self, key)
            if len(values) != steps:
                raise ValueError(f"{source}: {key} has {len(values)} values, expected {steps} (one per step)")
            bad = [(t, v) for t, v in enumerate(values) if not math.isfinite(v)]
            if bad:
                raise ValueError(f"{source}: {key} has non-finite values at (step, value) {bad}")
        for t, r in enumerate(self.mask_ratio):
            if not 0.0 <= r <= 1.0:
                raise ValueError(f"{source}: mask_ratio[{t}] = {r} is outside [0, 1]")
        for t in range(1, steps):
            if self.mask_ratio[t] > self.mask_ratio[t - 1]:
                raise ValueError(
                    f"{source}: mask_ratio[{t}] = {self.mask_ratio[t]} > mask_ratio[{t - 1}] = "
                    f"{self.mask_ratio[t - 1]}; the fraction still masked must not increase from step to step"
                )
        if self.mask_ratio[-1] != 0.0:
            raise ValueError(f"{source}: mask_ratio[{steps - 1}] = {self.mask_ratio[-1]}; the last step must be 0")
        for t, v in enumerate(self.sample_temperature):
            if v <= 0:
                raise ValueError(f"{source}: sample_temperature[{t}] = {v}; temperatures must be > 0")
        for t, v in enumerate(self.remask_temperature[:-1]):  # the last step re-masks nothing
            if v <= 0:
                raise ValueError(f"{source}: remask_temperature[{t}] = {v}; temperatures must be > 0")
        if self.remask_temperature[-1] < 0:
            raise ValueError(f"{source}: remask_temperature[{steps - 1}] = {self.remask_temperature[-1]} is < 0")
        for t, v in enumerate(self.guidance):
            if v < 0:
                raise ValueError(f"{source}: guidance[{t}] = {v}; the guidance scale must be >= 0")

    def masked_counts(self, num_tokens: int) -> list[int]:
        """Tokens still masked after each step (length T, last 0) under the module's count rule."""
        if self.steps > num_tokens:
            raise ValueError(f"{self.steps} steps cannot reveal {num_tokens} tokens at least one per step")
        return self._counts(num_tokens, floor=1)

    def counts_for(self, unknown: int) -> list[int]:
        """Masked counts after each step when only ``unknown`` of the tokens are to be generated (editing: the others
        are given and kept). The rule of :meth:`masked_counts` applied to ``U = unknown`` instead of N: after step
        t < T-1, ``max(1, min(m_prev - 1, floor(U r[t])))`` stay masked. With fewer unknown tokens than steps the
        floor of 1 is dropped (``U = 3`` at T = 8 reveals one token in each of the first steps and nothing after), and
        ``U = 0`` gives all zeros."""
        return self.masked_counts(unknown) if unknown >= self.steps else self._counts(unknown, floor=0)

    def _counts(self, total: int, floor: int) -> list[int]:
        """The count rule: after step t < T-1, ``max(floor, min(m_prev - 1, floor(total r[t])))`` stay masked; 0 after
        the last step."""
        counts, previous = [], total
        for t, ratio in enumerate(self.mask_ratio):
            kept = 0 if t == self.steps - 1 else max(floor, min(previous - 1, math.floor(total * ratio)))
            counts.append(kept)
            previous = kept
        return counts

    # ------------------------------------------------------------------------------------------------------------------
    # Constructors
    @classmethod
    def heuristic(
        cls, steps: int = 8, remask_temperature: float = 4.5, guidance: float = 2.0, sample_temperature: float = 1.0
    ) -> GenerationSchedule:
        """The hand-designed baseline of AutoNAT's Table 1 (t = 1..T in the paper's notation):

        r(t) = cos(pi t / 2T), tau1(t) = 1, tau2(t) = lambda (T - t + 1) / T, s(t) = k t / T.
        """
        if steps < 1:
            raise ValueError(f"heuristic schedule: steps must be >= 1, got {steps}")
        ts = range(1, steps + 1)
        ratios = [math.cos(math.pi * t / (2 * steps)) for t in ts]
        ratios[-1] = 0.0  # cos(pi/2) is 6e-17 in floating point
        return cls(
            mask_ratio=ratios,
            sample_temperature=[sample_temperature] * steps,
            remask_temperature=[remask_temperature * (steps - t + 1) / steps for t in ts],
            guidance=[guidance * t / steps for t in ts],
            name="heuristic",
        )

    @classmethod
    def enat(
        cls, steps: int = 8, guidance: float = 2.5, remask_temperature: float = 1.5, sample_temperature: float = 6.0
    ) -> GenerationSchedule:
        """ENAT's released sampling rule (ImageNet-256 defaults; 512 px uses guidance 3.5, sample_temperature 4).

        With rho = (t + 1) / T: masked after step t = cos(rho pi / 2); tau2 = tau_m (1 - rho);
        tau1 = max(tau_s (1 - rho), 1e-3); the guidance used at step t is W t / T (0 at the first step).
        """
        if steps < 1:
            raise ValueError(f"enat schedule: steps must be >= 1, got {steps}")
        rhos = [(t + 1) / steps for t in range(steps)]
        ratios = [math.cos(rho * math.pi / 2) for rho in rhos]
        ratios[-1] = 0.0
        return cls(
            mask_ratio=ratios,
            sample_temperature=[max(sample_temperature * (1 - rho), 1e-3) for rho in rhos],
            remask_temperature=[remask_temperature * (1 - rho) for rho in rhos],
            guidance=[guidance * t / steps for t in range(steps)],
            name="enat",
        )

    @classmethod
    def amused(
        cls, steps: int = 12, guidance_scale: float = 10.0, temperature: tuple[float, float] = (2.0, 0.0),
        masking_schedule: str = "cosine",
    ) -> GenerationSchedule:  # fmt: skip
        """aMUSEd's hand-set strategy (``AmusedPipeline`` defaults with ``AmusedScheduler``), in our conventions.

        Step t (0-based) keeps ``cos(pi/2 (t + 1) / T)`` masked (``linear``: ``1 - (t + 1) / T``) under the same count
        rule as ours; tokens are drawn at temperature 1; the re-masking Gumbel scale is ``linspace(t0, t1, T)[t]``.
        Guidance: aMUSEd computes ``uncond + g (cond - uncond)`` and guides only when ``g > 1``; that is our
        ``cond + w (cond - uncond)`` with ``w = g - 1`` (so its default g = 10 is our w = 9).
        """
        if steps < 1:
            raise ValueError(f"amused schedule: steps must be >= 1, got {steps}")
        if masking_schedule not in ("cosine", "linear"):
            raise ValueError(f"amused schedule: masking_schedule must be cosine or linear, got {masking_schedule!r}")
        # aMUSEd computes the ratios in float32 (cos(pi/3) = 0.49999997 there): the same arithmetic keeps its counts
        # exactly (floor(64 x 0.5) would reveal one token fewer at step 7 of 12 than aMUSEd does)
        rho = (torch.arange(steps) + 1) / steps
        ratio = torch.cos(rho * math.pi / 2) if masking_schedule == "cosine" else 1 - rho
        ratios = ratio.tolist()
        ratios[-1] = 0.0
        first, last = (float(v) for v in temperature)
        remask = [first + (last - first) * t / (steps - 1) for t in range(steps)] if steps > 1 else [first]
        return cls(
            mask_ratio=ratios,
            sample_temperature=[1.0] * steps,
            remask_temperature=remask,
            guidance=[max(float(guidance_scale) - 1.0, 0.0)] * steps,
            name="amused",
        )

    @classmethod
    def titok(cls, steps: int = 8, randomize_temperature: float = 4.5, guidance: float = 3.0) -> GenerationSchedule:
        """TiTok's MaskGIT sampler (bytedance/1d-tokenizer) with its "randomized temperature": confidence re-masking
        where one annealed temperature tau(t) = tau0 (1 - rho), rho = (t + 1) / T, scales the Gumbel noise of both the
        token draw (tau1; floored at 1e-3 as ENAT does, TiTok's last step is greedy) and the confidences (tau2).
        Masked after step t: ``arccos(rho) / (pi / 2)``; constant guidance (TiTok's "constant" decay, its defaults).
        One difference of convention: TiTok ranks by the drawn token's logit, lit_nat by its log-probability."""
        if steps < 1:
            raise ValueError(f"titok schedule: steps must be >= 1, got {steps}")
        rhos = [(t + 1) / steps for t in range(steps)]
        ratios = [math.acos(rho) / (math.pi / 2) for rho in rhos]
        ratios[-1] = 0.0
        taus = [randomize_temperature * (1 - rho) for rho in rhos]
        return cls(mask_ratio=ratios, sample_temperature=[max(tau, 1e-3) for tau in taus], remask_temperature=taus,
                   guidance=[guidance] * steps, name="titok")  # fmt: skip

    @classmethod
    def preset(cls, name: str | dict[str, Any], **params: Any) -> GenerationSchedule:
        """A named constructor (``heuristic``, ``enat``, ``amused`` or ``titok``) with keyword parameters (each also
        takes ``reveal``, the policy, and ``draw``, the token draw), a YAML file path, or the schedule itself as a
        mapping (:meth:`to_dict`'s, as checkpoints record it)."""
        if isinstance(name, dict):
            if params:
                raise ValueError(f"schedule_params {params} cannot be combined with a schedule given by value")
            return cls.from_dict(dict(name), source="schedule")
        presets = {"heuristic": cls.heuristic, "enat": cls.enat, "amused": cls.amused, "titok": cls.titok}
        if name in presets:
            fixed = (("reveal", "confidence"), ("draw", "auto"))  # not parameters of the constructors
            chosen = {key: str(params.pop(key, default)) for key, default in fixed}
            try:
                return replace(presets[name](**params), **chosen)
            except TypeError as err:
                raise ValueError(f"schedule preset {name!r}: bad schedule_params {params}: {err}") from None
        if name.endswith((".yaml", ".yml")):
            if params:
                raise ValueError(f"schedule_params {params} cannot be combined with a schedule file ({name})")
            return cls.load(name)
        raise ValueError(f"unknown schedule {name!r}: expected one of {sorted(presets)} or a path to a .yaml file")

    # ------------------------------------------------------------------------------------------------------------------
    # Serialisation: ours and the official AutoNAT strategy format
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "schedule") -> GenerationSchedule:
        """Read our format, or the official AutoNAT one (detected by its ``manual_*`` keys)."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a mapping, got {type(data).__name__}")
        if any(key in data for key in OFFICIAL_KEYS):
            return cls.from_official(data, source=source)
        missing = [key for key in FIELDS if key not in data]
        if missing:
            raise ValueError(f"{source}: missing keys {missing}; expected {list(FIELDS)} or {list(OFFICIAL_KEYS)}")
        unknown = sorted(set(data) - set(FIELDS) - {"format", "name", "reveal", "draw"})
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}; expected {list(FIELDS)} "
                             "(+ optional 'name', 'reveal', 'draw')")  # fmt: skip
        values = {key: _as_list(data[key], f"{source}: {key}") for key in FIELDS}
        return cls._checked(source, name=str(data.get("name", Path(source).stem)),
                            reveal=str(data.get("reveal", "confidence")), draw=str(data.get("draw", "auto")),
                            **values)  # fmt: skip

    def to_official(self) -> dict[str, list[float]]:
        """The official strategy file: ratios and re-mask temperatures for the first T-1 steps, the rest for all T."""
        if self.reveal != "confidence":
            raise ValueError(f"schedule {self.name!r}: the official strategy format has no reveal policy; "
                             f"{self.reveal!r} cannot be written in it (save it in lit_nat's format)")  # fmt: skip
        return {
            "manual_ratios": self.mask_ratio[:-1],
            "manual_temp": self.remask_temperature[:-1],
            "manual_samp_temp": list(self.sample_temperature),
            "manual_cfg": list(self.guidance),
        }

    @classmethod
    def from_official(cls, data: dict[str, Any], source: str = "official strategy") -> GenerationSchedule:
        missing = [key for key in OFFICIAL_KEYS if key not in data]
        if missing:
            raise ValueError(f"{source}: official strategy file lacks keys {missing}")
        ratios, remask, sample, cfg = (_as_list(data[key], f"{source}: {key}") for key in OFFICIAL_KEYS)
        steps = len(sample)
        for key, values, want in (
            ("manual_ratios", ratios, steps - 1),
            ("manual_temp", remask, steps - 1),
            ("manual_cfg", cfg, steps),
        ):
            if len(values) != want:
                raise ValueError(
                    f"{source}: {key} has {len(values)} values; with {steps} manual_samp_temp values (T = {steps}) "
                    f"it needs {want}"
                )
        # The official loop fixes the last step's ratio and re-mask temperature to 0.
        return cls._checked(
            source,
            mask_ratio=[*ratios, 0.0],
            sample_temperature=sample,
            remask_temperature=[*remask, 0.0],
            guidance=cfg,
            name=Path(source).stem,
        )

    @classmethod
    def _checked(cls, source: str, **kwargs: Any) -> GenerationSchedule:
        try:
            return cls(**kwargs)
        except ValueError as err:  # re-label "schedule: ..." with the file the values came from
            raise ValueError(str(err).replace("schedule:", f"{source}:", 1)) from None

    def save(self, path: str | Path, official: bool = False) -> Path:
        payload = self.to_official() if official else self.to_dict()
        return atomic_write_text(path, yaml.safe_dump(payload, sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> GenerationSchedule:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"schedule file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({yaml_problem(err)})") from None
        return cls.from_dict(data, source=str(path))


def yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error (several lines, with a caret drawing) as one clause: what and where."""
    problem = getattr(err, "problem", None) or (str(err).strip().splitlines() or ["unreadable"])[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def _as_list(value: Any, where: str) -> list[float]:
    """The official writer stores a length-1 block as a scalar; accept that, reject anything non-numeric."""
    values = value if isinstance(value, (list, tuple)) else [value]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected numbers, got {value!r}") from None
