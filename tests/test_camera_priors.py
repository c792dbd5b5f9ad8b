"""priors/spring_camera.anm and priors/falling_camera.anm declare where anmc synth's renderers draw the object.

Their `observe px = ...` / `observe py = ...` must be the renderer's geometry exactly: checked against
`object_position_px` and against the centroid of the drawn object, at 64 pixels (S = 64, the files'
default) and on the 64-pixel video area-resized to 32 (`anmc train --size 32`, S = 32).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anmc.codegen.compile import compile_prior
from anmc.data.io import _resize
from anmc.synthetic.render import disc_coverage, double_pendulum_points, geometry, object_position_px, render_float

CAMERAS = {"spring_camera": ("spring", "px"), "falling_camera": ("falling", "py")}


def _states_and_frames(name: str, n: int = 40):
    """n states from the prior's initial distribution (the spring's |x| < 2 m, in the frame), their 64-pixel frames and geometry."""
    renderer, _ = CAMERAS[name]
    module = compile_prior(f"priors/{name}.anm").module()
    states = module.sample_initial(n, torch.Generator().manual_seed(0)).double()
    states[:, 0] = states[:, 0].clamp(-2.0, 2.0)
    geom = geometry(renderer, 64, module.state_names, module.initial_mean.tolist(), module.initial_std.tolist())
    frames = render_float(renderer, states.numpy(), geom, module.state_names)
    return module, states, frames, geom


def _object_centroid(name: str, frames: np.ndarray, geom: dict, zoom: float = 1.0) -> np.ndarray:
    """The drawn object's centre along its moving axis, pixels: the spring block's x over the rows only the
    block covers; the falling ball's y over the rows above the floor (`zoom`: frames resized by that factor)."""
    c = np.arange(frames.shape[-1]) + 0.5
    if name == "spring_camera":
        cy = geom["center"][1]
        top = int(np.ceil(zoom * (cy - geom["block_half_height_px"])))
        bottom = int(np.floor(zoom * (cy - geom["coil_amplitude_px"] - geom["coil_half_width_px"] - 1.0)))
        wall = int(np.ceil(zoom * geom["wall_px"])) + 1
        band = frames[:, top:bottom, wall:]
        return (band.sum(axis=1) @ c[wall:]) / band.sum(axis=(1, 2))
    above = frames[:, : int(np.floor(zoom * geom["floor_row"])) - 1, :]
    return (above.sum(axis=2) @ c[: above.shape[1]]) / above.sum(axis=(1, 2))


@pytest.mark.parametrize("name", CAMERAS)
def test_declared_camera_is_the_renderers_geometry(name):
    renderer, role = CAMERAS[name]
    module, states, frames, geom = _states_and_frames(name)
    assert module.observations == (role,)
    declared = module.double().observe(states).numpy()[:, 0]
    want = object_position_px(renderer, states.numpy(), geom, module.state_names)[:, 0 if role == "px" else 1]
    np.testing.assert_allclose(declared, want, atol=1e-9)
    np.testing.assert_allclose(_object_centroid(name, frames, geom), declared, atol=0.02)


@pytest.mark.parametrize("name", CAMERAS)
def test_camera_for_frames_resized_to_32(name):
    """`S = 32`: the declared position follows the 64-pixel video area-resized to 32 (what --size 32 trains on)."""
    _, states, frames, geom = _states_and_frames(name)
    module = compile_prior(f"priors/{name}.anm", edits=["S = 32"]).module().double()
    small = _resize(frames[..., None], 32, 32)[..., 0]
    declared = module.observe(states).numpy()[:, 0]
    np.testing.assert_allclose(_object_centroid(name, small, geom, zoom=0.5), declared, atol=0.05)


