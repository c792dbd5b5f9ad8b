"""Generated source -> a live class, after an audit of every name and attribute it uses.

The emitter only writes identifiers the language admitted, but the source is audited once more
before `exec`: its Python AST may contain only the node kinds the emitter produces, names that are
the model's own or the emitter's, attributes from a fixed list, and imports of torch, math and
anmc's runtime. Anything else (a call of a name the emitter never writes, a dunder attribute, a
lambda, a subscript) stops it before it runs.
"""

from __future__ import annotations

import ast as pyast
import itertools
import sys
import types
import linecache

_ALLOWED_NODES = (
    pyast.Module, pyast.Import, pyast.ImportFrom, pyast.alias, pyast.ClassDef, pyast.FunctionDef,
    pyast.arguments, pyast.arg, pyast.Return, pyast.Assign, pyast.Expr, pyast.Call, pyast.Attribute,
    pyast.Name, pyast.Load, pyast.Store, pyast.Constant, pyast.Tuple, pyast.List, pyast.Dict,
    pyast.BinOp, pyast.UnaryOp, pyast.Compare, pyast.Add, pyast.Sub, pyast.Mult, pyast.Div, pyast.Pow,
    pyast.USub, pyast.UAdd, pyast.Gt, pyast.keyword,
)  # fmt: skip
_IMPORTS = {"math", "torch", "torch.nn", "anmc.codegen.runtime"}
_FIXED_NAMES = {"math", "torch", "nn", "AnmModule", "super", "self", "z", "f", "J", "_h", "_J", "_gF", "_gJ"}
_NEVER_ASSIGNED = {"math", "torch", "nn", "AnmModule", "super", "self"}
_CLASS_ATTRIBUTES = {
    "model_name", "state_names", "observed_states", "param_names", "learnable_param_names", "param_bounds",
    "noise_learnable", "initial_kinds", "dt", "substeps", "integrator", "scalar_grads",
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
    """Raise UnsafeSourceError unless `source` (text or its parsed tree) uses only emitter constructs and
    `allowed_names`."""
    tree = pyast.parse(source) if isinstance(source, str) else source
    for node in _nodes(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise UnsafeSourceError(f"generated code contains a {type(node).__name__} node")
        if isinstance(node, pyast.Import):
            names = {a.name for a in node.names}
        elif isinstance(node, pyast.ImportFrom):
            names = {node.module}
        else:
            names = set()
        if names - _IMPORTS:
            raise UnsafeSourceError(f"generated code imports {sorted(names - _IMPORTS)}")
        if isinstance(node, pyast.Name) and not (
            node.id in _FIXED_NAMES
            or node.id in allowed_names
            or (node.id in _CLASS_ATTRIBUTES and isinstance(node.ctx, pyast.Store)) or _is_generated_name(node.id, allowed_names)
        ):
            raise UnsafeSourceError(f"generated code uses the name {node.id!r}")
        if isinstance(node, pyast.Attribute) and not (
            node.attr in _ATTRIBUTES or _is_storage_attribute(node.attr, allowed_names)
        ):
            raise UnsafeSourceError(f"generated code uses the attribute {node.attr!r}")
        if isinstance(node, pyast.Attribute) and node.attr.startswith("__") and node.attr != "__init__":
            raise UnsafeSourceError(f"generated code uses the attribute {node.attr!r}")
        if isinstance(node, pyast.Constant) and not isinstance(node.value, (int, float, str, type(None))):
            raise UnsafeSourceError(f"generated code contains the constant {node.value!r}")  # complex, bytes
        if isinstance(node, pyast.Attribute) and isinstance(node.ctx, pyast.Store) and not (
            isinstance(node.value, pyast.Name) and node.value.id == "self"
        ):  # only the module's own attributes are ever assigned, never torch.sin = ...
            raise UnsafeSourceError(f"generated code assigns the attribute {node.attr!r} of something other than self")
        if isinstance(node, pyast.Name) and isinstance(node.ctx, pyast.Store) and node.id in _NEVER_ASSIGNED:
            raise UnsafeSourceError(f"generated code assigns the name {node.id!r}")


def comment_safe(text: str) -> str:
    """`text` (a file name) made safe to write into a comment or docstring of generated code: no line
    breaks, quotes or backslashes that could end the comment or the string and start code."""
    table = {'"': "'", "\\": "/"}
    return "".join(table.get(c, c) if c.isprintable() else "?" for c in text)


def _is_generated_name(name: str, allowed: set[str]) -> bool:
    if name.startswith("_t") and name[2:].isdigit():
        return True
    for prefix in ("J_", "_gF_", "_gJ_"):
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            return True
    if name.startswith("_P_") and all(part.isdigit() for part in name[3:].split("_")) and name.count("_") == 3:
        return True
    for prefix in ("next_", "start_"):
        if name.startswith(prefix) and name[len(prefix) :] in allowed:
            return True
    return False


def _is_storage_attribute(attr: str, allowed: set[str]) -> bool:
    for prefix in ("_raw_", "_fixed_", "_sigma_", "_log_sigma_"):
        if attr.startswith(prefix) and attr[len(prefix) :] in allowed:
            return True
    return False


def load_class(source: str, class_name: str, allowed_names: set[str], filename: str = "<anmc>") -> type:
    """Audit `source`, execute it, and return the class `class_name`."""
    tree = pyast.parse(source)
    audit(tree, allowed_names)
    code_name = f"<anmc generated: {filename}>"
    linecache.cache[code_name] = (len(source), None, source.splitlines(True), code_name)  # readable tracebacks
    # A real module object, so that pickling, torch.compile and inspect can find the class again.
    module = types.ModuleType(f"anmc_generated_{class_name.lower()}_{next(_counter)}")
    module.__file__ = code_name
    sys.modules[module.__name__] = module
    exec(compile(tree, code_name, "exec"), module.__dict__)  # noqa: S102 - audited above
    return module.__dict__[class_name]
