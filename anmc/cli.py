"""The `anmc` command line: a thin click + rich layer over the library.

Every command calls library functions a notebook user could call too. Errors that are the user's to
fix (`anmc.errors.UserError`: a malformed .anm file, a missing video, a foreign checkpoint) print one
clear message and exit with code 2, never a traceback.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from anmc.errors import UserError
from anmc.lang.errors import AnmError, Diagnostic

out = Console(highlight=False, emoji=False)  # no :x: -> emoji in paths, file contents or equations
err = Console(stderr=True, highlight=False, emoji=False)

EMITTERS = ("torch", "numpy", "latex")


def print_diagnostic(d: Diagnostic, console: Console = err) -> None:
    colour = {"error": "red", "warning": "yellow"}.get(d.severity, "cyan")
    where = f"{d.filename}:{d.line}:{d.column}" if d.line else d.filename
    console.print(f"[bold]{escape(where)}[/bold]: [bold {colour}]{d.severity}[/]: {escape(d.message)}", soft_wrap=True)
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
            err.print(f"[bold red]error[/]: {escape(str(e))}", soft_wrap=True, highlight=False)
            sys.exit(2)
        except OSError as e:  # the file system refused: a read-only folder, a full disk, a missing path
            err.print(f"[bold red]error[/]: {escape(os_error_message(e))}", soft_wrap=True, highlight=False)
            sys.exit(2)

    return wrapper


def os_error_message(e: OSError) -> str:
    """One sentence for an OSError: what failed, on which path, what to do."""
    where = f" {e.filename}" if e.filename else ""
    return (
        f"the file system refused{where}: {e.strerror or e}; what was written before stays as it was: "
        "check the path, its permissions and the free disk space, then run the command again."
    )


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


_device_option = click.option("--device", default="cpu", show_default=True, help="Where the networks run: cpu, cuda, cuda:N or auto (a checkpoint loads onto any).")


def _device(name: str) -> str:
    from anmc.vae.train import resolve_device

    return str(resolve_device(name))


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
            f"(observed: {', '.join(model.observation_text[n] for n in model.observation_names)}"
            + ("" if model.plain_observations else f"; functions of {', '.join(model.observed)}")
            + f"), {model.integrator} x{model.substeps}, dt = {model.dt_text}"
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
    from anmc.codegen.rollout import simulate as run

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


# anmc synth --renderer (anmc.synthetic.render.RENDERERS, written out so that --help loads no numpy)
SYNTH_RENDERERS = ("auto", "declared", "pendulum", "spring", "falling", "double_pendulum", "coupled_masses", "dot")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the clips.")
@click.option("--clips", default=8, show_default=True, type=click.IntRange(min=1), help="Independent clips, one file each.")
@click.option("--frames", default=64, show_default=True, type=click.IntRange(min=2), help="Frames per clip.")
@click.option("--size", default=64, show_default=True, type=click.IntRange(min=8), help="Frame side in pixels.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--noise", default=0.0, show_default=True, type=float, help="Pixel noise std (intensity in [0, 1]).")
@click.option("--clutter", is_flag=True, help="Draw over a static cluttered background.")
@click.option("--format", "fmt", default="mp4", show_default=True, type=click.Choice(["mp4", "gif", "npz", "npy", "png"]))
@click.option("--renderer", default="auto", show_default=True, type=click.Choice(SYNTH_RENDERERS),
              help="auto: the declared renderer when the prior's observations name camera roles (px, py, size, brightness, level), else the one named like the model, else a dot.")  # fmt: skip
@report_user_errors
def synth(file, out_dir, clips, frames, size, seed, noise, clutter, fmt, renderer):
    """Simulate the prior in FILE and render it: DIR/clip_000.mp4, ... plus truth.csv and truth.json."""
    from anmc.codegen.compile import compile_prior
    from anmc.synthetic.synth import synthesize

    syn = synthesize(compile_prior(Path(file)), out_dir, clips=clips, frames=frames, size=size, seed=seed,
                     noise=noise, clutter=clutter, fmt=fmt, renderer=renderer)
    for note in syn.notes:
        err.print(f"[yellow]note[/]: {note}", soft_wrap=True)
    out.print(
        f"wrote {len(syn.paths)} clip(s) of {syn.states.shape[1]} frames ({size}x{size}, {syn.renderer} renderer) "
        f"and truth.csv, truth.json to {out_dir}",
        soft_wrap=True,
    )

@main.command()
@click.argument("videos", nargs=-1, required=True, type=click.Path())
@click.option("--prior", type=click.Path(dir_okay=False), help="Write the camera into this prior's const S, cx, cy, R lines (e.g. priors/pendulum_camera.anm).")
@click.option("--learn", is_flag=True, help="With --prior: cx, cy and R as learnable params started at the measurement (training refines them).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where the prior with the camera goes (default: print it).")
@report_user_errors
def swing(videos, prior, learn, output):
    """Measure the camera of an object swinging about a fixed point in VIDEOS: the pivot (cx, cy) and the
    distance R to the object's centre, in pixels of the video as stored, from the top left.

    \b
    anmc swing videos/
    anmc swing videos/ --prior priors/pendulum_camera.anm --learn -o mine.anm
    """
    from anmc.data.swing import measure_swing_in, with_camera

    s = measure_swing_in(list(videos))
    out.print(
        f"pivot cx = {s.cx:.1f}, cy = {s.cy:.1f} (±{s.pivot_se:.2f}); R = {s.radius:.1f} (±{s.radius_se:.2f}) (pixels of the {s.width}x{s.height} frames, from the top left); "
        f"the track: {s.residual:.2f} px rms off its circle, {math.degrees(s.arc):.0f} degrees of arc, {s.frames} of {s.seen} frames used",
        soft_wrap=True,
    )
    for warning in s.warnings():
        err.print(f"[yellow]warning[/]: {escape(warning)}", soft_wrap=True)
    if s.width != s.height:
        err.print(f"[yellow]note[/]: the frames are {s.width}x{s.height}; a prior's S is one side: S = {s.width} (the width) is written.", soft_wrap=True)
    if prior:
        text = with_camera(Path(prior).read_text(), s, learn=learn)
        if output:
            Path(output).write_text(text)
            err.print(f"wrote {escape(output)}")
        else:
            click.echo(text, nl=False)
    else:
        out.print(f"const S = {s.width}\nconst cx = {s.cx:.1f}\nconst cy = {s.cy:.1f}\nconst R = {s.radius:.1f}", soft_wrap=True)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--intervention", "-i", help="An intervention block of the run's .anm (or of --file).")
@click.option("--file", "file", type=click.Path(dir_okay=False), help="A .anm file of intervention blocks (all of them, or the one -i names).")
@click.option("--set", "sets", multiple=True, metavar="'NAME = EXPR'", help="Change a const or param (repeatable).")
@click.option("--edit", "edits", multiple=True, metavar="EDIT", help="An equation, `init x ~ ...` or `start x = ...` (repeatable).")
@click.option("--video", help="Encode the start from this video (default: the run's training clips).")
@click.option("--start", default=None, type=click.IntRange(min=0), help="The frame the rollouts start from, its state filtered from the frames up to it [default: 10, so that the start carries the velocity].")
@click.option("--sample", is_flag=True, help="Start from the (intervened) initial distribution instead of a video.")
@click.option("--frames", default=90, show_default=True, type=click.IntRange(min=2), help="Frames to roll out.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1), help="Counterfactuals at once (OUT_00, OUT_01, ...).")
@click.option("--noise/--no-noise", default=False, show_default=True, help="Add the prior's noise to the rollouts (the same draws for both).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="OUT.gif or OUT.mp4 (plus OUT_latents.csv/.png).")
@_device_option
@report_user_errors
def intervene(run_dir, intervention, file, sets, edits, video, start, sample, frames, batch, noise, seed, output, device):
    """Counterfactual video from RUN_DIR under an intervention written in the .anm language.

    \b
    anmc intervene runs/pend -i drag -o drag.gif
    anmc intervene runs/pend --set "c = 0.8" --edit "omega' = -(g/L)*sin(theta) - c*omega*abs(omega)" -o q.mp4
    anmc intervene runs/pend --edit "start theta = 1.5 * theta" --frames 240 -o amplitude.gif
    """
    from anmc.data.io import WRITE_SUFFIXES
    from anmc.analysis.intervene import intervene as run_intervention

    if not (intervention or file or sets or edits):
        raise UserError("give an intervention: --intervention NAME, --file F, --set 'c = 0.8' or --edit \"omega' = ...\".")
    if Path(output).suffix.lower() not in WRITE_SUFFIXES:
        raise UserError(f"-o {output}: the counterfactual video must be .gif or .mp4 (or .npz/.npy for the raw frames).")
    from anmc.vae.run import load_run

    cf = run_intervention(
        load_run(run_dir, _device(device)), intervention=intervention, edits=[*sets, *edits], file=file, video=video, start=start,
        sample=sample, frames=frames, batch=batch, noise=noise, seed=seed,
    )  # fmt: skip
    for note in cf.notes:
        err.print(f"[yellow]note[/]: {escape(note)}", soft_wrap=True)
    for path in cf.save(output):
        out.print(f"wrote {escape(str(path))}", soft_wrap=True)


@main.command(name="check-interventions")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--system", help="A system anmc has physics checks for (an unknown name lists them). Default: the model named in the run's truth.json.")
@click.option("--save", "save_dir", type=click.Path(file_okay=False), help="Also write each counterfactual as DIR/intervene_<system>_<name>.gif.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the rows as JSON.")
@click.option("--strict", is_flag=True, help="Exit 1 when a check fails.")
@report_user_errors
def check_interventions(run_dirs, system, save_dir, json_path, strict):
    """Measure counterfactual videos of synthetic runs against the intervened physics (docs/interventions.md)."""
    import json

    from anmc.analysis.physics_checks import check_interventions as run_checks
    from anmc.analysis.physics_checks import format_table

    rows = [row for run_dir in run_dirs for row in run_checks(run_dir, system=system, save_dir=save_dir)]
    click.echo(format_table(rows))
    failed = sum(not r.passed for r in rows)
    out.print(f"{len(rows) - failed} of {len(rows)} quantities within tolerance (centroid measurement)")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
        err.print(f"wrote {json_path}")
    if strict and not all(r.passed for r in rows):
        sys.exit(1)


def _train_options(f):
    """The training flags, shared by `train` and `quickstart`."""
    from anmc.vae.config import BACKGROUNDS, DECODERS, KL_READINGS, POSTERIORS, RECONSTRUCTIONS, START_PRIORS, TrainConfig

    d = TrainConfig()
    options = [
        click.option("--epochs", default=d.epochs, show_default=True, type=click.IntRange(min=1)),
        click.option("--steps-per-epoch", default=d.steps_per_epoch, show_default=True, type=click.IntRange(min=1), help="Steps per epoch (0 for one pass over the data is not allowed; omit for the default)."),
        click.option("--batch", default=d.batch, show_default=True, type=click.IntRange(min=1), help="Sequences per step."),
        click.option("--seq-len", default=d.seq_len, show_default=True, type=click.IntRange(min=2), help="Latent frames per sequence."),
        click.option("--lr", default=d.lr, show_default=True, type=float, help="Adam learning rate of the networks."),
        click.option("--param-lr", default=d.param_lr, show_default=True, type=float, help="Learning rate of learnable params and noise."),
        click.option("--beta", default=d.beta, show_default=True, type=float, help="Weight of the KL terms."),
        click.option("--warmup", default=d.warmup, show_default=True, type=click.IntRange(min=0), help="Steps over which frames t > 1 move from the initial-state prior to the dynamics prior."),
        click.option("--kl", default=d.kl, show_default=True, type=click.Choice(KL_READINGS), help="Reading of the transition KL (standard: plain N(0, I) VAE)."),
        click.option("--samples", default=d.samples, show_default=True, type=click.IntRange(min=1), help="Monte Carlo samples / mixture components."),
        click.option("--window", default=None, type=click.IntRange(min=1), help="Frames the encoder sees per latent [default: 1 with the smoother posterior, 2 with the factorized]."),
        click.option("--context", default=d.context, show_default=True, type=click.IntRange(min=0, max=16), help="Frames on either side a temporal convolution of the encoder also sees (0: off; docs/results.md)."),
        click.option("--posterior", default=None, type=click.Choice(POSTERIORS), help="smoother: the encoder reads the observed states and the prior's dynamics infer the rest over the sequence; factorized: every state read from the window [default: smoother with --kl elbo, factorized with the other readings] (docs/method.md)."),
        click.option("--start-prior", default=d.start_prior, show_default=True, type=click.Choice(START_PRIORS), help="Prior of a training window's first frame: initial (the declared initial distribution) or rollout (the prior's marginal as many frames into the clip as the window starts: for systems that drift from where they start; docs/method.md §6)."),
        click.option("--recon", default=d.recon, show_default=True, type=click.Choice(RECONSTRUCTIONS), help="Pixel likelihood: bernoulli (a coin per pixel), gaussian (std --recon-std), calibrated (a Gaussian whose std is the batch's own RMS error) (docs/data.md, The background matters)."),
        click.option("--background", default=d.background, show_default=True, type=click.Choice(BACKGROUNDS), help="remove: subtract each clip's static background (per pixel the most common of its median and 10th/90th percentiles) and stretch what moves to the full range before training; keep: the frames as they are; auto: remove unless the clips' background is dark (mean level at most 26 of 255) (docs/data.md, The background matters)."),
        click.option("--recon-std", default=d.recon_std, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Pixel std of --recon gaussian."),
        click.option("--decoder", default=d.decoder, show_default=True, type=click.Choice(("auto", *DECODERS)), help="sprite: a learned sprite drawn where the prior's camera roles say (observe px = ..., py = ...): latents in the prior's units (docs/method.md); auto: sprite when the prior declares camera roles, else deconv."),
        click.option("--size", default=d.size, show_default=True, type=click.IntRange(min=8), help="Frames are resized to SIZE x SIZE."),
        click.option("--learn-params-after", default=d.learn_params_after, show_default=True, type=click.IntRange(min=0), help="Epochs before learnable params and noise start to train."),
        click.option("--sprite-shape-after", default=d.sprite_shape_after, show_default=True, type=click.IntRange(min=0), help="Epochs the sprite decoder's sprites keep their initial blob while the encoder finds the objects."),
        click.option("--time-limit", default=None, type=float, help="Minutes; stop after the epoch that crosses it."),
        click.option("--restarts", default=d.restarts, type=click.IntRange(min=1), help="Train this many starts (seeds SEED, SEED+1, ...) for --restart-epochs each and finish the one with the lowest validation loss (RUN/starts.json). Default: 3 when --epochs is at least 6 x --restart-epochs (the losing starts at most a third of the run) and the run is one process, else 1."),
        click.option("--restart-epochs", default=d.restart_epochs, show_default=True, type=click.IntRange(min=1), help="Epochs each start trains before the choice."),
        click.option("--device", default=d.device, show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--seed", default=d.seed, show_default=True, type=int),
        click.option("--precision", default=d.precision, show_default=True, type=click.Choice(["fp32", "bf16"]), help="bf16: the networks under bfloat16 autocast (the prior's algebra stays float32/float64)."),
        click.option("--compile", "compile", is_flag=True, help="torch.compile the prior's generated core (a C++ compiler is needed; the first steps compile)."),
        click.option("--cache", default=None, type=click.Path(file_okay=False), help="Decode the videos once into this folder and read them from disk (data larger than memory; docs/scaling.md)."),
        click.option("--workers", default=d.workers, show_default=True, type=click.IntRange(min=0), help="DataLoader processes reading a --cache."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _config(kwargs):
    from anmc.vae.config import TrainConfig

    return TrainConfig(**{k: v for k, v in kwargs.items() if v is not None or k == "time_limit"})


def epoch_line(row: dict, epochs: int | None, first_epoch: int, per_epoch: float | None = None) -> str:
    """One plain line per epoch (for a log file, a notebook, CI): loss, KL, params, seconds, ETA. The ETA is
    `per_epoch` seconds (the epochs of this process so far, on average) for each epoch left, or without it
    the seconds since the first epoch over the epochs done (which, after --restarts' starts, counts the
    starts' time as the finish's: an ETA of 115 min with 8 left)."""
    params = " ".join(f"{k}={v:.4g}" for k, v in row["params"].items())
    done = row["epoch"] - first_epoch
    eta = ""
    if epochs and done > 0:
        left = (per_epoch if per_epoch is not None else row["seconds"] / done) * (epochs - row["epoch"])
        eta = f", ETA {left / 60:.1f} min" if left >= 60 else f", ETA {left:.0f} s"
    val = f" val {row['val_loss']:.4g}" if "val_loss" in row else ""
    return (f"epoch {row['epoch']}/{epochs or '?'}: loss {row['loss']:.4g} recon {row['recon']:.4g} kl {row['kl']:.4g}{val}"
            f"{' ' + params if params else ''} | {row['seconds']:.0f} s{eta}")  # fmt: skip


class _EpochReporter:
    """`train`'s on_epoch: a plain line per epoch when stderr is not a terminal; each new diagnostic once, as a
    warning. The epochs of `--restarts`' starts (rows with "start") get a line each, always (the bar does not
    say which start it draws), and no warnings: a start that goes wrong is what the choice is for."""

    def __init__(self, epochs: int | None, plain: bool, restart_epochs: int | None = None):
        self.epochs, self.plain, self.restart_epochs, self.first, self.seen = epochs, plain, restart_epochs, None, set()
        self.durations: list[float] = []  # this process's epochs (not the starts'), for the ETA

    def __call__(self, vae, row):
        from anmc.vae.diagnostics import describe

        if "start" in row:  # a start of --restarts: its line, and its findings (a wrong camera shows from its first epoch)
            err.print(f"start seed {row['start']}, " + epoch_line(row, self.restart_epochs, 0), soft_wrap=True, highlight=False, markup=False)
        else:
            self.first = row["epoch"] - 1 if self.first is None else self.first
            if "epoch_seconds" in row:
                self.durations.append(row["epoch_seconds"])
            if self.plain:
                per_epoch = sum(self.durations) / len(self.durations) if self.durations else None
                click.echo(epoch_line(row, self.epochs, self.first, per_epoch), err=True)
        for f in row.get("diagnostics", ()):
            evidence = f["evidence"]
            key = (f["code"], evidence.get("param") or evidence.get("state") or evidence.get("object"))
            if key not in self.seen:
                self.seen.add(key)
                where = f"start seed {row['start']}, epoch {row['epoch']}" if "start" in row else f"epoch {row['epoch']}"
                err.print(f"[bold yellow]warning[/] ({where}): {escape(describe(f))}", soft_wrap=True)


def _saved_threads(run_dir) -> int | None:
    """The thread count a run recorded in its config.json (None for runs from before it was recorded)."""
    import json

    try:
        value = json.loads((Path(run_dir) / "config.json").read_text()).get("threads")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def _run_training(prior, videos, run_dir, config, resume, tensorboard=False, overwrite=False):
    """Train with a rich progress bar (a terminal) or one line per epoch (anything else), and with
    `tensorboard` a TensorBoard log in RUN_DIR/tensorboard; returns the TrainResult."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from anmc.vae import distributed
    from anmc.vae.allocator import tune_allocator
    from anmc.vae.divergence import where_diverged
    from anmc.vae.threads import apply_thread_default
    from anmc.vae.train import train

    _, allocator_note = tune_allocator()  # measured: docs/results.md §4, The C allocator
    saved = _saved_threads(run_dir) if resume else None
    if saved:  # the run's own count: an exact resume needs it (TrainConfig.threads)
        threads_note = f"torch threads: {saved} (the run's own, for an exact resume)"
    else:
        threads, why = apply_thread_default()  # measured: docs/results.md, Threads
        threads_note = f"torch threads: {threads} ({why})"
        if config is not None and config.threads is None:
            config.threads = threads
    # the bar starts on the first step, so that an error while loading the data is the only thing printed
    bar = Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err, transient=False,
    )  # fmt: skip
    task = None

    def progress(epoch, step, steps, metrics):
        nonlocal task, threads_note
        if threads_note:  # on the first step, so that an error while loading the data is the only thing printed
            err.print(f"{threads_note}; {allocator_note}", soft_wrap=True, highlight=False, markup=False)
            threads_note = None
        if not err.is_terminal:
            return
        if task is None:
            bar.start()
            task = bar.add_task("train", total=steps, epoch="-", info="")
        info = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        bar.update(task, completed=step, total=steps, epoch=f"{epoch + 1}/{config.epochs if config else '?'}", info=info)

    log, on_epoch = None, None
    if tensorboard:
        log, on_epoch = _tensorboard_log(prior, run_dir, config, resume)
        inner = progress

        def progress(epoch, step, steps, metrics):  # noqa: F811 - the bar, then the log
            inner(epoch, step, steps, metrics)
            log.progress(epoch, step, steps, metrics)

    try:
        epochs = config.epochs if config else None
        restarts = config is not None and config.starts(distributed.launched_world()) > 1
        reporter = _EpochReporter(epochs, plain=not err.is_terminal, restart_epochs=config.restart_epochs if restarts else None)

        def epoch_end(vae, row):  # the line and warnings, then the TensorBoard log (of RUN's own epochs)
            reporter(vae, row)
            if on_epoch is not None and "start" not in row:
                on_epoch(vae, row)

        result = train(prior, videos, run_dir, config, resume=resume, progress=progress, on_epoch=epoch_end, overwrite=overwrite)
    finally:
        if task is not None:
            bar.stop()
        if log is not None:
            log.close()
    if result.rank != 0:  # under torchrun, rank 0 reports
        return result
    import json

    saved = json.loads((Path(run_dir) / "config.json").read_text())  # what each "auto" chose
    if config is not None and config.background == "auto":
        from anmc.data.background import DARK

        chosen = saved["background"]
        why = "their mean level is above" if chosen == "remove" else "it is dark: mean level at most"
        out.print(f"background (auto): {chosen} -- the clips' background, {why} {DARK} of 255; eval and intervene do the same", highlight=False)
    if config is not None and config.decoder == "auto" and saved["decoder"] == "sprite":
        out.print("decoder (auto): sprite -- the prior declares camera roles (docs/method.md, Physical units)", highlight=False)
    if result.starts:
        losses = ", ".join([*(f"seed {k} {v:.4g}" for k, v in result.starts["loss"].items()),
                            *(f"seed {k} diverged{where_diverged(why)}" for k, why in result.starts.get("diverged", {}).items())])  # fmt: skip
        out.print(f"starts (validation loss after {result.starts['restart_epochs']} epochs): {losses}; finished seed {result.starts['chosen']}")
    if result.diverged:  # one start, whose first seeds diverged before their first checkpoint
        seeds = "; ".join(f"seed {k} diverged{where_diverged(why)}" for k, why in result.diverged.items())
        out.print(f"[yellow]{escape(seeds)}; trained seed {max(result.diverged) + 1} instead[/]", soft_wrap=True)
    for row in result.metrics[-3:]:
        params = " ".join(f"{k}={v:.4g}" for k, v in row["params"].items())
        val = f", val {row['val_loss']:.4g}" if "val_loss" in row else ""
        out.print(f"epoch {row['epoch']}: loss {row['loss']:.4g} (recon {row['recon']:.4g}, kl {row['kl']:.4g}){val} {params}")
    if result.stopped_early:
        out.print(f"[yellow]{result.stopped_early}[/]")
    out.print(f"checkpoint: {Path(run_dir) / 'checkpoint.pt'}")
    return result


