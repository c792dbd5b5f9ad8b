"""Parse `.anm` text into the typed AST of `anmc.lang.ast` (Lark, LALR, with positions).

    program = parse_anm(text, filename="pendulum.anm")

Syntax errors become an `AnmError` with file, line, column, the line itself and a caret, and a
message that says what was expected in words (not Lark's terminal names).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from lark import Lark, Token, Transformer, Tree, v_args
from lark.tree import Meta
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from anmc.lang import ast
from anmc.lang.errors import AnmError, Diagnostic, diagnostic_at, did_you_mean

# Terminal names, as Lark calls them, in words a user understands.
_TOKEN_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "_NL": "end of line",
    "$END": "end of file",
    "EQUAL": "'='",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "COMMA": "','",
    "PLUS": "'+'",
    "MINUS": "'-'",
    "STAR": "'*'",
    "SLASH": "'/'",
    "POW": "'^'",
    "TILDE": "'~'",
    "PRIME": "\"'\"",
    "LEARN": "'learn'",
    "CONTINUOUS": "'continuous'",
    "DISCRETE": "'discrete'",
    "LAGRANGIAN": "'lagrangian'",
    "ENERGY": "'kinetic', 'potential' or 'dissipation'",
}

# Lines that only a block can hold, and where they go.
_BLOCK_WORDS = {
    "_LET": "belongs inside a 'dynamics' block or an 'intervention' (indented under it), not on its own",
    "_COORDINATES": "belongs inside a 'dynamics lagrangian' block",
    "_VELOCITIES": "belongs inside a 'dynamics lagrangian' block",
    "ENERGY": "belongs inside a 'dynamics lagrangian' block",
    "_FORCE": "belongs inside a 'dynamics lagrangian' block",
}

_STATEMENT_KEYWORDS = ("model", "const", "param", "state", "dynamics", "noise", "observe", "intervention")


def _describe_expected(expected: set[str]) -> str:
    words = []
    for name in sorted(expected):
        bare = name.lstrip("_")
        if name in _TOKEN_WORDS:
            words.append(_TOKEN_WORDS[name])
        elif bare.isupper() and bare.isalpha():
            words.append(f"'{bare.lower()}'")  # a keyword terminal such as _MODEL
    words = sorted(set(words))
    if not words:
        return ""
    if len(words) > 6:
        return "; expected an expression or a statement" if "a name" in words else ""
    return "; expected " + (words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1])


def _token_text(token: Token) -> str:
    if token.type == "_NL":
        return "end of line"
    if token.type == "$END":
        return "end of file"
    return f"'{token}'"


@lru_cache(maxsize=None)
def _parser(start: str) -> Lark:
    grammar = resources.files("anmc.lang").joinpath("grammar.lark").read_text()
    return Lark(grammar, parser="lalr", start=start, propagate_positions=True, maybe_placeholders=True)


def _span(meta_or_token) -> ast.Span:
    m = meta_or_token
    if getattr(m, "empty", False):
        return ast.Span.unknown()
    return ast.Span(m.line, m.column, m.end_line, m.end_column)


@v_args(meta=True)
class _ToAst(Transformer):
    """Lark tree -> frozen dataclasses. Each method receives the node's `meta` and its children."""

    # -- expressions
    def number(self, meta, children):
        (tok,) = children
        return ast.Number(float(tok), str(tok), _span(tok))

    def name(self, meta, children):
        (tok,) = children
        return ast.Name(str(tok), _span(tok))

    def _binary(op):  # noqa: N805 - a small factory used at class-creation time
        def method(self, meta, children):
            left, right = children[0], children[-1]
            return ast.Binary(op, left, right, _span(meta))

        return method

    add, sub, mul, div = _binary("+"), _binary("-"), _binary("*"), _binary("/")

    def pow(self, meta, children):
        return ast.Binary("^", children[0], children[-1], _span(meta))

    def neg(self, meta, children):
        return ast.Unary("-", children[0], _span(meta))

    def call(self, meta, children):
        func, *args = children
        args = tuple(a for a in args if a is not None)
        return ast.Call(str(func), args, _span(meta), _span(func))

    # -- declarations
    def model_decl(self, meta, children):
        return ("model", str(children[0]), _span(children[0]))

    def const_decl(self, meta, children):
        name, value = children
        return ast.ConstDecl(str(name), value, _span(meta), _span(name))

    def bounds(self, meta, children):
        return ("bounds", children[0], children[1])

    def param_decl(self, meta, children):
        name, value, *rest = children
        bounds = next((r[1:] for r in rest if isinstance(r, tuple)), None)
        learn = any(isinstance(r, Token) and r.type == "LEARN" for r in rest)
        return ast.ParamDecl(str(name), value, bounds, learn, _span(meta), _span(name))

    def distribution(self, meta, children):
        kind, *args = children
        args = tuple(a for a in args if a is not None)
        return ast.Distribution(str(kind), args, _span(meta), _span(kind))

    def state_decl(self, meta, children):
        name, dist = children
        return ast.StateDecl(str(name), dist, _span(meta), _span(name))

    def dt(self, meta, children):
        return ("dt", children[0])

    def steps(self, meta, children):
        (tok,) = children
        return ("steps", tok)

    def integration(self, meta, children):
        name, *steps = children
        return ("integration", name, steps[0][1] if steps else None)

    def derivative(self, meta, children):
        name, _prime, rhs = children
        return ast.Equation(str(name), rhs, True, _span(meta), _span(name))

    def next_value(self, meta, children):
        name, rhs = children
        return ast.Equation(str(name), rhs, False, _span(meta), _span(name))

    def let_decl(self, meta, children):
        name, value = children
        return ast.Let(str(name), value, _span(meta), _span(name))

    def coordinates_decl(self, meta, children):
        return ast.NameList("coordinates", tuple((str(t), _span(t)) for t in children), _span(meta))

    def velocities_decl(self, meta, children):
        return ast.NameList("velocities", tuple((str(t), _span(t)) for t in children), _span(meta))

    def energy_decl(self, meta, children):
        kind, name, value = children
        return ast.Energy(str(kind), str(name), value, _span(meta), _span(name))

    def force_decl(self, meta, children):
        name, value = children
        return ast.Force(str(name), value, _span(meta), _span(name))

    def dynamics_block(self, meta, children):
        kind_tok, *rest = children
        dt = integrator = integrator_span = steps = steps_span = None
        equations, items = [], []
        for item in rest:
            if not isinstance(item, tuple):
                items.append(item)
                if isinstance(item, ast.Equation):
                    equations.append(item)
            elif item[0] == "dt":
                dt = item[1]
            elif item[0] == "integration":
                integrator, integrator_span = str(item[1]), _span(item[1])
                if item[2] is not None:
                    steps_span = _span(item[2])
                    text = str(item[2])
                    steps = int(float(text)) if float(text).is_integer() else -1
        return ast.Dynamics(
            str(kind_tok), dt, integrator, integrator_span, steps, steps_span, tuple(equations), _span(meta), tuple(items)
        )

    def noise_entry(self, meta, children):
        name, std, *rest = children
        bounds = next((r[1:] for r in rest if isinstance(r, tuple)), None)
        learn = any(isinstance(r, Token) and r.type == "LEARN" for r in rest)
        return ast.NoiseEntry(str(name), std, learn, _span(meta), _span(name), bounds)

    def noise_decl(self, meta, children):
        return ast.NoiseDecl(tuple(children), _span(meta))

    def observation(self, meta, children):
        name, *value = children
        return ast.Observation(str(name), value[0] if value else None, _span(meta), _span(name))

    def observe_decl(self, meta, children):
        return ast.ObserveDecl(tuple(children), _span(meta))

    def set_item(self, meta, children):
        name, value = children
        return ast.SetItem(str(name), value, _span(meta), _span(name))

    bare_set = set_item

    def init_item(self, meta, children):
        name, dist = children
        return ast.InitItem(str(name), dist, _span(meta), _span(name))

    def start_item(self, meta, children):
        name, value = children
        return ast.StartItem(str(name), value, _span(meta), _span(name))

    def intervention_block(self, meta, children):
        name, *items = children
        return ast.Intervention(str(name), tuple(items), _span(meta), _span(name))

    def edit(self, meta, children):
        return children[0]

    def start(self, meta, children):
        return children


