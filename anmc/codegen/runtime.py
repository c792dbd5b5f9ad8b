"""The base class of every generated prior module: what is the same for all models.

A generated class (see `anmc compile`) adds its model's numbers and three methods:

    constants(z)                           the params cast to z's dtype/device, and their param-only
                                           factors (`-g/L`), once per call
    rhs(*states, *c)                       the right-hand sides F (z' for continuous dynamics, the next
                                           values for discrete ones) at one point
    rhs_and_tangents(*states, *J, *c)      F and its tangents: given the rows J_i = d z_i / d z0 of the
                                           point's Jacobian with respect to the frame's input z0, the
                                           rows dF_i / d z0 = sum_l (dF_i/dz_l) J_l (chain rule)

Each state is a contiguous vector over the (flattened) batch, (B,); each row J_i is (d, B). This base
runs the integrator over them. `f_and_jacobian` starts from J = I and carries the rows through every
stage of every substep (forward-mode differentiation written out), so J is the exact derivative of
the same discrete map `forward` computes: no symbolic expansion of the substeps, no d x d matrix
products, and one tensor operation per term over the whole batch. Inputs and outputs keep the public
layout z (..., d) -> f (..., d), J (..., d, d). Q = diag(noise_std**2), noise_std (d,).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from anmc.lang.integrators import INTEGRATORS

# Explicit Runge-Kutta tableaus as floats, from the language's one table (anmc.lang.integrators): stage
# s > 0 is evaluated at z + h * sum_j a[s-1][j] k_j, and the substep is z + h * sum_s b[s] k_s.
TABLEAUS: dict[str, tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]] = {
    m.name: (tuple(tuple(float(x) for x in row) for row in m.a), tuple(float(x) for x in m.b))
    for m in INTEGRATORS.values()
    if not m.sweep
}


LOG_STD_LIMIT = 20.0  # learnable noise stds live in exp([-20, 20])


_PLANS: dict = {}


def _plan(integrator: str, h: float) -> tuple:
    """The stages of an explicit Runge-Kutta substep of length h: ((a_sj * h for the nonzero a_sj), b_s * h)."""
    key = (integrator, h)
    if key not in _PLANS:
        a, b = TABLEAUS[integrator]
        rows = ((),) + a
        _PLANS[key] = tuple(
            (tuple((j, h * coef) for j, coef in enumerate(row) if coef), h * weight) for row, weight in zip(rows, b)
        )
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
    of x; torch.func's wrapped tensors cannot be written into that way, and take .contiguous()."""
    if x.numel() <= 16 * x.shape[-1] and _plain(x):
        out = x.new_empty((x.shape[-1], *x.shape[:-1]))
        out.movedim(0, -1).copy_(x)
        return out
    return x.movedim(-1, 0).contiguous()


_IDENTITY: dict = {}


def _identity_rows(d: int, dtype, device) -> tuple[torch.Tensor, ...]:
    """The rows of J = I as (d, 1) columns (they broadcast against (d, B) rows); cached, never written to."""
    key = (d, dtype, device)
    if key not in _IDENTITY:
        with torch.inference_mode(False):  # a tensor made in inference mode could never meet autograd later
            _IDENTITY[key] = torch.eye(d, dtype=dtype, device=device).unsqueeze(-1).unbind(0)
    return _IDENTITY[key]


