"""The base class of every generated prior module: what is the same for all models.

A generated class (see `anmc compile`) adds its model's numbers and six methods:

    constants(z)                            the params cast to z's dtype/device, and their param-only
                                            factors (`-g/L`), once per call: the scalars c
    rhs(z, *c)                              the right-hand sides F (z' for continuous dynamics, the
                                            next values for discrete ones) at the points z (d, B)
    rhs_and_tangents(S, *c)                 F and its tangents at packed points S (1 + d, d, B): S[0] = z,
                                            S[1 + l] = J_l = d z_l / d z0, the rows of the points'
                                            Jacobian with respect to the frame's input z0; returns F and
                                            the rows dF_i / d z0 = sum_l (dF_i/dz_l) J_l packed the same way
    rhs_and_tangents_vjp(S, gS, *c)         the backward pass of rhs_and_tangents (docs/method.md §8)
    rhs_and_partials(z, *c)                 F and the nonzero entries of dF/dz (`jacobian_pattern`), for
                                            tangent rows kept inside their windows of columns in sparse
                                            models (anmc.codegen.windowed)
    rhs_and_partials_vjp(z, gF, P, *c)      the backward pass of those windowed rows' stage

States are stacked, (d, B) over the flattened batch, and packed with their tangent rows (1 + d, d, B).
This base runs the integrator over them. `f_and_jacobian` starts from J = I and carries the rows through
every stage of every substep (forward-mode differentiation written out), so J is the exact derivative
of the same discrete map `forward` computes. Where autograd would record it (a learnable param or the input
requires grad), the whole frame is one autograd node whose backward pass runs the stages in reverse
through `rhs_and_tangents_vjp`. Large sparse models carry each row over its window of columns instead
(`_windowed` says when). Inputs and outputs keep the public layout z (..., d) -> f (..., d),
J (..., d, d). Q = diag(noise_std**2), noise_std (d,).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from anmc.codegen import windowed
from anmc.lang.integrators import INTEGRATORS

# Explicit Runge-Kutta tableaus as floats, from the language's one table (anmc.lang.integrators): stage
# s > 0 is evaluated at z + h * sum_j a[s-1][j] k_j, and the substep is z + h * sum_s b[s] k_s.
TABLEAUS: dict[str, tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]] = {
    m.name: (tuple(tuple(float(x) for x in row) for row in m.a), tuple(float(x) for x in m.b))
    for m in INTEGRATORS.values()
    if not m.sweep
}


# f_and_jacobian's tangent rows are windowed by default on the CPU where the windows spare at least this many
# entries per stage, d^2 (1 - share) B with the share from `window_share`: without a graph to record, and where
# autograd records the frame and the windows' written backward pass applies (measured on the pendulum, the
# double pendulum, 6 coupled masses and chains of 4 to 16 pendulums at B = 256 to 4096: below these the
# windows' extra operations cost more than they spare; docs/results.md §4)
WINDOWED_MIN_SPARED = 400_000
WINDOWED_MIN_SPARED_RECORDED = 40_000

LOG_STD_LIMIT = 20.0  # learnable noise stds live in exp([-20, 20])


_PLANS: dict = {}


def _plan(integrator: str, h: float) -> tuple:
    """The stages of an explicit Runge-Kutta substep of length h: ((a_sj * h for the nonzero a_sj), b_s * h)."""
    key = (integrator, h)
    compiling = torch.compiler.is_compiling()  # under torch.compile a lookup would become a guard: no cache
    if compiling or key not in _PLANS:
        a, b = TABLEAUS[integrator]
        rows = ((),) + a
        plan = tuple((tuple((j, h * coef) for j, coef in enumerate(row) if coef), h * weight) for row, weight in zip(rows, b))
        if compiling:
            return plan
        _PLANS[key] = plan
    return _PLANS[key]


def _plain(z: torch.Tensor) -> bool:
    """Not a tensor wrapped by torch.func (vmap, grad, jacrev...), nor traced by torch.compile."""
    if torch.compiler.is_compiling():
        return False
    try:
        return not torch._C._functorch.is_functorch_wrapped_tensor(z)
    except AttributeError:  # pragma: no cover - an older torch
        return False


def _batch_major(x: torch.Tensor) -> torch.Tensor:
    """(d, B) -> (B, d) or (d, d, B) -> (B, d, d), contiguous. For a few leading entries, writing through
    a permuted view of the result is several times faster on CPU than .contiguous() of a permuted view
    of x; for more, a transpose of x flattened to 2-D is (d = 32, B = 4096: 4.5 ms against 22-29 ms for
    the 3-D permute), and its backward pass is one too, so the cotangent reaches the integrator's backward
    pass contiguous (a permuted one made every operation of it several times slower). torch.func's
    wrapped tensors and torch.compile's traces take .contiguous() of a permuted view."""
    if not _plain(x):
        return x.movedim(-1, 0).contiguous()
    if x.numel() <= 16 * x.shape[-1]:
        out = x.new_empty((x.shape[-1], *x.shape[:-1]))
        out.movedim(0, -1).copy_(x)
        return out
    return _Transpose.apply(x)