def _tensorboard_log(prior, run_dir, config, resume):
    """The TensorBoard log of a run and its per-epoch callback (scalars, then the pictures of `anmc plot`)."""
    from anmc.analysis.plots import training_pictures
    from anmc.codegen.compile import compile_prior, compile_stored
    from anmc.vae.config import TrainConfig
    from anmc.vae.run import load_checkpoint
    from anmc.vae.tensorboard import TensorBoardLog

    if resume:  # the run's own prior and config
        payload = load_checkpoint(run_dir)
        compiled = compile_stored(payload["anm_source"], payload.get("anm_steps", []), payload["anm_filename"])
        config = TrainConfig.from_dict(payload["config"])
    else:
        compiled = compile_prior(Path(prior))
    pictures = training_pictures(run_dir, compiled, config or TrainConfig())
    log = TensorBoardLog(Path(run_dir) / "tensorboard", pictures=pictures, params=compiled.model.params)
    return log, log.on_epoch


@main.command()
@click.argument("prior", type=click.Path(dir_okay=False))
@click.argument("videos", nargs=-1, required=True)
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue the run in -o from its last checkpoint (bit for bit).")
@click.option("--overwrite", is_flag=True, help="Train a new run in -o even if it holds one (without it, an -o with a checkpoint is refused).")
@click.option("--tensorboard", is_flag=True, help="Also log losses, params and pictures to RUN_DIR/tensorboard (needs anmc[tensorboard]).")
@click.option("--fps", type=float, help="The recording's frame rate (default: the videos' metadata); checked against the prior's dt.")
@_train_options
@report_user_errors
def train(prior, videos, run_dir, resume, overwrite, tensorboard, fps, **kwargs):
    """Train a video VAE on VIDEOS whose latents follow the PRIOR (.anm)."""
    from anmc.data.rate import check_frame_rate
    from anmc.symbolic.model import load_model

    if resume and overwrite:
        raise click.UsageError("--resume continues the run in -o and --overwrite replaces it: give one.")
    model = load_model(Path(prior))
    if fps is not None or not (model.kind == "discrete" and model.dt_text == "1"):  # a discrete prior may have no dt
        check_frame_rate(list(videos), model.dt, fps, prior_name=f"{prior}")
    if resume:  # the run keeps its own config; --epochs given extends it, --device/--workers/--cache move it
        _warn_other_videos(run_dir, videos)
        ctx = click.get_current_context()
        given = [k for k in ("epochs", "device", "workers", "cache") if ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT]
        config = _config({"epochs": 1} | {k: kwargs[k] for k in given}) if given else None  # epochs: the larger is kept
    else:
        from anmc.data.swing import camera_disagreement

        if os.environ.get("RANK", "0") == "0" and (camera := camera_disagreement(model, list(videos))) is not None:  # torchrun: once
            err.print(f"[bold yellow]warning[/]: {escape(camera)}", soft_wrap=True)
        config = _config(kwargs)
    result = _run_training(Path(prior), list(videos), run_dir, config, resume, tensorboard=tensorboard, overwrite=overwrite)
    if resume and not result.metrics and result.rank == 0:
        out.print(f"the run already has its {result.epochs} epoch(s); `--resume --epochs N` extends it to N.")


