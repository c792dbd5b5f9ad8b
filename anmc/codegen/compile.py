"""`compile_prior`: a `.anm` file (or text) -> a checked model, its generated source and its module class.

    prior = compile_prior("priors/pendulum.anm", intervention="drag")
    print(prior.source)                  # the generated torch module, readable
    module = prior.module()              # a fresh nn.Module instance
    f, J = module.f_and_jacobian(z)      # z (..., d)
"""

from __future__ import annotations

import functools
import gc
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from anmc.codegen import cache
from anmc.codegen.load import UnsafeSourceError, load_class
from anmc.codegen.runtime import AnmModule
from anmc.lang.names import reserved_reason
from anmc.lang.source import read_source

if TYPE_CHECKING:
    from anmc.symbolic.model import Model

# The parser, the checker and the symbolic model (with the syntax tree's classes) are imported where a
# model is built: a prior read from the cache needs none of them, and importing them costs more than the
# read itself (benchmarks/jacobian.py, "cached").


@dataclass
class CompiledPrior:
    """A model with its generated torch source and class; `module()` makes an instance. A prior read from
    the cache (anmc.codegen.cache) builds its `model` only when something asks for it."""

    _model: Model | None = field(repr=False)
    source: str
    module_class: type = field(repr=False)
    _build: Callable[[], Model] | None = field(default=None, repr=False)

    @property
    def model(self) -> Model:
        if self._model is None:
            self._model = self._build()
        return self._model

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(self.module_class.state_names)

    @property
    def observed(self) -> tuple[str, ...]:
        return tuple(self.module_class.observed_states)

    @property
    def observations(self) -> tuple[str, ...]:
        """The names of what a frame shows, h's outputs in order (`observe NAME = EXPR` or `observe theta`)."""
        return tuple(self.module_class.observation_names) or self.observed

    @property
    def warnings(self):
        return self.model.warnings

    def module(self) -> AnmModule:
        return self.module_class()

    def numpy_source(self) -> str:
        from anmc.codegen.other_emitters import emit_numpy

        return emit_numpy(self.model)

    def latex(self) -> str:
        from anmc.codegen.other_emitters import emit_latex

        return emit_latex(self.model)


def _collector_paused(fn):
    """Run `fn` with Python's cyclic garbage collector paused. Compiling allocates many objects (Lark's
    tables, SymPy's expressions, the loader's syntax tree) and almost no cycles, and every full collection
    it triggers walks the ~200,000 objects that importing torch and SymPy made: about 0.2-0.3 s of a
    double pendulum's compile, and most of reading a cached prior (benchmarks/jacobian.py). Reference
    counting still frees what a compile drops; the collector is back on when it returns."""

    @functools.wraps(fn)
    def paused(*args, **kwargs):
        was_on = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_on:
                gc.enable()

    return paused


def audit_names(model: Model) -> set[str]:
    """The names the model's generated source may use besides the emitter's own: its states, consts, params,
    lets (a cse temporary may take a let's name, anmc.codegen.lets) and observations (`observe NAME = EXPR`)."""
    return {*model.states, *model.consts, *model.params, *model.lets, *model.observation_names}


@_collector_paused
def compile_model(model: Model) -> CompiledPrior:
    """Emit and load the torch module of an already-built model."""
    from anmc.codegen.torch_emitter import class_name, emit_torch  # (SymPy's printers: not needed for a cached prior)
    from anmc.lang.errors import AnmError, Diagnostic
    from anmc.symbolic.model import too_deep

    try:
        source = emit_torch(model)  # user text (file names, equations as typed) goes in through escape.comment_safe
        cls = load_class(source, class_name(model), audit_names(model), model.filename)
    except RecursionError:
        raise AnmError(too_deep(model.filename)) from None
    except UnsafeSourceError as err:
        # The checks upstream should make this unreachable; if not, nothing was run, and the user hears why.
        raise AnmError(
            Diagnostic(f"anmc refuses to run the code it generated for this model ({err}); please report it", model.filename, 0, 0)
        ) from None
    return CompiledPrior(model, source, cls)


def _intervened(model: Model, intervention: str | None, edits) -> Model:
    from anmc.symbolic.model import apply_edits, apply_intervention

    if intervention:
        model = apply_intervention(model, intervention)
    if edits:
        model = apply_edits(model, list(edits))
    return model


_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _from_cache(entry, filename: str, build: Callable[[], Model]) -> CompiledPrior | None:
    """The prior of a cache entry, or None if the entry is malformed or its source fails the audit."""
    source, meta = entry
    names, cls_name = meta.get("names"), meta.get("class")
    if not (isinstance(names, list) and isinstance(cls_name, str) and _NAME.fullmatch(cls_name)):
        return None
    if not all(isinstance(n, str) and _NAME.fullmatch(n) and reserved_reason(n) is None for n in names):
        return None  # the names a model may declare, as the language checks them
    try:
        cls = load_class(source, cls_name, set(names), filename)
    except (UnsafeSourceError, SyntaxError, KeyError):
        return None
    if not (isinstance(cls, type) and issubclass(cls, AnmModule)):
        return None
    return CompiledPrior(None, source, cls, build)


@_collector_paused
def compile_stored(source: str, steps=(), filename: str = "<anm>") -> CompiledPrior:
    """The prior a checkpoint stores: its `.anm` text (read from `filename`) and the interventions and
    edits applied to it (`Model.overrides.steps`), replayed (`anmc.symbolic.model.replay`) and compiled."""
    if not steps:
        return compile_prior(source)
    from anmc.lang.parser import parse_anm
    from anmc.symbolic.model import build_model, replay

    return compile_model(replay(build_model(parse_anm(source, filename)), [tuple(step) for step in steps]))


@_collector_paused
def compile_prior(
    source: str | Path | Model,
    intervention: str | None = None,
    edits: list[str] | tuple[str, ...] = (),
) -> CompiledPrior:
    """Compile a prior from a `.anm` path, `.anm` text or a `Model`, optionally intervened.

    Raises `anmc.AnmError` (file, line, column, caret) for anything wrong in the text or the edits.
    The generated source of a path or text is cached (anmc.codegen.cache): a second compile of the same
    text, intervention and edits by the same anmc only audits and loads it.
    """
    if not isinstance(source, (str, Path)):
        from anmc.symbolic.model import Model

        if isinstance(source, Model):
            return compile_model(_intervened(source, intervention, edits))
    text, filename = read_source(source)
    name = cache.key(text, filename, intervention, list(edits))

    def build() -> Model:
        from anmc.lang.parser import parse_anm
        from anmc.symbolic.model import build_model

        return _intervened(build_model(parse_anm(text, filename)), intervention, edits)

    entry = cache.get(name)
    if entry is not None:
        prior = _from_cache(entry, filename, build)
        if prior is not None:
            return prior
    prior = compile_model(build())
    model = prior.model
    cache.put(name, prior.source, {"class": prior.module_class.__name__, "names": sorted(audit_names(model))})
    return prior
