r"""Derived covariate terms: squares and declared interactions, computed on the node.

A logistic propensity model linear in the covariates is misspecified whenever uptake bends (a
U-shape in age, a threshold, an interaction), and a linear outcome model may be misspecified at
the same time (absence days drop to zero at retirement age): then neither the stratified nor
the doubly robust estimate is consistent. Measured on the synthetic ``misspecified`` process
(docs/benchmarks/misspec.md): strata on the linear score leave the treated with 20 % retired
people against 3 % of the controls, and the absence-days ATT is biased by about −1 day.

The standard remedy in propensity-score practice is to enlarge the covariate basis with
second-order terms (Rosenbaum & Rubin 1984, JASA 79; Imbens & Rubin 2015, ch. 13; MatchIt's and
CohortMethod's users add squares and interactions and check balance on them). The study spec's
``[terms]`` table declares them **before** any data is seen:

* ``squares = "continuous"``: the square of every continuous covariate (binary ones square to
  themselves) — the pre-declared default basis, the same for every study;
* ``interactions = ["bmi*smoker", ...]``: products the design names (none by default);
* ``hinges = ["age>60", ...]``: a continuous covariate bent at a value inside its public
  bounds, ``max(z − k, 0) / (1 − k)`` on the [0, 1] scale (:func:`hinge`): a step, threshold or
  saturating rise the design knows of (an outreach campaign from age 60), which no square or
  product represents (none by default);
* ``select = "stepwise"`` (exact studies, instead of the three above): the data choose the
  terms among public candidates — every square and product, and hinges at tenths of each
  public range (:func:`candidates`) — by Imbens & Rubin's rule, before any outcome is read
  (:mod:`shared.psm.selection`); each query names the terms chosen so far and each node takes
  only candidates it derives itself (:func:`basis_terms`).

Each term is a product of covariates already scaled to [0, 1] by their public bounds, or a
hinge of one, so it lies in [0, 1] too: it needs no bounds of its own, adds nothing a node's
policy has not allowed (a function of allowed columns), and enters every aggregate —
propensity fit, strata, balance table, DR cross-products, DP sensitivities (one more column
each) — exactly as a covariate does.
The node appends the terms to its scaled matrix in :func:`shared.answer.answer`, the one code
path every adapter (real node, in-process site, pooled reference) runs, so federated = pooled
holds for them as for the covariates (tests/unit/test_psm_terms.py).

**Site effects** (``sites = "all"``, exact studies only). Uptake differs between sites (each
insurer's outreach, each employer's programme) and so does case mix; a score linear in the
covariates alone then fits a mixture of the sites' scores, and strata on it leave imbalance
that grows against the SE with the sample: at 10k treated over five insurers the absence-days
ATT was biased by −0.67 SE (60 seeds, coverage 80 %), with a site indicator per non-reference
site in the propensity model −0.03 SE (92 %) — the within-site propensity model of multi-site
studies (Li, Zaslavsky & Landrum 2013, Stat Med 32). The spec names the sites in order, the
first the reference; each node appends the indicators of its own site (its name from its own
configuration, checked against the list). Under DP the indicator columns' sums over the
federation would be each site's own per-stratum counts — what secure aggregation exists to
hide — so the spec and every node refuse them there.

A spec without ``[terms]`` (or with the empty default) dumps, hashes and queries as before.

>>> from shared.study import Covariate
>>> t = DesignTerms(squares="continuous", interactions=("bmi*smoker",))
>>> [c.name for c in derived_covariates(
...     (Covariate(name="age", lo=18, hi=90), Covariate(name="bmi", lo=15, hi=60),
...      Covariate(name="smoker", lo=0, hi=1, kind="binary")), t)]
['age^2', 'bmi^2', 'bmi*smoker']
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, Sequence, TypeVar

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from shared.errors import DataError


class Covariate(Protocol):
    """What this module reads of a study's covariate (:class:`shared.study.Covariate`, which it
    does not import: the spec holds a :class:`DesignTerms`, so importing it would be a cycle)."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> Literal["continuous", "binary"]: ...

    @property
    def lo(self) -> float: ...

    @property
    def hi(self) -> float: ...


C = TypeVar("C", bound=Covariate)


