"""anmc: physics priors written as equations, compiled into interpretable video models.

    import anmc
    prior = anmc.compile_prior("priors/pendulum.anm")
    f, J = prior.module().f_and_jacobian(z)

Importing `anmc` (or `anmc.lang`) loads neither torch nor SymPy: the public names below resolve on first
use (module `__getattr__`), so `anmc check` stays instant. The pipeline, one sub-package a stage:
lang → symbolic → codegen → prior → posterior → data / synthetic → vae → analysis → cli
(docs/architecture.md).
"""

from __future__ import annotations

import importlib

from anmc._version import __version__

# public name -> the module that defines it
_PUBLIC = {
    "AnmError": "anmc.lang.errors",
    "parse_anm": "anmc.lang.parser",
    "Model": "anmc.symbolic.model",
    "load_model": "anmc.symbolic.model",
    "apply_edits": "anmc.symbolic.model",
    "apply_intervention": "anmc.symbolic.model",
    "CompiledPrior": "anmc.codegen.compile",
    "compile_model": "anmc.codegen.compile",
    "compile_prior": "anmc.codegen.compile",
    "simulate": "anmc.codegen.rollout",
    "TrainConfig": "anmc.vae.config",
    "train": "anmc.vae.train",
    "load_run": "anmc.vae.run",
    "evaluate": "anmc.analysis.evaluate",
    "Counterfactual": "anmc.analysis.intervene",
    "intervene": "anmc.analysis.intervene",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # resolve once
        return value
    raise AttributeError(f"module 'anmc' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
