"""anmc: physics priors written as equations, compiled into interpretable video models.

    import anmc
    prior = anmc.compile_prior("priors/pendulum.anm")
    f, J = prior.module().f_and_jacobian(z)
"""

__version__ = "0.1.0"

from anmc.codegen.compile import CompiledPrior, compile_model, compile_prior  # noqa: E402
from anmc.lang.errors import AnmError  # noqa: E402
from anmc.lang.parser import parse_anm  # noqa: E402
from anmc.symbolic.model import Model, apply_edits, apply_intervention, load_model  # noqa: E402

# `anmc.intervene(run_dir, edits=[...]) -> Counterfactual`. The function shadows the submodule of the same
# name as an attribute of the package: import from it with `from anmc.intervene import ...`.
from anmc.intervene import Counterfactual, intervene  # noqa: E402

__all__ = [
    "AnmError",
    "CompiledPrior",
    "Counterfactual",
    "Model",
    "apply_edits",
    "apply_intervention",
    "compile_model",
    "compile_prior",
    "intervene",
    "load_model",
    "parse_anm",
]
