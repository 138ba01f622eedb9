"""The package's layers, as docs/architecture.md draws them: every import in ``lit_nat/`` (also inside
functions) points to the same layer or one below, so there are no import cycles between packages, hidden or not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lit_nat"

#: lowest first; a unit is a sub-package of lit_nat (docs/architecture.md lists the same order)
LAYERS = [
    {"core"},  # errors, whole-or-nothing files, checked checkpoint files, the finite guard, assets, progress, SLURM
    {"conditioning", "tokenizers"},  # class and text conditions; images <-> tokens
    {"generation"},  # the schedule, the decoding loop, editing inputs, pictures of a run
    {"models"},  # the backbones (U-ViT, ENAT, aMUSEd), their registry, official layouts, FLOPs
    {"data"},  # token shards, meta.json, tokenize
    {"metrics"},  # FID, IS, CLIP score, reference statistics
    {"search"},  # AutoNAT's strategy search and line search (pure, Lightning-free sessions)
    {"callbacks"},  # every Lightning Callback: evaluation, sample grids, the schedule search, reliability
    {"training"},  # objective, EMA, NATModule, NATTrainer, loading and importing checkpoints
    {"demos"},
    {"commands", "__main__", "__init__"},  # the command line
]
LAYER = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def unit_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imported_units(path: Path) -> set[tuple[str, int]]:
    """``(unit, line)`` of every ``lit_nat`` import in a file, module level or not."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "lit_nat":
                found |= {(alias.name, node.lineno) for alias in node.names}
            elif node.module.startswith("lit_nat."):
                found.add((node.module.split(".")[1], node.lineno))
        elif isinstance(node, ast.Import):
            found |= {(a.name.split(".")[1], node.lineno) for a in node.names if a.name.startswith("lit_nat.")}
    return found


FILES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_unit_has_a_layer():
    units = {unit_of(p) for p in FILES} | {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert units <= set(LAYER), f"units without a layer: {sorted(units - set(LAYER))}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    unit = unit_of(path)
    upward = [f"line {line}: {unit} (layer {LAYER[unit]}) imports {other} (layer {LAYER.get(other)})"
              for other, line in sorted(imported_units(path))
              if other != unit and other in LAYER and LAYER[other] > LAYER[unit]]  # fmt: skip
    assert not upward, f"{path.relative_to(PACKAGE.parent)}: " + "; ".join(upward)


#: what may sit directly in lit_nat/: the public API and the entry point; everything else lives in a package
TOP_LEVEL_MODULES = {"__init__.py", "__main__.py"}
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def test_the_top_level_holds_only_the_entry_points():
    assert {p.name for p in PACKAGE.glob("*.py")} <= TOP_LEVEL_MODULES


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_files_and_functions_stay_small(path):
    """Files of at most 400 lines and functions of at most 60 (docstring included): small enough to read whole."""
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= MAX_FILE_LINES, f"{path.name}: {len(source.splitlines())} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]  # fmt: skip
    assert not long, f"{path.relative_to(PACKAGE.parent)}: {', '.join(long)}"