__all__ = [
    "KNOTS",
    "DesignTerms",
    "as_terms",
    "basis_terms",
    "candidate_hinges",
    "candidate_name",
    "candidate_pairs",
    "candidate_terms",
    "candidates",
    "check_terms",
    "derived_covariates",
    "expand",
    "hinge",
    "hinge_knots",
    "hinge_term",
    "site_column",
    "term_factors",
]

#: Knots of the hinge terms on the [0, 1] scale: every tenth of a covariate's **public** range
#: (age 18–90: 25.2, 32.4, …, 82.8 years), so no knot comes from data.
KNOTS: tuple[float, ...] = tuple(k / 10 for k in range(1, 10))


def hinge(z: np.ndarray, knot: float) -> np.ndarray:
    """``max(z − knot, 0) / (1 − knot)``: a covariate scaled to [0, 1] bent at ``knot``, again
    in [0, 1] (so, like a product, it needs no bounds of its own).

    A sum of hinges is a linear spline: it follows a step, a threshold or a saturating rise
    that no square or product of covariates represents (``threshold_uptake``,
    :mod:`shared.synth.dgp`).

    >>> hinge(np.array([0.0, 0.5, 0.75, 1.0]), 0.5).tolist()
    [0.0, 0.0, 0.5, 1.0]
    """
    return np.maximum(np.asarray(z, dtype=float) - knot, 0.0) / (1.0 - knot)


