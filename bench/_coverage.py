"""Coverage with its binomial uncertainty: the Wilson score interval.

A coverage cell of 500 seeds is itself an estimate: 475/500 = 95 % has a Wilson 95 % interval of
about 92.7–96.6 %, so a single cell can neither prove nor refute calibration to a point. The
interval is printed beside every coverage figure, so a reader sees how far a cell is from 95 %
in units of its own noise.

Wilson (1927), "Probable inference, the law of succession, and statistical inference", JASA 22;
Newcombe (1998), Statistics in Medicine 17, method 3 (81/263 gives 0.2553–0.3662):

.. math::
    \\frac{\\hat p + z^2/2n \\pm z \\sqrt{\\hat p(1-\\hat p)/n + z^2/4n^2}}{1 + z^2/n}

>>> lo, hi = wilson_interval(81, 263)
>>> round(lo, 4), round(hi, 4)
(0.2553, 0.3662)
"""

from __future__ import annotations

import math

__all__ = ["Z95", "design_rows", "map_seeds", "outcome_errors", "wilson_interval"]

#: The standard normal's 97.5 % quantile.
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n``.

    Unlike the Wald interval it stays within [0, 1] and keeps its coverage near 0 and 1 (a cell
    at 100 % of 40 seeds gets ``(0.912, 1.0)``, not the Wald interval's empty ``(1, 1)``).

    Args:
        successes: covered seeds.
        n: seeds with an interval.
        z: normal quantile (1.96 for 95 %).

    Returns:
        ``(lo, hi)``; ``(0.0, 1.0)`` for ``n = 0`` (no information).

    Raises:
        ValueError: ``successes`` outside ``[0, n]``.
    """
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n], got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at p = 0 or 1 the interval touches the bound exactly; rounding must not push it past
    return max(0.0, centre - half), min(1.0, centre + half)


def map_seeds(fn, jobs: list, *, workers: int, chunksize: int = 2) -> list:
    """``[fn(j) for j in jobs]``, over ``workers`` forked processes when more than one (each seed
    is independent; fork keeps the parent's imports, so a worker starts in milliseconds)."""
    if workers <= 1:
        return [fn(j) for j in jobs]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(fn, jobs, chunksize=chunksize)


def outcome_errors(est, truth: dict[str, float], outcomes) -> dict[str, tuple[float, bool, float]]:
    """Per outcome of an :class:`~shared.psm.estimator.AttEstimate`: its error in SEs, whether
    its CI holds the truth, and the CI's width — what a paired design comparison sums."""
    out = {}
    for o in outcomes:
        e = est.outcome(o.name)
        out[o.name] = ((e.att - truth[o.name]) / e.se, e.ci[0] <= truth[o.name] <= e.ci[1], e.ci[1] - e.ci[0])
    return out


def design_rows(ok: list[dict], designs, outcomes, *, base: str) -> list[str]:
    """One line per outcome × design over the seeds ``ok`` (each ``{design: outcome_errors}``):
    mean bias/SE ± its Monte-Carlo SE, the SD of the errors in SEs (1 when the SE is the
    estimate's spread over seeds; above 1 a CI too narrow for its centre), coverage with its
    Wilson interval, and the mean CI width over design ``base``'s."""
    lines = []
    w = max(len(d) for d in designs)
    for o in outcomes:
        width0 = sum(r[base][o.name][2] for r in ok) / len(ok)
        for design in designs:
            err = [r[design][o.name][0] for r in ok]
            hits = sum(bool(r[design][o.name][1]) for r in ok)
            mean = sum(err) / len(err)
            sd = math.sqrt(sum((e - mean) ** 2 for e in err) / (len(err) - 1))
            mc = sd / math.sqrt(len(err))
            lo, hi = wilson_interval(hits, len(ok))
            width = sum(r[design][o.name][2] for r in ok) / len(ok) / width0
            lines.append(
                f"{o.name:13} {design:{w}} {mean:+6.2f} ± {mc:.2f} sd {sd:4.2f} "
                f"{100 * hits / len(ok):6.1f}% [{100 * lo:4.1f}, {100 * hi:4.1f}] {width:6.3f}"
            )
    return lines