def _warn_other_videos(run_dir, videos) -> None:
    """A resume on other videos than the run's continues on them (more data is a fair reason), but not bit
    for bit: say so before training."""
    from anmc.vae.run import load_checkpoint
    from anmc.vae.train import recorded_videos

    try:
        before = load_checkpoint(run_dir).get("videos", [])
    except UserError:
        return  # (no checkpoint: the resume itself says so)
    now = recorded_videos(list(videos))
    if before and sorted(before) != sorted(now) and os.environ.get("RANK", "0") == "0":
        err.print(
            f"[bold yellow]warning[/]: {escape(str(run_dir))} trained on {escape(', '.join(before))}; it continues on "
            f"{escape(', '.join(now))} (a resume on the same videos repeats the run bit for bit, on others it cannot).",
            soft_wrap=True,
        )


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            out.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(out)


def _print_report(report: dict) -> None:
    table = Table(title="latents against the true states")
    for col in ("state", "pearson", "sign", "slope", "r2", "knn_r2", "mae"):
        table.add_column(col, justify="left" if col == "state" else "right")
    fmt = lambda v: "-" if v is None else f"{v:+.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    for name, row in report["states"].items():
        table.add_row(name, *(fmt(row[k]) for k in ("pearson", "sign", "slope", "r2", "knn_r2", "mae")))
    if report["states"]:
        out.print(table)
    params = Table(title="params")
    for col in ("param", "learned", "true", "learnable"):
        params.add_column(col)
    for name, row in report["params"].items():
        params.add_row(name, f"{row['learned']:.4g}", "-" if row["true"] is None else f"{row['true']:.4g}", "yes" if row["learnable"] else "")
    out.print(params)
    pred = Table(title=f"n-step prediction MSE (reconstruction MSE {report['recon_mse']:.4g})")
    for col in ("frames ahead", "model", "repeat last frame"):
        pred.add_column(col, justify="right")
    for n, row in report["prediction"].items():
        pred.add_row(n, f"{row['model']:.4g}", f"{row['repeat_last']:.4g}")
    out.print(pred)
    total, evaluated = report.get("truth_frames"), report.get("latent_frames")
    if total is not None and evaluated and total < evaluated:
        clips = report.get("truth_clips", [])
        out.print(
            f"note: the truth covers {total} of the {evaluated} frames evaluated (clip(s) {escape(_ranges(clips))}); the table "
            "compares those frames only.",
            soft_wrap=True,
        )
    partial: dict[int, list[str]] = {}  # frames with a value -> the states with that many
    for name, row in report["states"].items():
        if total and row.get("frames", total) < total:
            partial.setdefault(row["frames"], []).append(name)
    if partial:
        said = "; ".join(f"{', '.join(names)} in {n} of {total} frames" for n, names in partial.items())
        out.print(f"note: the truth has values for {escape(said)} (in the others its cells are empty or NaN, or the rows missing); the table compares those frames only.", soft_wrap=True)
    if report.get("truth_unused_clips"):
        out.print(f"note: the truth has rows for clip(s) {escape(_ranges(report['truth_unused_clips']))}, which the videos evaluated do not have (clip 0 is the first file in sorted order); they are not compared.", soft_wrap=True)
    for name, why in report.get("not_compared", {}).items():
        out.print(f"note: {escape(name)} is not compared: its column in the truth {escape(why)}.", soft_wrap=True)
    from anmc.vae.diagnostics import describe_all

    for line in describe_all(report.get("diagnostics", [])):
        out.print(f"[bold yellow]warning[/]: {escape(line)}", soft_wrap=True)


