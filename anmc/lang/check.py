"""Static checks of a parsed `.anm` program: names, structure, functions. All errors are collected.

    diagnostics = check_program(program)      # errors and warnings, in source order

Numeric checks (dt > 0, defaults inside bounds, sd > 0) need the values, and run when the symbolic
model is built (`anmc.symbolic.model.build_model`), which reports in the same format.
"""

from __future__ import annotations

from anmc.lang import ast
from anmc.lang.errors import Diagnostic, diagnostic_at, did_you_mean
from anmc.lang.integrators import INTEGRATORS
from anmc.lang.names import CONSTANTS, DISTRIBUTIONS, FUNCTIONS, KEYWORDS, NON_SMOOTH, reserved_reason  # noqa: F401 (re-exported)

MAX_STEPS = 1000


class _Checker:
    def __init__(self, program: ast.Program):
        self.p = program
        self.diags: list[Diagnostic] = []
        self.consts: dict[str, ast.ConstDecl] = {}
        self.params: dict[str, ast.ParamDecl] = {}
        self.states: dict[str, ast.StateDecl] = {}
        self.used: set[str] = set()
        self.lets: dict[str, ast.Let] = {}  # the dynamics block's lets (interventions may redefine them)
        self.let_order: list[str] = []
        self.lagrangian_labels: dict[str, ast.Energy] = {}
        self.observation_items: dict[str, ast.Observation] = {}  # `observe NAME = EXPR` (not plain), by name

    # -- reporting
    def error(self, message, span):
        self.diags.append(diagnostic_at(message, span, self.p.source, self.p.filename))

    def warn(self, message, span):
        self.diags.append(diagnostic_at(message, span, self.p.source, self.p.filename, "warning"))

    # -- expressions
    def expr(self, expr: ast.Expr, allowed: dict[str, str], where: str, note_non_smooth: bool = False, later=None):
        """Check names and calls in `expr`; `allowed` maps each usable name to its kind; `later` holds the
        lets defined below this line (a use of one is a use before its definition)."""
        for node in ast.walk_names(expr):
            if isinstance(node, ast.Call):
                self.call(node, allowed, note_non_smooth)
                continue
            name = node.id
            if name in allowed or name in CONSTANTS:
                self.used.add(name)
            elif later and name in later:
                self.used.add(name)
                self.error(f"'{name}' is used before its definition (let at line {later[name].span.line}); move that 'let' above this line", node.span)
            elif name in self.lagrangian_labels:
                self.error(f"'{name}' names the {self.lagrangian_labels[name].kind} energy, which only the derivation uses; to use it here write it as a 'let' and refer to that in the energy line", node.span)
            elif name in FUNCTIONS:
                self.error(f"'{name}' is a function; call it as {name}(...)", node.span)
            elif name in self.states or name in self.params or name in self.consts:
                kind = "state" if name in self.states else "param" if name in self.params else "const"
                self.error(f"{kind} '{name}' cannot be used in {where}", node.span)
            else:
                self.error(f"unknown name '{name}'" + did_you_mean(name, list(allowed) + list(CONSTANTS)), node.span)

    def call(self, node: ast.Call, allowed, note_non_smooth):
        name = node.func
        if name not in FUNCTIONS:
            if name in CONSTANTS:
                self.error(f"'{name}' is a constant, not a function", node.func_span)
            elif name in allowed:
                self.error(f"'{name}' is not a function", node.func_span)
            else:
                choices = ", ".join(FUNCTIONS)
                self.error(
                    f"unknown function '{name}'" + (did_you_mean(name, FUNCTIONS) or f"; allowed functions: {choices}"),
                    node.func_span,
                )
            return
        arity = FUNCTIONS[name]
        n = len(node.args)
        if arity is None and n < 2:
            self.error(f"{name}() takes two or more arguments, got {n}", node.span)
        elif arity is not None and n != arity:
            plural = "argument" if arity == 1 else "arguments"
            self.error(f"{name}() takes {arity} {plural}, got {n}", node.span)
        if note_non_smooth and name in NON_SMOOTH:
            self.warn(f"{name}() is not smooth: its Jacobian is piecewise (exact away from the kinks)", node.func_span)

    # -- declarations
    def declare(self, name, span, table, decl) -> bool:
        why = reserved_reason(name)
        if why:
            self.error(f"{why}; choose another name", span)
            return False
        for other in (self.consts, self.params, self.states):
            if name in other:
                first = other[name]
                self.error(f"'{name}' is declared twice (first at line {first.span.line})", span)
                return False
        table[name] = decl
        return True

    def run(self) -> list[Diagnostic]:
        """Every check, in the order its diagnostics are reported; returns them."""
        p = self.p
        of = lambda kind: [s for s in p.statements if isinstance(s, kind)]  # noqa: E731
        self.declarations()
        self.dynamics_blocks(of(ast.Dynamics))
        self.noise_lines(of(ast.NoiseDecl))
        self.observe_lines(of(ast.ObserveDecl))
        dynamics = of(ast.Dynamics)
        self.interventions(of(ast.Intervention), dynamics[0].kind if dynamics else "continuous")
        self.unused()
        return self.diags

    def declarations(self) -> None:
        """consts, then params, then states (so that their order in the file does not matter), building
        the scopes later checks use: `constant_scope` (consts), `value_scope` (+ params),
        `dynamic_scope` (+ states)."""
        self.constant_scope: dict[str, str] = {}
        for s in self.p.statements:
            if isinstance(s, ast.ConstDecl):
                self.expr(s.value, dict(self.constant_scope), "a const's value")
                if self.declare(s.name, s.name_span, self.consts, s):
                    self.constant_scope[s.name] = "const"
        for s in self.p.statements:
            if isinstance(s, ast.ParamDecl):
                self.expr(s.value, self.constant_scope, "a param's value")
                for b in s.bounds or ():
                    self.expr(b, self.constant_scope, "a param's bounds")
                self.declare(s.name, s.name_span, self.params, s)
        self.value_scope = {**self.constant_scope, **{n: "param" for n in self.params}}
        for s in self.p.statements:
            if isinstance(s, ast.StateDecl):
                self.distribution(s.init, self.value_scope)
                self.declare(s.name, s.name_span, self.states, s)
        if not self.states:
            self.error("the model declares no state; add a line such as 'state x ~ Normal(0, 1)'", None)
        self.dynamic_scope = {**self.value_scope, **{n: "state" for n in self.states}}

    def dynamics_blocks(self, dynamics: list[ast.Dynamics]) -> None:
        """Exactly one `dynamics` block, checked by `dynamics`."""
        if not dynamics:
            self.error("the model has no 'dynamics' block; add 'dynamics continuous dt = ... using rk4' and one equation per state", None)
        for extra in dynamics[1:]:
            self.error(f"a second 'dynamics' block (the first is at line {dynamics[0].span.line}); a model has one", extra.span)
        if dynamics:
            self.dynamics(dynamics[0], self.constant_scope, self.dynamic_scope)

    def noise_lines(self, noises: list[ast.NoiseDecl]) -> None:
        """One noise std per state, no more, no fewer, over params and consts."""
        if not noises:
            self.error("the model has no 'noise' line; add e.g. 'noise " + ", ".join(f"{s} = 0.01" for s in self.states) + "'", None)
        seen: dict[str, ast.NoiseEntry] = {}
        for decl in noises:
            for entry in decl.entries:
                self.expr(entry.std, self.value_scope, "a noise std")
                for bound in entry.bounds or ():
                    self.expr(bound, self.value_scope, "a noise std's bound")
                if entry.state not in self.states:
                    self.error(f"noise for unknown state '{entry.state}'" + did_you_mean(entry.state, self.states), entry.state_span)
                elif entry.state in seen:
                    self.error(f"noise for '{entry.state}' is given twice (first at line {seen[entry.state].span.line})", entry.state_span)
                else:
                    seen[entry.state] = entry
        if noises:
            for name in self.states:
                if name not in seen:
                    self.error(f"no noise std for state '{name}'; add '{name} = ...' to the noise line (0 is allowed)", noises[0].span)

    def observe_lines(self, observes: list[ast.ObserveDecl]) -> None:
        """Each observation once: `observe theta` names a known state (observed once); `observe y = EXPR` has a
        new name (not a state, param, const or let) and an expression over known names that depends on a
        state. Any number of observe lines; a warning when there is none."""
        if not observes:
            self.warn("no 'observe' line: the decoder will see every state, velocities included, which entangles the latents; add e.g. 'observe " + next(iter(self.states), "x") + "'", None)
        scope = {**self.dynamic_scope, **{n: "let" for n in self.lets}}
        through_lets = self.let_states()
        seen: dict[str, ast.Observation] = {}
        for decl in observes:
            for ob in decl.items:
                first = seen.get(ob.name)
                if ob.plain:
                    if ob.name not in self.states:
                        self.error(
                            f"observe names unknown state '{ob.name}'"
                            + (did_you_mean(ob.name, self.states) or f"; to observe a function of the states write 'observe {ob.name} = EXPR'"),
                            ob.name_span,
                        )
                    elif first is not None and first.plain:
                        self.error(f"state '{ob.name}' is observed twice (first at line {first.span.line})", ob.name_span)
                    seen.setdefault(ob.name, ob)
                    continue
                errors = len([d for d in self.diags if d.severity == "error"])
                self.expr(ob.value, scope, "an observation", note_non_smooth=True)
                unknown = len([d for d in self.diags if d.severity == "error"]) > errors
                why = reserved_reason(ob.name)
                clash = next(((k, t[ob.name]) for k, t in (("state", self.states), ("param", self.params), ("const", self.consts), ("let", self.lets)) if ob.name in t), None)
                if why:
                    self.error(f"{why}; choose another name for this observation", ob.name_span)
                elif clash is not None:
                    kind, decl = clash
                    hint = f" ('observe {ob.name}' alone observes the state itself)" if kind == "state" else ""
                    self.error(f"observation '{ob.name}' has the name of the {kind} declared at line {decl.span.line}; choose another name{hint}", ob.name_span)
                elif first is not None:
                    self.error(f"observation '{ob.name}' is declared twice (first at line {first.span.line})", ob.name_span)
                seen.setdefault(ob.name, ob)
                self.observation_items.setdefault(ob.name, ob)
                used = set()
                for node in ast.walk_names(ob.value):
                    if isinstance(node, ast.Name):
                        used |= {node.id} & set(self.states) | through_lets.get(node.id, set())
                if not used and not unknown:
                    self.error(
                        f"observation '{ob.name}' depends on no state: a frame's reading must be a function of the states "
                        f"({', '.join(self.states)})", ob.value.span,
                    )  # fmt: skip

    def let_states(self) -> dict[str, set[str]]:
        """The states each let of the dynamics block depends on, through the lets it uses."""
        out: dict[str, set[str]] = {}
        for name in self.let_order:
            names = {n.id for n in ast.walk_names(self.lets[name].value) if isinstance(n, ast.Name)}
            out[name] = (names & set(self.states)).union(*(out.get(n, set()) for n in names if n != name))
        return out

    def interventions(self, interventions: list[ast.Intervention], kind: str) -> None:
        """Unique names, each item checked by `intervention_item` against the model's dynamics `kind`."""
        seen: dict[str, ast.Intervention] = {}
        for iv in interventions:
            if iv.name in seen:
                self.error(f"intervention '{iv.name}' is declared twice (first at line {seen[iv.name].span.line})", iv.name_span)
            seen[iv.name] = iv
            if not iv.items:
                self.warn(f"intervention '{iv.name}' changes nothing", iv.name_span)
            scope = {**self.dynamic_scope, **{n: "let" for n in self.lets}}
            for item in iv.items:
                self.intervention_item(item, kind, self.constant_scope, self.value_scope, scope)
                if isinstance(item, ast.Let):
                    scope[item.name] = "let"

    def unused(self) -> None:
        """A warning for each const or param no expression uses."""
        for table, kind_name in ((self.consts, "const"), (self.params, "param"), (self.lets, "let")):
            for name, decl in table.items():
                if name not in self.used:
                    self.warn(f"{kind_name} '{name}' is never used", decl.name_span)

    def distribution(self, dist: ast.Distribution, scope):
        if dist.kind not in DISTRIBUTIONS:
            self.error(
                f"unknown distribution '{dist.kind}'" + (did_you_mean(dist.kind, DISTRIBUTIONS) or "; use Normal(mean, sd) or Uniform(low, high)"),
                dist.kind_span,
            )
            return
        if len(dist.args) != 2:
            a, b = DISTRIBUTIONS[dist.kind]
            self.error(f"{dist.kind} takes 2 arguments ({a}, {b}), got {len(dist.args)}", dist.span)
        for arg in dist.args:
            self.expr(arg, scope, "an initial distribution")

    def dynamics(self, dyn: ast.Dynamics, constant_scope, dynamic_scope):
        if dyn.dt is not None:
            self.expr(dyn.dt, constant_scope, "dt")
        elif dyn.kind == "continuous":
            self.error("continuous dynamics need a frame interval: 'dynamics continuous dt = 1/30 using rk4'", dyn.span)
        if dyn.integrator is not None and dyn.integrator not in INTEGRATORS:
            self.error(
                f"unknown integrator '{dyn.integrator}'"
                + (did_you_mean(dyn.integrator, INTEGRATORS) or "; must be one of " + ", ".join(INTEGRATORS)),
                dyn.integrator_span,
            )
        if dyn.steps is not None and dyn.steps < 1:
            self.error("steps must be a positive whole number", dyn.steps_span)
        elif dyn.steps is not None and dyn.steps > MAX_STEPS:
            self.error(f"steps must be at most {MAX_STEPS} (substeps per frame); use a smaller dt instead", dyn.steps_span)
        seen: dict[str, ast.Equation] = {}
        scope = dict(dynamic_scope)
        later = {let.name: let for let in dyn.lets}
        in_cycle = self.let_cycles(dyn.lets)
        self.lagrangian_labels = {e.name: e for e in dyn.of(ast.Energy)} if dyn.kind == "lagrangian" else {}
        for item in dyn.items:
            if isinstance(item, ast.Let):
                later.pop(item.name, None)
                cyclic = {n: "let" for n in in_cycle} if item.name in in_cycle else {}  # reported once, as the cycle
                self.let(item, scope, {} if cyclic else later, cyclic)
                if item.name not in self.lets and item.name not in scope:
                    self.lets[item.name] = item
                    self.let_order.append(item.name)
                scope[item.name] = "let"
            elif isinstance(item, ast.Equation):
                self.equation(item, dyn.kind, scope, later)
                if item.state in seen:
                    self.error(f"state '{item.state}' has two equations (the first at line {seen[item.state].span.line})", item.state_span)
                seen[item.state] = item
            elif dyn.kind != "lagrangian":
                word = item.kind if isinstance(item, (ast.NameList, ast.Energy)) else "force"
                self.error(f"'{word}' lines belong in a 'dynamics lagrangian' block, not in 'dynamics {dyn.kind}'", item.span)
            elif not isinstance(item, ast.NameList):
                self.expr(item.value, scope, f"the {item.kind if isinstance(item, ast.Energy) else 'generalized force'}", note_non_smooth=True, later=later)
        if dyn.kind == "lagrangian":
            self.lagrangian(dyn)
            return
        written = [eq.state for eq in dyn.equations if eq.state in self.states]
        if dyn.integrator == "semi_implicit_euler" and written != [s for s in self.states if s in written]:
            self.warn(
                "semi_implicit_euler updates the states in the order they are declared ("
                + ", ".join(self.states) + "), not in the order the equations are written",
                dyn.integrator_span,
            )
        energy_lines = len(dyn.items) > len(dyn.equations) + len(dyn.lets)  # reported above: the block's kind is wrong
        for name, decl in self.states.items():
            if name not in seen and not energy_lines:
                form = f"{name}' = ..." if dyn.kind == "continuous" else f"next {name} = ..."
                self.error(f"state '{name}' has no equation; add the equation \"{form}\" to the dynamics block", decl.name_span)

    def let(self, let: ast.Let, scope, later, also=None) -> None:
        """A `let`: a new name (not a state, param or const, not declared twice) over the names above it
        (and `also`: the other lets of its cycle, already reported)."""
        self.expr(let.value, {**scope, **(also or {})}, "a 'let'", note_non_smooth=True, later=later)
        why = reserved_reason(let.name)
        if why:
            self.error(f"{why}; choose another name for this let", let.name_span)
        for kind, table in (("state", self.states), ("param", self.params), ("const", self.consts)):
            if let.name in table:
                self.error(f"let '{let.name}' shadows the {kind} declared at line {table[let.name].span.line}; choose another name", let.name_span)
                return
        if let.name in scope:
            first = self.lets.get(let.name)
            where = f" (first at line {first.span.line})" if first else ""
            self.error(f"let '{let.name}' is defined twice{where}; give the second another name", let.name_span)

    def let_cycles(self, lets) -> set[str]:
        """Report each cycle among `lets` (a defined in terms of b, b in terms of a) once; the names in cycles."""
        names = {let.name: let for let in lets if let.name not in self.states and let.name not in self.params and let.name not in self.consts}
        deps = {let.name: [n.id for n in ast.walk_names(let.value) if isinstance(n, ast.Name) and n.id in names] for let in names.values()}
        in_cycle: set[str] = set()
        for start in names:
            path, stack = [start], [(start, iter(deps[start]))]
            while stack:  # depth first from `start`, looking for a way back to it
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    path.pop()
                elif nxt == start:
                    if start not in in_cycle and not (set(path) & in_cycle):
                        if len(path) == 1:
                            self.error(f"let '{start}' is defined in terms of itself", names[start].name_span)
                        else:
                            chain = " -> ".join([*path, start])
                            self.error(f"the lets {chain} form a cycle; define one of them without the others", names[start].name_span)
                    in_cycle.update(path)
                    break
                elif nxt not in path:
                    path.append(nxt)
                    stack.append((nxt, iter(deps[nxt])))
        return in_cycle

    def lagrangian(self, dyn: ast.Dynamics) -> None:
        """A `dynamics lagrangian` block: one coordinates and one velocities line pairing every state, one
        kinetic energy, at most one potential and one dissipation, forces on coordinates, no equations."""
        for eq in dyn.equations:
            self.error(
                f"a 'dynamics lagrangian' block derives the equations from the energies; remove '{eq.state}' = ...' "
                "(or write 'dynamics continuous' and give every equation)", eq.state_span,
            )  # fmt: skip
        lists = {}
        for kind in ("coordinates", "velocities"):
            found = [n for n in dyn.of(ast.NameList) if n.kind == kind]
            for extra in found[1:]:
                self.error(f"a second '{kind}' line (the first is at line {found[0].span.line}); list them all on one", extra.span)
            lists[kind] = found[0].names if found else ()
            if not found:
                example = "coordinates theta" if kind == "coordinates" else "velocities omega"
                self.error(f"the lagrangian block has no '{kind}' line; add e.g. '{example}'", dyn.span)
        listed: dict[str, str] = {}
        unknown = False
        for kind, names in lists.items():
            for name, span in names:
                if name not in self.states:
                    unknown = True
                    self.error(f"{kind} names '{name}', which is not a state" + (did_you_mean(name, self.states) or "; declare it with 'state'"), span)
                elif name in listed:
                    self.error(f"state '{name}' is listed twice (as {listed[name]} and as {'a coordinate' if kind == 'coordinates' else 'a velocity'})", span)
                else:
                    listed[name] = "a coordinate" if kind == "coordinates" else "a velocity"
        q, v = lists["coordinates"], lists["velocities"]
        if q and v and len(q) != len(v):
            self.error(f"{len(q)} coordinates but {len(v)} velocities; the velocities line pairs one velocity with each coordinate, in order", dyn.of(ast.NameList)[-1].span)
        if q and v and not unknown:
            for name, decl in self.states.items():
                if name not in listed:
                    self.error(f"state '{name}' is neither a coordinate nor a velocity of the lagrangian block; add it to one of the two lines", decl.name_span)
        energies: dict[str, ast.Energy] = {}
        for e in dyn.of(ast.Energy):
            why = reserved_reason(e.name)
            clash = next((k for k, t in (("state", self.states), ("param", self.params), ("const", self.consts), ("let", self.lets)) if e.name in t), None)
            if why or clash:
                self.error((f"{why}" if why else f"the {e.kind} energy's name '{e.name}' is already a {clash}") + "; choose another name", e.name_span)
            if e.kind in energies:
                self.error(f"a second {e.kind} energy (the first is at line {energies[e.kind].span.line}); write their sum on one line", e.span)
            energies[e.kind] = e
        if "kinetic" not in energies:
            self.error("the lagrangian block has no kinetic energy; add e.g. 'kinetic T = m*omega^2/2'", dyn.span)
        forced: dict[str, ast.Force] = {}
        coordinates = [n for n, _ in q]
        for f in dyn.of(ast.Force):
            if f.coordinate not in coordinates:
                self.error(f"a force on '{f.coordinate}', which is not a coordinate" + did_you_mean(f.coordinate, coordinates) + "; forces act on the coordinates", f.coordinate_span)
            elif f.coordinate in forced:
                self.error(f"a second force on '{f.coordinate}' (the first is at line {forced[f.coordinate].span.line}); write their sum on one line", f.coordinate_span)
            forced[f.coordinate] = f

    def equation(self, eq: ast.Equation, kind, dynamic_scope, later=None):
        if kind == "lagrangian":
            kind = "continuous"
        if eq.derivative and kind == "discrete":
            self.error(f"a derivative equation ({eq.state}' = ...) inside 'dynamics discrete'; write 'next {eq.state} = ...'", eq.state_span)
        if not eq.derivative and kind == "continuous":
            self.error(f"a 'next' equation inside 'dynamics continuous'; write \"{eq.state}' = ...\" (a derivative)", eq.state_span)
        if eq.state not in self.states:
            what = "param" if eq.state in self.params else "const" if eq.state in self.consts else None
            if what:
                self.error(f"an equation for {what} '{eq.state}'; only states have equations", eq.state_span)
            else:
                self.error(f"an equation for undeclared state '{eq.state}'" + did_you_mean(eq.state, self.states), eq.state_span)
        self.expr(eq.rhs, dynamic_scope, "an equation", note_non_smooth=True, later=later)

    def intervention_item(self, item, kind, constant_scope, value_scope, dynamic_scope):
        if isinstance(item, ast.SetItem):
            if item.name in self.states:
                self.error(f"'set' changes consts and params; to change the start of state '{item.name}' use 'init' or 'start'", item.name_span)
            elif item.name not in self.consts and item.name not in self.params:
                self.error(f"'set' of unknown name '{item.name}'" + did_you_mean(item.name, list(self.consts) + list(self.params)), item.name_span)
            self.expr(item.value, value_scope, "a 'set' value")
        elif isinstance(item, ast.Equation):
            self.equation(item, kind, dynamic_scope)
        elif isinstance(item, ast.Let):
            self.intervention_let(item, dynamic_scope)
        elif isinstance(item, ast.InitItem):
            if item.state not in self.states:
                self.error(f"'init' of unknown state '{item.state}'" + did_you_mean(item.state, self.states), item.state_span)
            self.distribution(item.init, value_scope)
        elif isinstance(item, ast.StartItem):
            if item.state not in self.states:
                self.error(f"'start' of unknown state '{item.state}'" + did_you_mean(item.state, self.states), item.state_span)
            self.expr(item.value, dynamic_scope, "a 'start' value")


    def intervention_let(self, let: ast.Let, scope) -> None:
        """In an intervention, `let` redefines a let of the dynamics block (over the names above that one, so no
        cycle can form) or adds a new one for the intervention's equations."""
        if let.name in self.lets:
            above = self.let_order[: self.let_order.index(let.name)]
            names_above = {n: k for n, k in scope.items() if k != "let" or n in above or n not in self.lets}
            names_above.pop(let.name, None)
            later = {n: self.lets[n] for n in self.let_order if n not in above}
            self.expr(let.value, names_above, "a 'let'", note_non_smooth=True, later=later)
        else:
            self.let(let, scope, {})
            if let.name in self.observation_items:
                first = self.observation_items[let.name]
                self.error(f"let '{let.name}' has the name of the observation declared at line {first.span.line}; choose another name", let.name_span)

def check_program(program: ast.Program) -> list[Diagnostic]:
    """Every static error and warning of `program`, sorted by position in the file."""
    return sorted(_Checker(program).run(), key=lambda d: (d.line, d.column))


def check_edit(item, program: ast.Program, source: str, filename: str) -> list[Diagnostic]:
    """Check one edit (`set`, an equation, `init`, `start`) against a program's declarations."""
    checker = _Checker(program)
    checker.run()  # fills the symbol tables; the program itself is known to be valid
    checker.diags = []
    checker.p = ast.Program(program.model, program.model_span, program.statements, source, filename)
    dyn = next(s for s in program.statements if isinstance(s, ast.Dynamics))
    constant_scope = {n: "const" for n in checker.consts}
    value_scope = {**constant_scope, **{n: "param" for n in checker.params}}
    dynamic_scope = {**value_scope, **{n: "state" for n in checker.states}, **{n: "let" for n in checker.lets}}
    checker.intervention_item(item, dyn.kind, constant_scope, value_scope, dynamic_scope)
    return [d for d in checker.diags if d.severity == "error"]
