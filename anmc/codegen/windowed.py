"""The Jacobian's forward pass with each tangent row kept inside its window of columns (sparse models).

`AnmModule` carries J = dz/dz0 through the integrator as dense rows J_l (d, B). In a model whose states
each depend on a few others (a chain of coupled oscillators, a grid), most of those entries are zeros
that every stage multiplies and adds: at the start of a frame J = I, so row l is nonzero in column l
alone, and each evaluation of the right-hand sides widens a row only by the columns of the rows it
depends on. Here each row is a tensor (hi - lo, B) over its window [lo, hi) of columns, or None where it
is zero, and every operation touches the window alone:

    a stage's rows      K_i = sum_l (dF_i/dz_l) T_l    over the hull of the windows of its terms
    a combination       T + sum_s a_s K_s              over the hull of the windows of its operands

accumulated in place into a tensor of its own (a fresh tensor per term doubled the time), with
dF/dz's nonzero entries from the generated `rhs_and_partials` (in the order of `jacobian_pattern`).
The windows are Python ints, so they cost nothing on the tensors; for a given model and integrator
they are the same at every call. The result is the same f and J as the dense rows (exactly: the same
products and sums, without the zeros). Autograd records the operations when a param or the input
requires grad. `window_share` says how much of the dense rows' work the windows hold, which is how
`AnmModule` chooses between the two (docs/results.md §4).
"""

from __future__ import annotations

import torch

# A row over its window is (values (hi - lo, B), lo), or None where it is zero.


def _is_one(a) -> bool:
    return not isinstance(a, torch.Tensor) and a == 1


def combine(terms: list, batch: int, like: torch.Tensor):
    """sum_k a_k * row_k over the hull of the rows' windows (terms: (a, row), a a number or a tensor
    (B,) or 0-d; zero rows skipped). A single term with a = 1 is the row itself (rows are never written
    after they are made)."""
    terms = [(a, r) for a, r in terms if r is not None]
    if not terms:
        return None
    if len(terms) == 1 and _is_one(terms[0][0]):
        return terms[0][1]
    lo, hi = _hull([_window(r) for _, r in terms])
    first = next((n for n, (_, r) in enumerate(terms) if r[1] == lo and r[0].shape[0] == hi - lo), None)
    if first is None:
        acc = like.new_zeros(hi - lo, batch)
    else:  # a term spanning the hull starts the sum (no zeros to write and add to)
        a, (t, _) = terms.pop(first)
        acc = t.clone() if _is_one(a) else t * a
    for a, (t, start) in terms:
        dst = acc[start - lo : start - lo + t.shape[0]]
        if isinstance(a, torch.Tensor):
            dst.addcmul_(t, a)
        else:
            dst.add_(t, alpha=a)
    return acc, lo


def _by_row(pattern: tuple, d: int) -> list:
    """For each i, the (l, n) of the pattern's entries n = (i, l)."""
    rows: list = [[] for _ in range(d)]
    for n, (i, l) in enumerate(pattern):
        rows[i].append((l, n))
    return rows


def tangents(rows: list, coefs: tuple, by_row: list, batch: int, like: torch.Tensor, only=None) -> list:
    """The rows K_i = sum_l (dF_i/dz_l) T_l (all i, or the one `only`) from dF/dz's entries `coefs`."""
    which = range(len(by_row)) if only is None else (only,)
    return [combine([(coefs[n], rows[l]) for l, n in by_row[i]], batch, like) for i in which]


def identity_rows(d: int, batch: int, like: torch.Tensor) -> list:
    one = like.new_ones(1, batch)
    return [(one, i) for i in range(d)]


def dense(rows: list, d: int, batch: int, like: torch.Tensor) -> torch.Tensor:
    """The rows as J (d, d, B)."""
    J = like.new_zeros(d, d, batch)
    for i, r in enumerate(rows):
        if r is not None:
            J[i, r[1] : r[1] + r[0].shape[0]] = r[0]
    return J


