"""Generation schedules: constructors, count rule, YAML in our and the official format, validation."""

import math

import pytest
import yaml

from lit_nat.generation.schedule import GenerationSchedule
from tests.helpers.schedules import OFFICIAL_T8


def test_official_autonat_counts():
    # the reference note verified these by running the official loop: 256, 244, 225, 203, 190, 159, 104, 66, 0
    schedule = GenerationSchedule.from_official(OFFICIAL_T8)
    assert schedule.masked_counts(256) == [244, 225, 203, 190, 159, 104, 66, 0]


def test_enat_counts_and_values():
    schedule = GenerationSchedule.enat(8)
    assert schedule.masked_counts(256) == [251, 236, 212, 181, 142, 97, 49, 0]
    assert schedule.masked_counts(1024) == [1004, 946, 851, 724, 568, 391, 199, 0]
    assert schedule.guidance == pytest.approx([2.5 * t / 8 for t in range(8)])
    assert schedule.remask_temperature == pytest.approx([1.5 * (1 - (t + 1) / 8) for t in range(8)])
    assert schedule.sample_temperature[-1] == pytest.approx(1e-3)
    assert schedule.sample_temperature[0] == pytest.approx(6 * 7 / 8)


def test_heuristic_is_table_1():
    schedule = GenerationSchedule.heuristic(4, remask_temperature=3.0, guidance=2.0)
    assert schedule.mask_ratio[:3] == pytest.approx([math.cos(math.pi * t / 8) for t in (1, 2, 3)])
    assert schedule.mask_ratio[-1] == 0.0
    assert schedule.sample_temperature == [1.0] * 4
    assert schedule.remask_temperature == pytest.approx([3.0 * (4 - t + 1) / 4 for t in (1, 2, 3, 4)])
    assert schedule.guidance == pytest.approx([2.0 * t / 4 for t in (1, 2, 3, 4)])
    assert schedule.masked_counts(64) == [59, 45, 24, 0]


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 16, 64])
def test_counts_always_reveal_and_finish(steps):
    for schedule in (GenerationSchedule.heuristic(steps), GenerationSchedule.enat(steps)):
        counts = schedule.masked_counts(64)
        assert counts[-1] == 0
        previous = 64
        for c in counts[:-1]:
            assert 1 <= c <= previous - 1  # at least one revealed, at least one still masked
            previous = c


def test_count_guard_with_flat_ratios():
    schedule = GenerationSchedule([0.9, 0.9, 0.9, 0.0], [1.0] * 4, [1.0] * 4, [0.0] * 4)
    assert schedule.masked_counts(10) == [9, 8, 7, 0]
    with pytest.raises(ValueError, match="cannot reveal"):
        GenerationSchedule.heuristic(12).masked_counts(8)


def test_yaml_round_trips(tmp_path):
    schedule = GenerationSchedule.from_official(OFFICIAL_T8)
    ours = GenerationSchedule.load(schedule.save(tmp_path / "ours.yaml"))
    assert ours == schedule
    official_path = schedule.save(tmp_path / "official.yaml", official=True)
    raw = yaml.safe_load(official_path.read_text())
    assert [len(raw[k]) for k in ("manual_ratios", "manual_temp", "manual_samp_temp", "manual_cfg")] == [7, 7, 8, 8]
    assert raw["manual_ratios"] == pytest.approx(OFFICIAL_T8["manual_ratios"])
    assert GenerationSchedule.load(official_path) == schedule
    # the official writer stores a length-1 block as a scalar
    two = {"manual_ratios": 0.5, "manual_temp": 1.0, "manual_samp_temp": [1.0, 1.0], "manual_cfg": [0.0, 1.0]}
    assert GenerationSchedule.from_official(two).mask_ratio == [0.5, 0.0]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mask_ratio": [1.2, 0.5, 0.0]}, r"mask_ratio\[0\] = 1.2 is outside \[0, 1\]"),
        ({"mask_ratio": [0.5, 0.2, 0.1]}, "the last step must be 0"),
        ({"sample_temperature": [1.0, 0.0, 1.0]}, r"sample_temperature\[1\] = 0.0; temperatures must be > 0"),
        ({"remask_temperature": [-1.0, 1.0, 1.0]}, r"remask_temperature\[0\]"),
        ({"guidance": [1.0, 1.0]}, "guidance has 2 values, expected 3"),
        ({"guidance": [0.0, -2.0, 1.0]}, r"guidance\[1\]"),
    ],
)
def test_bad_values_are_named(tmp_path, change, message):
    data = {
        "mask_ratio": [0.6, 0.3, 0.0],
        "sample_temperature": [1.0] * 3,
        "remask_temperature": [1.0] * 3,
        "guidance": [0.0] * 3,
        **change,
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=message) as info:
        GenerationSchedule.load(path)
    assert str(path) in str(info.value)


def test_official_length_mismatch_and_unknown_keys(tmp_path):
    bad = dict(OFFICIAL_T8, manual_cfg=OFFICIAL_T8["manual_cfg"][:-1])
    with pytest.raises(ValueError, match="manual_cfg has 7 values"):
        GenerationSchedule.from_official(bad)
    with pytest.raises(ValueError, match=r"unknown keys \['ratio'\]"):
        GenerationSchedule.from_dict(
            {
                "mask_ratio": [0.0],
                "sample_temperature": [1.0],
                "remask_temperature": [1.0],
                "guidance": [0.0],
                "ratio": 1,
            }
        )
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        GenerationSchedule.load(tmp_path / "nope.yaml")


def test_preset_dispatch(tmp_path):
    assert GenerationSchedule.preset("enat", steps=4) == GenerationSchedule.enat(4)
    path = GenerationSchedule.heuristic(3).save(tmp_path / "h.yaml")
    assert GenerationSchedule.preset(str(path)) == GenerationSchedule.heuristic(3)
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        GenerationSchedule.preset("cosine")
    with pytest.raises(ValueError, match="bad schedule_params"):
        GenerationSchedule.preset("enat", stepz=3)
