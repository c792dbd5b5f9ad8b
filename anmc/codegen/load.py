r"""Generated source -> a live class, after an audit of every name and attribute it uses.

The emitter only writes identifiers the language admitted, and user text only through
`anmc.codegen.escape.comment_safe`, but the source is audited once more before `exec`:

- its text: printable characters and `\n` only (no `\r` or other line break that could have carried
  a statement out of a comment), and no encoding declaration on its first two lines;
- its Python AST: only the node kinds the emitter produces, names that are the model's own or the
  emitter's, attributes from a fixed list, and imports of torch, math and anmc's runtime (a call of
  a name the emitter never writes, a dunder attribute, a lambda or a subscript is refused);
- its statements, function by function, have exactly the shape the emitter writes: the imports and
  one class; in the class a docstring, the fixed class attributes and the fixed methods, each once;
  in each method a docstring, assignments in which every name is bound once and no argument is
  rebound, `super().__init__()` and `self.register_buffer("name", ...)` calls, and one final
  `return`; every attribute of `self` is set once. A statement that came from anywhere but the
  emitter (`omega = omega * 0 + 42` after a line break in a comment, a second `return`, a second
  `dt = ...`, a `forward` method) is refused before anything runs.
"""

from __future__ import annotations

import ast as pyast
import itertools
import linecache
import re
import sys
import types

from anmc.codegen.escape import comment_safe

_ALLOWED_NODES = (
    pyast.Module, pyast.Import, pyast.ImportFrom, pyast.alias, pyast.ClassDef, pyast.FunctionDef,
    pyast.arguments, pyast.arg, pyast.Return, pyast.Assign, pyast.Expr, pyast.Call, pyast.Attribute,
    pyast.Name, pyast.Load, pyast.Store, pyast.Constant, pyast.Tuple, pyast.List, pyast.Dict,
    pyast.BinOp, pyast.UnaryOp, pyast.Compare, pyast.Add, pyast.Sub, pyast.Mult, pyast.Div, pyast.Pow,
    pyast.USub, pyast.UAdd, pyast.Gt, pyast.keyword,
)  # fmt: skip
_ALLOWED_TYPES = frozenset(_ALLOWED_NODES)
_IMPORTS = {"math", "torch", "torch.nn", "anmc.codegen.runtime"}
_FIXED_NAMES = {"math", "torch", "nn", "AnmModule", "super", "self", "z", "f", "J", "_h", "_S", "_gS", "_z", "_gF", "_P", "_zero"}
_NEVER_ASSIGNED = {"math", "torch", "nn", "AnmModule", "super", "self"}
_CLASS_ATTRIBUTES = {
    "model_name", "state_names", "observed_states", "observation_names", "observation_affine", "transition_affine", "param_names", "learnable_param_names", "param_bounds",
    "noise_learnable", "noise_bounds", "initial_kinds", "dt", "substeps", "integrator", "scalar_grads", "jacobian_pattern", "varying_partials",
}  # fmt: skip
_ATTRIBUTES = {
    # torch functions the printer emits
    "sin", "cos", "tan", "exp", "log", "sqrt", "rsqrt", "abs", "tanh", "sinh", "cosh", "atan", "atan2",
    "asin", "acos", "sign", "minimum", "maximum", "clamp", "sigmoid", "stack", "full_like", "zeros_like", "tensor",
    "pow", "heaviside", "floor", "ceil", "add", "addcmul",
    # tensor methods, module plumbing, math constants
    "unbind", "unflatten", "to", "sum", "expand_as", "dtype", "Parameter", "register_buffer", "__init__", "pi", "e",
}  # fmt: skip


_counter = itertools.count()


class UnsafeSourceError(RuntimeError):
    """The generated source contains something the emitter never writes; it is not run."""


