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
from shared.features import scale
from shared.dp.workflow import dp_grid
from shared.protocol import Describe, PsFit, PsmStats, ScoreHist, StudyQuery
from shared.psm.propensity import cov_moments, ps_contribution
from shared.psm.strata import score_histogram
from shared.psm.table import psm_table, scale_outcomes

log = logging.getLogger("rehealth.node.study")


@dataclass(frozen=True)
class SiteArrays:
    """A site's study data, validated and scaled: z in [0,1]^d, t in {0,1}, y in [0,1]^O."""

    z: np.ndarray
    t: np.ndarray
    y: np.ndarray
    n_clipped: np.ndarray  # per outcome: values clipped to the public [lo, cap]

    @property
    def n(self) -> int:
        return int(self.t.shape[0])


def prepare_arrays(frame, query: StudyQuery) -> SiteArrays:
    """Validate a flat cohort frame against the query's columns and public bounds.

    Raises:
        DataError: a column is missing, or a value is missing, out of bounds or not 0/1;
            the message names the row (1-based data row) and the field.
    """
    features = [c.as_feature() for c in query.covariates]
    names = [f.name for f in features] + [query.treatment_column] + [o.name for o in query.outcomes]
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise DataError(f"cohort table lacks column(s): {', '.join(missing)}", field=missing[0])
    z = scale(frame[[f.name for f in features]].to_numpy(dtype=float), features, row_offset=1)
    t = frame[query.treatment_column].to_numpy(dtype=float)
    bad_t = ~np.isin(t, (0.0, 1.0))
    if bad_t.any():
        r = int(np.flatnonzero(bad_t)[0])
        raise DataError(f"row {r + 1}: {query.treatment_column} must be 0 or 1",
                        row=r + 1, field=query.treatment_column)
    y_raw = frame[[o.name for o in query.outcomes]].to_numpy(dtype=float)
    bad_y = ~np.isfinite(y_raw)
    if bad_y.any():
        r, c = np.argwhere(bad_y)[0]
        name = query.outcomes[c].name
        raise DataError(f"row {r + 1}: {name} is missing or not a number", row=int(r + 1), field=name)
    lo = np.array([o.lo for o in query.outcomes])
    cap = np.array([o.cap for o in query.outcomes])
    y, n_clipped = scale_outcomes(y=y_raw, lo=lo, cap=cap)
    return SiteArrays(z=z, t=t, y=y, n_clipped=np.asarray(n_clipped, dtype=float))


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
        key = repr((str(path.resolve()), st.st_size, st.st_mtime_ns, query.data_key()))
        cache = Path(cache_dir) / f"arrays-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"
        if cache.exists():
            with np.load(cache) as f:
                return SiteArrays(z=f["z"], t=f["t"], y=f["y"], n_clipped=f["n_clipped"])
    arrays = prepare_arrays(read_cohort(path), query)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, z=arrays.z, t=arrays.t, y=arrays.y, n_clipped=arrays.n_clipped)
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
        return {**cov_moments(z=data.z, t=data.t).to_arrays(), "n_clipped": data.n_clipped}
    beta = _check_beta(op.beta, d)
    if isinstance(op, PsFit):
        return ps_contribution(z=data.z, t=data.t, beta=beta).to_arrays()
    if isinstance(op, ScoreHist):
        return {"count": score_histogram(z=data.z, t=data.t, beta=beta, grid=dp_grid(beta=beta))}
    if isinstance(op, PsmStats):
        edges = np.array(op.edges, dtype=float)
        if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise QueryRefused("psm_stats: edges must be a strictly increasing list of ≥2 values")
        return psm_table(z=data.z, t=data.t, y=data.y, beta=beta, edges=edges).to_arrays()
    raise QueryRefused(f"unknown operation {op!r}")  # pragma: no cover - union admits no other


def _check_beta(beta: tuple[float, ...], d: int) -> np.ndarray:
    if len(beta) != d + 1 or not np.all(np.isfinite(beta)):
        raise QueryRefused(f"beta must hold {d + 1} finite values (intercept + {d} covariates)")
    return np.array(beta, dtype=float)
