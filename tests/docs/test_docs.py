"""The manual stays honest: README.md and docs/*.md link to what exists and show runnable commands.

- every relative link (and image) resolves to a file or folder, and every ``#anchor`` to a
  heading of the target page (GitHub's slug rule);
- every ``python <script> ...`` command in a shell code block names a script of the repository
  whose ``build_parser()`` accepts the arguments shown (parsed only, nothing runs);
- every ``python`` code block compiles.

No network, no model runs: the scripts are imported for their parsers only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shlex
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").rglob("*.md")])

SHELL_LANGS = {"bash", "sh", "shell", ""}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
# [text](target) and ![alt](target), with an optional "title"; text may hold one level of [...].
LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?(?P<target>[^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)"
)
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(?P<target>\S+?)>?(?:\s|$)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(?P<text>.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)  # http:, https:, mailto:, ...
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
COMMAND_START = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(?:python3?|torchrun)\s")
SHELL_OPERATOR_CHARS = set("();<>|&")
PYTHONS = {"python", "python3"}


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language tag, first content line (1-based) and lines."""

    path: Path
    lang: str
    line: int
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Command:
    """A ``python <script> args`` command found in a shell block."""

    path: Path
    line: int
    text: str
    script: str
    argv: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{_rel(self.path)}:{self.line}"


def split_blocks(path: Path) -> tuple[list[Block], list[tuple[int, str]]]:
    """The fenced code blocks of a Markdown file, and its other lines (number, text)."""
    blocks: list[Block] = []
    prose: list[tuple[int, str]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            line = lines[j]
            body.append(line[min(indent, len(line) - len(line.lstrip())) :])  # the fence's indent
            j += 1
        blocks.append(Block(path, match["lang"].lower(), i + 2, tuple(body)))
        i = j + 1
    return blocks, prose


def _rel(path: Path) -> str:
    """A path relative to the repository where it is inside it."""
    return path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path)


