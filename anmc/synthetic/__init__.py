"""Synthetic videos of physics priors with their true states: numpy renderers and `anmc synth`.

    synthesize / write_synthetic / pick_renderer                                     anmc.synthetic.synth
    render_frames / geometry / object_position_px / measure_frames / pulse_profile   anmc.synthetic.render
    declared_geometry / measure_declared (the declared renderer)                     anmc.synthetic.render
    CAMERA_ROLES / declared_roles (observation names with a meaning in pixels)       anmc.synthetic.roles
`pendulum.anm` beside this file is the built-in default prior of `anmc quickstart`.
"""

from anmc.synthetic.render import (
    declared_geometry, geometry, measure_declared, measure_frames, object_position_px, pulse_profile, render_frames,
)
from anmc.synthetic.roles import CAMERA_ROLES, declared_roles
from anmc.synthetic.synth import Synthetic, pick_renderer, synthesize, write_synthetic

__all__ = [
    "Synthetic", "synthesize", "write_synthetic", "pick_renderer",
    "render_frames", "geometry", "object_position_px", "measure_frames", "pulse_profile",
    "declared_geometry", "measure_declared", "CAMERA_ROLES", "declared_roles",
]