def frame_and_jacobian(module, zt: torch.Tensor, steps: int, scalars: tuple, plan, tape: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` substeps of the states zt (d, B) and their Jacobian with respect to zt: ((d, B), (d, d, B)).
    `plan`: the explicit Runge-Kutta stages ((j, a_sj h) for the nonzero a_sj, b_s h), or None for the
    integrator's own kind (discrete, semi-implicit Euler). With a `tape` (explicit stages and discrete
    maps), each evaluation's point, rows and dF/dz entries are kept for `frame_and_jacobian_backward`."""
    m, d, batch = module, module.d, zt.shape[-1]
    by_row = _by_row(m.jacobian_pattern, d)
    rhs = m.rhs_and_partials
    x, rows = zt, identity_rows(d, batch, zt)
    for _ in range(steps):
        if m.integrator == "semi_implicit_euler":
            h = m.dt / m.substeps
            for i in range(d):  # x_i <- x_i + h F_i(x_1', ..., x_(i-1)', x_i, ...), and its row with it
                F, coefs = rhs(x, *scalars)
                (K,) = tangents(rows, coefs, by_row, batch, zt, only=i)
                x = torch.cat((x[:i], x[i : i + 1] + h * F[i : i + 1], x[i + 1 :]))
                rows = [*rows[:i], combine([(1, rows[i]), (h, K)], batch, zt), *rows[i + 1 :]]
            continue
        stages = plan if plan is not None else (((), None),)  # a discrete map: one evaluation, its result
        ks, Ks = [], []
        for inputs, _ in stages:
            y, ry = x, rows
            for j, a in inputs:
                y = torch.add(y, ks[j], alpha=a)
            if inputs:
                ry = [combine([(1, rows[i]), *((a, Ks[j][i]) for j, a in inputs)], batch, zt) for i in range(d)]
            F, coefs = rhs(y, *scalars)
            if tape is not None:
                tape.append((y, ry, coefs))
            ks.append(F)
            Ks.append(tangents(ry, coefs, by_row, batch, zt))
        if plan is None:
            x, rows = ks[0], Ks[0]
            continue
        out = x
        for (_, weight), k in zip(plan, ks):
            if weight:
                out = torch.add(out, k, alpha=weight)
        rows = [combine([(1, rows[i]), *((w, K[i]) for (_, w), K in zip(plan, Ks) if w)], batch, zt) for i in range(d)]
        x = out
    if tape is not None:
        tape.append(rows)
    return x, dense(rows, d, batch, zt)


def _window(row):
    return None if row is None else (row[1], row[1] + row[0].shape[0])


def _restrict(g, window):
    """The gradient row g = (values, lo) over a window inside its own: a view."""
    values, lo = g
    return values[window[0] - lo : window[1] - lo]


def _add_to(acc: list, i: int, window, g, alpha=1):
    """acc[i] += alpha * g restricted to `window` (acc[i]: a gradient tensor over that window, or None)."""
    if g is None or window is None:
        return
    part = _restrict(g, window)
    if acc[i] is None:  # a tensor of its own: later terms are added into it
        acc[i] = part.clone() if _is_one(alpha) else part * alpha
    elif isinstance(alpha, torch.Tensor):
        acc[i].addcmul_(part, alpha)
    else:
        acc[i].add_(part, alpha=alpha)


def frame_and_jacobian_backward(module, steps: int, scalars: tuple, plan, tape: list, gz: torch.Tensor, gJ: torch.Tensor):
    """The adjoint of `frame_and_jacobian` (explicit stages or a discrete map) from its tape: the gradient
    with respect to zt (d, B) and the pointwise gradients (B,) of the scalars in `scalar_grads`, one tuple
    per evaluation. Each gradient row lives on the window of the row it belongs to: a stage's rows K_i
    reach the rows T_l they were made from through (dF_i/dz_l) over T_l's window, which lies inside K_i's,
    and dF/dz's entries receive P_il = <gK_i, T_l> over it (the generated `rhs_and_partials_vjp` turns
    those, with F's cotangent, into the point's and the scalars' gradients)."""
    m, d = module, module.d
    by_row = _by_row(m.jacobian_pattern, d)
    varying = m.varying_partials
    pattern = m.jacobian_pattern
    rows_end = tape.pop()
    g = gz
    g_rows = [None if r is None else (gJ[i, r[1] : r[1] + r[0].shape[0]], r[1]) for i, r in enumerate(rows_end)]
    per_stage = len(plan) if plan is not None else 1
    acc_s: list = []
    for _ in range(steps):
        stage_tape = [tape.pop() for _ in range(per_stage)][::-1]
        # the substep's start rows: the first evaluation's point and rows (before any stage was added)
        start_rows = stage_tape[0][1]
        g_k: list = [None] * per_stage  # the cotangents of the stages' F
        g_K: list = [[None] * d for _ in range(per_stage)]  # of their rows (tensors over the rows' windows)
        windows_K = [_stage_windows([_window(r) for r in ry], by_row) for _, ry, _ in stage_tape]
        weights = [w for _, w in plan] if plan is not None else [1.0]
        g_x = g if plan is not None else None  # z' = z + sum_s b_s k_s (a discrete map: z' = k)
        g_T = [None] * d
        if plan is not None:
            for i in range(d):
                _add_to(g_T, i, _window(start_rows[i]), g_rows[i])
        for s in reversed(range(per_stage)):
            y, ry, coefs = stage_tape[s]
            w = weights[s]
            gk = g * w if w else None
            if g_k[s] is not None:
                gk = g_k[s] if gk is None else gk.add_(g_k[s])
            gK = g_K[s]
            if w:
                for i in range(d):
                    _add_to(gK, i, windows_K[s][i], g_rows[i], w)
            gK = [None if gK[i] is None else (gK[i], windows_K[s][i][0]) for i in range(d)]
            # the stage: K_i = sum_l A_il T_l -> gT_l += A_il gK_i, P_il = <gK_i, T_l>
            g_ry: list = [None] * d
            for i in range(d):
                if gK[i] is None:
                    continue
                for l, n in by_row[i]:
                    _add_to(g_ry, l, _window(ry[l]), gK[i], coefs[n])
            P = tuple(_inner(gK[pattern[n][0]], ry[pattern[n][1]], y) for n in varying)
            gy, gs = m.rhs_and_partials_vjp(y, gk if gk is not None else torch.zeros_like(y), P, *scalars)
            acc_s.append(gs)
            # the stage's point: y = z + sum_j a_sj k_j, its rows T + sum_j a_sj K_j
            g_x = gy if g_x is None else g_x + gy
            for i in range(d):
                if g_ry[i] is not None:
                    _add_to(g_T, i, _window(start_rows[i]), (g_ry[i], _window(ry[i])[0]))
            if plan is not None:
                for j, a in plan[s][0]:
                    g_k[j] = gy * a if g_k[j] is None else g_k[j].add_(gy, alpha=a)
                    for i in range(d):
                        if g_ry[i] is not None:
                            _add_to(g_K[j], i, windows_K[j][i], (g_ry[i], _window(ry[i])[0]), a)
        g = g_x
        g_rows = [None if g_T[i] is None else (g_T[i], start_rows[i][1]) for i in range(d)]
    return g, acc_s


def _hull(windows) -> tuple[int, int] | None:
    """The smallest window holding every given one (None: zero rows), or None."""
    windows = [w for w in windows if w is not None]
    return (min(w[0] for w in windows), max(w[1] for w in windows)) if windows else None


def _stage_windows(windows: list, by_row: list) -> list:
    """The windows of a stage's rows K_i from the windows of the rows T_l they are made of (as `tangents`
    makes them: the hull of its terms')."""
    return [_hull([windows[l] for l, _ in deps]) for deps in by_row]


def _inner(gK, T, like: torch.Tensor) -> torch.Tensor:
    """<gK_i, T_l> over the columns of T_l's window (B,); zero where either row is."""
    if gK is None or T is None:
        return like.new_zeros(like.shape[-1])
    return (_restrict(gK, _window(T)) * T[0]).sum(0)


class WindowedFrame(torch.autograd.Function):
    """`frame_and_jacobian` as one autograd node with `frame_and_jacobian_backward` as its backward pass
    (explicit stages and discrete maps)."""

    @staticmethod
    def forward(ctx, module, steps, plan, zt, *scalars):
        tape: list = []
        x, J = frame_and_jacobian(module, zt, steps, scalars, plan, tape)
        ctx.module, ctx.steps, ctx.plan, ctx.tape, ctx.scalars = module, steps, plan, tape, scalars
        ctx.save_for_backward(*(s for s in scalars if isinstance(s, torch.Tensor)))  # (checks they stay unchanged)
        return x, J

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gz, gJ):
        ctx.saved_tensors  # noqa: B018 - raises if a param was changed in place since the forward pass
        m = ctx.module
        g, acc = frame_and_jacobian_backward(m, ctx.steps, ctx.scalars, ctx.plan, list(ctx.tape), gz.contiguous(), gJ.contiguous())  # (a copy: it is read from the end; a graph kept with retain_graph is walked again)
        grads = [None] * len(ctx.scalars)
        wanted = ctx.needs_input_grad[4:]
        for index, pointwise in zip(m.scalar_grads, zip(*acc)):
            if wanted[index]:
                grads[index] = torch.stack([p if isinstance(p, torch.Tensor) else torch.as_tensor(p, dtype=g.dtype) for p in pointwise]).sum().reshape(ctx.scalars[index].shape)
        return None, None, None, g, *grads


def window_share(pattern: tuple, d: int, integrator: str, plan, substeps: int) -> float:
    """The share of the dense rows' entries that the windows hold, over the stages' rows K_i of one frame
    (what the stages multiply and add): the same walk as `frame_and_jacobian`, on the windows alone."""
    by_row = _by_row(pattern, d)
    held = []  # the windows of the rows each evaluation computes
    rows = [(i, i + 1) for i in range(d)]
    for _ in range(substeps):
        if integrator == "discrete":
            rows = _stage_windows(rows, by_row)
            held.append(rows)
        elif integrator == "semi_implicit_euler":
            for i in range(d):
                K = _stage_windows(rows, by_row)[i]
                held.append([K])
                rows = [*rows[:i], _hull([rows[i], K]), *rows[i + 1 :]]
        else:
            Ks = []
            for inputs, _ in plan:
                ry = [_hull([rows[i], *(Ks[j][i] for j, _ in inputs)]) for i in range(d)]
                Ks.append(_stage_windows(ry, by_row))
                held.append(Ks[-1])
            rows = [_hull([rows[i], *(K[i] for (_, w), K in zip(plan, Ks) if w)]) for i in range(d)]
    total = sum(sum(w[1] - w[0] for w in K if w is not None) for K in held)
    return total / (sum(len(K) for K in held) * d)