def slugify(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, spaces to '-', punctuation dropped."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors of a Markdown file's headings (repeated headings get -1, -2, ...)."""
    seen: dict[str, int] = {}
    result = set()
    for _, line in split_blocks(path)[1]:
        match = HEADING.match(line)
        if not match:
            continue
        slug = slugify(match["text"])
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return frozenset(result)


def links(path: Path) -> list[tuple[int, str]]:
    """The link and image targets of a Markdown file outside code (line number, target)."""
    found = []
    for number, line in split_blocks(path)[1]:
        text = INLINE_CODE.sub("", line)
        found += [(number, m["target"]) for m in LINK.finditer(text)]
        definition = REFERENCE_DEFINITION.match(text)
        if definition:
            found.append((number, definition["target"]))
    return found


def link_problem(path: Path, target: str) -> str | None:
    """Why a link target does not resolve, or None when it does (external links are not read)."""
    if not target or EXTERNAL.match(target):
        return None
    file_part, _, anchor = target.partition("#")
    if file_part:
        resolved = (path.parent / file_part).resolve()
        if not resolved.exists():
            return f"{file_part} does not exist (relative to {_rel(path.parent)})"
    else:
        resolved = path
    if (
        anchor
        and resolved.suffix == ".md"
        and resolved.is_file()
        and anchor not in anchors(resolved)
    ):
        known = ", ".join(sorted(anchors(resolved)))
        return f"no heading #{anchor} in {_rel(resolved)} (headings: {known})"
    return None


def logical_lines(block: Block) -> list[tuple[int, str]]:
    """A shell block's commands: backslash-continued lines joined (first line's number)."""
    result: list[tuple[int, str]] = []
    pending: list[str] = []
    start = block.line
    for offset, line in enumerate(block.lines):
        if not pending:
            start = block.line + offset
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        result.append((start, " ".join(part.strip() for part in pending)))
        pending = []
    if pending:
        result.append((start, " ".join(part.strip() for part in pending)))
    return result


def tokenize(line: str) -> list[str]:
    """Shell words of a line, comments dropped, operators (| && ; ( ) > ...) as their own words."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def simple_commands(tokens: list[str]) -> list[list[str]]:
    """Split shell words at control operators and drop redirections (``> file``, ``2>&1``)."""
    commands: list[list[str]] = [[]]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token and set(token) <= SHELL_OPERATOR_CHARS:
            if "<" in token or ">" in token:
                if commands[-1] and commands[-1][-1].isdigit():
                    commands[-1].pop()  # the file descriptor of 2>...
                i += 2  # the operator and its target
                continue
            commands.append([])
        else:
            commands[-1].append(token)
        i += 1
    return [command for command in commands if command]


def python_command(words: list[str]) -> tuple[str, list[str]] | None:
    """(script, argv) of ``[VAR=v ...] python script args`` or ``torchrun [opts] script args``."""
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    if not words:
        return None
    if words[0] in PYTHONS:
        if len(words) < 2 or words[1].startswith("-"):
            return None  # python -m ..., python -c ...
        return words[1], words[2:]
    if words[0] == "torchrun":
        for i, word in enumerate(words[1:], start=1):
            if word.endswith(".py") and not word.startswith("-"):
                return word, words[i + 1 :]
    return None


def is_shell_block(block: Block) -> bool:
    if block.lang not in SHELL_LANGS:
        return False
    if block.lang:
        return True
    first = next((line.strip() for line in block.lines if line.strip()), "")
    return bool(COMMAND_START.match(first + " "))


def commands_in(path: Path) -> list[Command]:
    found = []
    for block in split_blocks(path)[0]:
        if not is_shell_block(block):
            continue
        for number, line in logical_lines(block):
            for words in simple_commands(tokenize(line)):
                parsed = python_command(words)
                if parsed is not None:
                    script, argv = parsed
                    found.append(Command(path, number, line, script, tuple(argv)))
    return found


ALL_LINKS = [(path, number, target) for path in DOC_FILES for number, target in links(path)]
ALL_COMMANDS = [command for path in DOC_FILES for command in commands_in(path)]
PYTHON_BLOCKS = [
    block for path in DOC_FILES for block in split_blocks(path)[0] if block.lang == "python"
]


def _where(path: Path, line: int) -> str:
    return f"{_rel(path)}:{line}"


@cache
def load_script(script: str) -> ModuleType:
    """Import a script by path under a module name of its own (its ``__main__`` block not run)."""
    path = REPO_ROOT / script
    name = "_docs_script_" + re.sub(r"\W", "_", script)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"cannot load {script}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def test_docs_found():
    """The extraction finds what the pages hold (guards against a parser that finds nothing)."""
    assert (REPO_ROOT / "README.md") in DOC_FILES
    assert any(path.parent.name == "docs" for path in DOC_FILES)
    assert ALL_LINKS and ALL_COMMANDS and PYTHON_BLOCKS


@pytest.mark.parametrize(
    ("path", "line", "target"),
    ALL_LINKS,
    ids=[f"{_where(path, line)}:{target}" for path, line, target in ALL_LINKS],
)
def test_link_resolves(path: Path, line: int, target: str):
    problem = link_problem(path, target)
    assert problem is None, f"{_where(path, line)}: link ({target}): {problem}"


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=[command.where for command in ALL_COMMANDS])
def test_command_parses(command: Command):
    script_path = REPO_ROOT / command.script
    assert script_path.is_file(), (
        f"{command.where}: {command.script} does not exist: {command.text}"
    )
    module = load_script(command.script)
    build_parser = getattr(module, "build_parser", None)
    if not callable(build_parser):
        pytest.fail(
            f"{command.where}: {command.script} has no build_parser(): {command.text}",
            pytrace=False,
        )
    parser = build_parser()
    assert isinstance(parser, argparse.ArgumentParser), f"{command.script}: build_parser()"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(list(command.argv))
    except SystemExit as exc:
        if exc.code not in (0, None):  # --help and --version exit 0
            message = stderr.getvalue().strip()
            pytest.fail(
                f"{command.where}: {command.script} refuses: {command.text}\n{message}",
                pytrace=False,
            )


@pytest.mark.parametrize(
    "block", PYTHON_BLOCKS, ids=[_where(block.path, block.line) for block in PYTHON_BLOCKS]
)
def test_python_block_compiles(block: Block):
    source = "\n".join(block.lines) + "\n"
    try:
        compile(source, _where(block.path, block.line), "exec")
    except SyntaxError as exc:
        lineno = block.line + (exc.lineno or 1) - 1
        pytest.fail(f"{_where(block.path, lineno)}: {exc.msg}", pytrace=False)


# The extraction itself, on small samples.


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Deployment (ONNX)", "deployment-onnx"),
        ("Realistic trimaps: the predictor call", "realistic-trimaps-the-predictor-call"),
        ("torch.hub", "torchhub"),
        ("`inference.py`: exit_codes", "inferencepy-exit_codes"),
        ("Differences from the official code", "differences-from-the-official-code"),
    ],
)
def test_slugify(heading: str, slug: str):
    assert slugify(heading) == slug


def test_command_extraction(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(
        "\n".join(
            [
                "```bash",
                "OMP_NUM_THREADS=1 python main.py --config-file a.py \\",
                '    --x "#00ff00"  # a comment',
                "out=$(python tools/evaluate.py --csv o.csv 2>&1 | tee log) && python -m pytest -q",
                "torchrun --standalone --nproc-per-node 2 inference.py --device cpu > log.txt",
                "```",
                "```",
                "datasets/",
                "  python not_a_command.py",
                "```",
                "```",
                "python tools/make_trimap.py --width 10",
                "```",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    found = [(c.line, c.script, c.argv) for c in commands_in(page)]
    assert found == [
        (2, "main.py", ("--config-file", "a.py", "--x", "#00ff00")),
        (4, "tools/evaluate.py", ("--csv", "o.csv")),
        (5, "inference.py", ("--device", "cpu")),
        (12, "tools/make_trimap.py", ("--width", "10")),
    ]


def test_link_extraction(tmp_path: Path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\nSee [other](other.md#a-section), ![img](missing.png), [top](#title),\n"
        "[web](https://example.com), `[code](not-a-link.md)`, [bad](other.md#nope).\n"
        "```\n[in code](ignored.md)\n```\n",
        encoding="utf-8",
    )
    targets = [target for _, target in links(page)]
    assert targets == [
        "other.md#a-section",
        "missing.png",
        "#title",
        "https://example.com",
        "other.md#nope",
    ]
    problems = {target: link_problem(page, target) for target in targets}
    assert problems["other.md#a-section"] is None
    assert problems["#title"] is None
    assert problems["https://example.com"] is None
    assert "does not exist" in problems["missing.png"]
    assert "no heading #nope" in problems["other.md#nope"]
