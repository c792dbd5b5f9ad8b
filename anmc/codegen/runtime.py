"""The base class of every generated prior module: what is the same for all models.

A generated class (see `anmc compile`) only adds its model's numbers and its `substep` and
`substep_and_jacobian` methods. This base composes substeps into one frame and their Jacobians by
the chain rule, J = J_k(z_{k-1}) ... J_1(z_0), and gives uniform access to parameters, noise and the
initial-frame distribution.

Shapes: z (..., d) -> f (..., d), J (..., d, d); Q = diag(noise_std**2), noise_std (d,).
"""

from __future__ import annotations

import math

import torch
from torch import nn


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

    # ---------------------------------------------------------------- the map
    def substep(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - generated
        raise NotImplementedError

    def substep_and_jacobian(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """One frame of the deterministic map: f(z), shape (..., d)."""
        for _ in range(self.substeps):
            z = self.substep(z)
        return z

    def f_and_jacobian(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f(z) (..., d) and its exact Jacobian df/dz (..., d, d), composed over the substeps."""
        z, J = self.substep_and_jacobian(z)
        for _ in range(self.substeps - 1):
            z, J_k = self.substep_and_jacobian(z)
            J = J_k @ J
        return z, J

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
        """Per-frame noise std (d,): fixed buffers, or exp(log-std) parameters where declared `learn`."""
        parts = []
        for name, learn in zip(self.state_names, self.noise_learnable):
            parts.append(torch.exp(getattr(self, f"_log_sigma_{name}")) if learn else getattr(self, f"_sigma_{name}"))
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
