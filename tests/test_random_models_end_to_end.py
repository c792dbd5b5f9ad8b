"""Any model the language accepts goes through the whole pipeline, or stops with one sentence: random models
(the random right-hand sides and observation functions of tests/test_jacobian_properties.py, states named
as the emitters' own values once were) are drawn by `anmc synth`, trained for two steps, evaluated and
intervened on through the command line. A UserError (exit 2: a rollout that blows up, a collapse warning)
is an answer; any other exception is a defect. Slow: ~5 s a model."""

from __future__ import annotations

import traceback

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from anmc.cli import main
from test_jacobian_properties import random_observed_models


def _run(args: list[str]):
    res = CliRunner().invoke(main, args)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"anmc {args[0]} raised:\n" + "".join(traceback.format_exception(res.exception))[-3000:])
    assert res.exit_code in (0, 2) and "Traceback" not in res.output, res.output[-2000:]
    return res


@pytest.mark.slow
@settings(max_examples=6, deadline=None, phases=[Phase.explicit, Phase.generate], database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(random_observed_models(), st.booleans())
def test_a_random_model_synthesizes_trains_evaluates_and_intervenes(tmp_path_factory, spec, plain):
    text, states, _ = spec
    if plain:  # a frame shows a state, not an expression
        text = "\n".join(text.splitlines()[:-1] + [f"observe {states[0]}"]) + "\n"
    tmp = tmp_path_factory.mktemp("model")
    (tmp / "m.anm").write_text(text)
    if _run(["synth", str(tmp / "m.anm"), "-o", str(tmp / "data"), "--clips", "2", "--frames", "24", "--size", "16", "--format", "npz"]).exit_code:
        return  # e.g. the rollout blew up: said in one sentence
    train = ["train", str(tmp / "m.anm"), str(tmp / "data"), "-o", str(tmp / "run"), "--epochs", "1", "--steps-per-epoch", "2",
             "--size", "16", "--batch", "2", "--seq-len", "4"]  # fmt: skip
    if _run(train).exit_code:
        return
    _run(["eval", str(tmp / "run")])
    _run(["intervene", str(tmp / "run"), "--set", "b = 1.5", "--frames", "6", "-o", str(tmp / "cf.gif")])
