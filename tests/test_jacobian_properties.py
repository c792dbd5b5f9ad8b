"""The compiled map f and its Jacobian J, checked against references that share no code with anmc's
integrators or emitters: central finite differences of `forward`, autograd of `forward` (for the
priors through `anmc.testing.check_jacobian`, the helper users get), and plain numpy integration
loops written here. For every prior in priors/ (and each of its
interventions) and for random well-formed models built by hypothesis.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

import anmc
from anmc.symbolic.model import symbol
from anmc.testing import check_intervention, check_jacobian, check_observation_jacobian

ROOT = Path(__file__).resolve().parents[1]
PRIORS = sorted((ROOT / "priors").glob("*.anm"))
CASES = [(p, None) for p in PRIORS] + [
    (p, iv) for p in PRIORS for iv in anmc.load_model(p).interventions
]  # every prior, and every intervention of it


# ---------------------------------------------------------------- independent references


def integrate(F, z: np.ndarray, method: str, h: float, steps: int, order=None) -> np.ndarray:
    """One frame of `steps` substeps of `method` for z' = F(z), z (n, d); written from the textbook.

    F(z) -> (n, d); for semi-implicit Euler F(z, i) -> (n,) is the i-th component and the states are
    swept in `order` (declaration order), each update seeing the ones before it (Gauss-Seidel)."""
    z = np.array(z, dtype=np.float64)
    for _ in range(steps):
        if method == "discrete":
            z = F(z)
        elif method == "euler":
            z = z + h * F(z)
        elif method == "midpoint":
            z = z + h * F(z + 0.5 * h * F(z))
        elif method == "rk4":
            k1 = F(z)
            k2 = F(z + 0.5 * h * k1)
            k3 = F(z + 0.5 * h * k2)
            k4 = F(z + h * k3)
            z = z + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        elif method == "semi_implicit_euler":
            z = z.copy()
            for i in order:
                z[:, i] = z[:, i] + h * F(z, i)
        else:
            raise ValueError(method)
    return z


def richardson_jacobian(fwd, z: np.ndarray, h: float) -> np.ndarray:
    """Central differences with one Richardson extrapolation (error O(h^4)): (n, d) -> (n, d, d)."""
    n, d = z.shape
    J = np.zeros((n, d, d))
    for j in range(d):
        e = np.zeros(d)
        e[j] = 1.0

        def central(step):
            return (fwd(z + step * e) - fwd(z - step * e)) / (2 * step)

        J[:, :, j] = (4 * central(h / 2) - central(h)) / 3
    return J


def torch_forward(module):
    def fwd(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(z))).numpy()

    return fwd


def jacrev_jacobian(module, z: torch.Tensor) -> torch.Tensor:
    """Reverse-mode autodiff of `forward` over the whole batch, then the per-point diagonal blocks."""
    full = torch.func.jacrev(module.forward)(z)  # (n, d, n, d)
    n = z.shape[0]
    return torch.stack([full[i, :, i, :] for i in range(n)])


def assert_close(actual, expected, rtol, atol, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    bad = ~np.isclose(actual, expected, rtol=rtol, atol=atol)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(f"{what}: {actual[i]!r} != {expected[i]!r} at {i} ({bad.sum()} entries differ)")


# ---------------------------------------------------------------- the priors


def lambdified_rhs(model, params: dict[str, float]):
    """F(z) from the model's SymPy right-hand sides, consts and params put in, via sympy.lambdify (numpy)."""
    states = [sp.Symbol(s, real=True) for s in model.states]
    values = {sp.Symbol(n, real=True): v for n, v in model.consts.items()}
    values.update({sp.Symbol(n, real=True): v for n, v in params.items()})
    fs = [sp.lambdify(states, model.rhs[s].xreplace(values), "numpy") for s in model.states]

    def F(z, i=None):
        cols = [z[:, k] for k in range(z.shape[1])]
        if i is not None:
            return np.broadcast_to(fs[i](*cols), z.shape[:1]).astype(np.float64)
        return np.stack([np.broadcast_to(f(*cols), z.shape[:1]) for f in fs], -1).astype(np.float64)

    return F


