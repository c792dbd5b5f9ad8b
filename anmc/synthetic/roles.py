"""Camera roles: observation names that say, in pixels, what a frame shows.

An observation of a prior (`observe NAME = EXPR`, or `observe NAME` of a state) whose NAME is a key of
`CAMERA_ROLES` has a meaning in the video as stored, an S x S frame with x from the left and y from the
top (pixel [i, j] has its centre at (j + 0.5, i + 0.5)); training at another `--size` maps them
(`anmc.data.io.resize_transform`):

    px, py       the object's centre in pixels                                  in [0, S]
    size         the object's radius in pixels (its apparent size)             in (0, S]
    brightness   the object's brightness (the centred disc's, without px/py)   in [0, 1]
    level        the fraction of the frame's height filled from the bottom     in [0, 1]
    angle        the object's turn in radians: its sprite's downward axis points along
                 (sin angle, cos angle) in the frame, as a pendulum hanging at that angle    any

Several objects: an object role followed by a digit or by `_` and a name (`px1, py1, angle1`, or
`px_upper, py_upper`) belongs to an object of its own; `objects_of` groups the names by object, in the
order the prior declares them (the sprite decoder draws them in that order, each over the ones before).
`level` is the frame's, never an object's. The declared renderer draws the unsuffixed object alone (a
disc, which looks the same at every angle); the sprite decoder draws every object and turns each sprite
by its `angle`.

The declared renderer of `anmc synth` (`anmc.synthetic.render`, docs/data.md) draws from them, and the
sprite decoder places its sprite where they say. An observation with no role is still observed (the
smoother conditions on it). `declared_roles(module)` reads a compiled module's roles by the names of
`module.observations`.

Half a position is allowed: an object that moves along one axis declares that coordinate alone, and the
declared renderer draws it on the frame's centre line (py = S/2 without py, px = S/2 without px). A
constant coordinate cannot be declared instead, since an observation must depend on a state (the
checker refuses `observe py = 32`); the sprite decoder learns the missing coordinate as a constant.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

from anmc.errors import UserError


@dataclass(frozen=True)
class Role:
    """One camera role: what it means and its valid range; `high=None` means the frame's side S."""

    meaning: str
    low: float
    high: float | None

    def range(self, size: int) -> tuple[float, float]:
        """(low, high) for a frame of `size` x `size` pixels."""
        return self.low, float(size) if self.high is None else self.high


# role name -> meaning and valid range (the one table; the sprite decoder imports it)
CAMERA_ROLES: dict[str, Role] = {
    "px": Role("the object's centre, in pixels from the frame's left edge", 0.0, None),
    "py": Role("the object's centre, in pixels from the frame's top edge", 0.0, None),
    "size": Role("the object's radius in pixels (its apparent size)", 0.0, None),
    "brightness": Role("the object's brightness (the centred disc's, when there is no px/py), 0 black to 1 white", 0.0, 1.0),
    "level": Role("a fill level: the fraction of the frame's height filled from the bottom", 0.0, 1.0),
    "angle": Role("the object's turn in radians: its downward axis points along (sin angle, cos angle) in the frame", -math.inf, math.inf),
}

# the roles that belong to an object (a name may carry an object's suffix: px1, px_upper); `level` is the frame's
OBJECT_ROLES = ("px", "py", "size", "brightness", "angle")
_SUFFIXED = re.compile(r"^(" + "|".join(OBJECT_ROLES) + r")(?:([0-9]+)|_([A-Za-z0-9_]+))$")


def split_role(name: str) -> tuple[str, str] | None:
    """(role, object) of an observation name: `px` -> ("px", ""), `px1` -> ("px", "1"), `py_upper` ->
    ("py", "upper"), `level` -> ("level", ""); None for a name that is no camera role."""
    if name in CAMERA_ROLES:
        return name, ""
    m = _SUFFIXED.match(name)
    return (m.group(1), m.group(2) or m.group(3)) if m else None


def objects_of(observations) -> dict[str, dict[str, int]]:
    """{object: {role: index into `observations`}} for the object roles among the names, objects in the
    order of their first observation ("" for the unsuffixed object); `level` is not an object's."""
    out: dict[str, dict[str, int]] = {}
    for i, name in enumerate(observations):
        split = split_role(name)
        if split is not None and split[0] in OBJECT_ROLES:
            out.setdefault(split[1], {})[split[0]] = i
    return out


class RoleError(UserError):
    """A prior's camera roles cannot be drawn: the message says which and what to add."""


def _model(module) -> str:
    return str(getattr(module, "model_name", "") or "the prior")


def declared_roles(module, required: bool = False) -> dict[str, int]:
    """{role: index into module.observations} for a compiled module's observations named after a camera
    role (see `roles_of`)."""
    return roles_of(tuple(module.observations), _model(module), required)


def roles_of(observations, model: str = "the prior", required: bool = False) -> dict[str, int]:
    """{role: index into `observations`} for the names that are camera roles, in `CAMERA_ROLES` order.
    With `required`, RoleError when no role is declared at all (the declared renderer would have
    nothing to draw)."""
    names = tuple(observations)
    roles = {role: names.index(role) for role in CAMERA_ROLES if role in names}
    if required and not roles:
        shown = ", ".join(names) if names else "none"
        raise RoleError(
            f"{model} declares no camera role (its observations: {shown}), so the declared renderer has nothing "
            f"to draw; name observations after roles ({', '.join(CAMERA_ROLES)}), e.g. "
            "`observe px = 32 + 20 * sin(theta), py = 32 + 20 * cos(theta)`."
        )
    return roles


def near_misses(observations) -> dict[str, str]:
    """{observation: role} for observation names that are no camera role but look like one (`Brightness`,
    `bright`, `sizes`): they are observed, not drawn, which is likely not what was meant."""
    out = {}
    for name in observations:
        if split_role(name) is not None:
            continue
        close = difflib.get_close_matches(name.lower(), CAMERA_ROLES, n=1, cutoff=0.75)
        if close:
            out[name] = close[0]
    return out
