"""A node's answers to study queries: validated site data in, aggregates out.

This module is the node's allow-list: it knows the operations of :mod:`shared.protocol` and
nothing else. Every answer is computed by the same ``shared.psm`` functions the coordinator's
pooled reference uses. Rows never leave: only moments, sums and counts do.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from shared.errors import DataError, QueryRefused
from shared.dp.workflow import dp_grid
from shared.protocol import Describe, PsFit, PsmStats, ScoreHist, StudyQuery
from shared.psm.propensity import cov_moments, ps_contribution
from shared.psm.strata import score_histogram
from shared.psm.table import psm_table, scale_outcomes

log = logging.getLogger("rehealth.node.study")


@dataclass(frozen=True)
class SiteArrays:
    """A site's study data, scaled: z in [0,1]^d, t in {0,1}, y in [0,1]^O.

    ``n_clipped`` (per outcome) and ``n_clipped_z`` (per covariate) count values clipped to the
    public bounds; ``n_excluded`` rows that could not be used (a missing or non-numeric value, a
    treatment other than 0/1). They stay on the node under DP; the node's log names the rows.
    """

    z: np.ndarray
    t: np.ndarray
    y: np.ndarray
    n_clipped: np.ndarray
    n_clipped_z: np.ndarray
    n_excluded: np.ndarray

    @property
    def n(self) -> int:
        return int(self.t.shape[0])

    def to_npz(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("z", "t", "y", "n_clipped", "n_clipped_z", "n_excluded")}


def prepare_arrays(frame, query: StudyQuery) -> SiteArrays:
    """The study's columns of a flat cohort frame, clipped to the public bounds and scaled.

    Nothing here raises on a value: the coordinator learns nothing from whether a row is odd.
    Values outside the public bounds are clipped (and counted), as deploy/TRUST.md asks: a node
    must not decide anything from data before its ledger is charged; rows with a missing or
    non-numeric value or a treatment other than 0/1 are excluded from the study, counted, and
    named (row and field) in the node's own log — nothing is dropped silently, and no value
    leaves the node.

    Raises:
        DataError: a column the query names is missing from the site's data (an operator
            misconfiguration; the coordinator sees only the fixed text of code 4002).
    """
    import pandas as pd

    names = [c.name for c in query.covariates] + [query.treatment_column] + [o.name for o in query.outcomes]
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise DataError(f"cohort table lacks column(s): {', '.join(missing)}", field=missing[0])
    raw = frame[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    d, n_out = len(query.covariates), len(query.outcomes)
    x, t, y_raw = raw[:, :d], raw[:, d], raw[:, d + 1:]
    bad = ~np.isfinite(raw)
    bad[:, d] |= ~np.isin(t, (0.0, 1.0))
    excluded = bad.any(axis=1)
    if excluded.any():
        _log_excluded(bad, names, query.study_id)
    keep = ~excluded
    lo = np.array([c.lo for c in query.covariates])
    hi = np.array([c.hi for c in query.covariates])
    xk = x[keep]
    n_clipped_z = np.sum((xk < lo) | (xk > hi), axis=0).astype(float)
    z = (np.clip(xk, lo, hi) - lo) / (hi - lo)
    y, n_clipped = scale_outcomes(y=y_raw[keep], lo=np.array([o.lo for o in query.outcomes]),
                                  cap=np.array([o.cap for o in query.outcomes]))
    return SiteArrays(z=z, t=t[keep], y=y.reshape(-1, n_out), n_clipped=np.asarray(n_clipped, dtype=float),
                      n_clipped_z=n_clipped_z, n_excluded=np.array([float(excluded.sum())]))


def _log_excluded(bad: np.ndarray, names: list[str], study_id: str) -> None:
    """Name (in the node's own log only) the first rows excluded and why."""
    rows = np.flatnonzero(bad.any(axis=1))
    where = "; ".join(f"row {r + 1}: {', '.join(n for n, b in zip(names, bad[r]) if b)}"
                      for r in rows[:10])
    log.warning("study %s: %d row(s) excluded (missing, non-numeric or treatment not 0/1): %s%s",
                study_id[:16], rows.size, where, " …" if rows.size > 10 else "")


def read_cohort(path: str | Path):
    """Read a flat cohort table (CSV or Parquet)."""
    import pandas as pd  # imported here: every Flower message starts a fresh process

    path = Path(path)
    if not path.exists():
        raise DataError(f"cohort file {path} not found")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    return pd.read_csv(path)


def load_site_arrays(data_path: str | Path, query: StudyQuery, cache_dir: str | Path | None) -> SiteArrays:
    """Validated arrays for ``query``, cached in the node's own state folder.

    The cache is keyed by the file's path, size and modification time and by the query's
    columns and bounds, so later rounds of the same study skip parsing and validation.
    """
    path = Path(data_path)
    cache = None
    if cache_dir is not None:
        st = path.stat()
        key = repr((2, str(path.resolve()), st.st_size, st.st_mtime_ns, query.data_key()))
        cache = Path(cache_dir) / f"arrays-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"
        if cache.exists():
            with np.load(cache) as f:
                return SiteArrays(**{k: f[k] for k in f.files})
    arrays = prepare_arrays(read_cohort(path), query)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays.to_npz())
        tmp.replace(cache)
    return arrays


