"""The backward pass the compiler writes (`rhs_and_jacobian_vjp` and the runtime's adjoint of the
integrator, docs/method.md "The compiled prior"), checked against autograd recording the same forward
operations (`written_backward = False`) and against `torch.autograd.gradcheck`: gradients of f and J
with respect to the state and to every learnable param, for every prior and for random models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_jacobian_properties import random_models

import anmc

ROOT = Path(__file__).resolve().parents[1]
PRIORS = sorted((ROOT / "priors").glob("*.anm")) + sorted((ROOT / "benchmarks" / "priors").glob("*.anm"))


def gradients(module, z, w_f, w_J, written: bool):
    """d/d(z, learnable params) of sum(w_f * f) + sum(w_J * J), by the written backward pass or by autograd."""
    module.written_backward = written
    z = z.clone().requires_grad_()
    params = [p for p in module.parameters() if p.requires_grad]
    f, J = module.f_and_jacobian(z)
    loss = (w_f * f).sum() + (w_J * J).sum()
    grads = torch.autograd.grad(loss, [z, *params], allow_unused=True) if loss.requires_grad else [None] * (1 + len(params))
    module.written_backward = None
    return f.detach(), J.detach(), [torch.zeros_like(x) if g is None else g for g, x in zip(grads, [z, *params])]


def assert_same_gradients(module, z, seed=0):
    gen = torch.Generator().manual_seed(seed)
    d = module.d
    w_f = torch.randn(*z.shape, generator=gen, dtype=z.dtype)
    w_J = torch.randn(*z.shape, d, generator=gen, dtype=z.dtype)
    f1, J1, ours = gradients(module, z, w_f, w_J, written=True)
    f2, J2, ref = gradients(module, z, w_f, w_J, written=False)
    torch.testing.assert_close(f1, f2, rtol=0, atol=0)
    torch.testing.assert_close(J1, J2, rtol=0, atol=0)
    for a, b in zip(ours, ref):
        scale = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * scale)


@pytest.mark.parametrize("path", PRIORS, ids=[p.stem for p in PRIORS])
def test_written_backward_equals_autograd_for_every_prior_and_intervention(path):
    model = anmc.load_model(path)
    for intervention in (None, *model.interventions):
        module = anmc.compile_prior(path, intervention=intervention).module().double()
        z = module.sample_initial(16, generator=torch.Generator().manual_seed(1))
        assert_same_gradients(module, z)


@pytest.mark.parametrize("path", PRIORS, ids=[p.stem for p in PRIORS])
def test_gradcheck_through_state_and_params(path):
    module = anmc.compile_prior(path).module().double()
    z = module.sample_initial(3, generator=torch.Generator().manual_seed(2)).requires_grad_()
    params = [p for p in module.parameters() if p.requires_grad]
    module.written_backward = True
    assert torch.autograd.gradcheck(lambda z: module.f_and_jacobian(z), (z,), eps=1e-6, atol=1e-7)
    if not params:
        return
    names = [n for n, p in module.named_parameters() if p.requires_grad]

    def by_params(*values):
        return _f_and_J(module, names, values, z.detach())

    assert torch.autograd.gradcheck(by_params, tuple(p.detach().clone().requires_grad_() for p in params), eps=1e-6, atol=1e-7)


def _f_and_J(module, names, values, z):
    """f and J with the named params replaced by `values` (tensors that may require grad), through the
    written backward: the module's parameters are swapped for the duration of the call."""
    saved = {n: module._parameters[n] for n in names}
    try:
        for n, v in zip(names, values):
            module._parameters[n] = v
        return module.f_and_jacobian(z)
    finally:
        module._parameters.update(saved)


def graph_nodes(t: torch.Tensor) -> list[str]:
    """The names of the autograd nodes behind t."""
    seen, todo, names = set(), [t.grad_fn], []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        todo += [n for n, _ in node.next_functions]
    return names


def test_the_steps_are_one_autograd_node_for_small_models():
    module = anmc.compile_prior(ROOT / "priors" / "pendulum.anm").module()  # d = 2: written by default
    z = torch.randn(8, 2, requires_grad=True)
    f, J = module.f_and_jacobian(z)
    ours = graph_nodes(J)
    assert ours.count("_FrameAndJacobianBackward") == 1 and len(ours) < 30
    module.written_backward = False
    recorded = graph_nodes(module.f_and_jacobian(z)[1])
    assert "_FrameAndJacobianBackward" not in recorded and len(recorded) > 100
    larger = anmc.compile_prior(ROOT / "benchmarks" / "priors" / "coupled6.anm").module()  # d = 6: recorded by default
    assert "_FrameAndJacobianBackward" not in graph_nodes(larger.f_and_jacobian(torch.randn(8, 6, requires_grad=True))[1])