def _equation_hint(lines: list[str], line: int, name: str) -> str:
    """What `NAME = EXPR` should be, from the block it is in (the nearest `dynamics` or `intervention` line above)."""
    words = (t.split("#")[0].split() for t in reversed(lines[: line - 1]))
    header = next((w for w in words if w[:1] in (["dynamics"], ["intervention"])), [])
    if header[:2] == ["dynamics", "discrete"]:
        return f"'{name} = ...' is not an equation of a discrete map: write 'next {name} = EXPR' (the state at the next frame)"
    if header[:1] == ["intervention"]:
        return (f"'{name} = ...' is not an intervention item: write 'set {name} = EXPR' to change a const or param, "
                f"or an edited equation ('{name}' = EXPR', or 'next {name} = EXPR' for a discrete map)")  # fmt: skip
    return (f"'{name} = ...' is not an equation: continuous dynamics give the derivative, '{name}' = EXPR' (a discrete "
            f"map, 'dynamics discrete', gives the next value: 'next {name} = EXPR')")  # fmt: skip


def _syntax_error(err: UnexpectedInput, text: str, filename: str) -> AnmError:
    line, column = max(err.line, 1), max(err.column, 1)
    lines = ast.source_lines(text)
    source_line = lines[line - 1] if 0 < line <= len(lines) else ""
    if isinstance(err, UnexpectedCharacters):
        char = text[err.pos_in_stream] if err.pos_in_stream < len(text) else ""
        if char == ".":
            msg = "'.' is not part of the language: attribute access is not allowed, and numbers need a digit before the dot"
        elif char == "`":
            msg = "backticks are not part of the language"
        elif char in "\"":
            msg = "strings are not part of the language"
        elif char in "[]":
            msg = "subscripts are not part of the language ('[' only appears in 'in [lo, hi]' bounds)"
        elif not char.isascii():
            msg = f"unexpected character {char!r} (U+{ord(char):04X}); names and operators must be plain ASCII"
        else:
            msg = f"unexpected character {char!r}"
        return AnmError(Diagnostic(msg, filename, line, column, source_line, 1))
    if isinstance(err, UnexpectedToken):
        tok = err.token
        expected = _describe_expected(set(err.expected))
        if tok.type in _BLOCK_WORDS:
            msg = f"a '{tok}' line {_BLOCK_WORDS[tok.type]}"
        elif tok.type == "LSQB":
            msg = "subscripts are not part of the language ('[' only appears in 'in [lo, hi]' bounds)"
        elif tok.type == "EQUAL" and set(err.expected) == {"PRIME"}:  # `x = ...` where an equation goes
            before = source_line[: column - 1].split()
            msg = _equation_hint(lines, line, before[-1] if before else "x")
        elif tok.type == "$END":
            msg = f"unexpected end of file{expected}"
        elif tok.type == "NAME" and f"_{_STATEMENT_KEYWORDS[1].upper()}" in err.expected:
            # a word where a statement must start: `constant k = 1`, `Param L = 1`
            starts = [k for k in _STATEMENT_KEYWORDS if f"_{k.upper()}" in err.expected]
            msg = f"unknown statement '{tok}'" + (
                did_you_mean(str(tok), starts) or "; a statement starts with " + ", ".join(starts[:-1]) + " or " + starts[-1]
            )
        else:
            msg = f"unexpected {_token_text(tok)}{expected}"
            if tok.type == "NAME" and "_NL" in err.expected and str(tok) not in _STATEMENT_KEYWORDS:
                msg += " (each statement goes on its own line)"
        width = max(1, len(str(tok))) if tok.type not in ("_NL", "$END") else 1
        if tok.type in ("_NL", "$END"):
            # point just after the last character of the line, where something is missing
            line = tok.line if tok.type == "_NL" else line
            source_line = lines[line - 1] if 0 < line <= len(lines) else ""
            column = len(source_line.split("#")[0].rstrip()) + 1 if tok.type == "_NL" else column
        return AnmError(Diagnostic(msg, filename, line, column, source_line, width))
    if isinstance(err, UnexpectedEOF):
        return AnmError(Diagnostic("unexpected end of file", filename, line, column, source_line))
    return AnmError(Diagnostic(str(err).splitlines()[0], filename, line, column, source_line))


