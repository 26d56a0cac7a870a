"""A node's study data: its cohort read, validated, clipped to the public bounds and scaled.

The answer to a query is computed from these arrays by :mod:`shared.answer`, the one piece of
code every adapter of the study driver uses (a real node, the pooled reference, the DP
simulation). Rows never leave: only moments, sums and counts do.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from shared.answer import SiteArrays
from shared.errors import DataError
from shared.protocol import StudyQuery
from shared.psm.table import scale_outcomes

log = logging.getLogger("rehealth.node.study")


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
    x, t, y_raw = raw[:, :d], raw[:, d], raw[:, d + 1 :]
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
    y, n_clipped = scale_outcomes(
        y=y_raw[keep],
        lo=np.array([o.lo for o in query.outcomes]),
        cap=np.array([o.cap for o in query.outcomes]),
    )
    return SiteArrays(
        z=z,
        t=t[keep],
        y=y.reshape(-1, n_out),
        n_clipped=np.asarray(n_clipped, dtype=float),
        n_clipped_z=n_clipped_z,
        n_excluded=np.array([float(excluded.sum())]),
    )


def _log_excluded(bad: np.ndarray, names: list[str], study_id: str) -> None:
    """Name (in the node's own log only) the first rows excluded and why."""
    rows = np.flatnonzero(bad.any(axis=1))
    where = "; ".join(f"row {r + 1}: {', '.join(n for n, b in zip(names, bad[r]) if b)}" for r in rows[:10])
    log.warning(
        "study %s: %d row(s) excluded (missing, non-numeric or treatment not 0/1): %s%s",
        study_id[:16],
        rows.size,
        where,
        " …" if rows.size > 10 else "",
    )


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
        np.savez(tmp, **arrays.to_npz())  # type: ignore[arg-type]  # mypy checks ** against allow_pickle
        tmp.replace(cache)
    return arrays
