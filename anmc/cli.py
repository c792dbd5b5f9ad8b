"""The `anmc` command line: a thin click + rich layer over the library.

Every command calls library functions a notebook user could call too. Errors that are the user's to
fix (`anmc.errors.UserError`: a malformed .anm file, a missing video, a foreign checkpoint) print one
clear message and exit with code 2, never a traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from anmc.errors import UserError
from anmc.lang.errors import AnmError, Diagnostic

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

EMITTERS = ("torch", "numpy", "latex")


def print_diagnostic(d: Diagnostic, console: Console = err) -> None:
    colour = {"error": "red", "warning": "yellow"}.get(d.severity, "cyan")
    where = f"{d.filename}:{d.line}:{d.column}" if d.line else d.filename
    console.print(f"[bold]{where}[/bold]: [bold {colour}]{d.severity}[/]: {d.message}", soft_wrap=True)
    if d.source_line and d.line:
        text = d.source_line.rstrip("\n").expandtabs(1)
        width = max(1, min(d.width, len(text) - d.column + 1))
        console.print("    " + text, markup=False, soft_wrap=True)
        console.print("    " + " " * (d.column - 1) + f"[bold {colour}]^" + "~" * (width - 1) + "[/]")


def report_user_errors(command):
    """Turn a UserError into its message on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except AnmError as e:
            for d in e.diagnostics:
                print_diagnostic(d)
            if len(e.diagnostics) > 1:
                err.print(f"[bold red]{len(e.diagnostics)} errors[/]")
            sys.exit(2)
        except UserError as e:
            err.print(f"[bold red]error[/]: {e}", markup=True, soft_wrap=True, highlight=False)
            sys.exit(2)

    return wrapper


def _write(text: str, output: str | None, lexer: str) -> None:
    """Syntax-highlighted to a terminal, plain to a file or a pipe."""
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text)
        err.print(f"wrote {output}")
    elif out.is_terminal:
        out.print(Syntax(text, lexer, theme="ansi_dark", word_wrap=False))
    else:
        click.echo(text, nl=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="anmc")
def main():
    """anmc: physics priors written as equations, compiled into interpretable video models."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@report_user_errors
def check(files):
    """Parse and check .anm FILES: ok, or every error with its line, column and a caret (exit 2)."""
    from anmc.symbolic.model import load_model

    failed = 0
    for path in files:
        try:
            model = load_model(Path(path))
        except AnmError as e:
            failed += 1
            for d in e.diagnostics:
                print_diagnostic(d)
            continue
        for w in model.warnings:
            print_diagnostic(w, err)
        learn = [n for n, p in model.params.items() if p.learn]
        out.print(
            f"[green]ok[/] {path}: model [bold]{model.name}[/], states {', '.join(model.states)} "
            f"(observed: {', '.join(model.observed)}), {model.integrator} x{model.substeps}, dt = {model.dt_text}"
            + (f", learnable: {', '.join(learn)}" if learn else "")
            + (f", interventions: {', '.join(model.interventions)}" if model.interventions else ""),
            soft_wrap=True,
        )
    if failed:
        sys.exit(2)


@main.command(name="compile")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--emit", type=click.Choice(EMITTERS), default="torch", show_default=True, help="What to print.")
@click.option("--intervention", "-i", help="Apply the intervention block NAME first.")
@click.option("--set", "sets", multiple=True, metavar="'NAME = EXPR'", help="Change a const or param (repeatable).")
@click.option("--edit", "edits", multiple=True, metavar="'x\\' = EXPR'", help="Replace an equation (repeatable).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to a file instead of the terminal.")
@report_user_errors
def compile_(file, emit, intervention, sets, edits, output):
    """Print the code generated for FILE: a torch module (default), numpy functions, or LaTeX."""
    from anmc.codegen.compile import compile_prior

    prior = compile_prior(Path(file), intervention=intervention, edits=[*sets, *edits])
    if emit == "torch":
        _write(prior.source, output, "python")
    elif emit == "numpy":
        _write(prior.numpy_source(), output, "python")
    else:
        _write(prior.latex(), output, "latex")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--steps", default=300, show_default=True, type=click.IntRange(min=1), help="Frames to simulate.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--runs", default=1, show_default=True, type=click.IntRange(min=1), help="Independent rollouts.")
@click.option("--intervention", "-i", help="Apply the intervention block NAME first.")
@click.option("--no-noise", is_flag=True, help="Deterministic rollout (the noise is on by default).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the trajectory as CSV.")
@report_user_errors
def simulate(file, steps, seed, runs, intervention, no_noise, output):
    """Roll the prior out from its initial distribution, with its noise, and summarize."""
    from anmc.codegen.compile import compile_prior
    from anmc.simulate import simulate as run

    prior = compile_prior(Path(file), intervention=intervention)
    z = run(prior, steps, seed=seed, runs=runs, noise=not no_noise)
    names = prior.state_names
    table = Table(title=f"{prior.model.name}: {runs} run(s) x {steps} frames, dt = {prior.model.dt_text}")
    for col in ("state", "first", "last", "min", "max", "mean", "std"):
        table.add_column(col, justify="right" if col != "state" else "left")
    for i, name in enumerate(names):
        x = z[..., i]
        table.add_row(
            name, *(f"{float(v):.4g}" for v in (x[:, 0].mean(), x[:, -1].mean(), x.min(), x.max(), x.mean(), x.std()))
        )
    out.print(table)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        with open(output, "w") as fh:
            fh.write(",".join(["run", "frame", *names]) + "\n")
            for r in range(runs):
                for t in range(steps):
                    fh.write(",".join([str(r), str(t), *(repr(float(v)) for v in z[r, t])]) + "\n")
        err.print(f"wrote {output}")


if __name__ == "__main__":  # pragma: no cover
    main()
