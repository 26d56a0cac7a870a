import pytest

from coordinator.files import load_spec
from shared.errors import SpecError
from shared.study import StudySpec

MINIMAL = """
[study]
name = "demo"
seed = 7
[treatment]
column = "treated"
[[covariates]]
name = "age"
lo = 18
hi = 90
[[outcomes]]
name = "claims_cost"
cap = 50000
kind = "continuous"
[privacy]
enabled = false
[[sites]]
name = "insurer_a"
data = "insurer_a.csv"
"""


def test_contract_shape_loads_and_resolves_paths(tmp_path):
    p = tmp_path / "study.toml"
    p.write_text(MINIMAL)
    spec = load_spec(p)
    assert spec.study.seed == 7 and spec.treatment.column == "treated"
    assert [c.name for c in spec.covariates] == ["age"]
    assert spec.sites[0].data == str(tmp_path / "insurer_a.csv")
    assert spec.outcomes[0].lo == 0.0


def test_covariates_default_to_the_16_features():
    spec = StudySpec.from_dict({"study": {"name": "x"}, "outcomes": [{"name": "y", "cap": 1}]})
    assert len(spec.features) == 16


@pytest.mark.parametrize(
    "patch,field",
    [
        ({"covariates": [{"name": "age", "lo": 90, "hi": 18}]}, "covariates[0]"),
        ({"outcomes": [{"name": "y", "cap": -1}]}, "outcomes[0]"),
        ({"outcomes": [{"name": "e", "cap": 2, "kind": "binary"}]}, "outcomes[0]"),
        ({"privacy": {"enabled": True, "epsilon": 0}}, "privacy.epsilon"),
        (
            {"privacy": {"split": {"describe": 0.5, "ps_fit": 0.5, "psm_stats": 0.5, "balance": 0}}},
            "privacy.split",
        ),
        ({"sites": [{"name": "a"}, {"name": "a"}]}, "sites"),
        ({"treatment": {"colum": "t"}}, "treatment.colum"),
        ({"outcomes": []}, "outcomes"),
    ],
)
def test_invalid_spec_names_the_field(patch, field):
    data = {"study": {"name": "x"}, "outcomes": [{"name": "y", "cap": 1}], **patch}
    with pytest.raises(SpecError) as e:
        StudySpec.from_dict(data)
    assert field in str(e.value)


def test_bad_toml_is_a_spec_error(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text("[study\nname=")
    with pytest.raises(SpecError, match="TOML"):
        load_spec(p)


def test_spec_hash_is_stable_and_sensitive():
    a = StudySpec.from_dict({"study": {"name": "x"}, "outcomes": [{"name": "y", "cap": 1}]})
    b = StudySpec.from_dict({"study": {"name": "x"}, "outcomes": [{"name": "y", "cap": 2}]})
    assert a.spec_hash() == a.model_copy().spec_hash() != b.spec_hash()


def test_public_spec_hides_machine_paths_and_hash_is_location_independent(tmp_path):
    for folder in ("a", "b/c"):
        d = tmp_path / folder
        d.mkdir(parents=True)
        (d / "study.toml").write_text(MINIMAL)
    s1 = load_spec(tmp_path / "a" / "study.toml")
    s2 = load_spec(tmp_path / "b" / "c" / "study.toml")
    assert s1.sites[0].data != s2.sites[0].data  # resolved for use on this machine
    assert s1.public().sites[0].data == "insurer_a.csv"
    assert str(tmp_path) not in s1.public().model_dump_json()
    assert s1.spec_hash() == s2.spec_hash()
    copied = s1.model_copy(update={"study": s1.study.model_copy(update={"seed": 8})})
    assert copied.public().sites[0].data == "insurer_a.csv"


def test_the_spec_parses_from_text_without_touching_files():
    """``shared`` parses; the coordinator reads the file (:func:`coordinator.files.load_spec`)."""
    spec = StudySpec.from_toml_text(MINIMAL)
    assert spec.sites[0].data == "insurer_a.csv"  # no base: paths stay as written
    at = StudySpec.from_toml_text(MINIMAL, base="/srv/studies/x")
    assert at.sites[0].data == "/srv/studies/x/insurer_a.csv"
    assert at.public().sites[0].data == "insurer_a.csv"
    with pytest.raises(SpecError, match="absolute"):
        StudySpec.from_toml_text(MINIMAL, base="relative/folder")
    with pytest.raises(SpecError, match="study spec s.toml: not valid TOML"):
        StudySpec.from_toml_text("[study\nname=", source="study spec s.toml")
    with pytest.raises(SpecError, match="not found"):
        load_spec("/nonexistent/study.toml")