def _flat_transpose(x: torch.Tensor, to_front: bool) -> torch.Tensor:
    """x (..., B) -> (B, ...) (to_front) or x (B, ...) -> (..., B), contiguous, through a 2-D transpose."""
    if to_front:
        return x.reshape(-1, x.shape[-1]).t().contiguous().view(x.shape[-1], *x.shape[:-1])
    return x.reshape(x.shape[0], -1).t().contiguous().view(*x.shape[1:], x.shape[0])


class _Transpose(torch.autograd.Function):
    """`_flat_transpose` moving the last dimension to the front, with the reverse as its backward pass."""

    @staticmethod
    def forward(ctx, x):
        return _flat_transpose(x, True)

    @staticmethod
    def backward(ctx, g):
        return _flat_transpose(g, False)


_CACHE: dict = {}


def constant_tensor(key, make):
    """A small tensor made once per key (what, its sizes, dtype, device; one cache for all callers, so the
    first item names the caller's use) and never written to (index tables, J = I).
    Under torch.compile it is made afresh: a lookup would become a guard that fails once the entry exists."""
    if torch.compiler.is_compiling():
        return make()
    if key not in _CACHE:
        with torch.inference_mode(False):  # a tensor made in inference mode could never meet autograd later
            _CACHE[key] = make()
    return _CACHE[key]


