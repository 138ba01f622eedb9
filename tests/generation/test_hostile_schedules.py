"""Random schedule files: each is a schedule that passes its own checks, or one line naming the file.

A schedule file comes from a user, a search or the official code's writer; whatever its content, loading it either
gives a schedule whose every value is in range (so the decoding loop can run it) or a ``ValueError`` whose single line
starts with the file's path.
"""

from __future__ import annotations

import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_nat.generation.schedule import FIELDS, OFFICIAL_KEYS, GenerationSchedule

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(-3, 3),
    st.sampled_from([0.0, 0.5, 1.0, 1e-9, -0.0]),
)
VALUES = st.one_of(
    st.lists(NUMBERS, min_size=0, max_size=6),
    NUMBERS,
    st.text(max_size=5),
    st.none(),
    st.booleans(),
    st.dictionaries(st.text(max_size=3), NUMBERS, max_size=2),
)
KEYS = st.sampled_from([*FIELDS, *OFFICIAL_KEYS, "name", "format", "steps", ""])
DOCUMENTS = st.one_of(
    st.dictionaries(KEYS, VALUES, max_size=6),
    st.fixed_dictionaries({key: st.lists(NUMBERS, min_size=1, max_size=4) for key in FIELDS}),
    st.fixed_dictionaries({key: st.lists(NUMBERS, min_size=1, max_size=4) for key in OFFICIAL_KEYS}),
    VALUES,
)


def _check_loaded(schedule: GenerationSchedule) -> None:
    """What the loop relies on, checked independently of ``validate``."""
    steps = schedule.steps
    assert steps >= 1 and all(len(getattr(schedule, key)) == steps for key in FIELDS)
    assert all(math.isfinite(v) for key in FIELDS for v in getattr(schedule, key))
    ratios = schedule.mask_ratio
    assert all(0 <= r <= 1 for r in ratios) and ratios[-1] == 0
    assert all(a >= b for a, b in zip(ratios, ratios[1:]))
    assert all(v > 0 for v in schedule.sample_temperature) and all(v >= 0 for v in schedule.guidance)
    counts = schedule.masked_counts(max(steps, 16))
    assert counts[-1] == 0 and all(a >= b for a, b in zip(counts, counts[1:]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=DOCUMENTS)
def test_any_schedule_file_loads_in_range_or_is_one_line_naming_it(tmp_path, document):
    path = tmp_path / "strategy.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        schedule = GenerationSchedule.load(path)
    except ValueError as err:
        message = str(err)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        return
    _check_loaded(schedule)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=40), st.text(max_size=40)))
def test_any_bytes_as_a_schedule_file_load_or_are_one_line_naming_it(tmp_path, content):
    path = tmp_path / "strategy.yaml"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    try:
        schedule = GenerationSchedule.load(path)
    except ValueError as err:
        assert str(err).startswith(f"{path}: ") and "\n" not in str(err), str(err)
        return
    _check_loaded(schedule)
