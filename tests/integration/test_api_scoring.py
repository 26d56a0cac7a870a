"""The scoring API, running: `rehealth node serve` under uvicorn on 127.0.0.1, called with httpx.

Covers valid real-time and batch scoring (checked against an independent numpy oracle), every
invalid-input class (missing feature, out-of-bounds, wrong type, unknown field, bad JSON, empty
batch), authentication (absent / unknown key → 401, wrong role → 403) and HR group views.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from node.api.ready import wait_until_healthy
from node.risk.model_store import ModelStore, TrainingRecord
from shared.features import FEATURE_NAMES, FEATURES
from shared.risk.arch import REFERENCE
from shared.synth import generate_cohort

REHEALTH = str(Path(sys.executable).parent / "rehealth")
WEIGHTS = np.linspace(-0.6, 0.9, 16).reshape(1, 16)
BIAS = np.array([-2.5])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _oracle(x: np.ndarray) -> np.ndarray:
    """Probability straight from the definition: u = (x - m)/s, p = 1/(1 + exp(-(u·w + b)))."""
    m = np.array([REFERENCE[n][0] for n in FEATURE_NAMES])
    s = np.array([REFERENCE[n][1] for n in FEATURE_NAMES])
    return 1 / (1 + np.exp(-(((x - m) / s) @ WEIGHTS[0] + BIAS[0])))


def _tier(p: float) -> str:
    return "low" if p < 0.05 else "medium" if p < 0.10 else "high" if p < 0.20 else "very_high"


def _add_key(keys: Path, role: str) -> str:
    out = subprocess.run(
        [REHEALTH, "node", "apikey", "add", "--role", role, "--keys-file", str(keys), "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)["key"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("node")
    model = ModelStore(root / "models").save(
        arrays=[WEIGHTS, BIAS],
        record=TrainingRecord(rounds=5, nodes=3, epsilon=8.0, delta=1e-5, metrics={"auc": 0.8}),
    )
    keys = root / "api_keys.toml"
    key = {role: _add_key(keys, role) for role in ("underwriter", "hr", "admin")}
    assert key["underwriter"] not in keys.read_text()  # only hashes are stored
    book, _ = generate_cohort(n=3000, seed=4)
    book.to_csv(root / "book.csv", index=False)
    # a config, for its ledger: serve refuses group views it could not charge
    (root / "node.toml").write_text('site_id = "a"\n')
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            REHEALTH,
            "node",
            "serve",
            "--config",
            str(root / "node.toml"),
            "--model-dir",
            str(root / "models"),
            "--keys-file",
            str(keys),
            "--book",
            str(root / "book.csv"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, proc)
    except RuntimeError as e:
        pytest.fail(str(e))
    with httpx.Client(base_url=base, timeout=30) as client:
        yield client, key, model.version, book
    proc.terminate()
    proc.wait(timeout=10)


def _person(book: pd.DataFrame, i: int) -> dict:
    row = book.iloc[i]
    return {
        n: (int(row[n]) if f.kind == "binary" else float(row[n])) for n, f in zip(FEATURE_NAMES, FEATURES)
    }


def _post(client, path, body, key):
    return client.post(path, json=body, headers={"X-API-Key": key})


def test_health_and_model_card(server):
    client, key, version, _ = server
    assert client.get("/v1/health").json() == {"status": "ok", "model_version": version}
    card = client.get("/v1/model", headers={"X-API-Key": key["hr"]}).json()
    assert card["version"] == version and card["epsilon"] == 8.0 and card["rounds"] == 5
    assert card["cutoffs"] == [0.05, 0.1, 0.2]


def test_real_time_score_matches_oracle(server):
    client, key, version, book = server
    for i in (0, 1, 2, 50):
        body = {**_person(book, i), "ref": f"p{i}"}
        r = _post(client, "/v1/score", body, key["underwriter"])
        assert r.status_code == 200, r.text
        out = r.json()
        p = _oracle(book.loc[[i], list(FEATURE_NAMES)].to_numpy(float))[0]
        assert out["probability"] == pytest.approx(p, rel=1e-9)
        assert out == {
            "ref": f"p{i}",
            "probability": out["probability"],
            "tier": _tier(p),
            "model_version": version,
        }


def test_batch_scores_every_person(server):
    client, key, version, book = server
    persons = [{**_person(book, i), "ref": str(i)} for i in range(500)]
    r = _post(client, "/v1/score/batch", {"persons": persons}, key["admin"])
    assert r.status_code == 200, r.text
    out = r.json()
    p = _oracle(book.loc[:499, list(FEATURE_NAMES)].to_numpy(float))
    assert out["count"] == 500 and out["model_version"] == version
    np.testing.assert_allclose([x["probability"] for x in out["results"]], p, rtol=1e-9)
    assert [x["ref"] for x in out["results"]] == [str(i) for i in range(500)]
    assert [x["tier"] for x in out["results"]] == [_tier(v) for v in p]
    assert sum(out["tier_counts"].values()) == 500
    assert len(set(x["tier"] for x in out["results"])) > 1  # the check is not vacuous


@pytest.mark.parametrize(
    "mutate, field, words",
    [
        (lambda b: b.pop("age"), "age", "missing feature 'age'"),
        (lambda b: b.update(sbp=300), "sbp", "outside the public bounds [80, 220]"),
        (lambda b: b.update(hdl=0.1), "hdl", "outside the public bounds [0.3, 3.5]"),
        (lambda b: b.update(smoker=2), "smoker", "binary feature, must be 0 or 1"),
        (lambda b: b.update(glucose="5.5"), "glucose", "wrong type"),
        (lambda b: b.update(bmi=[27]), "bmi", "wrong type"),
        (lambda b: b.update(cholesterol=5.0), "cholesterol", "unknown field 'cholesterol'"),
    ],
    ids=["missing", "above-bound", "below-bound", "binary", "string", "list", "unknown-field"],
)
def test_invalid_person_is_422_naming_the_field(server, mutate, field, words):
    client, key, _, book = server
    body = _person(book, 0)
    mutate(body)
    r = _post(client, "/v1/score", body, key["underwriter"])
    assert r.status_code == 422
    err = r.json()
    assert err["field"] == field and words in err["error"], err


def test_invalid_batch_item_names_its_index_and_every_problem(server):
    client, key, _, book = server
    bad = _person(book, 1)
    bad.pop("age")
    bad["sbp"] = 10
    r = _post(client, "/v1/score/batch", {"persons": [_person(book, 0), bad]}, key["underwriter"])
    assert r.status_code == 422
    err = r.json()
    assert err["field"] == "persons[1].age"
    assert {e["field"] for e in err["errors"]} == {"persons[1].age", "persons[1].sbp"}
    assert _post(client, "/v1/score/batch", {"persons": []}, key["underwriter"]).status_code == 422


def test_malformed_json_is_422(server):
    client, key, _, _ = server
    r = client.post(
        "/v1/score",
        content=b"{not json",
        headers={"X-API-Key": key["underwriter"], "Content-Type": "application/json"},
    )
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]


def test_keys_and_roles(server):
    client, key, _, book = server
    body = _person(book, 0)
    r = client.post("/v1/score", json=body)
    assert r.status_code == 401 and r.json() == {
        "error": "missing API key (header X-API-Key)",
        "field": "X-API-Key",
        "errors": [],
    }
    r = _post(client, "/v1/score", body, "rh_not-a-key")
    assert r.status_code == 401 and r.json()["error"] == "unknown API key"
    r = _post(client, "/v1/score", body, key["hr"])
    assert r.status_code == 403 and "role 'hr'" in r.json()["error"]
    assert _post(client, "/v1/score/batch", {"persons": [body]}, key["hr"]).status_code == 403
    r = client.get("/v1/groups", headers={"X-API-Key": key["underwriter"]})
    assert r.status_code == 403 and "role 'underwriter'" in r.json()["error"]
    # auth is checked before the body: an unauthenticated caller learns nothing about validation
    assert client.post("/v1/score", json={"age": "x"}).status_code == 401


def test_group_view_is_suppressed_noised_and_stable(server):
    client, key, version, book = server
    r = client.get("/v1/groups", params={"by": "department"}, headers={"X-API-Key": key["hr"]})
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["k"] == 11 and view["model_version"] == version and view["epsilon"] > 0
    p = _oracle(book[list(FEATURE_NAMES)].to_numpy(float))
    exact = pd.crosstab(book["department"].astype(str), pd.Series([_tier(v) for v in p]).values)
    depts = sorted(book["department"].astype(str).unique())
    assert sorted({c["group"] for c in view["cells"]}) == depts
    assert len(view["cells"]) == 4 * len(depts)  # every tier, zeros included
    for c in view["cells"]:
        if c["suppressed"]:
            assert c["count"] is None
        else:
            assert c["count"] >= 11
            true = exact.loc[c["group"], c["tier"]] if c["tier"] in exact.columns else 0
            assert abs(c["count"] - true) <= 5 * view["sigma"] + 1
    again = client.get("/v1/groups", params={"by": "department"}, headers={"X-API-Key": key["admin"]}).json()
    # cached: noise cannot be averaged away
    assert {**again, "note": None, "charged_now": None} == {**view, "note": None, "charged_now": None}
    r = client.get("/v1/groups", params={"by": "salary"}, headers={"X-API-Key": key["hr"]})
    assert r.status_code == 422 and r.json()["field"] == "by"


def test_openapi_schema_documents_endpoints_and_key(server):
    client, *_ = server
    spec = client.get("/openapi.json").json()
    assert {"/v1/score", "/v1/score/batch", "/v1/groups", "/v1/model", "/v1/health"} <= set(spec["paths"])
    assert any(s.get("name") == "X-API-Key" for s in spec["components"]["securitySchemes"].values())
    assert "age" in spec["components"]["schemas"]["PersonIn"]["required"]