Release = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


def _no_noise(op: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return arrays


def answer(query: StudyQuery, data: SiteArrays, release: Release = _no_noise) -> dict[str, dict[str, np.ndarray]]:
    """Compute every operation of ``query`` over ``data``; each answer passes through
    ``release`` (the DP charge-and-noise step when privacy is on) before it is returned."""
    return {op.op: release(op.op, exact_answer(op, query, data)) for op in query.ops}


def exact_answer(op, query: StudyQuery, data: SiteArrays) -> dict[str, np.ndarray]:
    """One operation's exact aggregates over the site's rows (they stay on the node until
    released)."""
    d = len(query.covariates)
    if isinstance(op, Describe):
        return {**cov_moments(z=data.z, t=data.t).to_arrays(), "n_clipped": data.n_clipped,
                "n_clipped_z": data.n_clipped_z, "n_excluded": data.n_excluded}
    beta = _check_beta(op.beta, d)
    if isinstance(op, PsFit):
        return ps_contribution(z=data.z, t=data.t, beta=beta).to_arrays()
    if isinstance(op, ScoreHist):
        return {"count": score_histogram(z=data.z, t=data.t, beta=beta, grid=dp_grid(beta=beta))}
    if isinstance(op, PsmStats):
        edges = check_edges(op.edges)
        return psm_table(z=data.z, t=data.t, y=data.y, beta=beta, edges=edges).to_arrays()
    raise QueryRefused(f"unknown operation {op!r}")  # pragma: no cover - union admits no other


def check_edges(edges) -> np.ndarray:
    """Strictly increasing edges whose outer ones are ±inf, so every score falls in a stratum
    (checked on the query alone: a bad edge list is refused before any data is read)."""
    e = np.array(edges, dtype=float)
    if (e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0) or e[0] != -np.inf or e[-1] != np.inf
            or not np.all(np.isfinite(e[1:-1]))):
        raise QueryRefused("psm_stats: edges must be strictly increasing, from -inf to +inf")
    return e


def check_query(query: StudyQuery) -> None:
    """Every check of an operation that needs no data (β length, edges): before the charge."""
    d = len(query.covariates)
    for op in query.ops:
        if isinstance(op, (PsFit, ScoreHist, PsmStats)):
            _check_beta(op.beta, d)
        if isinstance(op, PsmStats):
            check_edges(op.edges)


def suppress_small_cells(op: str, arrays: dict[str, np.ndarray], *, k: int) -> dict[str, np.ndarray]:
    """An exact answer with every cell of fewer than ``k`` people released as 0.

    A cell is an arm (describe), a score bin × arm (score_hist) or a stratum × arm
    (psm_stats); its count and all its sums go together, so a suppressed cell looks exactly like
    an empty one. ps_fit sums over the whole site: a site of fewer than ``k`` rows releases 0.
    The clipping and exclusion counts are withheld.
    """
    out = {key: np.array(v, dtype=float, copy=True) for key, v in arrays.items()
           if key not in ("n_clipped", "n_clipped_z", "n_excluded")}
    if op == "ps_fit":
        if out["n"][0] < k:
            out = {key: np.zeros_like(v) for key, v in out.items()}
        return out
    count = out["count"]
    small = count < k  # per cell: (2,) arms, (bins, 2) or (S, 2)
    for key, v in out.items():
        if key == "edges":
            continue
        v[small] = 0.0
    return out


def _check_beta(beta: tuple[float, ...], d: int) -> np.ndarray:
    if len(beta) != d + 1 or not np.all(np.isfinite(beta)):
        raise QueryRefused(f"beta must hold {d + 1} finite values (intercept + {d} covariates)")
    return np.array(beta, dtype=float)
