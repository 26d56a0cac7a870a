"""Node configuration: one TOML file (``node.toml``) per node.

Relative paths in the file (key, data, API keys, a SQLite store) resolve against the file's
folder, so a node directory can be moved as a whole. Invalid files raise :class:`SpecError`
naming the field (``budget.epsilon: Input should be greater than 0``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy.engine import make_url

from node.files import read_toml
from shared.errors import SpecError
from shared.features import FEATURES
from shared.flower_commands import is_loopback
from shared.study import format_validation_error

CONFIG_NAME = "node.toml"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(_Model):
    """The node's total privacy budget for its population (studies, risk training and group
    views together): the ledger refuses releases beyond it."""

    epsilon: float = Field(default=10.0, gt=0)
    delta: float = Field(default=1e-6, gt=0, lt=1)


class DataPaths(_Model):
    """Where the site drops its input files (optional; `rehealth node ingest` takes a path)."""

    persons: Path | None = None
    interventions: Path | None = None
    outcomes: Path | None = None
    cohort: Path | None = None


class FederationSection(_Model):
    """How the node's SuperNode joins the federation (``rehealth node run``); written by
    ``rehealth federation provision`` into each site's kit."""

    superlink: str = Field(min_length=3)  # host:port of the coordinator's SuperLink
    root_certificates: Path = Path("ca.crt")
    private_key: Path = Path("supernode.key")
    public_key: Path = Path("supernode.pub")
    coordinator_key: Path = Path("coordinator.pub")
    #: loopback host:port of the SuperNode's own Runtime API (its ClientApp processes)
    runtime_address: str = "127.0.0.1:9094"
    state_dir: Path = Path("flower")
    #: answer studies from this cohort file instead of the store
    data_path: Path | None = None
    policy_path: Path | None = None
    allow_exact: bool = False
    secure_aggregation: bool = False

    def resolve_paths(self, base: Path) -> "FederationSection":
        names = ("root_certificates", "private_key", "public_key", "coordinator_key", "state_dir")
        update = {n: _abs(getattr(self, n), base) for n in (*names, "data_path", "policy_path")}
        return self.model_copy(update=update)