def _nodes(tree: pyast.AST):
    """Every node of the tree (what ast.walk gives, without its per-node generators: the audit's hot loop)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, list):
                stack.extend(v for v in value if isinstance(v, pyast.AST))
            elif isinstance(value, pyast.AST):
                stack.append(value)


def audit(source: str | pyast.Module, allowed_names: set[str]) -> None:
    """Raise UnsafeSourceError unless `source` uses only emitter constructs and `allowed_names`, in
    statements of the shape the emitter writes (module docstring). Given a parsed tree instead of
    the text, the caller checks the text with `audit_text`."""
    if isinstance(source, str):
        audit_text(source)
    tree = pyast.parse(source) if isinstance(source, str) else source
    _audit_statements(tree)
    for node in _nodes(tree):
        kind = type(node)  # exact classes: ast.parse makes no subclasses, and a subclass is refused
        if kind not in _ALLOWED_TYPES:
            raise UnsafeSourceError(f"generated code contains a {kind.__name__} node")
        if kind is pyast.Name:
            _audit_name(node, allowed_names)
        elif kind is pyast.Attribute:
            _audit_attribute(node, allowed_names)
        elif kind is pyast.Constant and not isinstance(node.value, (int, float, str, type(None))):
            raise UnsafeSourceError(f"generated code contains the constant {node.value!r}")  # complex, bytes
        elif kind is pyast.Import or kind is pyast.ImportFrom:
            names = {a.name for a in node.names} if kind is pyast.Import else {node.module}
            if names - _IMPORTS:
                raise UnsafeSourceError(f"generated code imports {sorted(names - _IMPORTS)}")


def _audit_name(node: pyast.Name, allowed_names: set[str]) -> None:
    store = type(node.ctx) is pyast.Store
    if not (
        node.id in _FIXED_NAMES
        or node.id in allowed_names
        or (node.id in _CLASS_ATTRIBUTES and store)
        or _is_generated_name(node.id, allowed_names)
    ):
        raise UnsafeSourceError(f"generated code uses the name {node.id!r}")
    if store and node.id in _NEVER_ASSIGNED:
        raise UnsafeSourceError(f"generated code assigns the name {node.id!r}")


def _audit_attribute(node: pyast.Attribute, allowed_names: set[str]) -> None:
    if not (node.attr in _ATTRIBUTES or _is_storage_attribute(node.attr, allowed_names)):
        raise UnsafeSourceError(f"generated code uses the attribute {node.attr!r}")
    if node.attr.startswith("__") and node.attr != "__init__":
        raise UnsafeSourceError(f"generated code uses the attribute {node.attr!r}")
    if type(node.ctx) is pyast.Store and not (type(node.value) is pyast.Name and node.value.id == "self"):
        # only the module's own attributes are ever assigned, never torch.sin = ...
        raise UnsafeSourceError(f"generated code assigns the attribute {node.attr!r} of something other than self")


# Python's encoding declaration (PEP 263), looked for on the first two lines of a file.
_CODING = re.compile(r"^[ \t\f]*#.*?coding[:=]")
_METHODS = {"__init__", "constants", "rhs", "rhs_and_tangents", "rhs_and_tangents_vjp", "rhs_and_partials", "rhs_and_partials_vjp", "start", "observe", "observe_and_jacobian"}


def audit_text(source: str) -> None:
    """Printable characters and `\\n` only; no encoding declaration."""
    bad = next((c for c in source if not (c == "\n" or c.isprintable())), None)
    if bad is not None:
        line = source.count("\n", 0, source.index(bad)) + 1
        raise UnsafeSourceError(f"generated code contains the character U+{ord(bad):04X} (line {line})")
    if any(_CODING.match(line) for line in source.split("\n")[:2]):
        raise UnsafeSourceError("generated code declares a source encoding")


def _is_docstring(stmt: pyast.stmt) -> bool:
    return isinstance(stmt, pyast.Expr) and isinstance(stmt.value, pyast.Constant) and isinstance(stmt.value.value, str)


def _is_literal(node: pyast.expr) -> bool:
    if isinstance(node, pyast.Constant):
        return True
    if isinstance(node, pyast.UnaryOp) and isinstance(node.op, (pyast.USub, pyast.UAdd)):
        return _is_literal(node.operand)
    if isinstance(node, (pyast.Tuple, pyast.List)):
        return all(_is_literal(e) for e in node.elts)
    if isinstance(node, pyast.Dict):
        return all(k is not None and _is_literal(k) for k in node.keys) and all(_is_literal(v) for v in node.values)
    return False


def _audit_statements(tree: pyast.Module) -> None:
    """The statements have the emitter's shape (see the module docstring)."""
    *imports, cls = tree.body or [None]
    if not isinstance(cls, pyast.ClassDef) or not all(isinstance(s, (pyast.Import, pyast.ImportFrom)) for s in imports):
        raise UnsafeSourceError("generated code is not a few imports and one class")
    if cls.decorator_list or cls.keywords or [pyast.dump(b) for b in cls.bases] != [pyast.dump(pyast.Name("AnmModule", pyast.Load()))]:
        raise UnsafeSourceError(f"generated class {cls.name} is not a plain subclass of AnmModule")
    class_names: set[str] = set()
    self_attributes: set[str] = set()
    for i, stmt in enumerate(cls.body):
        if i == 0 and _is_docstring(stmt):
            continue
        if isinstance(stmt, pyast.Assign):
            if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], pyast.Name) or not _is_literal(stmt.value):
                raise UnsafeSourceError(f"generated class attribute on line {stmt.lineno} is not a name set to a literal")
            name = stmt.targets[0].id
            if name not in _CLASS_ATTRIBUTES:
                raise UnsafeSourceError(f"generated code sets the class attribute {name!r}")
        elif isinstance(stmt, pyast.FunctionDef):
            name = stmt.name
            if name not in _METHODS:
                raise UnsafeSourceError(f"generated code defines the method {name!r}")
            _audit_method(stmt, self_attributes)
        else:
            raise UnsafeSourceError(f"generated class holds a {type(stmt).__name__} statement on line {stmt.lineno}")
        if name in class_names:
            raise UnsafeSourceError(f"generated code binds {name!r} twice in the class")
        class_names.add(name)