class _Core:
    """The integrator over stacked states: the points z (d, B) alone, or (`packed`) z with its tangent rows
    in one tensor S (1 + d, d, B), S[0] = z and S[1 + i] = d z_i / d z0, so that each of the integrator's
    linear combinations moves both in one operation.

    Each evaluation of the right-hand sides at a packed point (y, t) gives (k, dk) = (F(y), A(y) t)
    packed the same way (the generated `rhs_and_tangents`). With a `tape`, each evaluation's point is
    kept, and `substep_backward` runs the stages in reverse: the generated `rhs_and_tangents_vjp` turns
    the cotangent of a stage's (k, dk) into that of its (y, t) and of the learnable scalars, and the
    integrator's linear combinations are transposed here (docs/method.md, "The compiled prior").
    """

    def __init__(self, module: "AnmModule", scalars: tuple, packed: bool):
        self.m = module
        self.scalars = scalars
        self.packed = packed

    def evaluate(self, x, tape):
        """F at the points x, or F and its tangents at packed points (recorded on `tape` when given)."""
        if not self.packed:
            return self.m.rhs(x, *self.scalars)
        if tape is not None:
            tape.append(x)
        return self.m.rhs_and_tangents(x, *self.scalars)

    def vjp(self, x, g, acc: list):
        """The cotangent of a stage's packed point from that of its packed (k, dk); the scalars' pointwise
        gradients are appended to `acc` (summed once, at the end of the backward pass)."""
        gx, gs = self.m.rhs_and_tangents_vjp(x, g, *self.scalars)
        acc.append(gs)
        return gx

    def _rows_of_state(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Where state i lives in packed points flattened to ((1 + d) d, B): its value, then its tangent row."""
        d = self.m.d
        return constant_tensor(("state rows", i, d, x.device), lambda: torch.tensor([i, *range((1 + i) * d, (2 + i) * d)], device=x.device))

    # ---------------------------------------------------------------- integrators, forward
    def substep(self, x, tape):
        """One substep of the points x (d, B), or of packed points and their tangent rows (1 + d, d, B)."""
        m = self.m
        if m.integrator == "discrete":
            return self.evaluate(x, tape)
        if m.integrator == "semi_implicit_euler":
            h = m.dt / m.substeps
            for i in range(m.d):  # x_i <- x_i + h F_i(x_1', ..., x_{i-1}', x_i, ...)
                k = self.evaluate(x, tape)
                if self.packed:  # the value z_i and its tangent row together
                    rows = self._rows_of_state(i, x)
                    x = torch.index_add(x.flatten(0, 1), 0, rows, k.flatten(0, 1).index_select(0, rows), alpha=h).view(x.shape)
                else:
                    index = constant_tensor(("index", i, x.device), lambda: torch.tensor([i], device=x.device))
                    x = torch.index_add(x, 0, index, k.narrow(0, i, 1), alpha=h)
            return x
        ks = []
        out = x
        # the sums are accumulated in place once they are tensors of their own (twice as fast as a fresh
        # tensor per term at d = 32: no allocation, no write-allocate); not under torch.func or torch.compile
        own = _plain(x)
        for inputs, weight in _plan(m.integrator, m.dt / m.substeps):
            y = x
            for j, alpha in inputs:  # the stage's point: x + h sum_j a_sj k_j
                y = _accumulate(y, ks[j], alpha, own and y is not x)
            k = self.evaluate(y, tape)
            ks.append(k)
            if weight:  # the substep's sum: x + h sum_s b_s k_s
                out = _accumulate(out, k, weight, own and out is not x)
        return out

    # ---------------------------------------------------------------- integrators, backward
    def substep_backward(self, tape, g, acc):
        """The adjoint of `substep` (packed) from its stages (`tape`: an iterator over the recorded stages, last first)."""
        m = self.m
        if m.integrator == "discrete":
            return self.vjp(next(tape), g, acc)
        if m.integrator == "semi_implicit_euler":
            h = m.dt / m.substeps
            for i in reversed(range(m.d)):
                mask = constant_tensor(("state mask", i, m.d, h, g.dtype, g.device), lambda: _state_mask(i, m.d, h, g))
                gx = self.vjp(next(tape), g * mask, acc)
                g = g + gx
            return g
        plan = _plan(m.integrator, m.dt / m.substeps)
        acc_k: list = [None] * len(plan)  # sum_{r>s} a_rs gy_r, accumulated in place (fresh tensors we own)
        g_in = None
        for s in reversed(range(len(plan))):
            weight = plan[s][1]  # the stage's cotangent: b_s times the substep's, plus what later stages add
            gy = self.vjp(next(tape), _axpy(acc_k[s], g, weight), acc)
            g_in = g + gy if g_in is None else g_in.add_(gy)
            for j, alpha in plan[s][0]:  # y_s = x + h sum_j a_sj k_j
                acc_k[j] = gy * alpha if acc_k[j] is None else acc_k[j].add_(gy, alpha=alpha)
        return g_in


def _state_mask(i: int, d: int, h: float, like: torch.Tensor) -> torch.Tensor:
    """h at state i's value and tangent row of packed points, 0 elsewhere: (1 + d, d, 1)."""
    mask = torch.zeros(1 + d, d, 1, dtype=like.dtype, device=like.device)
    mask[0, i] = h
    mask[1 + i] = h
    return mask


def _accumulate(acc, x, alpha, in_place: bool):
    """acc + alpha * x, written into acc when it is a tensor of the integrator's own (`in_place`)."""
    return acc.add_(x, alpha=alpha) if in_place else torch.add(acc, x, alpha=alpha)


def _axpy(acc, x, weight):
    """acc + weight * x, into acc when there is one (a tensor of the backward pass's own)."""
    if acc is None:
        return x * weight
    return acc.add_(x, alpha=weight) if weight else acc


class _FrameAndJacobian(torch.autograd.Function):
    """f and J of `steps` substeps, with the backward pass written out (`_Core.substep_backward`): the
    forward records no graph, and the backward costs about as much as the forward."""

    @staticmethod
    def forward(ctx, module, steps, zt, *scalars):
        core = _Core(module, scalars, packed=True)
        tape: list = []
        x = module._packed_identity(zt)
        for _ in range(steps):
            x = core.substep(x, tape)
        ctx.core, ctx.tape, ctx.steps = core, tape, steps
        ctx.grads = ctx.needs_input_grad[3:]
        ctx.save_for_backward(*(s for s in scalars if isinstance(s, torch.Tensor)))  # (checks they stay unchanged)
        return x[0], x[1:]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gz, gT):
        core, tape = ctx.core, reversed(ctx.tape)
        ctx.saved_tensors  # noqa: B018 - raises if a param was changed in place since the forward pass
        acc: list = []
        g = torch.cat((gz.unsqueeze(0), gT))
        for _ in range(ctx.steps):
            g = core.substep_backward(tape, g, acc)
        scalars = [None] * len(core.scalars)
        for index, grads in zip(core.m.scalar_grads, zip(*acc)):  # the scalar's pointwise gradient at each stage
            if ctx.grads[index]:
                scalars[index] = torch.stack(grads).sum().reshape(core.scalars[index].shape)
        return None, None, g[0], *scalars