def sample_states(module, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mean, std = module.initial_mean.double(), module.initial_std.double()
    return mean + 1.5 * std * torch.randn((n, module.d), generator=g, dtype=torch.float64)


@pytest.mark.parametrize("path, intervention", CASES, ids=[f"{p.stem}-{iv or 'as-written'}" for p, iv in CASES])
def test_prior_f_and_jacobian_against_references(path, intervention):
    prior = anmc.compile_prior(path, intervention=intervention)
    model, module = prior.model, prior.module().double()
    z = sample_states(module, 16, seed=hash(path.stem) % 1000)
    f, J = module.f_and_jacobian(z)
    f, J = f.detach(), J.detach()
    scale = max(1.0, float(f.abs().max()), float(J.abs().max()))

    # the module holds the declared (or intervened) param values, to the precision of its float32 storage
    params = {n: float(v.detach()) for n, v in module.param_values().items()}
    assert params == pytest.approx({n: p.value for n, p in model.params.items()}, rel=1e-6, abs=1e-7)

    # f against plain numpy integration of the lambdified right-hand sides, with those values
    method = model.integrator
    F = lambdified_rhs(model, params)
    reference = integrate(F, z.numpy(), method, model.dt / model.substeps, model.substeps, range(model.d))
    assert_close(f.numpy(), reference, rtol=1e-10, atol=1e-12 * scale, what="f vs numpy integration")

    # J against autograd of forward and central differences of it (anmc.testing, docs/testing.md), at these
    # states and at states drawn from the initial distribution and out to 3 initial stds beyond it
    check_jacobian(prior, states=z, rtol=1e-7, atol=1e-8)
    report = check_jacobian(prior, samples=64, rtol=1e-7, atol=1e-8)
    assert report.points >= 48 and report.skipped_non_finite == 0


@pytest.mark.parametrize("path, intervention", CASES, ids=[f"{p.stem}-{iv or 'as-written'}" for p, iv in CASES])
def test_prior_observation_function_and_H_against_references(path, intervention):
    # h against numpy of the model's SymPy h (lambdified here), H against autograd and central differences of h
    prior = anmc.compile_prior(path, intervention=intervention)
    model, module = prior.model, prior.module().double()
    z = sample_states(module, 16, seed=hash(path.stem) % 1000)
    values = {symbol(n): float(v) for n, v in model.consts.items()}
    values |= {symbol(n): float(v.detach()) for n, v in module.param_values().items()}
    h = sp.lambdify([symbol(s) for s in model.states], model.observation_function.xreplace(values), "numpy")
    reference = np.stack([np.broadcast_to(np.asarray(r, dtype=float).ravel(), (len(z),)) for r in h(*z.numpy().T)], -1)
    assert module.observations == model.observation_names
    assert_close(module.observe(z).detach().numpy(), reference, rtol=1e-12, atol=1e-12, what="h vs numpy")
    report = check_observation_jacobian(prior, samples=64, rtol=1e-7, atol=1e-8)
    assert report.points >= 48 and report.skipped_non_finite == 0


INTERVENTIONS = [(p, iv) for p, iv in CASES if iv is not None]


@pytest.mark.parametrize("path, intervention", INTERVENTIONS, ids=[f"{p.stem}-{iv}" for p, iv in INTERVENTIONS])
def test_every_intervention_changes_only_what_it_says(path, intervention):
    report = check_intervention(anmc.compile_prior(path), intervention)
    assert report.equations or report.values or report.inits or report.starts


def test_the_priors_are_not_trivial():
    # the checks above would pass vacuously on an identity map
    for path in PRIORS:
        module = anmc.compile_prior(path).module().double()
        z = sample_states(module, 4, seed=1)
        f, J = module.f_and_jacobian(z)
        assert not torch.allclose(f, z) and not torch.allclose(J, torch.eye(module.d, dtype=torch.float64).expand_as(J))


# ---------------------------------------------------------------- random models

# Expression trees as tuples: ("num", text) ("var", name) ("neg", a) ("add"|"sub"|"mul"|"div", a, b)
# ("pow", a, k, "^" or "**") ("call", fname, *args). Written out as .anm text with as few parentheses as
# the grammar's precedence allows, and evaluated here with numpy.
NUMBERS = {"0.5": 0.5, "2": 2.0, "1e-1": 0.1, "3.25": 3.25, ".75": 0.75, "1.5E0": 1.5, "1": 1.0, "pi": math.pi, "e": math.e}
STATE_NAMES = ["x", "v", "theta", "omega", "f", "J", "h", "H", "F", "A", "y2", "rate_1"]  # f, J, h, H, F, A: names the emitters used for their own values
PRECEDENCE = {"add": 1, "sub": 1, "mul": 2, "div": 2, "neg": 3, "pow": 4, "num": 5, "var": 5, "call": 5}
NON_SMOOTH = {"abs", "sign", "min", "max"}


def render(node, min_prec: int = 0) -> str:
    kind = node[0]
    if kind == "num" or kind == "var":
        text = node[1]
    elif kind == "neg":
        text = "-" + render(node[1], 3)
    elif kind in ("add", "sub", "mul", "div"):
        op = {"add": " + ", "sub": " - ", "mul": " * ", "div": " / "}[kind]
        p = PRECEDENCE[kind]
        text = render(node[1], p) + op + render(node[2], p + 1)
    elif kind == "pow":
        text = render(node[1], 5) + node[3] + str(node[2])
    else:
        text = f"{node[1]}(" + ", ".join(render(a) for a in node[2:]) + ")"
    return f"({text})" if PRECEDENCE[kind] < min_prec else text


NUMPY = {
    "sin": np.sin, "cos": np.cos, "tan": np.tan, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "abs": np.abs,
    "tanh": np.tanh, "sinh": np.sinh, "cosh": np.cosh, "atan": np.arctan, "atan2": np.arctan2, "sign": np.sign,
}  # fmt: skip


def evaluate(node, env, kinks: list):
    """numpy value of a tree; every non-smooth call appends (branch, margin) to `kinks`."""
    kind = node[0]
    if kind == "num":
        return np.full_like(next(iter(env.values())), NUMBERS[node[1]])
    if kind == "var":
        return env[node[1]]
    if kind == "neg":
        return -evaluate(node[1], env, kinks)
    if kind in ("add", "sub", "mul", "div"):
        a, b = evaluate(node[1], env, kinks), evaluate(node[2], env, kinks)
        if kind == "add":
            return a + b
        if kind == "sub":
            return a - b
        return a * b if kind == "mul" else a / b
    if kind == "pow":
        return evaluate(node[1], env, kinks) ** node[2]
    name, args = node[1], [evaluate(a, env, kinks) for a in node[2:]]
    if name in ("abs", "sign"):
        kinks.append((np.sign(args[0]), np.abs(args[0])))
    if name in ("min", "max"):
        stacked = np.stack(args)
        order = np.sort(stacked, axis=0)
        kinks.append((np.argmin(stacked, 0) if name == "min" else np.argmax(stacked, 0), np.abs(order[1] - order[0]) if name == "min" else np.abs(order[-1] - order[-2])))
        return stacked.min(0) if name == "min" else stacked.max(0)
    return NUMPY[name](*args)


def _wrap(kind, a, b):
    """Combine subtrees with safe domains (no division by zero, no log of a negative, no tan pole)."""
    one_plus_square = lambda t: ("add", ("num", "1"), ("pow", t, 2, "^"))  # noqa: E731
    return {
        "add": ("add", a, b),
        "sub": ("sub", a, b),
        "mul": ("mul", a, b),
        "div": ("div", a, ("add", ("num", "1.5E0"), ("pow", b, 2, "**"))),
        "neg": ("neg", a),
        "square": ("pow", a, 2, "^"),
        "cube": ("pow", a, 3, "**"),
        "sin": ("call", "sin", a),
        "cos": ("call", "cos", a),
        "tan": ("call", "tan", ("mul", ("num", "0.5"), ("call", "sin", a))),
        "exp": ("call", "exp", ("call", "sin", a)),
        "log": ("call", "log", one_plus_square(a)),
        "sqrt": ("call", "sqrt", one_plus_square(a)),
        "tanh": ("call", "tanh", a),
        "sinh": ("call", "sinh", ("call", "tanh", a)),
        "cosh": ("call", "cosh", ("call", "tanh", a)),
        "atan": ("call", "atan", a),
        "atan2": ("call", "atan2", a, ("add", ("num", "2"), ("pow", b, 2, "^"))),
        "abs": ("call", "abs", a),
        "sign": ("mul", ("call", "sign", a), b),
        "min": ("call", "min", a, b),
        "max": ("call", "max", a, b, ("num", ".75")),
    }[kind]


COMBINATIONS = [
    "add", "sub", "mul", "div", "neg", "square", "cube", "sin", "cos", "tan", "exp", "log", "sqrt", "tanh",
    "sinh", "cosh", "atan", "atan2", "abs", "sign", "min", "max",
]  # fmt: skip


def trees(names):
    leaves = st.one_of(st.sampled_from(sorted(NUMBERS)).map(lambda t: ("num", t)), st.sampled_from(names).map(lambda n: ("var", n)))

    def extend(children):
        return st.builds(_wrap, st.sampled_from(COMBINATIONS), children, children)

    return st.recursive(leaves, extend, max_leaves=5)


@st.composite
def random_models(draw):
    d = draw(st.integers(1, 4))
    states = draw(st.permutations(STATE_NAMES))[:d]
    # a learnable param may appear too, and the const `a` (a Python float in the generated code: a bare
    # const as a Jacobian entry once reached torch.addcmul, which takes tensors only)
    names = [*states, "a", "b"]
    equations = {s: draw(trees(names)) for s in states}
    method = draw(st.sampled_from(["euler", "semi_implicit_euler", "midpoint", "rk4", "discrete"]))
    steps = draw(st.integers(1, 3)) if method != "discrete" else 1
    dt = draw(st.sampled_from(["0.05", "1/30", "1e-1"]))
    written = draw(st.permutations(states))  # equations in any order; semi-implicit Euler sweeps declaration order
    lines = ["model rnd", "const a = 0.7", "param b = 1.3 in [0.5, 2] learn"]
    lines += [f"state {s} ~ Normal(0, 1)" for s in states]
    if method == "discrete":
        lines.append("dynamics discrete")
        lines += [f"  next {s} = {render(equations[s])}" for s in written]
    else:
        lines.append(f"dynamics continuous dt = {dt} using {method} steps {steps}")
        lines += [f"  {s}' = {render(equations[s])}" for s in written]
    lines += ["noise " + ", ".join(f"{s} = 0.01" for s in states), f"observe {states[0]}"]
    return "\n".join(lines) + "\n", states, equations, method, steps, eval(dt) if method != "discrete" else 1.0  # noqa: S307 - one of three literals


def reference_map(states, equations, method, steps, dt, b=1.3):
    """f(z) for (n, d) z by numpy integration of the trees, and the list of kink records of that evaluation."""

    def run(z):
        kinks: list = []

        def F(zz, i=None):
            env = {s: zz[:, k] for k, s in enumerate(states)}
            env["a"], env["b"] = np.full(len(zz), 0.7), np.full(len(zz), b)
            if i is not None:
                return evaluate(equations[states[i]], env, kinks)
            return np.stack([evaluate(equations[s], env, kinks) for s in states], -1)

        return integrate(F, z, method, dt / steps, steps, range(len(states))), kinks

    return run


def smooth_points(run, z: np.ndarray, h: float) -> np.ndarray:
    """Points whose finite-difference stencil (z +- h e_j, z +- h/2 e_j) stays on one side of every kink."""
    _, centre = run(z)
    ok = np.ones(len(z), dtype=bool)
    for branch, margin in centre:
        ok &= margin > 1e-6
    for j in range(z.shape[1]):
        for step in (h, -h, h / 2, -h / 2):
            zz = z.copy()
            zz[:, j] += step
            _, other = run(zz)
            for (b0, _), (b1, _) in zip(centre, other):
                ok &= b0 == b1
    return ok


# No shrinking: a failure already prints the model's text, and shrinking random models can take minutes.
@settings(
    max_examples=100,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(random_models(), st.integers(0, 2**31 - 1))
def test_random_model_f_and_jacobian_against_references(spec, seed):
    text, states, equations, method, steps, dt = spec
    module = anmc.compile_prior(text).module().double()
    z = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(6, len(states)))
    b = float(module.param("b").detach())  # 1.3 to float32 precision
    assert b == pytest.approx(1.3, rel=1e-6)
    run = reference_map(states, equations, method, steps, dt, b)
    reference, _ = run(z)
    assume(np.isfinite(reference).all() and np.abs(reference).max() < 1e6)

    zt = torch.from_numpy(z)
    f, J = module.f_and_jacobian(zt)
    f, J = f.detach().numpy(), J.detach().numpy()
    scale = max(1.0, np.abs(f).max(), np.abs(J).max())
    assert_close(f, reference, rtol=1e-9, atol=1e-11 * scale, what=f"f vs numpy integration of\n{text}")
    assert_close(J, jacrev_jacobian(module, zt).detach().numpy(), rtol=1e-10, atol=1e-12 * scale, what=f"J vs jacrev of\n{text}")

    h = 1e-3
    smooth = smooth_points(run, z, h)
    fd = richardson_jacobian(torch_forward(module), z, h)
    assert_close(J[smooth], fd[smooth], rtol=1e-6, atol=1e-7 * scale, what=f"J vs finite differences of\n{text}")


def test_precedence_of_rendered_text_matches_the_grammar():
    # the random-model test relies on `render`; pin the grammar's precedence with hand-written cases
    module = anmc.compile_prior(
        "state x ~ Normal(0, 1)\nstate v ~ Normal(0, 1)\ndynamics discrete\n"
        "  next x = -x^2 + 2 * 3 ^ 2 ^ 0.5 - x / 2 / 4\n  next v = 2**-1 * -v - -v\nnoise x = 0, v = 0\nobserve x\n"
    ).module().double()
    x, v = 0.3, -1.7
    f = module(torch.tensor([x, v], dtype=torch.float64))
    expected = [-(x**2) + 2 * 3 ** (2**0.5) - x / 2 / 4, 2**-1 * -v - -v]
    assert f.tolist() == pytest.approx(expected, rel=1e-14)


def test_power_with_a_number_base_and_a_state_exponent():
    # d/dx 2^x = log(2) 2^x: a number-valued call in the Jacobian must print as a number
    module = anmc.compile_prior(
        "state x ~ Normal(0, 1)\ndynamics continuous dt = 0.1 using euler\n  x' = 2^x\nnoise x = 0\nobserve x\n"
    ).module().double()
    f, J = module.f_and_jacobian(torch.tensor([0.5], dtype=torch.float64))
    assert float(J[0, 0]) == pytest.approx(1 + 0.1 * math.log(2) * 2**0.5)


@pytest.mark.parametrize("method", ["euler", "semi_implicit_euler", "midpoint", "rk4", "discrete"])
def test_right_hand_sides_that_are_numbers_or_params_only(method):
    # x' = 0.75 and v' = cos(b): no state in them, so the emitter may hand back plain numbers
    dynamics = "dynamics discrete" if method == "discrete" else f"dynamics continuous dt = 0.1 using {method} steps 2"
    prefix = (lambda s: f"next {s} =") if method == "discrete" else (lambda s: f"{s}' =")
    module = anmc.compile_prior(
        f"param b = 1.3 in [0.5, 2] learn\nstate x ~ Normal(0, 1)\nstate v ~ Normal(0, 1)\n{dynamics}\n"
        f"  {prefix('x')} 0.75\n  {prefix('v')} cos(b)\nnoise x = 0, v = 0\nobserve x\n"
    ).module().double()
    z = torch.tensor([[0.5, -0.25], [1.0, 2.0], [0.0, 0.0]], dtype=torch.float64).reshape(3, 1, 2)
    f, J = module.f_and_jacobian(z)
    b = float(module.param("b").detach())
    expected = torch.tensor([0.75, math.cos(b)], dtype=torch.float64).expand(3, 1, 2)
    expected = expected if method == "discrete" else z + 0.1 * expected
    torch.testing.assert_close(f, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(module(z), expected, rtol=1e-12, atol=1e-12)
    eye = torch.zeros(2, 2, dtype=torch.float64) if method == "discrete" else torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(J, eye.expand(3, 1, 2, 2), rtol=0, atol=0)
    (grad,) = torch.autograd.grad(f[..., 1].sum(), [module._raw_b])
    assert grad != 0


def test_const_inside_a_function_call():
    module = anmc.compile_prior(
        "const a = 0.7\nstate x ~ Normal(0, 1)\ndynamics continuous dt = 0.1 using euler\n  x' = sqrt(1 + a^2) * x\nnoise x = 0\nobserve x\n"
    ).module().double()
    f, J = module.f_and_jacobian(torch.tensor([0.5], dtype=torch.float64))
    assert float(J[0, 0]) == pytest.approx(1 + 0.1 * math.sqrt(1 + 0.49))


@pytest.mark.parametrize(
    "equations",
    [
        ["x' = a*y - b*x", "y' = -k*x - a*sin(y) + b*y*x"],  # rows of two terms, a bare const among them
        ["x' = y + w", "y' = -a*x + b*y - k*w", "w' = x"],  # a row of three
        ["x' = e*y - pi*x", "y' = -k*x"],  # pi and e: numbers SymPy keeps as symbols (math.pi, math.e)
    ],
    ids=["two-terms", "three-terms", "pi-and-e"],
)
def test_a_const_as_a_jacobian_entry(equations):
    """A const that is a whole entry of dF/dz (`b` in b*y), or pi or e, is a Python float in the generated code,
    and the rows of J that hold it accumulate with torch.add(alpha=) (torch.addcmul takes tensors only; it
    once reached addcmul and f_and_jacobian raised TypeError). J against torch.func.jacrev, the backward pass
    (learnable k, the written pass for d = 2, autograd's for d = 3) against gradcheck."""
    states = [eq.split("'")[0] for eq in equations]
    source = "\n".join(
        ["model cst", "const a = 2.5", "const b = 0.5", "param k = 1.0 in [0.1, 5] learn"]
        + [f"state {s} ~ Normal(0, 1)" for s in states]
        + ["dynamics continuous dt = 1/30 using rk4 steps 2"]
        + [f"  {eq}" for eq in equations]
        + ["noise " + ", ".join(f"{s} = 0.01" for s in states), f"observe {states[0]}"]
    )
    module = anmc.compile_prior(source + "\n").module().double()
    z = torch.randn(6, len(states), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    f, J = module.f_and_jacobian(z)
    torch.testing.assert_close(J, torch.func.vmap(torch.func.jacrev(module))(z), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f, module(z), rtol=1e-14, atol=1e-14)
    raw = module._raw_k
    assert torch.autograd.gradcheck(lambda zz: module.f_and_jacobian(zz), (z.clone().requires_grad_(),))
    (gk,) = torch.autograd.grad(module.f_and_jacobian(z)[1].sum(), [raw])
    eps = 1e-6
    with torch.no_grad():
        raw += eps
        up = module.f_and_jacobian(z)[1].sum()
        raw -= 2 * eps
        down = module.f_and_jacobian(z)[1].sum()
        raw += eps
    assert float(gk) == pytest.approx(float(up - down) / (2 * eps), rel=1e-6, abs=1e-9)


# ---------------------------------------------------------------- shapes, dtypes, parameters


@pytest.mark.parametrize("path", PRIORS, ids=[p.stem for p in PRIORS])
def test_any_leading_batch_shape(path):
    module = anmc.compile_prior(path).module().double()
    z = sample_states(module, 15, seed=3)
    f_flat, J_flat = module.f_and_jacobian(z)
    d = module.d
    f, J = module.f_and_jacobian(z.reshape(3, 5, d))
    assert f.shape == (3, 5, d) and J.shape == (3, 5, d, d)
    torch.testing.assert_close(f.reshape(15, d), f_flat, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(J.reshape(15, d, d), J_flat, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(module(z.reshape(5, 3, d)).reshape(15, d), f_flat, rtol=1e-14, atol=1e-14)
    f0, J0 = module.f_and_jacobian(z[0])  # no batch dimension at all
    assert f0.shape == (d,) and J0.shape == (d, d)
    torch.testing.assert_close(J0, J_flat[0], rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("path", PRIORS, ids=[p.stem for p in PRIORS])
def test_float32_and_float64(path):
    module = anmc.compile_prior(path).module()
    z64 = sample_states(module, 8, seed=4)
    f64, J64 = module.f_and_jacobian(z64)
    f32, J32 = module.f_and_jacobian(z64.float())
    assert f64.dtype == J64.dtype == torch.float64 and f32.dtype == J32.dtype == torch.float32
    assert module(z64.float()).dtype == torch.float32
    torch.testing.assert_close(f32.double(), f64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(J32.double(), J64, rtol=1e-5, atol=1e-5)


LEARNABLE = [p for p in PRIORS if anmc.compile_prior(p).module().learnable_param_names]


@pytest.mark.parametrize("path", LEARNABLE, ids=[p.stem for p in LEARNABLE])
def test_gradients_flow_to_learnable_params_and_are_exact(path):
    module = anmc.compile_prior(path).module().double()
    z = sample_states(module, 8, seed=5)
    params = [p for p in module.parameters() if p.requires_grad]
    assert params
    f, J = module.f_and_jacobian(z)
    w_f, w_J = torch.linspace(-1, 1, f.numel(), dtype=torch.float64).reshape(f.shape), torch.linspace(1, 2, J.numel(), dtype=torch.float64).reshape(J.shape)
    loss = (w_f * f).sum() + (w_J * J).sum()
    grads = torch.autograd.grad(loss, params)
    for p, g in zip(params, grads):
        assert torch.isfinite(g).all() and g.abs().sum() > 0
        with torch.no_grad():  # the gradient is the derivative: compare with a central difference in the raw value
            eps = 1e-6
            p += eps
            up = sum(float((w_f * a).sum() + (w_J * b).sum()) for a, b in [module.f_and_jacobian(z)])
            p -= 2 * eps
            down = sum(float((w_f * a).sum() + (w_J * b).sum()) for a, b in [module.f_and_jacobian(z)])
            p += eps
        assert float(g.sum()) == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("direction", [1.0, -1.0])
@pytest.mark.parametrize("optimizer", [torch.optim.SGD, torch.optim.Adam])
def test_learnable_params_stay_inside_their_bounds(direction, optimizer):
    text = (ROOT / "priors" / "pendulum.anm").read_text().replace(
        "noise theta = 0.01, omega = 0.05", "noise theta = 0.01 learn, omega = 0.05"
    )
    module = anmc.compile_prior(text).module()
    lo, hi = module.param_bounds["L"]
    opt = optimizer(module.parameters(), lr=1e3)
    z = torch.tensor([[0.5, 0.1]])
    for _ in range(30):
        opt.zero_grad()
        f, J = module.f_and_jacobian(z)
        loss = direction * (module.param("L") + f.sum() + J.sum()) + direction * module.noise_std.sum()
        loss.backward()
        opt.step()
        L = float(module.param("L").detach())
        assert lo <= L <= hi and math.isfinite(L)
        assert (module.noise_std > 0).all() and torch.isfinite(module.noise_std).all()
    assert (L > 0.9 * hi) if direction < 0 else (L < lo + 0.1 * (hi - lo))  # it was pushed, and stopped at the bound
    f, J = module.f_and_jacobian(z.double())
    assert torch.isfinite(f).all() and torch.isfinite(J).all()


def test_set_param_round_trips_through_the_reparameterization():
    module = anmc.compile_prior(ROOT / "priors" / "pendulum.anm").module().double()
    for value in (0.06, 1.0, 7.5, 19.9):
        module.set_param("L", value)
        assert float(module.param("L").detach()) == pytest.approx(value, rel=1e-9)
    module.set_param("c", 0.3)  # a fixed param
    assert float(module.param_values()["c"]) == pytest.approx(0.3)


# ---------------------------------------------------------------- random observation functions


@st.composite
def random_observed_models(draw):
    """A random model (as `random_models`) with one to three `observe NAME = EXPR` lines of random trees over
    its states, the const `a` and the learnable param `b`."""
    text, states, equations, method, steps, dt = draw(random_models())
    trees_h = draw(st.lists(trees([*states, "a", "b"]), min_size=1, max_size=3))
    assume(all(any(("var", s) in _leaves(t) for s in states) for t in trees_h))  # a reading depends on a state
    lines = text.splitlines()
    lines[-1] = f"observe {', '.join(f'o{i} = {render(t)}' for i, t in enumerate(trees_h))}"
    return "\n".join(lines) + "\n", states, trees_h


def _leaves(node) -> list:
    if node[0] in ("num", "var"):
        return [node]
    return [leaf for child in node[1:] if isinstance(child, tuple) for leaf in _leaves(child)]


@settings(max_examples=40, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])  # fmt: skip
@given(random_observed_models(), st.integers(0, 2**31 - 1))
def test_random_observations_h_and_H_against_references(spec, seed):
    """The generated h against numpy evaluation of the trees, and its H against jacrev of the generated h,
    for random observation expressions (consts, params, every function the language has)."""
    text, states, trees_h = spec
    try:
        module = anmc.compile_prior(text).module().double()
    except anmc.AnmError as err:  # an expression that SymPy reduces to no state is refused, with a message
        assume("depends on no state" not in str(err))
        raise
    z = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(6, len(states)))
    kinks: list = []
    env = {s: z[:, k] for k, s in enumerate(states)} | {"a": np.full(6, 0.7), "b": np.full(6, float(module.param("b").detach()))}
    reference = np.stack([evaluate(t, env, kinks) for t in trees_h], -1)
    assume(np.isfinite(reference).all() and np.abs(reference).max() < 1e6)
    h, H = module.observe_and_jacobian(torch.from_numpy(z))
    h, H = h.detach().numpy(), H.detach().numpy()
    scale = max(1.0, np.abs(h).max(), np.abs(H).max())
    assert_close(h, reference, rtol=1e-12, atol=1e-13 * scale, what=f"h vs numpy evaluation of\n{text}")
    H_ref = torch.func.vmap(torch.func.jacrev(module.observe))(torch.from_numpy(z)).detach().numpy()
    assert_close(H, H_ref, rtol=1e-12, atol=1e-13 * scale, what=f"H vs jacrev of h of\n{text}")


def _smooth(node) -> bool:
    return node[0] != "call" or node[1] not in NON_SMOOTH and all(_smooth(a) for a in node[2:] if isinstance(a, tuple))


# (smooth trees only: where min, max, abs or sign tie on a whole region, as min(J, sign(H) * J) does for
# H > 0, the numpy emitter's Heaviside(0) = 1/2 counts a tied branch more than once; the torch module, what
# training uses, is right there and is checked against finite differences above)
@settings(max_examples=40, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])  # fmt: skip
@given(random_observed_models(), st.integers(0, 2**31 - 1))
def test_random_models_numpy_emission_matches_torch(spec, seed):
    """`--emit numpy` (f_and_jacobian and observe_and_jacobian) against the torch module, for random models
    whose states may be named as the emitters' own values once were (f, J, h, H, F, A)."""
    text, states, trees_h = spec
    assume(all(_smooth(t) for t in trees_h) and "min(" not in text and "max(" not in text and "abs(" not in text and "sign(" not in text)
    try:
        prior = anmc.compile_prior(text)
    except anmc.AnmError as err:
        assume("depends on no state" not in str(err))
        raise
    namespace: dict = {}
    exec(compile(prior.numpy_source(), "<numpy>", "exec"), namespace)  # noqa: S102 - anmc's own output
    module = prior.module().double()
    params = {n: float(v.detach()) for n, v in module.param_values().items()}
    z = torch.from_numpy(np.random.default_rng(seed).uniform(-1.0, 1.0, size=(6, len(states))))
    with torch.no_grad():
        outputs = [*module.f_and_jacobian(z), *module.observe_and_jacobian(z)]
    outputs = [o.numpy() for o in outputs]
    assume(all(np.isfinite(o).all() and np.abs(o).max() < 1e6 for o in outputs))
    with np.errstate(all="ignore"):
        emitted = [*namespace["f_and_jacobian"](z.numpy(), **params), *namespace["observe_and_jacobian"](z.numpy(), **params)]
    scale = max(1.0, *(np.abs(o).max() for o in outputs))
    for what, actual, expected in zip(("f", "J", "h", "H"), emitted, outputs):
        assert_close(actual, expected, rtol=1e-9, atol=1e-10 * scale, what=f"numpy {what} vs torch of\n{text}")