class DesignTerms(BaseModel):
    """The spec's ``[terms]``: second-order terms added to the covariate basis (see module)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    squares: Literal["none", "continuous"] = "none"
    #: products of two covariates, ``"a*b"``; ``"a*a"`` is one continuous covariate's square
    interactions: tuple[str, ...] = Field(default=(), max_length=200)
    #: a continuous covariate bent at a value inside its public bounds, ``"age>60"``
    hinges: tuple[str, ...] = Field(default=(), max_length=200)
    #: the study's sites, the reference first: one 0/1 indicator column per other site
    #: (site effects; a spec writes ``sites = "all"``, :class:`shared.study.StudySpec`)
    sites: tuple[str, ...] = Field(default=(), max_length=1000)
    #: ``"stepwise"`` (exact studies): the basis adds the products and hinges Imbens & Rubin's
    #: stepwise rule chooses among :func:`candidate_terms`, from covariates and treatment only,
    #: before any outcome is read; each query then names the terms chosen so far
    #: (``StudyQuery.chosen``, checked by :func:`basis_terms`)
    select: Literal["none", "stepwise"] = "none"

    @field_validator("select", mode="before")
    @classmethod
    def _unset_is_none(cls, v: object) -> object:
        return "none" if v == "" else v  # proto3 reads a string it was not sent as ""

    @model_validator(mode="after")
    def _select_chooses_every_term(self) -> "DesignTerms":
        if self.select != "none" and (self.squares != "none" or self.interactions or self.hinges):
            raise ValueError(
                "terms.select = 'stepwise' chooses among every square, product and hinge: declare "
                "none of them beside it (site effects may be)"
            )
        return self

    @field_validator("sites")
    @classmethod
    def _distinct_sites(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) == 1:
            raise ValueError("site effects need at least two sites (one is the reference)")
        if len(set(v)) != len(v):
            raise ValueError("terms.sites names a site twice")
        return v

    @field_validator("interactions")
    @classmethod
    def _distinct_pairs(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        every_square = info.data.get("squares") == "continuous"
        seen: set[frozenset[str]] = set()
        for term in v:
            parts = term.split("*")
            if len(parts) != 2 or not all(p.strip() for p in parts):
                raise ValueError(f"interaction {term!r} is not of the form 'a*b'")
            a, b = (p.strip() for p in parts)
            if a == b and every_square:
                raise ValueError(f"interaction {a!r}*{b!r} is declared twice: squares = 'continuous' has it")
            key = frozenset((a, b))
            if key in seen:
                raise ValueError(f"interaction {a!r}*{b!r} is declared twice")
            seen.add(key)
        return v

    @field_validator("hinges")
    @classmethod
    def _hinge_form(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[tuple[str, float]] = set()
        for term in v:
            name, knot = _parse_hinge(term)
            if (name, knot) in seen:
                raise ValueError(f"hinge {term!r} is declared twice")
            seen.add((name, knot))
        return v

    @model_serializer(mode="wrap")
    def _omit_no_hinges(self, handler: SerializerFunctionWrapHandler) -> dict:
        """Terms without hinges or selection dump (and so hash, and are signed) as before
        those existed: registrations and grants of such specs stay valid."""
        data = handler(self)
        if not self.hinges:
            data.pop("hinges", None)
        if self.select == "none":
            data.pop("select", None)
        return data

    @property
    def empty(self) -> bool:
        return (
            self.squares == "none"
            and not self.interactions
            and not self.hinges
            and not self.sites
            and self.select == "none"
        )


def _parse_hinge(term: str) -> tuple[str, float]:
    """``"age>60"`` → ``("age", 60.0)``.

    Raises:
        ValueError: not of that form.
    """
    parts = term.split(">")
    try:
        if len(parts) != 2 or not parts[0].strip():
            raise ValueError
        knot = float(parts[1])
    except ValueError:
        raise ValueError(f"hinge {term!r} is not of the form 'covariate>value'") from None
    if not np.isfinite(knot):
        raise ValueError(f"hinge {term!r}: the value must be finite")
    return parts[0].strip(), knot


def hinge_knots(covariates: Sequence[Covariate], terms: DesignTerms | None) -> list[tuple[int, float]]:
    """Column index and knot on the [0, 1] scale of each declared hinge, in declared order.

    Raises:
        DataError: a hinge names a covariate the study does not have, a binary one, or a value
            not strictly inside the covariate's public bounds (it would bend nowhere).
    """
    if terms is None or not terms.hinges:
        return []
    index = {c.name: i for i, c in enumerate(covariates)}
    out = []
    for k, term in enumerate(terms.hinges):
        name, value = _parse_hinge(term)
        if name not in index:
            raise DataError(f"terms.hinges[{k}] names {name!r}, which is not a covariate", field=name)
        c = covariates[index[name]]
        if c.kind != "continuous":
            raise DataError(f"terms.hinges[{k}]: {name!r} is binary; a hinge bends a continuous covariate")
        if not c.lo < value < c.hi:
            raise DataError(
                f"terms.hinges[{k}]: {value:g} is not inside {name}'s public bounds ({c.lo:g}, {c.hi:g})",
                field=name,
            )
        out.append((index[name], (value - c.lo) / (c.hi - c.lo)))
    return out


def hinge_term(covariate: Covariate, knot: float) -> str:
    """The declared form of ``covariate`` bent at ``knot`` on the [0, 1] scale (``"age>54"``
    for age 18–90 at 0.5): how a chosen hinge is written into a spec."""
    return f"{covariate.name}>{covariate.lo + knot * (covariate.hi - covariate.lo):g}"


def term_factors(covariates: Sequence[Covariate], terms: DesignTerms | None) -> list[tuple[int, int]]:
    """Column index pairs ``(i, j)`` of each derived term, in basis order: squares (covariate
    order), then the declared interactions.

    Raises:
        DataError: an interaction names a covariate the study does not have, or squares a
            binary one (which is its own square).
    """
    if terms is None or terms.empty:
        return []
    index = {c.name: i for i, c in enumerate(covariates)}
    pairs = []
    if terms.squares == "continuous":
        pairs += [(i, i) for i, c in enumerate(covariates) if c.kind == "continuous"]
    for k, term in enumerate(terms.interactions):
        a, b = (p.strip() for p in term.split("*"))
        for name in (a, b):
            if name not in index:
                raise DataError(
                    f"terms.interactions[{k}] names {name!r}, which is not a covariate", field=name
                )
        if a == b and covariates[index[a]].kind == "binary":
            raise DataError(f"terms.interactions[{k}]: {a!r} is binary, its square is itself", field=a)
        pairs.append((index[a], index[b]))
    return pairs


def check_terms(
    covariates: Sequence[Covariate], terms: DesignTerms | None, chosen: DesignTerms | None = None
) -> None:
    """Every derived term of ``terms`` (with a selecting study's ``chosen`` ones) is computable
    from ``covariates``: what the spec and, independently, a node's policy check (one check, so
    a new kind of term cannot reach one of them only).

    Raises:
        DataError: as :func:`basis_terms`, :func:`term_factors` and :func:`hinge_knots`.
    """
    if terms is not None and terms.select != "none":
        n = len(candidate_pairs([c.kind for c in covariates]))
        limit = DesignTerms.model_fields["interactions"].metadata[0].max_length
        if n > limit:
            raise DataError(
                f"terms.select: {len(covariates)} covariates give {n} candidate products, "
                f"above the {limit} a query may carry"
            )
    basis = basis_terms(covariates, terms, chosen)
    term_factors(covariates, basis)
    hinge_knots(covariates, basis)


def candidate_pairs(kinds: Sequence[str]) -> list[tuple[int, int]]:
    """The second-order candidates over covariates of the given kinds (``continuous`` or
    ``binary``): the square of each continuous one (a binary square is the covariate itself),
    then every product of two different covariates, in index order."""
    d = len(kinds)
    pairs = [(i, i) for i in range(d) if kinds[i] == "continuous"]
    pairs += [(i, j) for i in range(d) for j in range(i + 1, d)]
    return pairs


def candidate_hinges(kinds: Sequence[str], knots: Sequence[float] = KNOTS) -> list[tuple[int, float]]:
    """Hinge candidates ``(covariate index, knot)``: each continuous covariate bent at each knot
    of its public range (:func:`hinge`), in index order then knot order.

    Second-order terms cannot follow a step or a saturating rise; a linear spline can, and its
    knots at fixed tenths of the public range come from no data. The stepwise rule chooses
    among them as among products (``bench/bench_term_selection.py``)."""
    return [(i, k) for i, kind in enumerate(kinds) if kind == "continuous" for k in knots]


def as_terms(terms: Sequence[tuple[int, int | float]], covariates: Sequence[Covariate]) -> DesignTerms:
    """Candidates as a spec's ``[terms]``: a pair ``(i, j)`` of ints is the product ``"a*b"``
    (``"a*a"`` a square), ``(i, knot)`` with a float knot the hinge at that point of the public
    range (``"age>54"``, :func:`hinge_term`). :func:`expand` then appends them in this order
    (products, then hinges), so a design built from ``as_terms(pairs + hinges)`` has the
    candidates' columns in candidate order.

    How a chosen basis is declared, so that a study runs it through the nodes' own code."""
    names = [c.name for c in covariates]
    return DesignTerms(
        interactions=tuple(f"{names[i]}*{names[int(j)]}" for i, j in terms if not isinstance(j, float)),
        hinges=tuple(hinge_term(covariates[i], j) for i, j in terms if isinstance(j, float)),
    )


