"""Synthetic videos of the paper's systems with their true states: numpy renderers and `anmc synth`.

    synthesize / write_synthetic                                                     anmc.synthetic.synth
    render_frames / geometry / object_position_px / measure_frames / pulse_profile   anmc.synthetic.render
`pendulum.anm` beside this file is the built-in default prior of `anmc quickstart`.
"""

from anmc.synthetic.render import geometry, measure_frames, object_position_px, pulse_profile, render_frames
from anmc.synthetic.synth import Synthetic, synthesize, write_synthetic

__all__ = [
    "Synthetic", "synthesize", "write_synthetic",
    "render_frames", "geometry", "object_position_px", "measure_frames", "pulse_profile",
]