class ApiSection(_Model):
    """The scoring API: ``rehealth node run`` starts it beside the SuperNode if this section is
    present; ``rehealth node serve`` takes its limits from it (defaults without it)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, gt=0, lt=65536)
    #: request bodies above this are refused with 413 before they are read or parsed, and
    #: before the API key is checked; 8 MiB holds a full 10 000-person batch
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    #: browser origins allowed to call the API (CORS), e.g. ["https://portal.example.org"];
    #: empty (the default): no CORS headers, browsers refuse cross-origin calls
    cors_origins: tuple[str, ...] = ()
    #: HTTPS: the server's certificate (chain) and key, PEM. Required when ``host`` is not a
    #: loopback address: API keys, per-person scores and HR's session cookie are not sent in
    #: the clear over a network (a TLS proxy on this host keeps ``host = "127.0.0.1"``)
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> "ApiSection":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("api: give both tls_cert and tls_key, or neither")
        return self

    def resolve_paths(self, base: Path) -> "ApiSection":
        return self.model_copy(update={n: _abs(getattr(self, n), base) for n in ("tls_cert", "tls_key")})

    @field_validator("cors_origins")
    @classmethod
    def _plain_origins(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for origin in v:
            if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", origin):
                raise ValueError(
                    f"{origin!r} is not an origin: scheme://host[:port], e.g. https://portal.example.org"
                    " (no '*', no path: name each origin that may call the API)"
                )
        return v


class LogSection(_Model):
    """Logs of the node's long-running processes (``node serve``, ``node run``): one line per
    event on stderr; ``--log-format``/``--log-level`` (or ``REHEALTH_LOG_FORMAT``) override."""

    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


#: Features whose blank cell may be kept (``indicator``): continuous ones but age (its band is
#: derived from it and every view groups by it).
MISSING_OK_FEATURES = tuple(f.name for f in FEATURES if f.kind == "continuous" and f.name != "age")


class IngestSection(_Model):
    """What ingestion does with a blank feature cell in a persons file, per feature.

    ``quarantine`` (the default): the row is quarantined (``missing field``). ``indicator``:
    the person is kept with the value missing (stored NULL, counted in the ingest summary);
    risk scoring leaves such a person out explicitly, and a study leaves them out of analyses
    that use that feature (:func:`node.trajectory.derive_cohort` counts them in its attrition),
    so one blank LDL no longer removes a person from everything else.
    """

    missing: dict[str, Literal["quarantine", "indicator"]] = {}

    @field_validator("missing")
    @classmethod
    def _known_features(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if name not in MISSING_OK_FEATURES:
                raise ValueError(
                    f"{name!r} cannot have a missing-value policy: one of {', '.join(MISSING_OK_FEATURES)}"
                )
        return v

    @property
    def missing_ok(self) -> frozenset[str]:
        """The features kept as missing when blank."""
        return frozenset(n for n, p in self.missing.items() if p == "indicator")


class PlansSection(_Model):
    """Personalised intervention plans (:mod:`node.plans`): the catalogue file (codes, targets,
    texts, channels: configuration, not code), the employer's webhook and its signing secrets,
    and the delivery's retry schedule. Secrets live in files (mode 0600), never in node.toml."""

    catalogue: Path
    #: https, or http to a loopback host only: a plan is health data (which factor is off target)
    webhook_url: str | None = Field(default=None, pattern=r"^https?://")
    #: HMAC-SHA256 key signing outgoing webhooks (shared with the employer's gateway)
    webhook_secret_path: Path = Path("webhook.secret")
    #: HMAC-SHA256 key the gateway signs its opened/completed callbacks with
    callback_secret_path: Path = Path("callback.secret")
    #: a callback whose timestamp is further than this from the node's clock is refused
    callback_window_s: int = Field(default=300, ge=1, le=3600)
    max_attempts: int = Field(default=5, ge=1, le=50)  # then the plan is dead-lettered
    backoff_ms: float = Field(default=1000.0, ge=0)  # first retry delay; doubles each retry
    max_backoff_ms: float = Field(default=60_000.0, ge=0)
    timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("webhook_url")
    @classmethod
    def _encrypted(cls, v: str | None) -> str | None:
        if v is not None and v.lower().startswith("http://") and not is_loopback(urlsplit(v).hostname or ""):
            raise ValueError(
                f"{v!r}: plans are health data and would cross the network in the clear; "
                "use https:// (plain http only to a gateway on this machine)"
            )
        return v

    def resolve_paths(self, base: Path) -> "PlansSection":
        names = ("catalogue", "webhook_secret_path", "callback_secret_path")
        return self.model_copy(update={n: _abs(getattr(self, n), base) for n in names})


class NodeConfig(_Model):
    site_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    store_url: str = "sqlite:///node.db"
    #: the privacy ledger: one database, one population's budget (see node.ledger)
    ledger_url: str = "sqlite:///ledger.db"
    key_path: Path = Path("node.key")
    api_keys_path: Path = Path("api_keys.toml")
    #: the site's time zone (IANA): dates are calendar dates here (see node.ingest.validate)
    time_zone: str = "UTC"
    budget: Budget = Budget()
    data: DataPaths = DataPaths()
    ingest: IngestSection = IngestSection()
    federation: FederationSection | None = None
    api: ApiSection | None = None
    log: LogSection = LogSection()
    plans: PlansSection | None = None

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        return check_time_zone(v)

    @classmethod
    def from_toml(cls, path: str | Path) -> "NodeConfig":
        """Load and validate ``path``; relative paths resolve against its folder.

        Raises:
            SpecError: the file is missing, not TOML, or a field is invalid (named).
        """
        path = Path(path)
        data = read_toml(path, what="node config", hint=" (create one: rehealth node init)")
        return cls.from_dict(data, base=path.parent.resolve(), what=f"node config {path}")

    @classmethod
    def from_dict(cls, data: dict, *, base: Path, what: str = "node config") -> "NodeConfig":
        """Validate parsed TOML; relative paths resolve against ``base``."""
        try:
            cfg = cls.model_validate(data)
        except ValidationError as e:
            raise SpecError(format_validation_error(e, what)) from None
        return cfg.resolve_paths(base)

    def resolve_paths(self, base: Path) -> "NodeConfig":
        data = DataPaths(**{k: _abs(v, base) for k, v in self.data.model_dump().items()})
        return self.model_copy(
            update={
                "store_url": _resolve_sqlite(self.store_url, base, field="store_url"),
                "ledger_url": _resolve_sqlite(self.ledger_url, base, field="ledger_url"),
                "key_path": _abs(self.key_path, base),
                "api_keys_path": _abs(self.api_keys_path, base),
                "data": data,
                "federation": self.federation.resolve_paths(base) if self.federation else None,
                "plans": self.plans.resolve_paths(base) if self.plans else None,
                "api": self.api.resolve_paths(base) if self.api else None,
            }
        )


