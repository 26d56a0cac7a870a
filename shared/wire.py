"""Codecs between study queries/answers and Flower records. The only shared module that
imports flwr; the statistics never do.

Arrays travel as float64 ``Array`` entries (exact), queries as validated JSON.
"""

from __future__ import annotations

import json
from typing import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from shared.protocol import META_KEY, REQUEST_KEY, StudyQuery


def encode_query(query: StudyQuery) -> RecordDict:
    return RecordDict({REQUEST_KEY: ConfigRecord({"json": query.model_dump_json()})})


def decode_query(content: RecordDict) -> StudyQuery:
    """Parse and validate a query (pydantic ``ValidationError`` on anything unexpected)."""
    record = content.config_records.get(REQUEST_KEY)
    if record is None or "json" not in record:
        raise ValueError(f"message carries no {REQUEST_KEY!r} config record")
    return StudyQuery.model_validate_json(str(record["json"]))


def encode_answer(answers: Mapping[str, Mapping[str, np.ndarray]], meta: Mapping) -> RecordDict:
    rd = RecordDict({
        op: ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=float)) for k, v in arrays.items()})
        for op, arrays in answers.items()
    })
    rd[META_KEY] = ConfigRecord({"json": json.dumps(dict(meta))})
    return rd


def decode_answer(content: RecordDict) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    answers = {
        op: {k: arr.numpy() for k, arr in rec.items()}
        for op, rec in content.array_records.items()
    }
    meta_rec = content.config_records.get(META_KEY)
    meta = json.loads(str(meta_rec["json"])) if meta_rec is not None else {}
    return answers, meta