@main.command(name="eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--video", "videos", multiple=True, help="Videos to evaluate on (default: the training videos).")
@click.option("--truth", type=click.Path(), help="truth.csv with the true states (default: one beside the videos).")
@click.option("--circular", multiple=True, help="States that are angles to compare circularly (e.g. phase).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the report as JSON.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), help="Also write the pictures of `anmc plot` into this folder.")
@_device_option
@report_user_errors
def eval_(run_dir, videos, truth, circular, json_path, plots_dir, device):
    """How physical are the latents of RUN_DIR: correlation, slope, R^2 with the true states, prediction error."""
    import json

    from anmc.analysis.evaluate import evaluate
    from anmc.vae.run import load_run

    run = load_run(run_dir, _device(device))
    report = evaluate(run, videos=list(videos) or None, truth=truth, circular=circular or None)
    _print_report(report)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
        err.print(f"wrote {json_path}")
    if plots_dir:
        from anmc.analysis.plots import write_pictures

        for path in write_pictures(run, Path(plots_dir) / "latent.png", videos=list(videos) or None, truth=truth):
            err.print(f"wrote {escape(str(path))}", soft_wrap=True)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", default="latent.png", show_default=True, type=click.Path(),
              help="The figure (its suffix the format), or a folder (an existing one, or a name without a suffix) for latent.png and the others.")