def check_time_zone(name: str) -> str:
    """``name`` if it is an IANA time zone this machine knows (``Europe/Berlin``, ``UTC``)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: an IANA name such as Europe/Berlin, or UTC") from None
    return name


def _abs(p: Path | None, base: Path) -> Path | None:
    return None if p is None else (p if p.is_absolute() else base / p)


def _resolve_sqlite(url: str, base: Path, *, field: str) -> str:
    try:
        u = make_url(url)
    except Exception:  # noqa: BLE001 - any parse failure is a config error
        raise SpecError(f"{field}: not a database URL: {url!r}") from None
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return url
    db = Path(u.database)
    return url if db.is_absolute() else u.set(database=str(base / db)).render_as_string(False)


def default_config_text(*, site_id: str, time_zone: str = "UTC") -> str:
    """A commented default ``node.toml`` for ``rehealth node init``."""
    return f'''# ReHealth Core node configuration. Relative paths resolve against this file's folder.

# This site's name in studies (letters, digits, _ . -). Mixed into every pseudonym: changing it
# later gives every person a new pseudonym.
site_id = "{site_id}"

# Where the node keeps its data. SQLite file by default; PostgreSQL by URL, e.g.
#   store_url = "postgresql+psycopg2://rehealth@127.0.0.1:5432/rehealth"
store_url = "sqlite:///node.db"

# The privacy ledger: every release of this node (study queries, risk-model training, HR group
# views) is charged here, against one budget for the node's population. Keep it with the data,
# back it up, never reset it: a new ledger is a fresh budget. The SuperNode's node config should
# name the same ledger (ledger-url) so studies and group views draw from one budget.
ledger_url = "sqlite:///ledger.db"

# The 32-byte pseudonym key (HMAC-SHA256), created on first start with mode 0600.
# It never leaves this machine: back it up like a password. The store records its fingerprint:
# without the same key the node loads no more data until the key is restored from backup (or the
# store is re-keyed, which deletes its person data: rehealth node store rekey). Leaking it lets
# the holder re-identify pseudonyms.
key_path = "node.key"

# The site's time zone (IANA name, e.g. "Europe/Berlin"). Dates are calendar dates in this zone:
# a time-zone-aware timestamp in an input file is converted to it before its date is taken, and
# a date with a time of day other than midnight here is quarantined, never shifted a day.
time_zone = "{time_zone}"

# API keys and their roles for the node's REST API (underwriter, hr, admin).
api_keys_path = "api_keys.toml"

# The node's total privacy budget (for its whole population); the ledger refuses any release
# beyond it.
[budget]
epsilon = 10.0
delta = 1e-6

# Optional default input files (CSV or Parquet); `rehealth node ingest FILE` also takes a path.
[data]
# persons = "data/persons.csv"
# interventions = "data/interventions.csv"
# outcomes = "data/outcomes.csv"
# cohort = "data/cohort.csv"

# What ingestion does with a blank feature cell in a persons file: "quarantine" (the default:
# the row is refused) or "indicator" (the person is kept with the value missing; scoring and
# studies that need the feature leave them out, counted). See docs/USAGE.md.
[ingest.missing]
# ldl = "indicator"
# glucose = "indicator"

# Personalised intervention plans (rehealth node plans; see docs/USAGE.md). The catalogue holds
# codes, targets, texts and channels; an example is deploy/examples/plan-catalogue.toml.
# [plans]
# catalogue = "plan-catalogue.toml"
# webhook_url = "https://gateway.example.org/rehealth/plans"
'''
