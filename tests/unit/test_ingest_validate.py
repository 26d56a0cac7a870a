"""The vectorised validator agrees with the pydantic record schema, row by row."""

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from node.ingest.schema import SPECS
from node.ingest.validate import validate_chunk
from node.pseudonym import Pseudonymizer
from shared.features import FEATURES
from shared.schemas import Person

PSEUDO = Pseudonymizer(key=bytes(32), site_id="s")


def _value(f):
    span = f.hi - f.lo
    choices = [f.lo, f.hi, (f.lo + f.hi) / 2, f.lo - span * 1e-6, f.hi + span * 1e-6, np.nan, np.inf, -np.inf]
    if f.kind == "binary":
        choices += [0.5, 2.0]
    return st.sampled_from(choices)


_row = st.fixed_dictionaries(
    {
        "index_date": st.sampled_from(["2024-01-15", "1999-12-31", "2024-02-30", "15/01/2024", ""]),
        **{f.name: _value(f) for f in FEATURES},
    }
)


def _pydantic_errors(row: dict, i: int) -> set[str] | None:
    data = {k: v for k, v in row.items() if not (isinstance(v, float) and np.isnan(v))}
    try:
        Person(person_id=f"id-{i}", site="s", **data)
    except ValidationError as e:
        return {str(err["loc"][0]) for err in e.errors()}
    return None


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(_row, min_size=1, max_size=25))
def test_validator_accepts_exactly_the_rows_pydantic_accepts(rows):
    df = pd.DataFrame(rows)
    df.insert(0, "person_id", [f"id-{i}" for i in range(len(rows))])
    res = validate_chunk(df, SPECS["persons"], first_row=1, site_id="s", pseudonymize=PSEUDO.many)
    bad = dict(zip(res.problems["row"], res.problems["field"]))
    for i, row in enumerate(rows):
        errors = _pydantic_errors(row, i)
        if errors is None:
            assert i + 1 not in bad, (row, bad.get(i + 1))
        else:
            assert bad.get(i + 1) in errors, (row, errors, bad.get(i + 1))
    assert len(res.rows) + len(res.problems) == len(rows)
