"""The NAT decoding loop: parallel decoding, a reveal policy (confidence re-masking by default), batched guidance.

Works with any backbone that follows the call contract
``backbone(ids, condition, state, num_masked=...) -> (logits, state)``
(see :mod:`lit_nat.models`). Design choices, each for speed or reproducibility:

- All randomness comes from one ``torch.Generator`` on the backbone's device, so a seed fixes the images.
- Tokens are drawn with the Gumbel-max trick (``argmax(log p / tau + G)``) or by inverse CDF (one uniform per token;
  the schedule's ``draw``), exact categorical samples that need no host-side validation
  (``torch.distributions.Categorical`` checks its arguments on the host).
- The number of tokens to re-mask at each step follows from the schedule alone
  (:meth:`~lit_nat.generation.schedule.GenerationSchedule.masked_counts`), so the loop never reads a device value: no
  host-device synchronisation inside the loop.
- The conditional and unconditional passes run as one forward over the doubled batch. A reuse state (ENAT) is per
  row, so each guidance branch keeps its own state automatically.
- What depends on the condition alone is computed once per call, not once per step (:func:`prepare_condition`:
  ENAT's adaLN modulations and projected text tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lit_nat.conditioning import condition as conditions
from lit_nat.conditioning.condition import Condition
from lit_nat.generation.reveal import RevealPolicy, gumbel_noise
from lit_nat.generation.schedule import GenerationSchedule, resolve_draw


@dataclass
class GenerationResult:
    """Final token ids ``(B, N)`` and, if asked for, the ids after each step (list of T tensors, [MASK] = mask_id)."""

    ids: torch.Tensor
    history: list[torch.Tensor] | None = None


def guided_log_probs(cond: torch.Tensor, uncond: torch.Tensor | None, scale: float) -> torch.Tensor:
    """log_softmax of ``cond + scale * (cond - uncond)`` in float32 (the official 'w' convention: 0 = unguided)."""
    logits = cond.float()
    if uncond is not None and scale != 0.0:
        logits = logits + scale * (logits - uncond.float())
    return torch.log_softmax(logits, dim=-1)


@torch.no_grad()
def generate(
    backbone: nn.Module,
    condition: Condition,
    schedule: GenerationSchedule,
    generator: torch.Generator,
    *,
    num_tokens: int,
    mask_id: int,
    null_condition: Condition | int,
    return_history: bool = False,
    init_ids: torch.Tensor | None = None,
    keep_mask: torch.Tensor | None = None,
) -> GenerationResult:
    """Generate ``(B, N)`` token ids for ``condition`` (class ids ``(B,)`` or a text condition of ``B`` prompts).

    ``null_condition`` is the unconditional branch of guidance: the null class id (an int) for class conditions, or
    a condition of ``B`` rows (the empty prompt's encoding, repeated) for text.

    Per step t: decode every position in parallel, draw tokens at masked positions with temperature tau1(t),
    score each draw by its temperature-free guided log-probability (+inf for positions already visible, so they are
    never re-masked) and re-mask the ``masked_counts[t]`` positions of lowest priority under the schedule's reveal
    policy (:mod:`lit_nat.generation.reveal`; ``confidence``: the scores plus tau2(t)-scaled Gumbel noise).

    Editing (a partial canvas): ``init_ids`` ``(B, N)`` with ``keep_mask`` ``(B, N)`` bool, True where a token is given
    and kept. Kept tokens are visible from the first step and never re-masked (their confidence is +inf like any
    visible token's); the schedule applies to each row's ``U`` unknown tokens
    (:meth:`~lit_nat.generation.schedule.GenerationSchedule.counts_for`). ``U`` may differ between rows: the per-row
    counts are computed once before the loop (the one host read of the mask; :class:`MaskedCounts`), and each step
    re-masks the k_b lowest perturbed confidences of row b by one sort instead of a top-k. With the same ``U`` in every
    row (e.g. an all-False mask) the loop is exactly the plain one. A backbone that needs equal counts per row (ENAT)
    gets them from the caller (:func:`generate_by_unknown_count`, which groups rows by ``U``).
    """
    device = generator.device
    ids, table, start = initial_canvas(conditions.batch_size(condition), num_tokens, mask_id, schedule, device,
                                       init_ids, keep_mask)  # fmt: skip
    counts = MaskedCounts.of(table, start, device)
    policy = RevealPolicy.of(schedule.reveal, num_tokens, device)
    guided = any(scale != 0.0 for scale in schedule.guidance)
    null_condition = unconditional_rows(condition, null_condition)
    # One forward for both branches: rows [0, B) conditional, rows [B, 2B) unconditional.
    condition = prepare_condition(backbone, conditions.concat(condition, null_condition) if guided else condition)

    state = None
    history: list[torch.Tensor] = []
    for t in range(schedule.steps):
        is_masked = ids == mask_id  # (B, N)
        log_probs, state = guided_forward(backbone, ids, condition, state, counts.before(t), schedule.guidance[t],
                                          guided=guided)  # fmt: skip
        sampled, score = draw_tokens(log_probs, ids, is_masked, schedule.sample_temperature[t], generator,
                                     method=schedule.draw)  # fmt: skip
        if not counts.remasks(t):
            ids = sampled
        else:
            # the policy's k lowest priorities stay masked; +inf (visible or kept) is never chosen
            priority = policy.priority(score, schedule.remask_temperature[t], generator)
            ids = remask_lowest(sampled, priority, counts.after(t), mask_id)
        if return_history:
            history.append(ids.clone())
    return GenerationResult(ids=ids, history=history if return_history else None)


@dataclass(frozen=True)
class MaskedCounts:
    """How many tokens are masked after each step, row by row: the loop's only knowledge of the counts, fixed before
    it starts so that no step reads a device value.

    ``table`` holds one count vector (length T) per row, or a single one when every row has the same unknown count;
    ``per_row`` is the same table on the device, ``(T, B)``, and None when the rows agree.
    """

    table: list[list[int]]
    start: int  # masked tokens before step 1 (of every row, when they agree)
    per_row: torch.Tensor | None

    @classmethod
    def of(cls, table: list[list[int]], start: int, device: torch.device) -> MaskedCounts:
        uniform = all(row == table[0] for row in table)
        return cls(table, start, None if uniform else torch.tensor(table, device=device).T)

    def before(self, t: int) -> int | None:
        """The masked count of every row entering step ``t``, for the backbone (None: rows differ)."""
        if self.per_row is not None:
            return None
        return self.start if t == 0 else self.table[0][t - 1]

    def after(self, t: int) -> int | torch.Tensor:
        """Tokens to re-mask at step ``t``: an int for every row, or ``(B,)`` per row."""
        return self.table[0][t] if self.per_row is None else self.per_row[t]

    def remasks(self, t: int) -> bool:
        """Whether step ``t`` re-masks any token (the last step never does)."""
        return max(row[t] for row in self.table) > 0


def unconditional_rows(condition: Condition, null_condition: Condition | int) -> Condition:
    """The unconditional branch of guidance, one row per row of ``condition``: the null class id repeated, or the
    given condition (a text model's empty prompt, already repeated)."""
    if isinstance(null_condition, int):
        null_condition = torch.full_like(condition, null_condition)
    return null_condition


def prepare_condition(backbone: nn.Module, condition: Condition) -> Any:
    """The step-invariant part of ``condition`` for ``backbone`` (its ``prepare_condition``, e.g. ENAT's adaLN
    modulations), which every step then takes in the condition's place; the condition itself for a backbone that has
    none (U-ViT, aMUSEd)."""
    prepare = getattr(backbone, "prepare_condition", None)
    return condition if prepare is None else prepare(condition)


def guided_forward(backbone: nn.Module, ids: torch.Tensor, condition: Condition, state: Any, num_masked: int | None,
                   scale: float, *, guided: bool) -> tuple[torch.Tensor, Any]:  # fmt: skip
    """One step's backbone call on the canvas ``ids`` ``(B, N)``: over ``[ids ; ids]`` when ``guided`` (``condition``
    then holds both branches' rows), returning the guided log-probabilities ``(B, N, K)`` and the backbone's state
    for the next step."""
    model_ids = torch.cat([ids, ids]) if guided else ids
    logits, state = backbone(model_ids, condition, state, num_masked=num_masked)  # (B or 2B, N, K)
    cond, uncond = logits.chunk(2) if guided else (logits, None)
    return guided_log_probs(cond, uncond, scale), state


def initial_canvas(batch: int, num_tokens: int, mask_id: int, schedule: GenerationSchedule, device: torch.device,
                   init_ids: torch.Tensor | None, keep_mask: torch.Tensor | None
                   ) -> tuple[torch.Tensor, list[list[int]], int]:  # fmt: skip
    """The canvas before step 1 ``(B, N)`` (all [MASK], or the kept tokens of a partial canvas), the masked counts per
    row and step (one row when every row has the same unknown count), and the masked count before step 1."""
    ids = torch.full((batch, num_tokens), mask_id, dtype=torch.long, device=device)
    if keep_mask is None:
        return ids, [schedule.masked_counts(num_tokens)], num_tokens  # one count vector for every row
    if init_ids is None or tuple(keep_mask.shape) != (batch, num_tokens) or init_ids.shape != keep_mask.shape:
        raise ValueError(f"init_ids and keep_mask must both be ({batch}, {num_tokens})")
    keep_mask = keep_mask.to(device).bool()
    ids = torch.where(keep_mask, init_ids.to(device).long(), ids)
    unknown = (~keep_mask).sum(dim=1).tolist()  # the one host read: counts for every step follow from it
    return ids, [schedule.counts_for(u) for u in unknown], unknown[0]


def draw_tokens(log_probs: torch.Tensor, ids: torch.Tensor, is_masked: torch.Tensor, temperature: float,
                generator: torch.Generator, method: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Parallel decoding: a categorical draw at ``temperature`` (tau1) at every position (:func:`categorical_draw` by
    ``method``), and each draw's temperature-free log-probability as its confidence; visible positions keep their
    token with confidence +inf (never re-masked). Returns ``(sampled (B, N), confidence (B, N))``."""
    sampled = categorical_draw(log_probs, temperature, generator, method)  # (B, N)
    score = log_probs.gather(-1, sampled[..., None]).squeeze(-1)  # (B, N) confidence of the draw
    sampled = torch.where(is_masked, sampled, ids)
    return sampled, score.masked_fill(~is_masked, float("inf"))


def categorical_draw(log_probs: torch.Tensor, temperature: float, generator: torch.Generator,
                     method: str = "auto") -> torch.Tensor:  # fmt: skip
    """One draw from ``softmax(log_probs / temperature)`` per position: ``(..., K)`` -> ``(...)`` long.

    ``method``: ``"gumbel"`` (``argmax(log p / tau + G)``, a Gumbel per code), ``"inverse_cdf"`` (one uniform per
    position, located in the running sum of the probabilities), or ``"auto"``: by the codebook size
    (:func:`~lit_nat.generation.schedule.resolve_draw`)."""
    codes = log_probs.shape[-1]
    if resolve_draw(method, codes) == "gumbel":
        noisy = log_probs / temperature + gumbel_noise(log_probs.shape, generator, generator.device)
        return noisy.argmax(dim=-1)
    cdf = torch.softmax(log_probs / temperature, dim=-1).cumsum_(dim=-1)  # (..., K), last ~1
    uniform = torch.rand((*cdf.shape[:-1], 1), generator=generator, device=generator.device, dtype=cdf.dtype)
    # right=True: code i takes [cdf[i-1], cdf[i]), so a code of probability 0 (an empty interval) is never drawn
    index = torch.searchsorted(cdf, uniform * cdf[..., -1:], right=True)
    return index.squeeze(-1).clamp_(max=codes - 1)  # (u * total may round up to total)


def remask_lowest(ids: torch.Tensor, confidence: torch.Tensor, k: int | torch.Tensor, mask_id: int) -> torch.Tensor:
    """``ids`` with the ``k`` lowest-confidence positions of each row set to ``mask_id``; ``k`` an int (every row) or a
    ``(B,)`` tensor (per row: one sort and a rank comparison instead of a top-k)."""
    if isinstance(k, int):
        return ids.scatter(1, confidence.topk(k, dim=1, largest=False).indices, mask_id)
    order = confidence.argsort(dim=1)  # (B, N) ascending
    first_k = torch.arange(ids.shape[1], device=ids.device)[None] < k[:, None]  # (B, N) in rank space
    remask = torch.zeros_like(first_k).scatter(1, order, first_k)  # back to positions
    return ids.masked_fill(remask, mask_id)


def rows_by_unknown_count(keep_mask: torch.Tensor) -> list[list[int]]:
    """Row indices grouped by their number of unknown (not kept) tokens, groups in order of their first row."""
    groups: dict[int, list[int]] = {}
    for row, unknown in enumerate((~keep_mask.bool()).sum(dim=1).tolist()):
        groups.setdefault(unknown, []).append(row)
    return list(groups.values())


def generate_by_unknown_count(decode: Callable[[Condition, int, torch.Tensor, torch.Tensor], GenerationResult],
                              condition: Condition, seed: int, init_ids: torch.Tensor, keep_mask: torch.Tensor, *,
                              return_history: bool = False) -> GenerationResult:  # fmt: skip
    """Edit a partial canvas with a backbone that needs the same masked count in every row (ENAT): the rows are
    decoded in groups of equal unknown count (:func:`rows_by_unknown_count`), group by group, each by
    ``decode(condition rows, seed + first row index, init_ids rows, keep_mask rows)``, and put back in their places.
    One group is one call with the whole batch."""
    groups = rows_by_unknown_count(keep_mask)
    if len(groups) <= 1:
        return decode(condition, seed, init_ids, keep_mask)
    device = keep_mask.device
    ids = torch.empty(keep_mask.shape, dtype=torch.long, device=device)
    history: list[torch.Tensor] | None = None
    for rows in groups:
        index = torch.tensor(rows, device=device)
        part = decode(conditions.select(condition, index), seed + rows[0], init_ids[index], keep_mask[index])
        ids[index] = part.ids
        if return_history:
            history = history or [torch.empty_like(ids) for _ in part.history]
            for canvas, step in zip(history, part.history):
                canvas[index] = step
    return GenerationResult(ids=ids, history=history)


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (the loop's only source of randomness)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator
