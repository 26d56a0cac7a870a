"""Node configuration (node.toml) and `rehealth node init`."""

import json
import stat
import tomllib

import pytest
from typer.testing import CliRunner

from node.cli import app
from node.config import NodeConfig, default_config_text
from shared.errors import SpecError


def test_default_config_is_commented_valid_toml_and_resolves_relative_paths(tmp_path):
    text = default_config_text(site_id="employer_x")
    assert text.count("#") > 10
    path = tmp_path / "node.toml"
    path.write_text(text)
    cfg = NodeConfig.from_toml(path)
    assert cfg.site_id == "employer_x"
    assert cfg.store_url == f"sqlite:///{tmp_path}/node.db"
    assert cfg.key_path == tmp_path / "node.key" and cfg.api_keys_path == tmp_path / "api_keys.toml"
    assert (cfg.budget.epsilon, cfg.budget.delta) == (10.0, 1e-6)
    assert tomllib.loads(text)["budget"]["epsilon"] == 10.0


def test_postgres_urls_and_absolute_paths_are_kept(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(
        'site_id = "a"\nstore_url = "postgresql+psycopg2://u:secret@127.0.0.1/db"\n'
        'key_path = "/srv/node/node.key"\n[data]\npersons = "in/p.csv"\n'
    )
    cfg = NodeConfig.from_toml(path)
    assert cfg.store_url == "postgresql+psycopg2://u:secret@127.0.0.1/db"
    assert str(cfg.key_path) == "/srv/node/node.key"
    assert cfg.data.persons == tmp_path / "in" / "p.csv" and cfg.data.cohort is None


@pytest.mark.parametrize(
    "body,field",
    [
        ('site_id = "a b"', "site_id"),
        ('site_id = "a"\n[budget]\nepsilon = -1', "budget.epsilon"),
        ('site_id = "a"\nbudget_eps = 3', "budget_eps"),
        ('store_url = "sqlite:///x.db"', "site_id"),
    ],
)
def test_invalid_config_names_the_field(tmp_path, body, field):
    path = tmp_path / "node.toml"
    path.write_text(body)
    with pytest.raises(SpecError, match=f"{field}:"):
        NodeConfig.from_toml(path)


def test_missing_or_broken_config_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match="not found.*rehealth node init"):
        NodeConfig.from_toml(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("site_id = ")
    with pytest.raises(SpecError, match="not valid TOML"):
        NodeConfig.from_toml(tmp_path / "bad.toml")


def test_node_init_writes_config_key_and_store_and_refuses_to_overwrite(tmp_path):
    runner = CliRunner()
    d = tmp_path / "node"
    res = runner.invoke(app, ["init", "--dir", str(d), "--site-id", "insurer_a", "--format", "json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["site_id"] == "insurer_a" and info["store"] == f"sqlite:///{d}/node.db"
    key = (d / "node.key").read_bytes()
    assert stat.S_IMODE((d / "node.key").stat().st_mode) == 0o600 and len(key) == 32
    assert key.hex() not in res.output
    assert (d / "node.db").exists()
    again = runner.invoke(app, ["init", "--dir", str(d)])
    assert again.exit_code == 1 and "--force" in again.output
    forced = runner.invoke(app, ["init", "--dir", str(d), "--site-id", "insurer_b", "--force"])
    assert forced.exit_code == 0 and (d / "node.key").read_bytes() == key  # key is never replaced
    assert NodeConfig.from_toml(d / "node.toml").site_id == "insurer_b"


def test_node_init_rejects_a_bad_site_id(tmp_path):
    res = CliRunner().invoke(app, ["init", "--dir", str(tmp_path), "--site-id", "bad id!"])
    assert res.exit_code == 1 and "site_id" in res.output
    assert not (tmp_path / "node.toml").exists()
