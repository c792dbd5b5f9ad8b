"""`compile_prior`: a `.anm` file (or text) -> a checked model, its generated source and its module class.

    prior = compile_prior("priors/pendulum.anm", intervention="drag")
    print(prior.source)                  # the generated torch module, readable
    module = prior.module()              # a fresh nn.Module instance
    f, J = module.f_and_jacobian(z)      # z (..., d)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from anmc.codegen.load import UnsafeSourceError, load_class
from anmc.codegen.other_emitters import emit_latex, emit_numpy
from anmc.codegen.runtime import AnmModule
from anmc.codegen.torch_emitter import class_name, emit_torch
from anmc.lang.errors import AnmError, Diagnostic
from anmc.symbolic.model import Model, apply_edits, apply_intervention, load_model, too_deep


@dataclass
class CompiledPrior:
    """A model with its generated torch source and class; `module()` makes an instance."""

    model: Model
    source: str
    module_class: type = field(repr=False)

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.model.states

    @property
    def observed(self) -> tuple[str, ...]:
        return self.model.observed

    @property
    def warnings(self):
        return self.model.warnings

    def module(self) -> AnmModule:
        return self.module_class()

    def numpy_source(self) -> str:
        return emit_numpy(self.model)

    def latex(self) -> str:
        return emit_latex(self.model)


def compile_model(model: Model) -> CompiledPrior:
    """Emit and load the torch module of an already-built model."""
    try:
        source = emit_torch(model)  # user text (file names, equations as typed) goes in through escape.comment_safe
        allowed = {*model.states, *model.consts, *model.params, *model.lets}
        cls = load_class(source, class_name(model), allowed, model.filename)
    except RecursionError:
        raise AnmError(too_deep(model.filename)) from None
    except UnsafeSourceError as err:
        # The checks upstream should make this unreachable; if not, nothing was run, and the user hears why.
        raise AnmError(
            Diagnostic(f"anmc refuses to run the code it generated for this model ({err}); please report it", model.filename, 0, 0)
        ) from None
    return CompiledPrior(model, source, cls)


def compile_prior(
    source: str | Path | Model,
    intervention: str | None = None,
    edits: list[str] | tuple[str, ...] = (),
) -> CompiledPrior:
    """Compile a prior from a `.anm` path, `.anm` text or a `Model`, optionally intervened.

    Raises `anmc.AnmError` (file, line, column, caret) for anything wrong in the text or the edits.
    """
    model = source if isinstance(source, Model) else load_model(source)
    if intervention:
        model = apply_intervention(model, intervention)
    if edits:
        model = apply_edits(model, list(edits))
    return compile_model(model)