class AnmModule(nn.Module):
    """p(z_t | z_{t-1}) = N(z_t | f(z_{t-1}), diag(noise_std**2)), f = `substeps` substeps of the integrator."""

    model_name: str = ""
    state_names: tuple[str, ...] = ()
    observed_states: tuple[str, ...] = ()  # the states the observations depend on
    # what a frame shows: the names of the observation function h's outputs (`observe NAME = EXPR` or
    # `observe theta`); empty means one observation per observed state, h(z) = z[observed_index]
    observation_names: tuple[str, ...] = ()
    observation_affine: bool = True  # h affine in the states (a selection is): H does not depend on z
    transition_affine: bool = False  # f affine in the states: J does not depend on z (False: assume not)
    param_names: tuple[str, ...] = ()
    learnable_param_names: tuple[str, ...] = ()
    param_bounds: dict[str, tuple[float, float]] = {}
    noise_learnable: tuple[bool, ...] = ()
    noise_bounds: dict[str, tuple[float, float]] = {}  # learnable stds declared `in [lo, hi]`
    initial_kinds: tuple[str, ...] = ()  # "Normal" (initial_a = mean, initial_b = sd) or "Uniform" (low, high)
    dt: float = 1.0
    substeps: int = 1
    integrator: str = ""

    scalar_grads: tuple[int, ...] = ()  # which of constants()'s scalars learnable params reach
    # f_and_jacobian's backward pass: True, the written one (one autograd node); False, autograd recording
    # the steps' operations; None, the one measured faster for the model's size: written for d <= 2, where
    # the call is bound by dispatch (pendulum, forward + backward 0.86x autograd's time), recorded above,
    # where it is bound by memory and autograd's reuse of saved values wins (d = 4..32: 1.05-1.5x;
    # docs/results.md §4)
    written_backward: bool | None = None
    # the nonzero (i, j) of dF/dz, as the generated `rhs_and_partials` returns them
    jacobian_pattern: tuple[tuple[int, int], ...] | None = None
    # f_and_jacobian's tangent rows: True, each inside its window of columns (anmc.codegen.windowed); False,
    # dense; None, windowed where that was measured faster (on the CPU, large sparse models at large batches:
    # `_windowed`, docs/results.md §4). Windowed rows have a written backward pass of their own (explicit
    # stages and discrete maps), unless written_backward is False
    windowed_tangents: bool | None = None

    # ---------------------------------------------------------------- generated
    def constants(self, z: torch.Tensor) -> tuple:  # pragma: no cover - generated
        raise NotImplementedError

    def rhs(self, z, *scalars) -> torch.Tensor:  # pragma: no cover - generated
        raise NotImplementedError

    def rhs_and_tangents(self, S, *scalars) -> torch.Tensor:  # pragma: no cover - generated
        raise NotImplementedError

    def rhs_and_tangents_vjp(self, S, gS, *scalars) -> tuple:  # pragma: no cover - generated
        raise NotImplementedError

    # ---------------------------------------------------------------- the map
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """One frame of the deterministic map: f(z), shape (..., d)."""
        f = self._core()[0](self._state_major(z), self.substeps)
        return _batch_major(f).reshape(z.shape)

    def f_and_jacobian(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f(z) (..., d) and its exact Jacobian df/dz (..., d, d), carried through every substep."""
        f, J = self._core()[1](self._state_major(z), self.substeps)
        return _batch_major(f).reshape(z.shape), _batch_major(J).reshape(*z.shape, self.d)

    def substep(self, z: torch.Tensor) -> torch.Tensor:
        """One substep of the integrator (h = dt / substeps): (..., d) -> (..., d)."""
        return _batch_major(self._frame(self._state_major(z), 1)).reshape(z.shape)

    def substep_and_jacobian(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One substep and its exact Jacobian: (..., d) -> ((..., d), (..., d, d))."""
        f, J = self._frame_and_jacobian(self._state_major(z), 1)
        return _batch_major(f).reshape(z.shape), _batch_major(J).reshape(*z.shape, self.d)

    def compile_core(self, **options) -> "AnmModule":
        """Opt in to `torch.compile` (options passed on) for the integration itself, which then runs as a
        few fused, vectorized loops over the batch instead of one tensor operation per term. The batch
        dimension is marked unbacked-dynamic, so one compilation serves every batch size from 2 up (no
        recompiles from 256 to 65536), and the forward and backward graphs are compiled here, once, by
        warm-up calls (with the learnable params' gradient, as training runs it, and without);
        `compile_seconds` says how long that took. A C++ compiler is needed. `compile_core(off=True)`
        switches back. Returns the module.

        Why these settings (docs/results.md §4, measured): `dynamic=True` would also make every Python
        number symbolic (dt, the substep count), and specializing them afterwards restarted the whole
        trace, ~15 s of a cold compile; and a batch dimension that is merely dynamic is compiled twice,
        since inductor's CPU sum over the batch (a learnable param's gradient) guards on size <= 4096 to
        choose a chunked accumulator. An unbacked size has no such branch to guard on."""
        if options.pop("off", False):
            self.__dict__.pop("_compiled_core", None)
            return self
        options.setdefault("dynamic", None)
        start = time.perf_counter()
        self.__dict__["_compiled_core"] = (torch.compile(self._frame, **options), torch.compile(self._frame_and_jacobian, **options))
        ref = next(iter(self.buffers()), None)
        z = torch.zeros(8, self.d, dtype=ref.dtype if ref is not None else None, device=ref.device if ref is not None else None)
        with torch.enable_grad():
            f, J = self.f_and_jacobian(z.requires_grad_())
            (f.sum() + J.sum()).backward()
        self.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.f_and_jacobian(z)
            self(z)
        self.compile_seconds = time.perf_counter() - start
        return self

    def _core(self):
        return self.__dict__.get("_compiled_core") or (self._frame, self._frame_and_jacobian)

    # ---------------------------------------------------------------- state-major core
    def _state_major(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., d) -> (d, B) with each state one contiguous vector over the flattened batch."""
        if z.shape[-1:] != (self.d,):
            raise ValueError(f"expected z of shape (..., {self.d}) for states {self.state_names}, got {tuple(z.shape)}")
        zt = torch.stack(z.reshape(-1, self.d).unbind(-1), 0)  # (much faster than .mT.contiguous() on CPU)
        if "_compiled_core" in self.__dict__ and zt.shape[1] > 1:
            torch._dynamo.decorators.mark_unbacked(zt, 1)  # one graph for every batch size (compile_core)
        return zt

    def _packed_identity(self, zt: torch.Tensor) -> torch.Tensor:
        """The points zt (d, B) packed with J = I as their tangent rows: (1 + d, d, B)."""
        d = self.d
        eye = constant_tensor(("eye", d, zt.dtype, zt.device), lambda: torch.eye(d, dtype=zt.dtype, device=zt.device).unsqueeze(-1))
        return torch.cat((zt.unsqueeze(0), eye.expand(d, d, zt.shape[-1])))

    def _frame(self, zt: torch.Tensor, steps: int) -> torch.Tensor:
        """`steps` substeps of (d, B) states -> (d, B)."""
        core = _Core(self, self.constants(zt), packed=False)
        for _ in range(steps):
            zt = core.substep(zt, None)
        return zt

    def _frame_and_jacobian(self, zt: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`steps` substeps of (d, B) states and the Jacobian rows carried along: ((d, B), (d, d, B)). Where
        autograd would record the steps, one autograd node with the written-out backward pass does instead."""
        scalars = self.constants(zt)
        plain = _plain(zt)
        recorded = torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in (zt, *scalars))
        if plain and self._windowed(zt, recorded):
            plan = self._stages()
            if recorded and self.written_backward is not False and self.integrator != "semi_implicit_euler":
                return windowed.WindowedFrame.apply(self, steps, plan, zt, *scalars)
            return windowed.frame_and_jacobian(self, zt, steps, scalars, plan)
        written = self.written_backward if self.written_backward is not None else self.d <= 2
        if written and recorded and plain:
            return _FrameAndJacobian.apply(self, steps, zt, *scalars)
        core = _Core(self, scalars, packed=True)
        x = self._packed_identity(zt)
        for _ in range(steps):
            x = core.substep(x, None)
        return x[0], x[1:]

    def _stages(self):
        """The explicit Runge-Kutta stages of a substep (`_plan`), or None for a discrete map or semi-implicit Euler."""
        return None if self.integrator in ("discrete", "semi_implicit_euler") else _plan(self.integrator, self.dt / self.substeps)

    def _windowed(self, zt: torch.Tensor, recorded: bool) -> bool:
        """Whether f_and_jacobian carries the tangent rows of the points zt (d, B) inside their windows
        (`windowed_tangents`; never without the generated `rhs_and_partials`). By default, on the CPU, where
        the windows spare enough work to pay for their extra operations: WINDOWED_MIN_SPARED entries per
        stage, or WINDOWED_MIN_SPARED_RECORDED where autograd records the frame and the windows' written
        backward pass applies (explicit stages, discrete maps)."""
        if self.jacobian_pattern is None:
            return False
        if self.windowed_tangents is not None:
            return self.windowed_tangents
        if zt.device.type != "cpu":  # (measured on the CPU only)
            return False
        written = recorded and self.written_backward is not False and self.integrator != "semi_implicit_euler"
        spared = self.d * self.d * (1.0 - self.window_share()) * zt.shape[-1]
        return spared >= (WINDOWED_MIN_SPARED_RECORDED if written else WINDOWED_MIN_SPARED)

    def window_share(self) -> float:
        """The share of the dense tangent rows' entries that their windows hold over a frame (1.0: dense;
        anmc.codegen.windowed). Once per class."""
        cls = type(self)
        if "_window_share" not in cls.__dict__:
            if self.jacobian_pattern is None:
                share = 1.0
            else:
                share = windowed.window_share(self.jacobian_pattern, self.d, self.integrator, self._stages(), self.substeps)
            cls._window_share = share
        return cls._window_share

    def rollout(self, z0: torch.Tensor, frames: int, noise: bool = False, generator=None) -> torch.Tensor:
        """z_0 .. z_{frames-1} from z0 (..., d): shape (..., frames, d); with `noise`, z_t = f(z_{t-1}) + eps."""
        out = [z0]
        for _ in range(frames - 1):
            z = self(out[-1])
            if noise:
                eps = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
                z = z + eps * self.noise_std.to(z)
            out.append(z)
        return torch.stack(out, dim=-2)

    # ---------------------------------------------------------------- what a frame shows
    def observe(self, z: torch.Tensor) -> torch.Tensor:
        """The observation function h(z): states (..., d) -> observed quantities (..., m), m =
        len(self.observations). The default picks the observed states; a module compiled from `observe
        NAME = EXPR` lines overrides it with the generated h."""
        return z[..., list(self.observed_index)]

    def observe_and_jacobian(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h(z) (..., m) and its exact Jacobian H = dh/dz (..., m, d). The default is the selection of
        the observed states (rows of the identity)."""
        pick = torch.eye(self.d, dtype=z.dtype, device=z.device)[list(self.observed_index)]
        return self.observe(z), pick.expand(*z.shape[:-1], *pick.shape)

    @property
    def observations(self) -> tuple[str, ...]:
        """The names of h's outputs, in order (the observed states' names when h picks states)."""
        return tuple(self.observation_names) or tuple(self.observed_states)

    @torch.no_grad()
    def observation_moments(self, n: int = 4096, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (m,) of h(z) under the initial distribution, from n draws of a fixed seed: the
        scale in which the encoder reports the observed quantities and the decoder reads them."""
        generator = torch.Generator(device=self.initial_a.device).manual_seed(seed)
        y = self.observe(self.sample_initial(n, generator))
        return y.mean(0), y.std(0).clamp_min(1e-6 * (1.0 + y.mean(0).abs()))

    def start(self, z: torch.Tensor) -> torch.Tensor:
        """Transform an encoded starting state (an intervention's `start` lines); the identity by default."""
        return z

    # ---------------------------------------------------------------- shapes and names
    @property
    def d(self) -> int:
        return len(self.state_names)

    @property
    def observed_index(self) -> tuple[int, ...]:
        return tuple(self.state_names.index(s) for s in self.observed_states)

    # ---------------------------------------------------------------- parameters
    def param(self, name: str) -> torch.Tensor:
        """The constrained value of a param: lo + (hi - lo) sigmoid(raw) if learnable and bounded,
        raw if learnable and unbounded, the fixed buffer otherwise."""
        if name in self.learnable_param_names:
            raw = getattr(self, f"_raw_{name}")
            if name in self.param_bounds:
                lo, hi = self.param_bounds[name]
                return torch.sigmoid(raw) * (hi - lo) + lo
            return raw
        if name in self.param_names:
            return getattr(self, f"_fixed_{name}")
        raise KeyError(f"unknown param '{name}'; the model has {', '.join(self.param_names) or 'none'}")

    def param_values(self) -> dict[str, torch.Tensor]:
        return {name: self.param(name) for name in self.param_names}

    @torch.no_grad()
    def set_param(self, name: str, value: float) -> None:
        """Overwrite a param's value (inverting the sigmoid for a bounded learnable one)."""
        if name in self.learnable_param_names:
            raw = getattr(self, f"_raw_{name}")
            if name in self.param_bounds:
                lo, hi = self.param_bounds[name]
                u = min(max((float(value) - lo) / (hi - lo), 1e-6), 1 - 1e-6)
                raw.fill_(math.log(u / (1 - u)))
            else:
                raw.fill_(float(value))
        else:
            self.param(name).fill_(float(value))

    # ---------------------------------------------------------------- noise
    @property
    def noise_std(self) -> torch.Tensor:
        """Per-frame noise std (d,): fixed buffers, or exp(log-std) parameters where declared `learn`
        (the log-std clamped to [-20, 20]); a learnable std declared `in [lo, hi]` is
        lo (hi/lo)^sigmoid(raw), inside its bounds on a log scale."""
        parts = []
        for name, learn in zip(self.state_names, self.noise_learnable):
            if name in self.noise_bounds:
                lo, hi = self.noise_bounds[name]
                raw = getattr(self, f"_logit_sigma_{name}")
                parts.append(torch.exp(math.log(lo) + math.log(hi / lo) * torch.sigmoid(raw)))
            elif learn:  # clamped so that no optimizer step can reach 0 or inf (std in [2e-9, 5e8])
                parts.append(torch.exp(getattr(self, f"_log_sigma_{name}").clamp(-LOG_STD_LIMIT, LOG_STD_LIMIT)))
            else:
                parts.append(getattr(self, f"_sigma_{name}"))
        return torch.stack(parts)

    @torch.no_grad()
    def set_noise_std(self, name: str, value: float) -> None:
        i = self.state_names.index(name)
        if name in self.noise_bounds:  # kept inside the bounds: a value on or beyond one goes just inside
            lo, hi = self.noise_bounds[name]
            u = min(max((math.log(value) - math.log(lo)) / math.log(hi / lo), 1e-6), 1 - 1e-6) if value > 0 else 1e-6
            getattr(self, f"_logit_sigma_{name}").fill_(math.log(u / (1 - u)))
        elif self.noise_learnable[i]:
            getattr(self, f"_log_sigma_{name}").fill_(math.log(value))
        else:
            getattr(self, f"_sigma_{name}").fill_(float(value))

    # ---------------------------------------------------------------- the initial-frame prior
    @property
    def initial_mean(self) -> torch.Tensor:
        """Mean of the initial-frame distribution (d,) (midpoint for a Uniform)."""
        normal = self._normal_mask()
        return torch.where(normal, self.initial_a, (self.initial_a + self.initial_b) / 2)

    @property
    def initial_std(self) -> torch.Tensor:
        """Std of the initial-frame distribution (d,) ((high - low)/sqrt(12) for a Uniform)."""
        normal = self._normal_mask()
        return torch.where(normal, self.initial_b, (self.initial_b - self.initial_a) / math.sqrt(12.0))

    def _normal_mask(self) -> torch.Tensor:
        return torch.tensor([k == "Normal" for k in self.initial_kinds], device=self.initial_a.device)

    def sample_initial(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws (n, d) from the declared initial distributions (Normal or Uniform per state)."""
        a, b = self.initial_a, self.initial_b
        eps = torch.randn((n, self.d), generator=generator, dtype=a.dtype, device=a.device)
        u = torch.rand((n, self.d), generator=generator, dtype=a.dtype, device=a.device)
        return torch.where(self._normal_mask(), a + b * eps, a + (b - a) * u)

    def extra_repr(self) -> str:
        return f"states={self.state_names}, observed={self.observed_states}, dt={self.dt:g}, {self.integrator} x{self.substeps}"