# Deeper parse trees are refused with a message: the AST transform, the checker and SymPy all recurse.
# Depth is measured after long flat chains are regrouped (`_regroup_chains`): a sum of 5000 terms is
# about 13 levels deep, 101 nested parentheses are 101.
MAX_NESTING = 100
# Chains of + and - (or * and /) longer than this are regrouped as a balanced tree of the same value.
LONG_CHAIN = 32
_CHAINS = {"add": "add", "sub": "add", "mul": "mul", "div": "mul"}  # rule -> its family
_INVERSE = {"add": "sub", "sub": "add", "mul": "div", "div": "mul"}


def _meta(first, last) -> Meta:
    """A span from the start of `first` to the end of `last` (Trees or Tokens)."""
    a = first.meta if isinstance(first, Tree) else first
    b = last.meta if isinstance(last, Tree) else last
    m = Meta()
    m.line, m.column, m.end_line, m.end_column = a.line, a.column, b.end_line, b.end_column
    m.start_pos, m.end_pos = a.start_pos, b.end_pos
    m.empty = False
    return m


def _balanced(items: list, head_meta: Meta):
    """A balanced tree of `t0 op1 t1 op2 t2 ...` (items: (op, term), the first op ignored) with the same value:
    `a - b - c - d` -> `(a - b) - (c + d)`, `a / b / c * d` -> `(a / b) / (c / d)`."""
    if len(items) == 1:
        return items[0][1]
    mid = len(items) // 2
    left, right = items[:mid], items[mid:]
    op = right[0][0]
    flip = op in ("sub", "div")  # the right group's own operators flip: a - (b + c) = a - b - c
    inner = [(op, right[0][1])] + [(_INVERSE[o] if flip else o, t) for o, t in right[1:]]
    lt, rt = _balanced(left, None), _balanced(inner, None)
    return Tree(op, [lt, rt], head_meta if head_meta is not None else _meta(_first(lt), _last(rt)))


