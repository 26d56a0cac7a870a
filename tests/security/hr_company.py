"""A 480-person company (the synthetic ``company_logistics`` profile: warehouse, transport and
office; pickers, forklift operators, drivers, clerks, managers) as a persons file and a model,
for the HR group-view tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from node.risk.model_store import ModelStore, StoredModel, TrainingRecord
from shared.features import FEATURE_NAMES
from shared.synth.population import draw_population
from shared.synth.sites import PROFILES_BY_NAME

STAFF = 480


def company(seed: int = 11, *, n: int = STAFF, site: str = "acme") -> pd.DataFrame:
    """Persons as a node ingests them: id, site, department, job type, index date, 16 features."""
    pop = draw_population(np.random.default_rng(seed), profile=PROFILES_BY_NAME["company_logistics"], n=n)
    frame = pd.DataFrame(
        {
            "person_id": [f"P-{i:05d}" for i in range(n)],
            "site": site,
            "department": pop.department,
            "job_type": pop.job_type,
            "index_date": "2025-01-01",
        }
    )
    for name in FEATURE_NAMES:
        frame[name] = pop.features[name]
    return frame


def risk_model(models: Path) -> StoredModel:
    """A fixed logistic model whose probabilities spread people over all four tiers."""
    w = np.zeros((1, len(FEATURE_NAMES)))
    w[0, FEATURE_NAMES.index("age")] = 0.08
    w[0, FEATURE_NAMES.index("sbp")] = 4.0
    w[0, FEATURE_NAMES.index("smoker")] = 0.8
    return ModelStore(models).save(arrays=[w, np.array([-4.0])], record=TrainingRecord(rounds=1))