def candidates(covariates: Sequence[Covariate]) -> list[tuple[int, int | float]]:
    """Every term a selecting study may choose (``[terms] select``), in candidate order: the
    squares of the continuous covariates and the products of two (:func:`candidate_pairs`), then
    the hinges at tenths of each continuous one's public range (:func:`candidate_hinges`). A
    public function of the signed covariates: nothing in it comes from data."""
    kinds = [c.kind for c in covariates]
    out: list[tuple[int, int | float]] = []
    out += candidate_pairs(kinds)
    out += candidate_hinges(kinds)
    return out


def candidate_name(covariates: Sequence[Covariate], term: tuple[int, int | float]) -> str:
    """A candidate's column name as the nodes and the balance table name it (``age^2``,
    ``bmi*smoker``, ``age>54``)."""
    i, j = term
    return hinge_term(covariates[i], j) if isinstance(j, float) else _term_name(covariates, i, int(j))


def candidate_terms(covariates: Sequence[Covariate]) -> DesignTerms:
    """:func:`candidates` as declared terms: what a selecting study's score rounds ask over."""
    return as_terms(candidates(covariates), covariates)


def basis_terms(
    covariates: Sequence[Covariate], terms: DesignTerms | None, chosen: DesignTerms | None
) -> DesignTerms | None:
    """The terms a query's columns are taken over: the signed ``terms``; in a selecting study
    (``terms.select``) its signed site effects plus the ``chosen`` candidates (none: the first
    fit, over the covariates alone).

    The coordinator chooses the terms from the rounds' sums, so the node takes them only from
    the candidates it derives itself from the signed covariates (:func:`candidate_terms`):
    the grant fixes what can be asked, the query picks among it.

    Raises:
        DataError: ``chosen`` in a study whose signed terms select nothing, or naming a square
            of every covariate, site effects, a selection, or a product or hinge that is not a
            candidate (a binary square, a hinge off the public knots, an unknown column).
    """
    selecting = terms is not None and terms.select != "none"
    if chosen is None:
        return DesignTerms(sites=terms.sites) if selecting and terms is not None else terms
    if not selecting or terms is None:
        raise DataError("chosen terms in a study whose signed terms select none ([terms] select)")
    if chosen.squares != "none" or chosen.sites or chosen.select != "none":
        raise DataError("chosen terms name only products and hinges among the study's candidates")
    allowed = candidate_terms(covariates)
    for what, got, among in (
        ("product", chosen.interactions, allowed.interactions),
        ("hinge", chosen.hinges, allowed.hinges),
    ):
        outside = sorted(set(got) - set(among))
        if outside:
            raise DataError(f"chosen {what} {outside[0]!r} is not among the study's candidates")
    return DesignTerms(interactions=chosen.interactions, hinges=chosen.hinges, sites=terms.sites)


