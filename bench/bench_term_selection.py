"""The propensity basis chosen by Imbens & Rubin's stepwise rule against the fixed ones.

No fixed basis covers every process at 10k treated (docs/STATISTICS.md, "Site effects"): site
effects alone leave ``misspecified`` biased (−4.95 SE on absence days), every square of a
continuous covariate fixes it but overshoots ``threshold_uptake`` (+1.34 SE). This benchmark
measures the basis :func:`shared.psm.selection.stepwise_basis` chooses from covariates and
treatment alone (C_qua = 2.71, the authors' constant) from two candidate sets: squares and all
pairwise products (``sites+stepwise``), and those plus hinges at tenths of each continuous
covariate's public range (``sites+stepwise+hinges``), with the site indicators always in, on
the same seeded federations (a paired comparison). The selection's rounds are sums of the
node's own :func:`~shared.psm.propensity.ps_contribution` over the expanded basis, as a study
would collect them; the estimate is the exact study
(:func:`shared.psm.reference.estimate_att_federated`) with the chosen terms appended to each
node's covariates. Seeds start at 40,000: none of them was used before.

Printed per layout × process: the terms chosen (mean, range, the most frequent); per outcome
and design: mean bias/SE ± its Monte-Carlo SE, the SD of the errors in SEs (``sd``: 1 for an
SE that is the estimate's spread), coverage with its Wilson 95 % interval, and the mean CI
width over the site-effects basis. ``--estimator dr`` runs every design doubly robust;
``--json`` keeps every seed's errors. ``stepwise chosen elsewhere`` uses the terms the shipped rule
chose on an independent federation (seed + 1,000,000): post-selection variability apart.

    .venv/bin/python bench/bench_term_selection.py --seeds 200 --workers 2
    .venv/bin/python bench/bench_term_selection.py --seeds 40 --dgps misspecified   # quick look
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bench_term_selection.py --seeds 100 --workers 2 \
        --dgps smooth_uptake --designs "site effects,sites+squares,sites+stepwise+hinges"

One BLAS thread per worker: with two workers of two threads each on two cores, the four designs
on smooth_uptake took 55 min; three designs with one thread 7–10 min per process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _coverage import design_rows, map_seeds, outcome_errors  # noqa: E402
from _layouts import LAYOUTS, NAMES, build_nodes  # noqa: E402

from shared.errors import EstimationError  # noqa: E402
from shared.features import FEATURES  # noqa: E402
from shared.psm.reference import estimate_att_federated  # noqa: E402
from shared.psm.selection import (  # noqa: E402
    as_terms,
    candidate_hinges,
    candidate_pairs,
    rounds_over,
    stepwise_basis,
)
from shared.study import Covariate  # noqa: E402
from shared.synth.outcomes import OUTCOMES  # noqa: E402
from shared.terms import DesignTerms, candidate_name, expand  # noqa: E402

BINARY = [n for n, f in zip(NAMES, FEATURES) if f.kind == "binary"]
KINDS = [f.kind for f in FEATURES]
PAIRS = candidate_pairs(KINDS)
SQUARES = [p for p in PAIRS if p[0] == p[1]]
#: a term is a product ``(i, j)`` of two covariates (ints) or a hinge ``(i, knot)`` (a float)
HINGES = candidate_hinges(KINDS)
#: the candidates each stepwise design chooses from; ``sites+stepwise+hinges`` is the shipped
#: ``[terms] select = "stepwise"`` (every candidate of :func:`shared.terms.candidates`), run by
#: the study driver itself, the others by :func:`choose` here
CANDIDATES: dict[str, list] = {"sites+stepwise": PAIRS, "sites+stepwise+hinges": PAIRS + HINGES}
SHIPPED = "sites+stepwise+hinges"
#: the shipped rule's terms chosen on an independent federation of the same process and layout
#: (seed + 1,000,000), then used here: the same kind of basis without reusing the data that
#: chose it, to tell post-selection variability from the rest of an SE's gap
ELSEWHERE = "stepwise chosen elsewhere"
OTHER_SEED = 1_000_000
DESIGNS = ("site effects", "sites+squares", *CANDIDATES, ELSEWHERE)
FIRST_SEED = 40_000
#: the covariates on the [0, 1] scale the benchmark's arrays hold
SCALED = tuple(Covariate(name=f.name, lo=0.0, hi=1.0, kind=f.kind) for f in FEATURES)


def _name(term) -> str:
    """A candidate's column name as the nodes name it (``age^2``, ``bmi*smoker``, ``age>0.5``:
    on the scaled [0, 1] bounds the reference works in)."""
    return candidate_name(SCALED, term)


def _columns(z: np.ndarray, terms) -> np.ndarray:
    """The terms' columns over scaled covariates ``z``, from the nodes' own
    :func:`shared.terms.expand` (products, then hinges: candidate order)."""
    return expand(z, SCALED, as_terms(terms, SCALED))[:, len(SCALED) :]


def choose(nodes, candidates) -> tuple[list, int]:
    """The stepwise basis over the federation: chosen terms and the rounds it took."""
    k = len(nodes)
    designs, ts = [], []
    for i, n in enumerate(nodes):
        z = n.arrays.z
        sites = np.zeros((z.shape[0], k - 1))
        if i:
            sites[:, i - 1] = 1.0
        designs.append(np.hstack([z, sites, _columns(z, candidates)]))
        ts.append(n.arrays.t)

    step = stepwise_basis(rounds_over(designs, ts), n_base=len(NAMES) + k - 1, n_candidates=len(candidates))
    return [candidates[c] for c in step.chosen], step.rounds


def study(nodes, terms: DesignTerms, estimator: str = "stratified"):
    """The shipped exact study over the benchmark's nodes with site effects and ``terms``
    (:func:`shared.psm.reference.estimate_att_federated`, the study driver)."""
    return estimate_att_federated(
        nodes=[(n.arrays.z, n.arrays.t, n.y_raw) for n in nodes],
        outcomes=OUTCOMES,
        covariates=NAMES,
        terms=terms,
        site_effects=True,
        binary=BINARY,
        estimator=estimator,  # type: ignore[arg-type]
    )


def one_seed(
    seed: int, *, layout: str, dgp: str, designs: tuple[str, ...], estimator: str = "stratified"
) -> dict:
    nodes, truth = build_nodes(layout=LAYOUTS[layout], dgp=dgp, seed=seed, outcomes=OUTCOMES)
    out: dict = {}
    bases: dict[str, list] = {"site effects": [], "sites+squares": SQUARES}
    for design in designs:
        if design in CANDIDATES and design != SHIPPED:
            try:
                bases[design], out[f"{design} rounds"] = choose(nodes, CANDIDATES[design])
            except EstimationError as e:
                return {"error": type(e).__name__}
            out[f"{design} chosen"] = [_name(p) for p in bases[design]]
    if ELSEWHERE in designs:
        other, _ = build_nodes(layout=LAYOUTS[layout], dgp=dgp, seed=seed + OTHER_SEED, outcomes=OUTCOMES)
        try:
            picked = study(other, DesignTerms(select="stepwise")).selection
        except EstimationError as e:
            return {"error": f"elsewhere: {type(e).__name__}"}
        assert picked is not None
        bases[ELSEWHERE] = [CANDIDATES[SHIPPED][c] for c in picked.chosen]
        out[f"{ELSEWHERE} chosen"] = [_name(p) for p in bases[ELSEWHERE]]
        out[f"{ELSEWHERE} rounds"] = picked.rounds
    for design in designs:
        extra = bases.get(design, [])
        try:
            terms = DesignTerms(select="stepwise") if design == SHIPPED else as_terms(extra, SCALED)
            run = study(nodes, terms, estimator)
        except EstimationError as e:
            out[design] = type(e).__name__
            continue
        if run.selection is not None:
            out[f"{design} rounds"] = run.selection.rounds
            out[f"{design} chosen"] = [_name(CANDIDATES[design][c]) for c in run.selection.chosen]
        out[design] = outcome_errors(run.estimate, truth, OUTCOMES)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--first-seed", type=int, default=FIRST_SEED)
    ap.add_argument("--layouts", default="k5_10k")
    ap.add_argument(
        "--dgps",
        default="baseline,misspecified,threshold_uptake,heavy_tail,heterogeneous,weak_confounding,"
        "strong_confounding,null",
    )
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--designs", default=",".join(DESIGNS), help="a subset of: " + ", ".join(DESIGNS))
    ap.add_argument(
        "--estimator",
        choices=("stratified", "dr"),
        default="stratified",
        help="every design's estimator (the spec's `estimator`)",
    )
    ap.add_argument("--json", type=Path, help="keep every seed's result here (one list per layout × process)")
    args = ap.parse_args()
    designs = tuple(args.designs.split(","))
    unknown = set(designs) - set(DESIGNS)
    if unknown or "site effects" not in designs:
        sys.exit(f"--designs: unknown {sorted(unknown)}, or no 'site effects' (the base of the widths)")
    first = args.first_seed
    print(
        f"seeds {first}..{first + args.seeds - 1}; exact studies, {args.estimator}; caliper strata 0.2 SD; "
        "site effects in all"
    )
    kept: dict[str, list] = {}
    for layout in args.layouts.split(","):
        for dgp in args.dgps.split(","):
            t0 = time.time()
            seeds = list(range(first, first + args.seeds))
            fn = partial(one_seed, layout=layout, dgp=dgp, designs=designs, estimator=args.estimator)
            res = map_seeds(fn, seeds, workers=args.workers)
            if args.json:
                kept[f"{layout} {dgp}"] = [{"seed": s, **r} for s, r in zip(seeds, res)]
                args.json.write_text(json.dumps(kept))
            ok = [r for r in res if "error" not in r and all(isinstance(r[d], dict) for d in designs)]
            failed = Counter(
                r.get("error") or ", ".join(f"{d}: {r[d]}" for d in designs if not isinstance(r[d], dict))
                for r in res
                if r not in ok
            )
            print(
                f"{layout} {dgp}: {len(ok)} of {len(res)} seeds"
                + (f" (failed: {dict(failed)})" if failed else "")
            )
            for design in (d for d in designs if d in CANDIDATES or d == ELSEWHERE):
                n_terms = [len(r[f"{design} chosen"]) for r in ok]
                top = Counter(t for r in ok for t in r[f"{design} chosen"]).most_common(6)
                print(
                    f"  {design}: terms chosen {np.mean(n_terms):.1f} [{min(n_terms)}, {max(n_terms)}], "
                    f"{np.mean([r[f'{design} rounds'] for r in ok]):.0f} rounds; most often: "
                    + ", ".join(f"{t} {100 * c / len(ok):.0f}%" for t, c in top)
                )
            for line in design_rows(ok, designs, OUTCOMES, base="site effects"):
                print(f"  {line}")
            print(f"  ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
