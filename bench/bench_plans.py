"""How long plans take: generation (every person scored once per catalogue item) and signed
webhook delivery to a gateway on loopback, on a SQLite store.

Staff are the synthetic ``company_logistics`` profile scored by the fixed test model; the
gateway is the threaded test receiver (HMAC verified, idempotent). Prints persons, plans made,
seconds to generate, plans delivered and plans per second delivered.

    .venv/bin/python bench/bench_plans.py            # 10 000 staff, ≈ 1 min on 2 cores
    .venv/bin/python bench/bench_plans.py --n 2000   # quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert  # noqa: E402

from node.plans.catalogue import Catalogue  # noqa: E402
from node.plans.delivery import DeliverySettings, deliver_plans  # noqa: E402
from node.plans.generate import generate_plans  # noqa: E402
from node.plans.signing import recipient_key  # noqa: E402
from node.risk.scoring import Scorer  # noqa: E402
from node.store import open_store  # noqa: E402
from node.store.models import persons  # noqa: E402
from shared.features import FEATURE_NAMES  # noqa: E402
from shared.schemas import age_band  # noqa: E402
from tests.security.hr_company import company, risk_model  # noqa: E402
from tests.unit.webhook_receiver import Receiver  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="staff")
    ap.add_argument("--min-risk", type=float, default=0.2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/node.db")
        staff = company(n=args.n)
        rows = [
            {
                "pseudonym": f"{i:064x}",
                "site": "acme",
                "department": r["department"],
                "job_type": r["job_type"],
                "age_band": age_band(r["age"]),
                "index_date": dt.date(2025, 1, 1),
                **{f: float(r[f]) for f in FEATURE_NAMES},
            }
            for i, r in enumerate(staff.to_dict("records"))
        ]
        with store.engine.begin() as conn:
            conn.execute(insert(persons), rows)
        scorer = Scorer.from_model(risk_model(Path(tmp) / "models"))
        cat = Catalogue.from_toml(ROOT / "deploy/examples/plan-catalogue.toml")
        t0 = time.perf_counter()
        s = generate_plans(store, scorer, cat, min_risk=args.min_risk)
        t_gen = time.perf_counter() - t0
        secret = b"s" * 32
        rx = Receiver(secret=secret)
        try:
            t0 = time.perf_counter()
            d = deliver_plans(
                store, DeliverySettings(url=rx.url, secret=secret, recipient_key=recipient_key(b"k" * 32))
            )
            t_del = time.perf_counter() - t0
        finally:
            rx.close()
        store.engine.dispose()
    print(f"persons {s.persons}  high-risk {s.high_risk}  plans {s.generated}  generate {t_gen:.2f} s")
    print(f"delivered {d.delivered} in {t_del:.2f} s  ({d.delivered / t_del:.0f} plans/s, one at a time)")


if __name__ == "__main__":
    main()
