"""Plans for high-risk people, each recommendation ranked by the risk it is expected to remove.

For every person at or above the risk threshold and every catalogue item whose factor is off
target (above it for ``lower``, below for ``raise``), the node's own risk model scores the
person again with that factor (and the item's ``also`` features) moved to the target; the
expected reduction is the difference in predicted risk. Recommendations are ranked by it,
largest first, and cut at ``max_items``. A factor the model gives no weight gets a reduction of
0 and ranks last: the guideline still recommends it, the model cannot tell by how much.

This is a model-based *what-if*, not a causal effect: it says how the model's prediction moves,
which is what the ranking needs; whether the programme moves the outcome is what the PSM study
over the plan trajectory measures.

People with a missing feature (the ``indicator`` ingest policy) are not scored and get no plan
(counted). Plans are stored by pseudonym; generating again with the same model and catalogue
adds plans only for people who have none yet.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import insert, select

from node.plans.catalogue import Catalogue, CatalogueItem
from node.risk.scoring import Scorer
from node.store import Store
from node.store.models import persons, plans
from shared.features import FEATURE_NAMES

log = logging.getLogger(__name__)

_COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


@dataclass(frozen=True)
class GenerateSummary:
    persons: int
    unscored: int  # a feature missing
    high_risk: int
    nothing_to_recommend: int
    already_planned: int
    generated: int


def _moved(x: np.ndarray, item: CatalogueItem) -> tuple[np.ndarray, np.ndarray]:
    """``(applies, x')``: who is off target for ``item``, and their features moved to it."""
    col = _COL[item.factor]
    target = np.full(len(x), item.target)
    if item.target_female is not None:
        target = np.where(x[:, _COL["sex"]] == 0, item.target_female, target)
    pick = np.minimum if item.direction == "lower" else np.maximum
    applies = x[:, col] > target if item.direction == "lower" else x[:, col] < target
    moved = x.copy()
    moved[:, col] = pick(x[:, col], target)
    for name, value in item.also.items():
        moved[:, _COL[name]] = pick(x[:, _COL[name]], value)
    return applies, moved


def recommend(x: np.ndarray, scorer: Scorer, catalogue: Catalogue) -> tuple[np.ndarray, list[list[dict]]]:
    """Risk and ranked recommendations for each row of raw features ``x`` (no missing value)."""
    risk = scorer.score(x).prob
    per_item = []
    for item in catalogue.item:
        applies, moved = _moved(x, item)
        reduction = np.where(applies, risk - scorer.score(moved).prob, np.nan)
        per_item.append(reduction)
    red = np.column_stack(per_item)
    out: list[list[dict]] = []
    for r in range(len(x)):
        idx = [i for i in range(len(catalogue.item)) if not np.isnan(red[r, i])]
        idx.sort(key=lambda i: (-max(red[r, i], 0.0), i))  # stable: catalogue order breaks ties
        out.append(
            [
                {
                    "rank": rank,
                    "code": catalogue.item[i].code,
                    "intervention": catalogue.item[i].intervention,
                    "factor": catalogue.item[i].factor,
                    "reason": catalogue.item[i].reason,
                    "text": catalogue.item[i].text,
                    "channel": catalogue.item[i].channel,
                    "source": catalogue.item[i].source,
                    "expected_reduction": round(max(float(red[r, i]), 0.0), 6),
                }
                for rank, i in enumerate(idx[: catalogue.max_items], start=1)
            ]
        )
    return risk, out


def generate_plans(
    store: Store, scorer: Scorer, catalogue: Catalogue, *, min_risk: float | None = None
) -> GenerateSummary:
    """Generate and store plans for everyone at or above ``min_risk`` (default: the catalogue's)."""
    threshold = catalogue.min_risk if min_risk is None else min_risk
    with store.engine.connect() as conn:
        res = conn.execute(select(persons.c.pseudonym, *[persons.c[f] for f in FEATURE_NAMES]))
        people = pd.DataFrame(res.all(), columns=list(res.keys()))
        have = set(
            conn.execute(
                select(plans.c.pseudonym).where(
                    plans.c.model_version == scorer.version, plans.c.catalogue_sha == catalogue.sha256
                )
            ).scalars()
        )
    x = people[list(FEATURE_NAMES)].to_numpy(dtype=np.float64, na_value=np.nan)
    complete = ~np.isnan(x).any(axis=1)
    ids = people["pseudonym"].to_numpy()[complete]
    risk, items = recommend(x[complete], scorer, catalogue) if complete.any() else (np.zeros(0), [])
    now = dt.datetime.now(dt.timezone.utc)
    rows, high, empty, already = [], 0, 0, 0
    for pid, p, its in zip(ids, risk, items):
        if p < threshold:
            continue
        high += 1
        if not its:
            empty += 1
        elif pid in have:
            already += 1
        else:
            rows.append(
                {
                    "id": secrets.token_hex(16),
                    "pseudonym": pid,
                    "model_version": scorer.version,
                    "catalogue_sha": catalogue.sha256,
                    "risk": float(p),
                    "items": its,
                    "status": "pending",
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                }
            )
    if rows:
        with store.engine.begin() as conn:
            conn.execute(insert(plans), rows)
    summary = GenerateSummary(
        persons=len(people),
        unscored=int((~complete).sum()),
        high_risk=high,
        nothing_to_recommend=empty,
        already_planned=already,
        generated=len(rows),
    )
    log.info("plans generated: %s", summary)
    return summary
