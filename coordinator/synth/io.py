"""Writing a synthetic federation (:mod:`shared.synth`) to disk.

Layout of ``OUT``::

    OUT/study.toml            the default study, site data paths relative to OUT
    OUT/truth.json            ground truth: true ATTs (raw and capped), per site and pooled
    OUT/<site>/persons.<ext>  OUT/<site>/interventions.<ext>  OUT/<site>/outcomes.<ext>
    OUT/<site>/cohort.<ext>   the flat cohort table of the default study

Files are byte-identical for equal seeds (no timestamps, fixed column order, ``\\n`` endings).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import tomli_w

from shared.errors import SpecError
from shared.features import FEATURES
from shared.synth.federation import Federation
from shared.synth.negative_controls import NEGATIVE_CONTROLS
from shared.synth.outcomes import OUTCOMES
from shared.synth.records import INDEX_WINDOW_DAYS, TREATMENT_CODE

FORMATS = ("csv", "parquet")
TABLES = ("persons", "interventions", "outcomes", "cohort")
#: Programme cost per treated person written into the study (for ROI in the report).
COST_PER_PERSON = 400.0
#: A synthetic study is differentially private unless exact is asked for (epsilon=None): at
#: ε = 1 the full 8-site federation resolves its propensity fit (r = 35 > 22).
DEFAULT_EPSILON = 1.0
STUDY_NAME = "synthetic_lifestyle_coaching"


def _write_table(df: pd.DataFrame, path: Path, fmt: str) -> None:
    if fmt == "csv":
        df.to_csv(path, index=False, date_format="%Y-%m-%d", lineterminator="\n")
        return
    dates = {c: df[c].dt.date for c in df.columns if pd.api.types.is_datetime64_any_dtype(df[c])}
    df.assign(**dates).to_parquet(path, index=False)


def study_document(
    fed: Federation,
    fmt: str = "csv",
    epsilon: float | None = DEFAULT_EPSILON,
    secure_aggregation: bool = False,
    negative_controls: bool = False,
) -> dict:
    """The default study as a TOML-ready dict (loads with ``StudySpec.from_dict``); with
    ``epsilon`` it is a DP study at that ε (δ = 1e-6), else exact; ``secure_aggregation``
    runs its releases after describe as SecAgg+ sums. A small-firm federation
    (``profile_set = "small-firms"``) gets the pooled study: ``[report] per_site = false``.
    ``negative_controls`` declares the cohort's negative controls (:mod:`shared.synth.negative_controls`)."""
    seed = fed.truth["seed"]
    pooled = fed.truth.get("profile_set") == "small-firms"
    return {
        "study": {
            "name": STUDY_NAME,
            "seed": seed,
            "description": (
                f"Synthetic federation (shared.synth, seed {seed}): effect of {TREATMENT_CODE} "
                f"started within {INDEX_WINDOW_DAYS} days of the index date on one-year claims "
                "cost, cardiovascular events and absence days. Ground truth in truth.json."
            ),
        },
        "treatment": {
            "column": "treated",
            "intervention": TREATMENT_CODE,
            "cost_per_person": COST_PER_PERSON,
        },
        "covariates": [
            {"name": f.name, "lo": float(f.lo), "hi": float(f.hi), "kind": f.kind} for f in FEATURES
        ],
        "outcomes": [{"name": o.name, "lo": o.lo, "cap": o.cap, "kind": o.kind} for o in OUTCOMES],
        **(
            {
                "negative_controls": [
                    {"name": o.name, "lo": o.lo, "cap": o.cap, "kind": o.kind} for o in NEGATIVE_CONTROLS
                ]
            }
            if negative_controls
            else {}
        ),
        "privacy": {
            "enabled": epsilon is not None,
            "epsilon": 1.0 if epsilon is None else float(epsilon),
            "delta": 1e-6,
            "secure_aggregation": secure_aggregation,
        },
        # pooled: no per-firm figure in the report, and SecAgg+ rounds with time for every one of
        # up to 20 nodes to start its ClientApp (120 s timed out with 20 on 2 loaded cores)
        **({"report": {"per_site": False}, "federation": {"round_timeout_s": 300.0}} if pooled else {}),
        "sites": [{"name": s.name, "data": f"{s.name}/cohort.{fmt}"} for s in fed.sites],
    }


def to_toml(doc: dict) -> str:
    """TOML with a ``[section]`` per table and ``[[section]]`` per list item, in ``doc`` order
    (``tomli_w`` alone would write the lists inline, before the tables)."""
    parts: list[str] = []
    for key, value in doc.items():
        items = value if isinstance(value, list) else [value]
        header = f"[[{key}]]" if isinstance(value, list) else f"[{key}]"
        parts.extend(f"{header}\n{tomli_w.dumps(item)}" for item in items)
    return "\n".join(parts)


def write_federation(
    fed: Federation,
    out: Path,
    fmt: str = "csv",
    epsilon: float | None = DEFAULT_EPSILON,
    secure_aggregation: bool = False,
    negative_controls: bool = False,
) -> Path:
    """Write every site's tables, ``study.toml`` and ``truth.json`` under ``out``.

    Args:
        fed: from :func:`shared.synth.generate_federation`.
        out: output folder (created; existing files are overwritten).
        fmt: ``"csv"`` or ``"parquet"``.
        epsilon: ``study.toml`` is a DP study at this ε (default 1); None asks for an exact study
            (answered only by nodes whose operator allows exact answers).
        secure_aggregation: and run it over SecAgg+ (needs ``epsilon``).
        negative_controls: declare the 24 negative controls the cohort files hold (they are
            written either way).

    Returns:
        The path of ``study.toml``.

    Raises:
        SpecError: unknown format.
    """
    if fmt not in FORMATS:
        raise SpecError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    for site in fed.sites:
        folder = out / site.name
        folder.mkdir(parents=True, exist_ok=True)
        for table in TABLES:
            _write_table(getattr(site, table), folder / f"{table}.{fmt}", fmt)
    study = out / "study.toml"
    study.write_text(to_toml(study_document(fed, fmt, epsilon, secure_aggregation, negative_controls)))
    (out / "truth.json").write_text(json.dumps(fed.truth, indent=2, allow_nan=False) + "\n")
    return study
