"""The names the language gives meaning to: its functions, constants, distributions and keywords, and
which names a user may not declare (`reserved_reason`). Kept apart from the checker so that reading a
cached prior (anmc.codegen.compile) can check names without loading the parser's syntax tree classes.
"""

from __future__ import annotations

import builtins
import keyword
import re

# The whole function whitelist, with arities (None: two or more). Nothing else can be called.
FUNCTIONS: dict[str, int | None] = {
    "sin": 1, "cos": 1, "tan": 1, "exp": 1, "log": 1, "sqrt": 1, "abs": 1, "tanh": 1, "sinh": 1,
    "cosh": 1, "atan": 1, "atan2": 2, "sign": 1, "min": None, "max": None,
}  # fmt: skip
CONSTANTS = ("pi", "e")
NON_SMOOTH = ("abs", "sign", "min", "max")
DISTRIBUTIONS = {"Normal": ("mean", "standard deviation"), "Uniform": ("low", "high")}

# The words of the language itself (grammar.lark): never usable as names.
KEYWORDS = (
    "model", "const", "param", "in", "learn", "state", "dynamics", "continuous", "discrete", "dt", "using",
    "steps", "next", "noise", "observe", "intervention", "set", "init", "start", "let", "lagrangian",
    "coordinates", "velocities", "kinetic", "potential", "dissipation", "force",
)  # fmt: skip

# Names a user may not declare: the generated Python uses them, or they already mean something.
_RESERVED_GENERATED = {"z", "self", "torch", "nn", "math", "np", "numpy", "AnmModule", "dt"}
# ... and the forms of the generated locals: next_theta, start_theta, J_01, J_0_1
_GENERATED_PATTERN = re.compile(r"(next|start)_\w*|J(_\d+)+")


def reserved_reason(name: str) -> str | None:
    """Why `name` cannot be declared, or None if it can."""
    if name in KEYWORDS:
        return f"'{name}' is a keyword of the language"
    if name in FUNCTIONS:
        return f"'{name}' is a built-in function of the language"
    if name in CONSTANTS:
        return f"'{name}' is a built-in constant of the language"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return f"'{name}' is a Python keyword, and anmc generates Python"
    if name in _RESERVED_GENERATED or _GENERATED_PATTERN.fullmatch(name):
        return f"'{name}' is reserved by the code anmc generates"
    if name in dir(builtins):
        return f"'{name}' is a Python builtin name, and anmc generates Python"
    return None
