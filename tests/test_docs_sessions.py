"""Every command example with output in docs/*.md and README.md is run, and its output compared.

The convention (docs/testing.md, "The docs' own examples are tests"):

```console                 run each `$ anmc ...` line; what follows it, up to the next `$`, is its exact output
```console numbers-vary    the same, but every number may differ (and so may the widths of table rules)
```console slow            (combinable with numbers-vary) a longer example: the test is marked slow
```console not-run         shown, not re-run (a 10-minute training): each command must still parse
```LANG file=NAME          a file the page's sessions use, written into their working folder first

Inside expected output, a line `...` stands for any lines (or none), and `...` inside a line for any
text. A quick session may not rely on files a slow one made. A block that shows a `$ ` prompt without one of these info strings fails the test. A page's
sessions run in order in one folder holding a link to priors/, each command as a subprocess with an
80-column terminal, stdout and stderr together as a terminal would show them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```\s*$", re.M | re.S)
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
RULES = "─━═┄┈-"
KINDS = {"console", "numbers-vary", "slow", "not-run"}


@dataclass
class Session:
    page: Path
    line: int
    flags: frozenset
    steps: list[tuple[str, str]]  # (command, expected output)

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}"


def parse_page(page: Path) -> tuple[list[Session], dict[str, str], list[str]]:
    """(sessions, files to write, problems: unmarked blocks with a prompt) of one page."""
    text = page.read_text()
    sessions, files, problems = [], {}, []
    for m in FENCE.finditer(text):
        info, body = m.group(1).split(), m.group(2)
        line = text[: m.start()].count("\n") + 1
        file = next((w.split("=", 1)[1] for w in info if w.startswith("file=")), None)
        if file:
            files[file] = body
            continue
        if not info or info[0] != "console":
            if re.search(r"^\$ ", body, re.M):
                problems.append(f"{page.name}:{line}: a block with a `$ ` prompt must be ```console (see docs/testing.md)")
            continue
        flags = frozenset(info[1:])
        if not flags <= KINDS:
            problems.append(f"{page.name}:{line}: unknown flags {sorted(flags - KINDS)}")
        steps, command, output = [], None, []
        for row in body.splitlines():
            if row.startswith("$ "):
                if command is not None:
                    steps.append((command, "\n".join(output)))
                command, output = row[2:], []
            elif command is None:
                problems.append(f"{page.name}:{line}: output before the first `$ ` command")
            else:
                output.append(row)
        if command is not None:
            steps.append((command, "\n".join(output)))
        sessions.append(Session(page, line, flags, steps))
    return sessions, files, problems


PARSED = {page: parse_page(page) for page in PAGES}
SESSIONS = [s for page in PAGES for s in PARSED[page][0]]


def _squeeze(line: str) -> str:
    """Runs of spaces and of table-rule characters to one: widths follow the numbers' lengths."""
    line = re.sub(f"[{RULES}]+", lambda m: m.group(0)[0], line)
    return re.sub(r" +", " ", line)


def line_pattern(expected: str, numbers_vary: bool) -> str:
    if numbers_vary:
        expected = _squeeze(expected)
    parts = []
    for piece in re.split(r"(\.\.\.)", expected):
        if piece == "...":
            parts.append(".*")
        elif numbers_vary:
            parts.append("".join(NUMBER if re.fullmatch(NUMBER, t) else re.escape(t) for t in re.split(f"({NUMBER})", piece)))
        else:
            parts.append(re.escape(piece))
    return "".join(parts)


def output_matches(expected: str, actual: str, numbers_vary: bool) -> bool:
    """Does `actual` match `expected` line by line (with the `...` and numbers-vary rules)?"""
    exp = [e.rstrip() for e in expected.strip("\n").splitlines()]
    act = [(_squeeze(a) if numbers_vary else a).rstrip() for a in actual.strip("\n").splitlines()]
    pats = [None if e.strip() == "..." else re.compile(line_pattern(e, numbers_vary)) for e in exp]

    def match(i: int, j: int) -> bool:  # expected from i matches actual from j
        if i == len(pats):
            return j == len(act)
        if pats[i] is None:
            return any(match(i + 1, k) for k in range(j, len(act) + 1))
        return j < len(act) and pats[i].fullmatch(act[j]) is not None and match(i + 1, j + 1)

    return match(0, 0)