def _first(node):
    while isinstance(node, Tree) and node.data in _CHAINS:
        node = node.children[0]
    return node


def _last(node):
    while isinstance(node, Tree) and node.data in _CHAINS:
        node = node.children[-1]
    return node


def _regroup_chains(tree: Tree) -> None:
    """Regroup (in place, iteratively) every left-leaning chain of more than LONG_CHAIN terms as a
    balanced tree: the parser builds `a + b + c` as `(a + b) + c`, so a flat sum of n terms is n levels
    deep for everything recursive after it. SymPy flattens sums and products, so the model is the same."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for i, child in enumerate(node.children):
            if not isinstance(child, Tree):
                continue
            family = _CHAINS.get(child.data)
            if family is None:
                stack.append(child)
                continue
            ops, terms, cur = [], [], child
            while isinstance(cur, Tree) and _CHAINS.get(cur.data) == family:
                ops.append(cur.data)
                terms.append(cur.children[-1])
                cur = cur.children[0]
            terms.append(cur)
            ops.append(family)
            ops.reverse()
            terms.reverse()
            if len(terms) > LONG_CHAIN:
                node.children[i] = _balanced(list(zip(ops, terms)), child.meta)
            stack.extend(t for t in terms if isinstance(t, Tree))


_EXPRESSION_RULES = {"add", "sub", "mul", "div", "neg", "pow", "call", "number", "name"}


def _check_nesting(tree: Tree, text: str, filename: str) -> None:
    """Refuse (iteratively, before anything recursive runs) a parse tree deeper than MAX_NESTING."""
    stack = [(tree, 1, None)]
    while stack:
        node, depth, expression = stack.pop()
        if expression is None and node.data in _EXPRESSION_RULES:
            expression = node  # the outermost expression around the deep part: the caret goes there
        if depth > MAX_NESTING:
            message = f"this expression is nested too deeply (more than {MAX_NESTING} levels); split it with consts"
            raise AnmError(diagnostic_at(message, _span((expression or node).meta), text, filename))
        stack.extend((child, depth + 1, expression) for child in node.children if isinstance(child, Tree))


def _parse(text: str, filename: str, start: str):
    if not text.endswith("\n"):
        text += "\n"
    try:
        tree = _parser(start).parse(text)
        _regroup_chains(tree)
        _check_nesting(tree, text, filename)
        return _ToAst().transform(tree), text
    except UnexpectedInput as err:
        raise _syntax_error(err, text, filename) from None
    except VisitError as err:  # an error raised inside a transformer method: show ours, not Lark's wrapper
        raise err.orig_exc from None


def parse_anm(text: str, filename: str = "<anm>") -> ast.Program:
    """Parse a whole `.anm` file. Raises `AnmError` (with line, column and a caret) on a syntax error."""
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write: not part of the text
    if "\x00" in text:
        pos = text.index("\x00")
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        shown = ast.source_lines(text)[line - 1].replace("\x00", "\u2400")  # a visible stand-in, one column wide
        raise AnmError(Diagnostic("the file contains NUL bytes; is it really a .anm text file?", filename, line, column, shown))
    items, text = _parse(text, filename, "start")
    model = model_span = None
    statements = []
    for item in items:
        if isinstance(item, tuple) and item[0] == "model":
            model, model_span = item[1], item[2]
        else:
            statements.append(item)
    return ast.Program(model, model_span, tuple(statements), text, filename)


def parse_edit(text: str, filename: str = "<edit>") -> ast.InterventionItem:
    """Parse one edit line: `c = 0.8`, `set c = 0.8`, `omega' = ...`, `next x = ...`, `init x ~ ...`, `start x = ...`."""
    if "\n" in text.strip():
        raise AnmError(diagnostic_at("an edit is a single line", ast.Span(1, 1, 1, 2), text, filename))
    item, _ = _parse(text.strip(), filename, "edit")
    return item
