"""`anmc check`, `anmc compile` and `anmc simulate` through click's CliRunner."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

import anmc
from anmc import cli

ROOT = Path(__file__).resolve().parents[1]
PENDULUM = ROOT / "priors" / "pendulum.anm"
PRIORS = sorted((ROOT / "priors").glob("*.anm"))
ANSI = "\x1b["

BAD = """\
model bad
state x ~ Normal(0, 1)
dynamics continuous dt = 0.1 using rk5
  x' = -xx
noise x = 0.1
observe y
"""


def run(*args):
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


# ---------------------------------------------------------------- check


def test_check_ok_for_every_prior():
    result = run("check", *PRIORS)
    assert result.exit_code == 0, result.output
    for path in PRIORS:
        assert f"ok {path}: model {path.stem}" in result.stdout
    assert "states theta, omega (observed: theta), rk4 x2, dt = 1/30, learnable: L" in result.stdout


def test_check_errors_exit_2_with_every_error_and_a_caret(tmp_path):
    path = tmp_path / "bad.anm"
    path.write_text(BAD)
    result = run("check", path)
    assert result.exit_code == 2
    err = result.stderr
    assert ANSI not in err
    assert f"{path}:3:36: error: unknown integrator 'rk5'; did you mean 'rk4'?" in err
    assert f"{path}:4:9: error: unknown name 'xx'; did you mean 'x'?" in err
    assert f"{path}:6:9: error: observe names unknown state 'y'" in err
    lines = err.splitlines()
    i = lines.index("      x' = -xx")
    assert lines[i + 1] == "            ^~"  # under column 9 of the line, which is indented by 4
    assert "ok" not in result.stdout


def test_check_reports_good_and_bad_files_together(tmp_path):
    path = tmp_path / "bad.anm"
    path.write_text(BAD)
    result = run("check", PENDULUM, path)
    assert result.exit_code == 2
    assert f"ok {PENDULUM}" in result.stdout and f"{path}:4:9: error" in result.stderr


def test_check_warnings_exit_0(tmp_path):
    path = tmp_path / "warn.anm"
    path.write_text(PENDULUM.read_text().replace("const g = 9.81", "const g = 9.81\nconst unused = 2"))
    result = run("check", path)
    assert result.exit_code == 0, result.output
    assert f"{path}:5:7: warning: const 'unused' is never used" in result.stderr
    assert f"ok {path}" in result.stdout


def test_check_syntax_error_and_missing_file(tmp_path):
    path = tmp_path / "syntax.anm"
    path.write_text("model m\nstate x ~ Normal(0, 1\n")
    result = run("check", path, tmp_path / "missing.anm")
    assert result.exit_code == 2
    assert f"{path}:2:22: error: unexpected end of line; expected ')' or ','" in result.stderr
    assert "no such file" in result.stderr


# ---------------------------------------------------------------- compile


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], lambda: anmc.compile_prior(PENDULUM).source),
        (["--emit", "torch"], lambda: anmc.compile_prior(PENDULUM).source),
        (["--emit", "numpy"], lambda: anmc.compile_prior(PENDULUM).numpy_source()),
        (["--emit", "latex"], lambda: anmc.compile_prior(PENDULUM).latex()),
        (["-i", "drag"], lambda: anmc.compile_prior(PENDULUM, intervention="drag").source),
        (["--intervention", "long_rod", "--emit", "numpy"], lambda: anmc.compile_prior(PENDULUM, intervention="long_rod").numpy_source()),
        (["--set", "c = 0.8"], lambda: anmc.compile_prior(PENDULUM, edits=["c = 0.8"]).source),
        (
            ["--set", "c = 0.8", "--edit", "omega' = -c * omega"],
            lambda: anmc.compile_prior(PENDULUM, edits=["c = 0.8", "omega' = -c * omega"]).source,
        ),
    ],
    ids=["default", "torch", "numpy", "latex", "intervention", "intervention-numpy", "set", "set-edit"],
)
def test_compile_prints_what_the_library_emits(args, expected):
    result = run("compile", PENDULUM, *args)
    assert result.exit_code == 0, result.output
    assert result.stdout == expected()
    assert ANSI not in result.stdout


def test_compile_options_change_the_output():
    plain = run("compile", PENDULUM).stdout
    assert run("compile", PENDULUM, "-i", "drag").stdout != plain
    assert run("compile", PENDULUM, "--set", "c = 0.8").stdout != plain


def test_compile_to_a_file_is_plain_text(tmp_path, monkeypatch):
    # even when the terminal would get colours
    monkeypatch.setattr(cli, "out", Console(file=io.StringIO(), force_terminal=True))
    target = tmp_path / "sub" / "pendulum_prior.py"
    result = run("compile", PENDULUM, "-o", target)
    assert result.exit_code == 0, result.output
    text = target.read_text()
    assert text == anmc.compile_prior(PENDULUM).source and ANSI not in text
    compile(text, str(target), "exec")


def test_compile_to_a_terminal_is_highlighted(monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=buffer, force_terminal=True, color_system="standard"))
    result = run("compile", PENDULUM)
    assert result.exit_code == 0, result.output
    assert ANSI in buffer.getvalue() and "class" in buffer.getvalue()


@pytest.mark.parametrize(
    "args, message",
    [
        (["-i", "dragg"], "unknown intervention 'dragg'; did you mean 'drag'?"),
        (["--set", "c = 50"], "c = 50:1:5: error: 'c' = 50 is outside its bounds [0, 10]"),
        (["--edit", "omega' = -thetta"], "omega' = -thetta:1:11: error: unknown name 'thetta'; did you mean 'theta'?"),
    ],
)
def test_compile_bad_intervention_or_edit_exits_2(args, message):
    result = run("compile", PENDULUM, *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_compile_rejects_an_unknown_emitter():
    result = run("compile", PENDULUM, "--emit", "c")
    assert result.exit_code == 2 and "torch" in result.output


# ---------------------------------------------------------------- simulate


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_simulate_writes_a_trajectory(tmp_path):
    out = tmp_path / "traj.csv"
    result = run("simulate", PENDULUM, "--steps", 25, "--seed", 3, "-o", out)
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    assert rows[0] == ["run", "frame", "theta", "omega"]
    assert len(rows) == 1 + 25
    assert [r[:2] for r in rows[1:]] == [["0", str(t)] for t in range(25)]
    values = [[float(v) for v in r[2:]] for r in rows[1:]]
    assert all(abs(v) < 50 for r in values for v in r)
    assert values[0] != values[1]
    for name in ("theta", "omega"):  # the summary table
        assert name in result.stdout


def test_simulate_is_deterministic_by_seed(tmp_path):
    paths = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        paths[name] = tmp_path / f"{name}.csv"
        assert run("simulate", PENDULUM, "--steps", 10, "--seed", seed, "-o", paths[name]).exit_code == 0
    assert paths["a"].read_text() == paths["b"].read_text()
    assert paths["a"].read_text() != paths["c"].read_text()


def test_simulate_runs_and_no_noise(tmp_path):
    out = tmp_path / "runs.csv"
    assert run("simulate", PENDULUM, "--steps", 6, "--runs", 3, "--no-noise", "-i", "drag", "-o", out).exit_code == 0
    rows = read_csv(out)[1:]
    assert len(rows) == 18 and {r[0] for r in rows} == {"0", "1", "2"}
    # without noise every frame is f of the one before
    module = anmc.compile_prior(PENDULUM, intervention="drag").module().double()
    import torch

    z = torch.tensor([[float(v) for v in r[2:]] for r in rows[:6]], dtype=torch.float64)
    torch.testing.assert_close(module(z[:-1]).detach(), z[1:], rtol=1e-12, atol=1e-12)


def test_simulate_bad_steps_and_bad_file(tmp_path):
    assert run("simulate", PENDULUM, "--steps", 0).exit_code == 2
    path = tmp_path / "bad.anm"
    path.write_text(BAD)
    result = run("simulate", path, "--steps", 3)
    assert result.exit_code == 2 and f"{path}:4:9: error: unknown name 'xx'" in result.stderr


# ---------------------------------------------------------------- the built-in default


def test_packaged_pendulum_is_the_prior():
    assert (ROOT / "anmc" / "synthetic" / "pendulum.anm").read_text() == PENDULUM.read_text()