def run_command(command: str, cwd: Path) -> tuple[int, str]:
    args = shlex.split(command)
    if args[0] != "anmc":
        raise AssertionError(f"only `anmc` commands run in the docs' sessions, not {command!r}")
    env = os.environ | {"COLUMNS": "80", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "TERM": "dumb"}
    env.pop("FORCE_COLOR", None)
    proc = subprocess.run([sys.executable, "-m", "anmc", *args[1:]], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)  # fmt: skip
    return proc.returncode, proc.stdout


_FOLDERS: dict[Path, tuple[Path, set]] = {}


def page_folder(page: Path, tmp_path_factory) -> tuple[Path, set]:
    """The page's working folder (files written, priors/ linked) and the set of sessions already run in it."""
    if page not in _FOLDERS:
        folder = tmp_path_factory.mktemp(page.stem)
        (folder / "priors").symlink_to(ROOT / "priors")
        for name, body in PARSED[page][1].items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(body)
        _FOLDERS[page] = (folder, set())
    return _FOLDERS[page]


def check_session(session: Session, folder: Path) -> None:
    numbers_vary = "numbers-vary" in session.flags
    for command, expected in session.steps:
        code, actual = run_command(command, folder)
        assert "Traceback" not in actual, f"{session.id}: `{command}` raised:\n{actual}"
        assert code == 0 or "error" in expected, f"{session.id}: `{command}` exited {code}:\n{actual}"
        assert output_matches(expected, actual, numbers_vary), (
            f"{session.id}: `{command}` printed\n{actual}\n-- but the page shows --\n{expected}"
        )


def test_every_prompt_is_in_a_marked_block():
    problems = [p for page in PAGES for p in PARSED[page][2]]
    assert not problems, "\n".join(problems)
    assert len([s for s in SESSIONS if "not-run" not in s.flags]) >= 4  # the pages do show output


RUN = [s for s in SESSIONS if "not-run" not in s.flags]


@pytest.mark.parametrize(
    "session", [pytest.param(s, marks=pytest.mark.slow) if "slow" in s.flags else s for s in RUN], ids=[s.id for s in RUN]
)
def test_session_prints_what_the_page_shows(session, tmp_path_factory):
    folder, done = page_folder(session.page, tmp_path_factory)
    slow = "slow" in session.flags  # a quick session never waits for a slow one (`-m "not slow"` stays quick)
    for earlier in [s for s in RUN if s.page == session.page and s.line < session.line and s.line not in done and (slow or "slow" not in s.flags)]:
        check_session(earlier, folder)  # a session may use what the ones above it made
        done.add(earlier.line)
    check_session(session, folder)
    done.add(session.line)


NOT_RUN = [s for s in SESSIONS if "not-run" in s.flags]


@pytest.mark.parametrize("session", NOT_RUN, ids=[s.id for s in NOT_RUN])
def test_sessions_not_run_still_parse(session):
    from anmc import cli

    for command, _ in session.steps:
        args = shlex.split(command)
        assert args[0] == "anmc", command
        name, rest = args[1], args[2:]
        assert name in cli.main.commands, f"{session.id}: no command {name!r}"
        cli.main.commands[name].make_context(name, rest)  # raises on an unknown option or a bad value


# ---------------------------------------------------------------- the matcher itself


def test_matcher_exact_lines_and_ellipses():
    assert output_matches("a\nb 12", "a\nb 12\n", False)
    assert not output_matches("a\nb 12", "a\nb 13", False)
    assert output_matches("a\n...\nz", "a\nb\nc\nz", False) and output_matches("a\n...\nz", "a\nz", False)
    assert not output_matches("a\n...\nz", "a\nb\ny", False)
    assert output_matches("wrote ... to x", "wrote 3 clip(s) to x", False)
    assert not output_matches("a", "a\nextra", False)


def test_matcher_numbers_vary():
    assert output_matches("loss 25.52 (kl 0.5976) L=0.9769", "loss 3.1 (kl -1e-05) L=12", True)
    assert not output_matches("loss 25.52 L=0.9769", "loss 25.52 g=0.9769", True)
    assert output_matches("│ theta │  -1.000 │\n┏━━━━━━━┳━━━━┓", "│ theta │ 0.5 │\n┏━━━━━━━┳━━┓", True)
    assert not output_matches("│ theta │ -1.000 │", "│ omega │ -1.000 │", True)
