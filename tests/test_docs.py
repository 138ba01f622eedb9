"""The documentation cannot rot: every code block of ``README.md`` and ``docs/*.md`` is checked.

- Every ``python -m lit_nat ...`` line of a ``bash`` block (backslash continuations joined, ``;``/``&&``/``|`` split)
  is parsed by the real command line with ``--print_config`` appended: nothing runs, and the printed configuration
  must be YAML. A line whose output is redirected (``... --print_config > x.yaml``) writes that file, so a later
  ``--config x.yaml`` of the same block reads what the earlier line printed. Other lines (``sbatch``, ``bash
  scripts/...``, ``pip``) are not run.
- ``python`` blocks are executed in a fresh namespace, in an empty working directory that holds ``configs/`` and a
  tiny checkpoint of the digits demo's token space at the demo's path (``runs/demo_digits/...``).
- ``yaml`` blocks are parsed.
- Every relative link and picture resolves (a file, and for a ``.md`` target its ``#anchor``); the README stays short
  and links every page.

A block that cannot run offline opts out with ``<!-- docs-test: skip (reason) -->`` on the line above its fence.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from lit_nat.commands.cli import main  # the entry point of `python -m lit_nat`

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
MAX_README_LINES = 150

FENCE = re.compile(r"^\s*```(?P<lang>\S*)\s*$")
SKIP = re.compile(r"^\s*<!--\s*docs-test:\s*skip\s*\((?P<reason>.+)\)\s*-->\s*$")
SHELL = ("bash", "sh", "shell", "console")
PROGRAM = ("python", "-m", "lit_nat")
#: shell operators that end a command (the redirect ``>`` is handled apart: its target is the next word)
OPERATORS = {";", "&&", "||", "|", "&", "(", ")", ";;", "<", ">>"}
#: the demo's checkpoint path the pages use; the tests put a tiny model of the digits' token space there
DEMO_CHECKPOINT = Path("runs/demo_digits/tensorboard/version_0/checkpoints/last.ckpt")


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    skip: str | None  # the reason of a `docs-test: skip` comment

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


@dataclass
class Command:
    block: Block
    line: int
    argv: list[str]  # after `python -m lit_nat`
    redirect: str | None = None  # `> FILE`
    needs: list[Command] = field(default_factory=list)  # earlier lines of the block that write a file this one reads

    @property
    def where(self) -> str:
        return f"{self.block.page.relative_to(REPO)}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    blocks, lines, i = [], page.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not FENCE.match(lines[i]):
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{page.relative_to(REPO)}:{start + 1}: a code block is never closed"
        skip = SKIP.match(lines[start - 1]) if start > 0 else None
        blocks.append(Block(page, start + 1, match["lang"], "\n".join(body), skip and skip["reason"]))
        i += 1  # the closing fence
    return blocks


BLOCKS = [block for page in PAGES for block in read_blocks(page)]


def logical_lines(text: str) -> list[tuple[int, str]]:
    """``(offset of the first physical line, line)`` with backslash continuations joined."""
    out, current, first = [], "", None
    for offset, line in enumerate(text.splitlines()):
        first = offset if first is None else first
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        out.append((first, current + line))
        current, first = "", None
    if current:
        out.append((first, current))
    return out


def strip_comment(line: str) -> str:
    """The line without its shell comment: a ``#`` outside quotes at the start of a word."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def shell_commands(block: Block) -> list[Command]:
    """The ``python -m lit_nat`` commands of a shell block, with their redirects and what they read."""
    commands: list[Command] = []
    for offset, line in logical_lines(block.text):
        lexer = shlex.shlex(strip_comment(line), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        segment: list[str] = []
        redirected: Command | None = None  # the command whose `>` target is the next word
        target_next = False
        for token in [*lexer, ";"]:
            if target_next:
                if redirected is not None:
                    redirected.redirect = token
                target_next = False
                continue
            if token in OPERATORS or token == ">":
                found = next((i for i in range(len(segment)) if tuple(segment[i : i + 3]) == PROGRAM), None)
                command = None if found is None else Command(block, block.line + 1 + offset, segment[found + 3 :])
                if command is not None:
                    commands.append(command)
                redirected, target_next, segment = command, token == ">", []
                continue
            segment.append(token)
    for i, command in enumerate(commands):  # `--config x.yaml` that an earlier line of the block wrote
        read = {a.split("=", 1)[1] for a in command.argv if a.startswith("--config=")}
        read |= {b for a, b in zip(command.argv, command.argv[1:]) if a == "--config"}
        command.needs = [c for c in commands[:i] if c.redirect in read]
    return commands


COMMANDS = [command for block in BLOCKS if block.lang in SHELL and not block.skip for command in shell_commands(block)]


def unique_ids(items: list, where) -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for item in items:
        name = where(item)
        seen[name] = seen.get(name, 0) + 1
        ids.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return ids


def parse_only(argv: list[str]) -> str:
    """Parse ``argv`` with the real command line without running it: ``--print_config`` (or the line's own
    ``--help``/``--version``) prints and exits; returns what it printed."""
    informational = any(a in ("-h", "--help", "--version") for a in argv)
    args = argv if informational else [*argv, "--print_config"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            main(list(args))
        except SystemExit as stop:
            assert stop.code in (0, None), f"exit status {stop.code}: {printed.getvalue()[-2000:]}"
        else:
            assert informational or not argv, "the command ran instead of printing its configuration"
    return printed.getvalue()


def workspace(path: Path) -> Path:
    """An empty working directory with the repository's ``configs/`` (the paths the pages use)."""
    (path / "configs").symlink_to(REPO / "configs", target_is_directory=True)
    return path


def run_with_needs(command: Command, done: set[int]) -> str:
    for earlier in command.needs:
        if id(earlier) not in done:
            run_with_needs(earlier, done)
    printed = parse_only(command.argv)
    if command.redirect:
        Path(command.redirect).write_text(printed, encoding="utf-8")
    done.add(id(command))
    return printed


@pytest.mark.parametrize("command", COMMANDS, ids=unique_ids(COMMANDS, lambda c: c.where))
def test_command_line_parses(command: Command, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace(tmp_path))
    printed = run_with_needs(command, set())
    if not any(a in ("-h", "--help", "--version") for a in command.argv) and command.argv:
        assert isinstance(yaml.safe_load(printed), dict), f"--print_config printed no YAML mapping: {printed[:500]!r}"
    else:
        assert printed.strip(), "printed nothing"


def test_parse_only_refuses_what_the_parser_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above is not vacuous: an option the command does not have fails it."""
    monkeypatch.chdir(workspace(tmp_path))
    with pytest.raises(Exception, match="no_such_option"):
        parse_only(["sample", "--ckpt_path", "model.ckpt", "--no_such_option", "1"])


def test_the_pages_have_command_lines() -> None:
    """The collection works: the pages show many commands, each command at least once, and the flagship run."""
    shown = {c.argv[0] for c in COMMANDS if c.argv}
    expected = {"fit", "validate", "sample", "edit", "search", "autonat", "tokenize", "tokenize-verify",
                "import-checkpoint", "reference-stats", "flops"}  # fmt: skip
    assert expected <= shown, f"commands never shown in a bash block: {sorted(expected - shown)}"
    assert any(c.block.page == README and c.argv[:3] == ["fit", "--config", "configs/enat_l.yaml"] for c in COMMANDS)


# ---------------------------------------------------------------------------------------------------- Python blocks
PYTHON = [block for block in BLOCKS if block.lang == "python"]


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-block U-ViT in the digits demo's token space (17 grey levels, 8x8, 10 classes), saved as fit would."""
    from lit_nat.core.checkpointing import save_checkpoint_file
    from lit_nat.training.module import NATModule

    model = NATModule(arch="autonat-tiny", arch_overrides={"width": 32, "num_layers": 1, "num_heads": 2},
                      codebook_size=17, grid_size=8, num_classes=10, schedule_params={"steps": 4},
                      tokenizer={"name": "pixel", "levels": 17, "image_size": 8, "channels": 1})  # fmt: skip
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    root = tmp_path_factory.mktemp("demo")
    save_checkpoint_file(checkpoint, root / DEMO_CHECKPOINT)
    return root / "runs"


@pytest.mark.parametrize("block", PYTHON, ids=unique_ids(PYTHON, lambda b: b.where))
def test_python_block_runs(block: Block, demo_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    if block.skip:
        pytest.skip(block.skip)
    monkeypatch.chdir(workspace(tmp_path))
    (tmp_path / "runs").symlink_to(demo_checkpoint, target_is_directory=True)
    exec(compile(block.text, block.where, "exec"), {"__name__": "__docs__"})


# ----------------------------------------------------------------------------------------------- every other block
@pytest.mark.parametrize("block", BLOCKS, ids=unique_ids(BLOCKS, lambda b: b.where))
def test_block_is_labelled(block: Block) -> None:
    assert block.lang, f"{block.where}: give the code block a language (```bash, ```python, ```yaml, ```text)"
    if block.skip is not None:
        assert block.skip.strip(), f"{block.where}: a skipped block says why"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "yaml"],
                         ids=unique_ids([b for b in BLOCKS if b.lang == "yaml"], lambda b: b.where))  # fmt: skip
def test_yaml_block_parses(block: Block) -> None:
    assert yaml.safe_load(block.text) is not None


# ------------------------------------------------------------------------------------------------------------ links
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$")


def prose(page: Path) -> str:
    """The page without its code blocks."""
    return re.sub(r"^\s*```.*?^\s*```\s*$", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    for line in prose(page).splitlines():
        if match := HEADING.match(line):
            title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match["title"]).lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(page: Path) -> None:
    broken = []
    for match in LINK.finditer(prose(page)):
        target = match["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


#: a repository file named in a page's text or code: a config, a script or a test
REPO_FILE = re.compile(r"(?<![\w./-])(?P<path>(?:configs|scripts|tests)/[\w./-]*\.(?:py|sh|yaml|sbatch))(?![\w/-])")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_repository_files_exist(page: Path) -> None:
    named = {m["path"] for m in REPO_FILE.finditer(page.read_text(encoding="utf-8"))}
    missing = sorted(path for path in named if not (REPO / path).is_file())
    assert not missing, f"{page.relative_to(REPO)} names files that do not exist: {missing}"


#: a dotted lit_nat name (``lit_nat.callbacks.ScheduleSearch``) or a module file (``lit_nat/models/amused.py``)
DOTTED = re.compile(r"(?<![\w./])lit_nat(?:\.\w+)+(?![\w/])")  # (not the schedule format lit_nat.schedule/1)
MODULE_FILE = re.compile(r"(?<![\w./])lit_nat/[\w/]+\.py")


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` is an importable module, or an attribute path of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(value, name):
                return False
            value = getattr(value, name)
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_modules_exist(page: Path) -> None:
    """The package was reorganised once; the pages name its modules and classes as they are now."""
    text = page.read_text(encoding="utf-8")
    stale = sorted({m.group(0) for m in DOTTED.finditer(text)} - {n for n in DOTTED.findall(text) if resolves(n)})
    stale += sorted({p for p in MODULE_FILE.findall(text) if not (REPO / p).is_file()})
    assert not stale, f"{page.relative_to(REPO)} names modules or objects that do not exist: {stale}"


def test_readme_is_short_and_links_every_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    linked = {(README.parent / m["target"].partition("#")[0]).resolve() for m in LINK.finditer(prose(README))}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"