def test_only_the_params_gradient_when_the_state_needs_none():
    module = anmc.compile_prior(ROOT / "priors" / "pendulum.anm").module().double()
    z = torch.randn(8, 2, dtype=torch.float64)
    module.written_backward = True
    f, J = module.f_and_jacobian(z)
    (g,) = torch.autograd.grad(J.sum() + f.sum(), [module._raw_L])
    module.written_backward = False
    (ref,) = torch.autograd.grad(sum(x.sum() for x in module.f_and_jacobian(z)), [module._raw_L])
    torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-12)


# No shrinking: a failure already prints the model's text.
@settings(
    max_examples=60,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(random_models(), st.integers(0, 2**31 - 1))
def test_random_models_written_backward_equals_autograd(spec, seed):
    text = spec[0]
    module = anmc.compile_prior(text).module().double()
    z = torch.from_numpy(np.random.default_rng(seed).uniform(-1.0, 1.0, size=(6, module.d)))
    with torch.no_grad():
        f, J = module.f_and_jacobian(z)
    if not (torch.isfinite(f).all() and torch.isfinite(J).all() and f.abs().max() < 1e6 and J.abs().max() < 1e6):
        return  # an overflowing random map says nothing about the backward pass
    try:
        assert_same_gradients(module, z, seed % 1000)
    except AssertionError as err:
        raise AssertionError(f"{err}\nfor the model\n{text}") from None


def chain(n: int) -> str:
    """n pendulums coupled to their neighbours by a learnable spring k: k's gradient has 4n - 2 terms."""
    lines = ["model chain", "const g = 9.81", "param L = 1.0 in [0.05, 20] learn", "param k = 2.0 in [0, 50] learn"]
    lines += [f"state {s}{i} ~ Normal(0, 0.5)" for i in range(n) for s in "xv"]
    lines.append("dynamics continuous dt = 1/30 using rk4 steps 2")
    for i in range(n):
        left = f" - k * (x{i} - x{i - 1})" if i > 0 else ""
        right = f" - k * (x{i} - x{i + 1})" if i < n - 1 else ""
        lines += [f"  x{i}' = v{i}", f"  v{i}' = -(g / L) * sin(x{i}){left}{right}"]
    lines += ["noise " + ", ".join(f"x{i} = 0.01, v{i} = 0.05" for i in range(n)), "observe x0"]
    return "\n".join(lines) + "\n"


def test_a_param_in_every_equation_long_sums_are_printed_in_groups():
    prior = anmc.compile_prior(chain(12))
    assert ") + (" in prior.source  # the k-gradient's 46 terms, in groups of at most 32
    module = prior.module().double()
    z = module.sample_initial(4, generator=torch.Generator().manual_seed(3))
    assert_same_gradients(module, z)


@pytest.mark.slow
def test_compile_core_compiles_once_for_every_batch_size():
    """torch.compile of the integration (minutes on a loaded 2-core machine; needs a C++ compiler):
    after compile_core()'s warm-up no batch size from 256 to 65536 compiles a new graph, forward or
    backward, with or without grad, and the values and gradients are the eager ones."""
    torch._dynamo.reset()
    eager = anmc.compile_prior(ROOT / "priors" / "pendulum.anm").module()
    module = anmc.compile_prior(ROOT / "priors" / "pendulum.anm").module().compile_core()
    assert module.compile_seconds > 0
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for B in (256, 1000, 4096, 65536):
        z = torch.randn(B, 2, generator=torch.Generator().manual_seed(B))
        grads = []
        for m in (module, eager):
            zg = z.clone().requires_grad_()
            f, J = m.f_and_jacobian(zg)
            grads.append(torch.autograd.grad(f.sum() + (J**2).sum(), [zg, m._raw_L]))
            with torch.no_grad():
                grads[-1] += m.f_and_jacobian(z)
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize("shape", [(3, 5), (6, 6, 7), (32, 32, 9), (2, 1)])
def test_batch_major_transpose_and_its_backward(shape):
    """f and J leave the integrator batch-major through a 2-D transpose (several times faster than the 3-D
    permute at d = 32) whose backward pass is the reverse transpose: same values, contiguous, exact gradient."""
    from anmc.codegen.runtime import _batch_major

    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    out = _batch_major(x)
    assert out.is_contiguous() and torch.equal(out, x.movedim(-1, 0))
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, g)
    assert gx.is_contiguous() and torch.equal(gx, g.movedim(0, -1))
    if x.numel() <= 512:  # (the (32, 32, 9) case's 9216 columns took 20 s; the exact check above covers it: a permutation)
        assert torch.autograd.gradcheck(_batch_major, (x,))