class AnmModule(nn.Module):
    """p(z_t | z_{t-1}) = N(z_t | f(z_{t-1}), diag(noise_std**2)), f = `substeps` substeps of the integrator."""

    model_name: str = ""
    state_names: tuple[str, ...] = ()
    observed_states: tuple[str, ...] = ()
    param_names: tuple[str, ...] = ()
    learnable_param_names: tuple[str, ...] = ()
    param_bounds: dict[str, tuple[float, float]] = {}
    noise_learnable: tuple[bool, ...] = ()
    initial_kinds: tuple[str, ...] = ()  # "Normal" (initial_a = mean, initial_b = sd) or "Uniform" (low, high)
    dt: float = 1.0
    substeps: int = 1
    integrator: str = ""

    # ---------------------------------------------------------------- generated
    def constants(self, z: torch.Tensor) -> tuple:  # pragma: no cover - generated
        raise NotImplementedError

    def rhs(self, *args) -> tuple:  # pragma: no cover - generated
        raise NotImplementedError

    def rhs_and_tangents(self, *args) -> tuple[tuple, tuple]:  # pragma: no cover - generated
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
        few fused, vectorized loops over the batch instead of one tensor operation per term (several
        times faster on CPU). The layout changes around it stay eager: inductor does not vectorize
        across them. The first call for each input shape and dtype compiles (seconds; a C++ compiler
        is needed), and torch._dynamo's recompile limit applies across all modules, which share the
        compiled methods. `compile_core(off=True)` switches back. Returns the module."""
        if options.pop("off", False):
            self.__dict__.pop("_compiled_core", None)
            return self
        self.__dict__["_compiled_core"] = (
            torch.compile(self._frame, **options),
            torch.compile(self._frame_and_jacobian, **options),
        )
        return self

    def _core(self):
        return self.__dict__.get("_compiled_core") or (self._frame, self._frame_and_jacobian)

    # ---------------------------------------------------------------- state-major core
    def _state_major(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., d) -> (d, B) with each state one contiguous vector over the flattened batch."""
        if z.shape[-1:] != (self.d,):
            raise ValueError(f"expected z of shape (..., {self.d}) for states {self.state_names}, got {tuple(z.shape)}")
        return torch.stack(z.reshape(-1, self.d).unbind(-1), 0)  # (much faster than .mT.contiguous() on CPU)

    def _frame(self, zt: torch.Tensor, steps: int) -> torch.Tensor:
        """`steps` substeps of (d, B) states -> (d, B)."""
        zs, c = zt.unbind(0), self.constants(zt)
        for _ in range(steps):
            zs, _ = self._step(zs, None, c)
        return torch.stack(self._full(zs, zt[0]), 0)

    def _frame_and_jacobian(self, zt: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`steps` substeps of (d, B) states and the Jacobian rows carried along: ((d, B), (d, d, B))."""
        zs, c = zt.unbind(0), self.constants(zt)
        js = _identity_rows(self.d, zt.dtype, zt.device)
        for _ in range(steps):
            zs, js = self._step(zs, js, c)
        return torch.stack(self._full(zs, zt[0]), 0), torch.stack(self._full(js, zt), 0)

    @staticmethod
    def _full(parts, like: torch.Tensor) -> list[torch.Tensor]:
        """Each part with the shape of `like` (a part the map leaves constant may be a number or (d, 1))."""
        if all(isinstance(p, torch.Tensor) and p.shape == like.shape for p in parts):
            return list(parts)
        zero = torch.zeros_like(like)
        return [p if isinstance(p, torch.Tensor) and p.shape == like.shape else zero + p for p in parts]

    # ---------------------------------------------------------------- integrators
    def _step(self, zs, js, c):
        """One substep of the states zs (and of the Jacobian rows js when given)."""
        if self.integrator == "discrete":
            return (self.rhs(*zs, *c), None) if js is None else self.rhs_and_tangents(*zs, *js, *c)
        if self.integrator == "semi_implicit_euler":
            return self._semi_implicit_euler(zs, js, c, self.dt / self.substeps)
        add = torch.add
        ks, dks = [], []
        out_z, out_j = zs, js
        for inputs, weight in _plan(self.integrator, self.dt / self.substeps):
            y, t = zs, js
            for j, alpha in inputs:  # the stage's point: z + h sum_j a_sj k_j
                y = [add(a, b, alpha=alpha) for a, b in zip(y, ks[j])]
                if js is not None:
                    t = [add(a, b, alpha=alpha) for a, b in zip(t, dks[j])]
            if js is None:
                k, dk = self.rhs(*y, *c), None
            else:
                k, dk = self.rhs_and_tangents(*y, *t, *c)
            ks.append(k)
            dks.append(dk)
            if weight:  # the substep's sum: z + h sum_s b_s k_s
                out_z = [add(a, b, alpha=weight) for a, b in zip(out_z, k)]
                if js is not None:
                    out_j = [add(a, b, alpha=weight) for a, b in zip(out_j, dk)]
        return out_z, out_j

    def _semi_implicit_euler(self, zs, js, c, h):
        """x_i <- x_i + h F_i(x_1', ..., x_{i-1}', x_i, ...), one state at a time in declaration order."""
        zs, js = list(zs), (list(js) if js is not None else None)
        for i in range(self.d):
            if js is None:
                zs[i] = torch.add(zs[i], self.rhs(*zs, *c)[i], alpha=h)
            else:
                k, dk = self.rhs_and_tangents(*zs, *js, *c)
                zs[i] = torch.add(zs[i], k[i], alpha=h)
                js[i] = torch.add(js[i], dk[i], alpha=h)
        return zs, js

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
        (the log-std clamped to [-20, 20])."""
        parts = []
        for name, learn in zip(self.state_names, self.noise_learnable):
            if learn:  # clamped so that no optimizer step can reach 0 or inf (std in [2e-9, 5e8])
                parts.append(torch.exp(getattr(self, f"_log_sigma_{name}").clamp(-LOG_STD_LIMIT, LOG_STD_LIMIT)))
            else:
                parts.append(getattr(self, f"_sigma_{name}"))
        return torch.stack(parts)

    @torch.no_grad()
    def set_noise_std(self, name: str, value: float) -> None:
        i = self.state_names.index(name)
        if self.noise_learnable[i]:
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
