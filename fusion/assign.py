"""Optimal assignment (the Hungarian method) for the small matrices of multi-animal
association and tracking, compiled: no scipy at run time, and a few microseconds for the
6 × 6 problems of a frame-set instead of a Python call's overhead.

:func:`assign` solves the rectangular linear sum assignment with rejection: a pair whose cost
exceeds ``max_cost`` is never made, and a row or column may stay unmatched. It pads the
problem with one "unmatched" column per row at cost ``max_cost`` (so leaving a row alone
costs exactly as much as the worst acceptable pair) and solves the square-or-wide problem
with the shortest-augmenting-path algorithm with potentials (Kuhn–Munkres in the form of
Jonker–Volgenant, O(n² m)).
"""

from __future__ import annotations

import numba as nb
import numpy as np

BIG = 1e18


@nb.njit(cache=True, nogil=True)
def hungarian_nb(a: np.ndarray) -> np.ndarray:
    """Minimum-cost assignment of every row of ``a`` ``(n, m)``, ``n <= m``, finite costs.

    Returns
    -------
    np.ndarray
        ``(n,)`` int64: the column of each row.
    """
    n, m = a.shape
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    p = np.zeros(m + 1, dtype=np.int64)
    way = np.zeros(m + 1, dtype=np.int64)
    minv = np.empty(m + 1)
    used = np.zeros(m + 1, dtype=np.bool_)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv[:] = np.inf
        used[:] = False
        while True:
            used[j0] = True
            i0 = p[j0]
            delta = np.inf
            j1 = 0
            for j in range(1, m + 1):
                if not used[j]:
                    cur = a[i0 - 1, j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j] = cur
                        way[j] = j0
                    if minv[j] < delta:
                        delta = minv[j]
                        j1 = j
            for j in range(m + 1):
                if used[j]:
                    u[p[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while True:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
            if j0 == 0:
                break
    col = np.empty(n, dtype=np.int64)
    for j in range(1, m + 1):
        if p[j] != 0:
            col[p[j] - 1] = j - 1
    return col


@nb.njit(cache=True, nogil=True)
def assign_nb(cost: np.ndarray, max_cost: float) -> np.ndarray:
    """Rows' columns ``(n,)`` (``-1``: unmatched) of the assignment with rejection (module
    docstring); NaN and costs above ``max_cost`` are never matched."""
    n, m = cost.shape
    out = np.full(n, -1, dtype=np.int64)
    if n == 0 or m == 0:
        return out
    a = np.full((n, m + n), BIG)
    for i in range(n):
        for j in range(m):
            c = cost[i, j]
            if c <= max_cost:  # False for NaN
                a[i, j] = c
        a[i, m + i] = max_cost
    col = hungarian_nb(a)
    for i in range(n):
        if col[i] < m and a[i, col[i]] < BIG:
            out[i] = col[i]
    return out


def assign(cost: np.ndarray, max_cost: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """Optimal matching of the rows and columns of ``cost`` ``(n, m)``.

    Parameters
    ----------
    cost
        Pair costs; NaN or ``> max_cost``: not allowed.
    max_cost
        Largest cost of a pair that may be made (finite; ``inf`` uses a bound above every
        finite cost, so every row that can be matched is).

    Returns
    -------
    rows, cols
        ``(P,)`` int64 each: the matched pairs, rows ascending.
    """
    c = np.ascontiguousarray(cost, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"cost must be 2-D, got shape {c.shape}")
    if not np.isfinite(max_cost):
        fin = c[np.isfinite(c)]
        max_cost = float((np.abs(fin).sum() + 1.0) * 2.0) if fin.size else 1.0
    col = assign_nb(c, float(max_cost))
    rows = np.flatnonzero(col >= 0)
    return rows, col[rows]
