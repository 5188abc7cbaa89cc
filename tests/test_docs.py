"""The documentation (docs/*.md and README.md) shows what is true: its Python samples run, its excerpts of
`examples/` match the files, its links and anchors lead somewhere, and every `converge` command and flag it
names exists in the CLI's parser (full command lines parse as they are written).

A Python sample that cannot run on its own says so on the line before its fence, with one of two markers:

    <!-- sample: fragment (why it cannot run) -->
    <!-- sample: excerpt examples/FILE.py -->

An excerpt's lines (comments, blank lines and `...` elisions aside) must all be lines of FILE. A sample that
is `--8<-- "PATH"` is included from PATH by the site's build (pymdownx.snippets): only PATH is checked here.
Every other Python sample runs: a page's samples in order, in one namespace, in a fresh folder in which
`examples/` is the repository's, as a reader who pastes them one after another would.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

from converge.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
MARKER = re.compile(r"^<!-- sample: (fragment|excerpt) (.+?) -->$")
INCLUDE = re.compile(r'^--8<-- "([^":]+)(?::\d+(?::\d+)?|:(\w[\w-]*))?"$')   # a file, its lines, or a section
SHELL_LANGS = {"", "bash", "sh", "console", "shell"}
# Flags of other programs that the pages show beside converge's: torchrun's, SLURM's, and the bench
# scripts' (bench/*.py, not part of the `converge` command).
FOREIGN_FLAGS = {"--nnodes", "--nproc-per-node", "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id", "--standalone",
                 "--job-name", "--nodes", "--ntasks-per-node", "--gpus-per-node", "--cpus-per-task", "--time",
                 "--requeue", "--tasks", "--seeds", "--no-tpe", "--fixed-split", "--first-seed", "--rounds",
                 "--extra-args", "--contenders", "--epochs", "--reuse", "--report"}


@dataclass
class Block:
    page: Path
    line: int          # 1-based line of the opening fence
    lang: str
    code: str
    marker: tuple[str, str] | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def fenced_blocks(page: Path) -> list[Block]:
    """Every fenced block of a Markdown page, dedented to its fence (fences may sit in list items)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```(\w*)", lines[i])
        if not opening:
            i += 1
            continue
        indent, start = len(opening.group(1)), i
        i += 1
        body = []
        while not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][indent:])
            i += 1
        previous = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(previous)
        blocks.append(Block(page, start + 1, opening.group(2), "\n".join(body) + "\n",
                            marker.groups() if marker else None))
        i += 1
    return blocks


def prose(page: Path) -> str:
    """The page without its fenced blocks."""
    return re.sub(r"^\s*```.*?^\s*```\s*$", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)


BLOCKS = [block for page in PAGES for block in fenced_blocks(page)]
PYTHON = [block for block in BLOCKS if block.lang == "python"]
RUNNABLE_PAGES = sorted({b.page for b in PYTHON if b.marker is None and not INCLUDE.match(b.code.strip())})


def test_the_pages_have_samples_of_every_sort():
    """The parsing above finds what the pages hold (a parser that found nothing would pass everything)."""
    assert RUNNABLE_PAGES and any(b.marker for b in PYTHON) and any(INCLUDE.match(b.code.strip()) for b in PYTHON)
    assert any(b.lang in SHELL_LANGS and "converge train" in b.code for b in BLOCKS)


@pytest.mark.parametrize("block", [b for b in PYTHON if b.marker or INCLUDE.match(b.code.strip())],
                         ids=lambda b: b.where)
def test_marked_and_included_samples(block):
    include = INCLUDE.match(block.code.strip())
    if include:
        path, section = ROOT / include.group(1), include.group(2)
        assert path.is_file(), f"{block.where}: includes a missing file {include.group(1)}"
        if section:  # pymdownx.snippets' "# --8<-- [start:name]" ... "[end:name]" markers
            text = path.read_text(encoding="utf-8")
            assert f"--8<-- [start:{section}]" in text and f"--8<-- [end:{section}]" in text, \
                f"{block.where}: {include.group(1)} has no section {section!r}"
        return
    kind, detail = block.marker
    if kind == "fragment":
        assert detail.startswith("(") and len(detail) > 4, f"{block.where}: a fragment says why it cannot run"
        return
    source = ROOT / detail
    assert source.is_file(), f"{block.where}: an excerpt of a missing file {detail}"
    known = {line.strip() for line in source.read_text(encoding="utf-8").splitlines()}
    for line in block.code.splitlines():
        text = line.strip()
        if text and not text.startswith(("#", "...")):
            assert text in known, f"{block.where}: {text!r} is not a line of {detail}"


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_samples_run(page, tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs_sample__"}
    for block in [b for b in PYTHON if b.page == page and b.marker is None and not INCLUDE.match(b.code.strip())]:
        exec(compile(block.code, block.where, "exec"), namespace)   # a failing sample fails here, named


def _subcommands():
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]   # argparse keeps subparsers here
    return parser, commands.choices


def _commands_in(text: str):
    """The `converge ...` commands of a shell block: (the tokens after `converge`, whether it is a synopsis)."""
    text = text.replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip().removeprefix("$ ")
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:   # an output line with an odd quote is not a command
            continue
        if len(tokens) > 1 and tokens[0].split("/")[-1].startswith("python") and tokens[1].endswith(".py"):
            continue     # a script's line (bench/*.py): a "converge" there is one of its arguments
        for i, token in enumerate(tokens):
            if token == "converge" or token.endswith("/bin/converge"):
                args = []
                for arg in tokens[i + 1:]:
                    if arg in ("|", "&&", ";", ">", "2>&1"):
                        break
                    args.append(arg)
                synopsis = any(re.search(r"[\[\]|$<]|^[A-Z]+$", arg) for arg in args) or "[options]" in line
                yield args, synopsis


def _check_names(args: list[str], where: str) -> None:
    parser, subcommands = _subcommands()
    if not args or args[0].startswith("$"):
        return
    if args[0].startswith("-"):
        flags, name = parser._option_string_actions, "converge"
    else:
        assert args[0] in subcommands, f"{where}: no command `converge {args[0]}`"
        flags, name = subcommands[args[0]]._option_string_actions, f"converge {args[0]}"
    for arg in args:
        flag = arg.strip("[]").split("=")[0]
        if flag.startswith("--"):
            assert flag in flags, f"{where}: `{name}` has no flag {flag}"


def test_shell_samples_name_real_commands_and_parse():
    """A full command line parses with the real parser; a synopsis (TASK, [--flag], a|b) names only real
    commands and flags."""
    parser, _ = _subcommands()
    seen = 0
    for block in [b for b in BLOCKS if b.lang in SHELL_LANGS]:
        for args, synopsis in _commands_in(block.code):
            seen += 1
            _check_names(args, block.where)
            if not synopsis and "--version" not in args and "--help" not in args:
                parser.parse_args(args)   # raises on an unknown flag or a bad value
    assert seen >= 10


def test_inline_commands_and_every_flag_exist():
    """`converge ...` in running text names real commands and flags, and every --flag any page names is
    converge's (or one of the few other programs' the pages show beside it)."""
    parser, subcommands = _subcommands()
    known = set(parser._option_string_actions)
    for sub in subcommands.values():
        known |= set(sub._option_string_actions)
    for page in PAGES:
        text = prose(page)
        for span in re.findall(r"`(converge [^`]+)`", text):
            _check_names(span.split()[1:], f"{page.relative_to(ROOT)}: `{span}`")
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", page.read_text(encoding="utf-8")))
        unknown = flags - known - FOREIGN_FLAGS
        assert not unknown, f"{page.relative_to(ROOT)} names flags converge does not have: {sorted(unknown)}"


def test_make_targets_exist():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    for page in PAGES:
        named = set(re.findall(r"(?:^|`)make ([a-z][a-z-]*)", page.read_text(encoding="utf-8"), flags=re.M))
        assert named <= targets, f"{page.relative_to(ROOT)}: no make target {sorted(named - targets)}"


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc (the site) and GitHub give a heading, for the headings used here."""
    text = re.sub(r"[`*]", "", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def test_readme_links_lead_somewhere():
    """The site's strict build checks the pages' links; the README is not part of the site, so here its
    relative links must name existing files, and their anchors existing headings."""
    readme = prose(ROOT / "README.md")
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if re.match(r"\w+://", link):
            continue
        path, _, anchor = link.partition("#")
        target = ROOT / path if path else ROOT / "README.md"
        assert target.is_file(), f"README.md links to a missing file {path}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", prose(target), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, f"README.md links to a missing anchor {link}"


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    assert "make demo" in readme and "make test" in readme