def _audit_method(fn: pyast.FunctionDef, self_attributes: set[str]) -> None:
    """One method: docstring, single assignments, the two kinds of call statement, one final return."""
    a = fn.args
    if fn.decorator_list or fn.returns or a.vararg or a.kwarg or a.kwonlyargs or a.posonlyargs or a.defaults:
        raise UnsafeSourceError(f"generated method {fn.name} has a signature the emitter never writes")
    bound = [arg.arg for arg in a.args]
    if bound[:1] != ["self"]:
        raise UnsafeSourceError(f"generated method {fn.name} does not take self first")

    def bind(name: str, where: int) -> None:
        if name in bound:
            raise UnsafeSourceError(f"generated method {fn.name} binds {name!r} a second time (line {where})")
        bound.append(name)

    def set_attribute(name: str, where: int) -> None:
        if name in self_attributes:
            raise UnsafeSourceError(f"generated code sets self.{name} a second time (line {where})")
        self_attributes.add(name)

    for i, stmt in enumerate(fn.body):
        if i == 0 and _is_docstring(stmt):
            continue
        if isinstance(stmt, pyast.Return):
            if i != len(fn.body) - 1:
                raise UnsafeSourceError(f"generated method {fn.name} returns before its last line (line {stmt.lineno})")
        elif isinstance(stmt, pyast.Assign):
            if len(stmt.targets) != 1:
                raise UnsafeSourceError(f"generated code chains assignments (line {stmt.lineno})")
            target = stmt.targets[0]
            names = target.elts if isinstance(target, pyast.Tuple) else [target]
            for t in names:
                if isinstance(t, pyast.Name):
                    bind(t.id, stmt.lineno)
                elif isinstance(t, pyast.Attribute) and isinstance(t.value, pyast.Name) and t.value.id == "self":
                    set_attribute(t.attr, stmt.lineno)
                else:
                    raise UnsafeSourceError(f"generated code assigns to a {type(t).__name__} (line {stmt.lineno})")
        elif isinstance(stmt, pyast.Expr) and _is_super_init(stmt.value):
            pass
        elif isinstance(stmt, pyast.Expr) and _registered_buffer(stmt.value) is not None:
            set_attribute(_registered_buffer(stmt.value), stmt.lineno)
        else:
            raise UnsafeSourceError(f"generated method {fn.name} holds a statement the emitter never writes (line {stmt.lineno})")


def _is_super_init(call: pyast.expr) -> bool:
    """`super().__init__()`"""
    return pyast.dump(call) == pyast.dump(
        pyast.Call(pyast.Attribute(pyast.Call(pyast.Name("super", pyast.Load()), [], []), "__init__", pyast.Load()), [], [])
    )


def _registered_buffer(call: pyast.expr) -> str | None:
    """NAME of `self.register_buffer("NAME", value)`, else None."""
    if (
        isinstance(call, pyast.Call)
        and isinstance(call.func, pyast.Attribute)
        and call.func.attr == "register_buffer"
        and isinstance(call.func.value, pyast.Name)
        and call.func.value.id == "self"
        and len(call.args) == 2
        and not call.keywords
        and isinstance(call.args[0], pyast.Constant)
        and isinstance(call.args[0].value, str)
    ):
        return call.args[0].value
    return None


def _is_generated_name(name: str, allowed: set[str]) -> bool:
    if name.startswith("_t") and name[2:].isdigit():
        return True
    for prefix in ("J_", "_gF_", "_gJ_"):
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            return True
    for prefix in ("_P_", "_H_"):  # _P_i_j (rhs_and_tangents_vjp, rhs_and_partials_vjp), _H_i_j (observe_and_jacobian)
        if name.startswith(prefix) and all(part.isdigit() for part in name[3:].split("_")) and name.count("_") == 3:
            return True
    for prefix in ("next_", "start_"):
        if name.startswith(prefix) and name[len(prefix) :] in allowed:
            return True
    return False


def _is_storage_attribute(attr: str, allowed: set[str]) -> bool:
    for prefix in ("_raw_", "_fixed_", "_sigma_", "_log_sigma_", "_logit_sigma_"):
        if attr.startswith(prefix) and attr[len(prefix) :] in allowed:
            return True
    return False


def load_class(source: str, class_name: str, allowed_names: set[str], filename: str = "<anmc>") -> type:
    """Audit `source`, execute it, and return the class `class_name`."""
    audit_text(source)
    tree = pyast.parse(source)  # parsed once: audited, then compiled
    audit(tree, allowed_names)
    # the module's __file__ and linecache key: tools that walk sys.modules (hypothesis, inspect, coverage)
    # choke on a raw file name's surrogates or line breaks
    code_name = f"<anmc generated: {comment_safe(filename)}>"
    linecache.cache[code_name] = (len(source), None, source.splitlines(True), code_name)  # readable tracebacks
    # A real module object, so that pickling, torch.compile and inspect can find the class again.
    module = types.ModuleType(f"anmc_generated_{class_name.lower()}_{next(_counter)}")
    module.__file__ = code_name
    sys.modules[module.__name__] = module
    exec(compile(tree, code_name, "exec"), module.__dict__)  # noqa: S102 - audited above
    return module.__dict__[class_name]
