"""Complementary suppression of a noisy count table (node.api.suppression).

The attacker knows every margin (line sum) of the table and every visible cell; a suppressed cell
is disclosed when that linear system pins it. Primary suppression alone discloses cells; the
line rule plus the audit leaves none, on random 2-D and 3-D tables and on the "bridge" pattern the
line rule alone misses.
"""

import numpy as np
import pytest

from node.api.suppression import disclosed_cells, line_sums_known, suppress

K = 11


def _solve_for(table: np.ndarray, mask: np.ndarray, cell: tuple[int, ...]) -> float:
    """The attacker's value for a disclosed ``cell``: least squares over every line sum, with the
    visible cells moved to the right-hand side (exact when the cell is pinned)."""
    unknown = [tuple(int(v) for v in i) for i in np.argwhere(mask)]
    col = {c: j for j, c in enumerate(unknown)}
    rows, rhs = [], []
    for cells in line_sums_known(table.shape):
        hidden = [col[c] for c in cells if c in col]
        if hidden:
            row = np.zeros(len(unknown))
            row[hidden] = 1
            rows.append(row)
            rhs.append(sum(table[c] for c in cells) - sum(table[c] for c in cells if c not in col))
    x, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs, dtype=float), rcond=None)
    return float(x[col[cell]])


def _lines_with_one(mask: np.ndarray) -> int:
    return sum(1 for cells in line_sums_known(mask.shape) if sum(bool(mask[c]) for c in cells) == 1)


def test_a_lone_small_cell_in_a_row_is_recovered_without_complementary_suppression():
    noisy = np.array([[40, 30, 5, 20], [50, 44, 25, 33]])
    primary = noisy < K
    assert disclosed_cells(primary) == [(0, 2)]
    assert _solve_for(noisy, primary, (0, 2)) == pytest.approx(5)  # row total − visible cells
    hidden, complementary = suppress(noisy, K)
    assert disclosed_cells(hidden) == []
    # the line rule hid the smallest visible cell of the row and of the column, then closed the
    # rectangle: (0, 3) = 20 in row 0, (1, 2) = 25 in column 2, and (1, 3) so neither is alone
    assert {tuple(map(int, c)) for c in np.argwhere(complementary)} == {(0, 3), (1, 2), (1, 3)}
    assert _lines_with_one(hidden) == 0


def test_the_audit_catches_a_bridge_the_line_rule_misses():
    # two 2×2 blocks of small cells joined by one small cell at (1, 2): every row and column
    # holds 0 or ≥ 2 suppressed cells, yet the bridge is pinned by the margins
    noisy = np.full((4, 4), 50)
    for c in [(0, 0), (0, 1), (1, 0), (1, 1), (2, 2), (2, 3), (3, 2), (3, 3), (1, 2)]:
        noisy[c] = 3
    primary = noisy < K
    assert _lines_with_one(primary) == 0
    assert disclosed_cells(primary) == [(1, 2)]
    assert _solve_for(noisy, primary, (1, 2)) == pytest.approx(3)
    hidden, complementary = suppress(noisy, K)
    assert disclosed_cells(hidden) == [] and complementary.sum() >= 1


@pytest.mark.parametrize("shape", [(6, 4), (5, 6, 4), (3, 4, 5, 4)])
def test_no_suppressed_cell_is_disclosed_on_random_tables(shape):
    rng = np.random.default_rng(sum(shape))
    naive_disclosed = 0
    for _ in range(15 if len(shape) < 4 else 6):
        noisy = rng.poisson(rng.choice([3.0, 8.0, 25.0], size=shape))
        primary = noisy < K
        naive_disclosed += len(disclosed_cells(primary))
        hidden, complementary = suppress(noisy, K)
        assert not (primary & ~hidden).any()  # every small cell stays suppressed
        assert not (complementary & primary).any()
        assert disclosed_cells(hidden) == []
        assert _lines_with_one(hidden) == 0 or not (~hidden).any()
    assert naive_disclosed > 0  # the attack works where only primary suppression is applied


def test_decisions_read_only_the_noisy_table():
    noisy = np.array([[40, 30, 5, 20], [50, 44, 25, 33]])
    a = suppress(noisy, K)
    b = suppress(noisy.copy(), K)
    assert all((x == y).all() for x, y in zip(a, b))
    # ties between equal noisy counts break by position, not by anything hidden
    tie = np.array([[5, 20, 20], [40, 40, 40]])
    hidden, complementary = suppress(tie, K)
    assert complementary[0, 1] and not complementary[0, 2]