def _term_name(covariates: Sequence[Covariate], i: int, j: int) -> str:
    a, b = covariates[i].name, covariates[j].name
    return f"{a}^2" if i == j else f"{a}*{b}"


def site_column(site: str) -> str:
    """The name of ``site``'s indicator column (``site=insurer_mid_1``)."""
    return f"site={site}"


def derived_covariates(covariates: Sequence[C], terms: DesignTerms | None) -> tuple[C, ...]:
    """The derived terms as covariates on the [0, 1] scale (names ``age^2``, ``bmi*smoker``,
    ``site=insurer_mid_1``) — what balance tables and results list after the study's own
    covariates. They are built as the covariates' own class (:class:`shared.study.Covariate`),
    so this module need not import the spec that holds a :class:`DesignTerms` (no import
    cycle)."""
    pairs = term_factors(covariates, terms)
    hinges = terms.hinges if terms is not None else ()
    hinge_knots(covariates, terms)  # a hinge of an unknown column or outside its bounds: DataError
    sites = terms.sites[1:] if terms is not None else ()
    if not pairs and not hinges and not sites:
        return ()
    make: Any = type(covariates[0])
    return (
        tuple(
            make(
                name=_term_name(covariates, i, j),
                lo=0.0,
                hi=1.0,
                kind="binary" if covariates[i].kind == covariates[j].kind == "binary" else "continuous",
            )
            for i, j in pairs
        )
        + tuple(make(name=h, lo=0.0, hi=1.0, kind="continuous") for h in hinges)
        + tuple(make(name=site_column(s), lo=0.0, hi=1.0, kind="binary") for s in sites)
    )


def expand(
    z: np.ndarray, covariates: Sequence[Covariate], terms: DesignTerms | None, *, site: str | None = None
) -> np.ndarray:
    """``z`` (scaled covariates, ``(n, D)``) with the derived terms appended as columns: the
    products, the hinges, then (site effects) the indicators of ``site``, the node's own name.

    Returns ``z`` itself when there are no terms (bit-identical to a study without them).

    Raises:
        DataError: site effects without ``site``, or ``site`` not among ``terms.sites``.
    """
    pairs = term_factors(covariates, terms)
    knots = hinge_knots(covariates, terms)
    sites = terms.sites if terms is not None else ()
    if not pairs and not knots and not sites:
        return z
    z = np.asarray(z, dtype=float)
    if z.ndim != 2 or z.shape[1] != len(covariates):
        raise DataError(f"covariates must be an (n, {len(covariates)}) array, got shape {z.shape}")
    extra = [z[:, i] * z[:, j] for i, j in pairs] + [hinge(z[:, i], k) for i, k in knots]
    if sites:
        if site not in sites:
            raise DataError(
                f"site effects: this node's site {site!r} is not among the study's sites", field="sites"
            )
        extra += [np.full(z.shape[0], float(s == site)) for s in sites[1:]]
    return np.concatenate([z, np.column_stack(extra)], axis=1)
