"""Model store (versioned, integrity-checked) and vectorised batch scoring of a book."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from node.risk.model_store import ModelStore, TrainingRecord, model_version
from node.risk.scoring import Scorer, feature_matrix, read_book, score_book, write_scores
from shared.errors import CovariateBoundsError, DataError, SpecError
from shared.features import FEATURE_NAMES, FEATURES, scale
from shared.risk.arch import RiskArch, predict_proba
from shared.risk.tiers import assign_tiers
from shared.synth import generate_cohort

ARRAYS = [np.linspace(-0.4, 0.7, 16).reshape(1, 16), np.array([-3.1])]


def test_store_round_trip_versioning_and_latest(tmp_path):
    store = ModelStore(tmp_path / "models")
    a = store.save(
        arrays=ARRAYS,
        record=TrainingRecord(rounds=8, nodes=3, epsilon=8.0, delta=1e-5, metrics={"auc": 0.76}),
    )
    again = store.save(
        arrays=ARRAYS,
        record=TrainingRecord(rounds=8, nodes=3, epsilon=8.0, delta=1e-5, metrics={"auc": 0.76}),
    )
    assert again.version == a.version and len(store.versions()) == 1  # content-addressed
    b = store.save(arrays=[ARRAYS[0] * 2, ARRAYS[1]], record=TrainingRecord(rounds=9))
    assert b.version != a.version and store.versions() == [a.version, b.version]
    assert store.latest().version == b.version
    loaded = store.load(a.version)
    assert loaded.record.epsilon == 8.0 and loaded.record.metrics == {"auc": 0.76}
    for x, y in zip(loaded.arrays, ARRAYS):
        np.testing.assert_array_equal(x, y)
    assert model_version(arrays=loaded.arrays, record=loaded.record) == a.version


def test_store_refuses_tampered_unknown_and_wrong_models(tmp_path):
    store = ModelStore(tmp_path)
    m = store.save(arrays=ARRAYS, record=TrainingRecord(rounds=1, epsilon=1.0))
    rec = json.loads((tmp_path / f"{m.version}.json").read_text())
    rec["epsilon"] = 0.1  # understate the privacy spent
    (tmp_path / f"{m.version}.json").write_text(json.dumps(rec))
    with pytest.raises(SpecError, match="does not match its version"):
        store.load(m.version)
    with pytest.raises(SpecError, match="not found"):
        store.load("0" * 16)
    with pytest.raises(SpecError, match="no risk model"):
        ModelStore(tmp_path / "empty").latest()
    with pytest.raises(SpecError, match="shape"):
        store.save(arrays=[np.zeros((1, 15)), np.zeros(1)], record=TrainingRecord(rounds=1))
    with pytest.raises(SpecError, match="cut-offs"):
        store.save(arrays=ARRAYS, record=TrainingRecord(rounds=1, cutoffs=(0.2, 0.1, 0.3)))


@pytest.mark.parametrize("arch", [RiskArch(), RiskArch(kind="mlp", hidden=6)], ids=lambda a: a.kind)
def test_scorer_matches_the_scaled_forward_pass_and_tiers(tmp_path, arch):
    rng = np.random.default_rng(0)
    arrays = [rng.normal(scale=0.5, size=s) for s in arch.shapes()]
    model = ModelStore(tmp_path).save(
        arrays=arrays, record=TrainingRecord(kind=arch.kind, hidden=arch.hidden, rounds=1)
    )
    book, _ = generate_cohort(n=5000, seed=3)
    x = book[list(FEATURE_NAMES)].to_numpy(float)
    expected = predict_proba(arch=arch, arrays=arrays, z=scale(x, FEATURES))
    scores = Scorer.from_model(model).score(x)
    np.testing.assert_allclose(scores.prob, expected, rtol=1e-10, atol=1e-13)
    assert scores.tiers.tolist() == assign_tiers(expected).tolist()
    custom = Scorer.from_model(model, cutoffs=(0.01, 0.02, 0.03)).score(x)
    assert custom.tiers.tolist() == assign_tiers(expected, cutoffs=(0.01, 0.02, 0.03)).tolist()


def test_score_book_keeps_ids_and_names_bad_rows(tmp_path):
    model = ModelStore(tmp_path).save(arrays=ARRAYS, record=TrainingRecord(rounds=1))
    book, _ = generate_cohort(n=300, seed=1)
    scored = score_book(book, Scorer.from_model(model))
    assert list(scored.columns) == [
        "person_id",
        "site",
        "department",
        "job_type",
        "probability",
        "tier",
        "model_version",
    ]
    assert (scored["person_id"] == book["person_id"]).all()
    assert (scored["model_version"] == model.version).all()
    bad = book.copy()
    bad.loc[42, "sbp"] = 250.0
    with pytest.raises(CovariateBoundsError, match=r"row 42: sbp outside public bounds") as e:
        score_book(bad, Scorer.from_model(model))
    assert e.value.field == "sbp" and "250" not in str(e.value)  # row and field, never the value
    bad = book.astype({"hdl": object})
    bad.loc[7, "hdl"] = "n/a"
    with pytest.raises(DataError, match="row 7: hdl is not a number") as e:
        feature_matrix(bad)
    assert "n/a" not in str(e.value)
    with pytest.raises(DataError, match="lacks feature column"):
        feature_matrix(book.drop(columns=["glucose"]))
    bad = book.copy()
    bad.loc[3, "age"] = np.nan
    with pytest.raises(DataError, match="row 3: age is missing"):
        score_book(bad, Scorer.from_model(model))


def test_score_cli_reads_csv_writes_parquet(tmp_path):
    model = ModelStore(tmp_path / "models").save(arrays=ARRAYS, record=TrainingRecord(rounds=1))
    book, _ = generate_cohort(n=1000, seed=2)
    book.to_csv(tmp_path / "book.csv", index=False)
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "rehealth"),
            "node",
            "score",
            str(tmp_path / "book.csv"),
            "-o",
            str(tmp_path / "scores.parquet"),
            "--model-dir",
            str(tmp_path / "models"),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    scored = read_book(tmp_path / "scores.parquet")
    assert summary["rows"] == 1000 and summary["model_version"] == model.version
    assert sum(summary["tiers"].values()) == 1000
    expected = score_book(book, Scorer.from_model(model))
    np.testing.assert_allclose(scored["probability"], expected["probability"])
    bad = book.copy()
    bad.loc[5, "bmi"] = 80
    bad.to_csv(tmp_path / "bad.csv", index=False)
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "rehealth"),
            "node",
            "score",
            str(tmp_path / "bad.csv"),
            "-o",
            str(tmp_path / "x.csv"),
            "--model-dir",
            str(tmp_path / "models"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "row 5: bmi outside public bounds" in out.stderr and "80" not in out.stderr
    with pytest.raises(DataError, match="csv or .parquet"):
        write_scores(expected, tmp_path / "scores.xlsx")