@click.option("--states", nargs=2, help="The two states of the plane (default: the first two).")
@click.option("--intervention", "-i", help="Also draw the prior under this intervention block (black triangles).")
@click.option("--set", "sets", multiple=True, help="Or under these edits (black triangles).")
@click.option("--edit", "edits", multiple=True)
@click.option("--video", "videos", multiple=True, help="Videos to encode (default: the training videos).")
@click.option("--truth", type=click.Path(), help="truth.csv for the latent-against-truth picture (default: one beside the videos).")
@_device_option
@report_user_errors
def plot(run_dir, output, states, intervention, sets, edits, videos, truth, device):
    """Pictures of RUN_DIR: Figure 2 of the paper (prior blue circles, posterior vermillion squares, intervened
    prior black triangles; loss curves) in OUTPUT, and beside it OUTPUT_reconstructions.png (frames,
    reconstructions, predictions) and, with true states, OUTPUT_states.png (latent against truth)."""
    from anmc.analysis.plots import write_pictures
    from anmc.vae.run import load_run

    if Path(output).is_dir() or not Path(output).suffix:  # a folder: the figures inside it, under their default names
        output = Path(output) / "latent.png"
    run = load_run(run_dir, _device(device))
    intervened, label = None, "intervened prior"
    if intervention or sets or edits:
        from anmc.analysis.intervene import intervened_module

        intervened = intervened_module(run, intervention=intervention, edits=[*sets, *edits])
        label = f"prior under {intervention or '; '.join([*sets, *edits])}"
    paths = write_pictures(run, output, videos=list(videos) or None, truth=truth, states=tuple(states) if states else None,
                           intervened=intervened, intervention_label=label)  # fmt: skip
    for path in paths:
        out.print(f"wrote {escape(str(path))}", soft_wrap=True)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@report_user_errors
