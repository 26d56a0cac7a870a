"""Small-cell and complementary suppression of a noisy count table, decided from noisy values only.

A group view is a table with one axis per dimension (department, age band, job type) and one for
the risk tier. Its margins are public, or can be had: the view publishes each group's total
(the sum over tiers) and each tier's total, and the coarser views (``department`` beside
``department,age_band``) are sums of the finer one along an axis. So every *line* of the table
(all cells that differ in one coordinate only) may have a known sum. A line holding exactly one
suppressed cell gives that cell away by subtraction; hence complementary suppression:

1. **Primary**: a cell whose *noisy* count is below ``k`` is suppressed. The exact count is never
   consulted — a rule on it would itself disclose which cells are small.
2. **Lines**: a line with exactly one suppressed cell gets its smallest visible cell (by noisy
   count; ties by position) suppressed too; repeated over every axis until no line changes.
3. **Audit**: an attacker who knows every line sum solves a linear system for the suppressed
   cells; a cell is disclosed when every solution gives it the same value, i.e. when its unit
   vector lies in the row space of the line-membership matrix (equivalently, the null space has
   no component on it). Such a cell (rare after step 2: a "bridge" between two otherwise
   protected blocks) gets the smallest visible cell of one of its lines suppressed, and the
   audit runs again.

Axes of length 1 carry no information beyond the cell itself (their "line" is the cell) and are
skipped. Every decision reads only the noisy table and ``k``: this is post-processing of a DP
release and costs no privacy.
"""

from __future__ import annotations

from itertools import product

import numpy as np

__all__ = ["PRIMARY", "COMPLEMENTARY", "disclosed_cells", "line_sums_known", "suppress"]

PRIMARY = "small"  # noisy count below k
COMPLEMENTARY = "complementary"  # suppressed so that a margin does not give a small cell away


def _lines(shape: tuple[int, ...]):
    """Every axis-aligned line of a table of ``shape`` (axes of length ≥ 2): index tuples."""
    for axis, n in enumerate(shape):
        if n < 2:
            continue
        others = [range(s) if a != axis else [slice(None)] for a, s in enumerate(shape)]
        for fixed in product(*others):
            yield axis, fixed


def _line_cells(shape: tuple[int, ...], axis: int, fixed: tuple) -> list[tuple[int, ...]]:
    return [tuple(i if a == axis else fixed[a] for a in range(len(shape))) for i in range(shape[axis])]


def line_sums_known(shape: tuple[int, ...]) -> list[list[tuple[int, ...]]]:
    """The cells of every line whose sum an attacker may know (every margin of the table)."""
    return [_line_cells(shape, axis, fixed) for axis, fixed in _lines(shape)]


def _line_matrix(shape: tuple[int, ...]) -> np.ndarray:
    """``(lines, cells)`` 0/1 matrix: which flat cells each line holds."""
    lines = line_sums_known(shape)
    m = np.zeros((len(lines), int(np.prod(shape))), dtype=np.int64)
    for i, cells in enumerate(lines):
        m[i, np.ravel_multi_index(tuple(np.array(cells).T), shape)] = 1
    return m


def _components(lines: np.ndarray, unknown: np.ndarray) -> list[np.ndarray]:
    """The unknowns split into groups no line joins (each solved on its own: small systems)."""
    parent = {int(u): int(u) for u in unknown}

    def root(u: int) -> int:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    for row in lines[:, unknown]:
        held = unknown[row.astype(bool)]
        for u in held[1:]:
            parent[root(int(u))] = root(int(held[0]))
    groups: dict[int, list[int]] = {}
    for u in unknown:
        groups.setdefault(root(int(u)), []).append(int(u))
    return [np.array(g) for g in groups.values()]


def _disclosed_flat(lines: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Flat indices of suppressed cells pinned by the line sums (``mask`` flat): a cell is pinned
    when its unit vector lies in the row space of the line-membership matrix restricted to the
    suppressed cells, i.e. its squared norm in the row space's orthonormal basis is 1."""
    unknown = np.flatnonzero(mask)
    pinned: list[int] = []
    for comp in _components(lines, unknown) if unknown.size else []:
        m = lines[:, comp]
        m = m[m.any(axis=1)].astype(float)
        if m.shape[0] == 0:
            continue
        _, s, vt = np.linalg.svd(m, full_matrices=False)
        basis = vt[s > 1e-9 * max(m.shape) * s[0]]
        pinned.extend(int(c) for c, w in zip(comp, np.sum(basis**2, axis=0)) if w > 1 - 1e-8)
    return np.array(sorted(pinned), dtype=np.int64)


def disclosed_cells(suppressed: np.ndarray) -> list[tuple[int, ...]]:
    """Suppressed cells an attacker who knows every line sum (and every visible cell) can solve
    for exactly, in index order."""
    flat = _disclosed_flat(_line_matrix(suppressed.shape), np.asarray(suppressed).ravel())
    return [tuple(int(v) for v in np.unravel_index(i, suppressed.shape)) for i in flat]


def _smallest_visible(noisy: np.ndarray, mask: np.ndarray, cells: np.ndarray) -> int | None:
    """The flat cell among ``cells`` with the smallest noisy count that is still visible (ties:
    the lowest index)."""
    visible = cells[~mask[cells]]
    if visible.size == 0:
        return None
    return int(visible[np.lexsort((visible, noisy[visible]))[0]])


def suppress(noisy: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Which cells of the noisy table to withhold, and why.

    Args:
        noisy: the noisy (rounded, non-negative) counts, one axis per dimension plus tiers.
        k: cells whose noisy count is below ``k`` are suppressed.

    Returns:
        ``(suppressed, complementary)``: boolean arrays of the table's shape; ``complementary``
        marks the cells withheld only to protect others.
    """
    noisy = np.asarray(noisy)
    shape = noisy.shape
    flat = noisy.ravel()
    primary = flat < k
    mask = primary.copy()
    lines = _line_matrix(shape)
    members = [np.flatnonzero(row) for row in lines]
    hidden_in = lines @ mask
    while True:
        for i in np.flatnonzero(hidden_in == 1):  # step 2: no line with exactly one hidden
            if hidden_in[i] != 1:
                continue  # an earlier pick in this pass fixed it
            pick = _smallest_visible(flat, mask, members[i])
            if pick is not None:
                mask[pick] = True
                hidden_in += lines[:, pick]
        if (hidden_in == 1).any() and any(
            _smallest_visible(flat, mask, members[i]) is not None for i in np.flatnonzero(hidden_in == 1)
        ):
            continue
        disclosed = _disclosed_flat(lines, mask)  # step 3: what the line rule missed
        if disclosed.size == 0:
            break
        picks = set()
        for c in disclosed:
            through = np.flatnonzero(lines[:, c])
            cands = [p for p in (_smallest_visible(flat, mask, members[i]) for i in through) if p is not None]
            if not cands:  # every line through it is withheld: widen to the whole table
                cands = [p for p in [_smallest_visible(flat, mask, np.arange(flat.size))] if p is not None]
            if cands:
                picks.add(min(cands, key=lambda p: (flat[p], p)))
        if not picks:
            break  # everything is suppressed: nothing left to disclose
        for p in picks:
            mask[p] = True
            hidden_in += lines[:, p]
    hidden = mask.reshape(shape)
    return hidden, hidden & ~primary.reshape(shape)