def test_double_pendulum_camera_puts_each_link_where_the_renderer_draws_it():
    """priors/double_pendulum_camera.anm: object 1 at the upper link's middle (pivot to joint), object 2 at
    the lower link's (joint to tip), each turned by its link's angle, as anmc synth's double_pendulum renderer
    draws them at 64 pixels; its physics is double_pendulum.anm's (the same f and J)."""
    module = compile_prior("priors/double_pendulum_camera.anm").module().double()
    assert module.observations == ("px1", "py1", "angle1", "px2", "py2", "angle2")
    states = module.sample_initial(50, torch.Generator().manual_seed(0))
    geom = geometry("double_pendulum", 64, module.state_names, params={"L": 1.0})
    joint, tip = double_pendulum_points(states[:, :2].numpy(), geom)
    pivot = np.array(geom["pivot"])
    y = module.observe(states).numpy()
    np.testing.assert_allclose(y[:, 0:2], (pivot + joint) / 2, atol=1e-9)
    np.testing.assert_allclose(y[:, 3:5], (joint + tip) / 2, atol=1e-9)
    np.testing.assert_allclose(y[:, [2, 5]], states[:, :2].numpy(), atol=0)
    # the link's direction is (sin angle, cos angle), the sprite's down axis (anmc.synthetic.roles)
    np.testing.assert_allclose(joint - pivot, geom["px_per_m"] * np.stack([np.sin(y[:, 2]), np.cos(y[:, 2])], 1), atol=1e-9)
    plain = compile_prior("priors/double_pendulum.anm").module().double()
    f, J = module.f_and_jacobian(states)
    f0, J0 = plain.f_and_jacobian(states)
    assert torch.equal(f, f0) and torch.equal(J, J0)


def test_pendulum_camera_puts_the_rod_and_bob_where_the_renderer_draws_them():
    """priors/pendulum_camera.anm: object 1 at the rod's middle, object 2 at the bob's centre, both turned
    by theta, as anmc synth's pendulum renderer draws them at 64 pixels (and at 32, S = 32, on the
    area-resized video: the bob's centroid); its physics is pendulum.anm's (the same f and J)."""
    module = compile_prior("priors/pendulum_camera.anm").module().double()
    assert module.observations == ("px1", "py1", "angle1", "px2", "py2", "angle2")
    states = module.sample_initial(50, torch.Generator().manual_seed(0))
    geom = geometry("pendulum", 64, module.state_names)
    bob = object_position_px("pendulum", states.numpy(), geom, module.state_names)
    pivot = np.array(geom["pivot"])
    y = module.observe(states).numpy()
    np.testing.assert_allclose(y[:, 3:5], bob, atol=1e-9)
    np.testing.assert_allclose(y[:, 0:2], (pivot + bob) / 2, atol=1e-9)
    np.testing.assert_allclose(y[:, [2, 5]], states[:, [0, 0]].numpy(), atol=0)
    np.testing.assert_allclose(bob - pivot, geom["rod_px"] * np.stack([np.sin(y[:, 2]), np.cos(y[:, 2])], 1), atol=1e-9)
    # the bob drawn alone, as the renderer draws it: its centroid is the declared place, at 64 and resized to 32
    frames = disc_coverage(bob[:, 0], bob[:, 1], geom["bob_radius_px"], 64).astype(np.float64)
    np.testing.assert_allclose(_centroid(frames), bob, atol=0.02)
    small = compile_prior("priors/pendulum_camera.anm", edits=["S = 32"]).module().double().observe(states).numpy()
    np.testing.assert_allclose(_centroid(_resize(frames[..., None], 32, 32)[..., 0]), small[:, 3:5], atol=0.05)
    plain = compile_prior("priors/pendulum.anm").module().double()
    f, J = module.f_and_jacobian(states)
    f0, J0 = plain.f_and_jacobian(states)
    assert torch.equal(f, f0) and torch.equal(J, J0)


def _centroid(frames: np.ndarray) -> np.ndarray:
    """(T, 2): each frame's brightness-weighted centre (x, y) in pixels, pixel i's centre at i + 0.5."""
    c = np.arange(frames.shape[-1]) + 0.5
    return np.stack([frames.sum(1) @ c, frames.sum(2) @ c], 1) / frames.sum((1, 2))[:, None]