def show(run_dir):
    """Print the run's .anm with the learned parameter and noise values filled in."""
    from anmc.vae.run import load_run
    from anmc.codegen.learned_anm import learned_anm

    run = load_run(run_dir)
    text = learned_anm(run.prior.model, run.module)
    if out.is_terminal:
        out.print(Syntax(text, "python", theme="ansi_dark"))
    else:
        click.echo(text, nl=False)


# `anmc quickstart --quick`: a first look at the whole path (2 min 32 s on two quiet CPU cores, measured;
# README.md); each value replaces the full quick start's default.
QUICK = {"clips": 12, "frames": 96, "epochs": 8, "steps_per_epoch": 80, "warmup": 200, "learn_params_after": 2}


@main.command()
@click.option("-o", "--output", "out_dir", default="anmc-quickstart", show_default=True, type=click.Path(file_okay=False))
@click.option("--quick", is_flag=True, help="A first look in a few minutes: a smaller video and a shorter training (recovers less; README.md says how much).")
@click.option("--clips", default=None, type=click.IntRange(min=2), help="Clips to synthesize [default: 24, 12 with --quick].")
@click.option("--frames", default=None, type=click.IntRange(min=16), help="Frames per clip [default: 128, 96 with --quick].")
@_train_options
@report_user_errors
def quickstart(out_dir, quick, clips, frames, **kwargs):
    """The whole job on the built-in default: synthesize a pendulum video, train, evaluate, show, plot
    (and, with --quick, one intervention)."""
    import json

    from anmc.codegen.compile import compile_prior
    from anmc.analysis.evaluate import evaluate
    from anmc.analysis.plots import write_pictures
    from anmc.codegen.learned_anm import learned_anm
    from anmc.synthetic.synth import synthesize
    from anmc.vae.run import load_run

    if quick:
        ctx = click.get_current_context()
        for key, value in QUICK.items():  # only where the user kept the default
            if key in kwargs and ctx.get_parameter_source(key) == click.core.ParameterSource.DEFAULT:
                kwargs[key] = value
    clips = clips or (QUICK["clips"] if quick else 24)
    frames = frames or (QUICK["frames"] if quick else 128)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    truth_path, prior_path = root / "pendulum.anm", root / "pendulum_guess.anm"
    truth_text = default_prior_text()
    truth_path.write_text(truth_text)
    # the prior we train with starts the learnable length 50% off the length that made the video
    prior_path.write_text(truth_text.replace("param L = 1.0 ", "param L = 1.5 ", 1))
    config = _config(kwargs)
    if quick:
        from anmc.vae.config import TrainConfig

        full = TrainConfig()
        full_epochs = full.epochs + (full.starts(world=1) - 1) * full.restart_epochs  # with the losing starts' epochs
        longer = full_epochs * full.steps_per_epoch / (config.epochs * (config.steps_per_epoch or full.steps_per_epoch))
        out.print(
            f"[bold]a first look[/]: {clips} clips x {frames} frames, {config.epochs} epochs of {config.steps_per_epoch} steps "
            f"(the full quick start trains {longer:.0f}x longer and recovers more)", soft_wrap=True,
        )  # fmt: skip
    out.rule("1. synthesize a pendulum video (anmc synth)")
    syn = synthesize(compile_prior(truth_path), root / "data", clips=clips, frames=frames, size=64, seed=config.seed + 1000)
    out.print(f"{len(syn.paths)} clips x {frames} frames of 64x64 (L = 1.0 m) in {root / 'data'}, true states in truth.csv")
    out.rule("2. train (anmc train), starting from a guess L = 1.5 m")
    _run_training(prior_path, [str(root / "data")], root / "run", config, resume=False, overwrite=True)  # its own folder: a rerun starts over
    out.rule("3. evaluate (anmc eval)")
    run = load_run(root / "run")
    report = evaluate(run)
    _print_report(report)
    (root / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    out.rule("4. the learned model as equations (anmc show)")
    out.print(learned_anm(run.prior.model, run.module), markup=False, highlight=False)
    pictures = write_pictures(run, root / "latent.png")
    if quick:
        from anmc.analysis.intervene import intervene as run_intervention

        out.rule("5. what if there were air drag? (anmc intervene -i drag)")
        cf = run_intervention(root / "run", intervention="drag", frames=90)
        for path in cf.save(root / "drag.gif"):
            out.print(f"wrote {escape(str(path))}", soft_wrap=True)
    out.rule("results")
    out.print(f"run: {root / 'run'}   report: {root / 'eval.json'}   figure: {root / 'latent.png'}")
    if len(pictures) > 1:
        out.print("also: " + "   ".join(str(p) for p in pictures[1:]), soft_wrap=True)
    if quick:
        out.print("[bold]a first look[/]: for the full result run [bold]anmc quickstart[/] without --quick", soft_wrap=True)
    else:
        out.print(f"next: anmc intervene {root / 'run'} --intervention drag -o {root / 'drag.gif'}")


def default_prior_text() -> str:
    """The built-in pendulum prior shipped inside the package (priors/pendulum.anm)."""
    from importlib import resources

    return resources.files("anmc").joinpath("synthetic/pendulum.anm").read_text()


if __name__ == "__main__":  # pragma: no cover
    main()
