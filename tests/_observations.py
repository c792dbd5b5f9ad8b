"""Test helper: a compiled prior module given another observation function h (what `observe NAME = EXPR`
lines generate), by subclassing its class, with h and its Jacobian H written out by hand so that the
tests check the smoother and the VAE against an h they did not derive."""

from __future__ import annotations

import torch


def observed_through(module, names, observe, jacobian):
    """`module` (changed in place and returned) with h(z) = observe(module, z) (..., m) and
    H = jacobian(module, z) (..., m, d): observation_names, observe and observe_and_jacobian overridden."""
    base = type(module)
    cls = type(
        f"{base.__name__}Observed",
        (base,),
        {
            "observation_names": tuple(names),
            "observe": lambda self, z: observe(self, z),
            "observe_and_jacobian": lambda self, z: (observe(self, z), jacobian(self, z)),
        },
    )
    module.__class__ = cls
    return module


def linear(module, names, matrix, offset):
    """h(z) = matrix z + offset, matrix (m, d), offset (m,)."""
    def observe(self, z):
        return z @ matrix.to(z).mT + offset.to(z)

    def jacobian(self, z):
        return matrix.to(z).expand(*z.shape[:-1], *matrix.shape)

    return observed_through(module, names, observe, jacobian)


def circle(module, state="phase"):
    """h(z) = (cos z_i, sin z_i) for the state `state`: a point on the unit circle, as a frame of a
    spinning object shows it."""
    i = module.state_names.index(state)

    def observe(self, z):
        return torch.stack([torch.cos(z[..., i]), torch.sin(z[..., i])], -1)

    def jacobian(self, z):
        out = z.new_zeros(*z.shape[:-1], 2, z.shape[-1])
        out[..., 0, i] = -torch.sin(z[..., i])
        out[..., 1, i] = torch.cos(z[..., i])
        return out

    return observed_through(module, ("cos", "sin"), observe, jacobian)
