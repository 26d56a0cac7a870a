"""Flower ClientApp of an on-premise node.

Thin by design (RecordDict -> validated query -> node service -> aggregates): the allow-list of
queries, validation and privacy accounting live in the installed ``node`` package, not in the
app bundle that ``flwr run`` ships. Queries and replies are the wire contract's messages
(:mod:`protos.codec`). Errors go back as coded Flower errors (the contract's ``ErrorCode``) with a
message that names the site and the problem but carries no row values; details stay in the
node's log. A query of another protocol version is refused (``ERROR_CODE_PROTOCOL``) naming both
versions, before anything else of it is read.

An unexpected exception (a bug, or a library error about the site's data, whose message may
quote a cell) crosses the wire as code 5000 and its fixed text only, and reaches the node's log
as its type and the code lines it passed through — never its message, its chained causes or any
local variable (:func:`_guarded`).

Once a reply is built, the charges it carries are marked ``sent`` in the node's ledger: handing
the reply to Flower is the last point the node controls.
"""

from __future__ import annotations

import logging
import time
import traceback

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from pydantic import ValidationError

from node.runtime import NodeRuntime, NotInStudy
from protos.codec import (
    QUERY_ENTRY,
    REPLY_ENTRY,
    ContractError,
    ProtocolMismatch,
    decode_query,
    encode_answer,
    encode_secure_input,
    query_from_entry,
)
from shared.errors import (
    DataError,
    PrivacyError,
    QueryRefused,
    SpecError,
    UnauthorizedQuery,
)
from shared.protocol import (
    CODE_BUDGET,
    CODE_DATA,
    CODE_INTERNAL,
    CODE_NOT_IN_STUDY,
    CODE_PROTOCOL,
    CODE_REFUSED,
    CODE_UNAUTHORIZED,
    error_text,
)

log = logging.getLogger("rehealth.node")

app = ClientApp()


@app.query("study")
def study(msg: Message, context: Context) -> Message:
    """Answer one study message (one or more operations) with aggregates only."""
    return _guarded(_answer_study, msg, context)


def _secure_sum_mod(msg: Message, context: Context, call_next) -> Message:
    """A study round under secure aggregation arrives as Flower's SecAgg+ stages (train
    messages with its config record): they go through ``secaggplus_mod`` to the study answer,
    which thus leaves only masked. Other train messages (risk training) go on unchanged."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    return _guarded(
        lambda m, runtime: secaggplus_mod(
            m, context, lambda inner, ctx: _answer_secure_sum(inner, ctx, runtime)
        ),
        msg,
        context,
    )


@app.train(mods=[_secure_sum_mod])
def train(msg: Message, context: Context) -> Message:
    """One round of federated DP training of the risk model on this node's rows."""
    from node.flower import risk_handlers

    return _guarded(_risk(risk_handlers.train), msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate a risk model on this node's rows; only additive aggregates leave."""
    from node.flower import risk_handlers

    return _guarded(_risk(risk_handlers.evaluate), msg, context)


def _risk(handler):
    """A risk-model handler behind the check of the message's signed grant."""

    def checked(msg: Message, runtime: NodeRuntime) -> Message:
        runtime.verify_risk(msg.content)
        return handler(msg, runtime)

    return checked


def _answer_study(msg: Message, runtime: NodeRuntime) -> Message:
    started = time.perf_counter()
    query = _decoded(lambda: decode_query(msg.content))
    answers, extra, charges = runtime.respond(query)
    meta = {
        "site": runtime.site,
        "seconds": time.perf_counter() - started,
        "ops": [op.op for op in query.ops],
        **extra,
    }
    reply = Message(encode_answer(answers, meta), reply_to=msg)
    runtime.mark_sent(charges)  # handed to Flower next: the last point the node controls
    return reply


def _answer_secure_sum(msg: Message, context: Context, runtime: NodeRuntime) -> Message:
    """This node's masked input to a secure sum: its releases (with its 1/√K share of the noise)
    packed into one vector at the round's public scale (:mod:`shared.secure_sum`)."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE

    started = time.perf_counter()
    config = compat.recorddict_to_fitins(msg.content, True).config
    if QUERY_ENTRY not in config:
        raise QueryRefused(f"a secure-sum round carries no {QUERY_ENTRY!r} config entry")
    query = _decoded(lambda: query_from_entry(config[QUERY_ENTRY]))
    nodes = query.privacy.secure_nodes if query.privacy is not None else None
    sample_num = context.state.config_records[RECORD_KEY_STATE].get("sample_num", 0)
    sampled = sample_num if isinstance(sample_num, int) else 0  # Flower's SecAgg+ state: an int
    if nodes is None or query.secure_scale is None or sampled < nodes:
        raise QueryRefused(
            f"site {runtime.site}: a secure sum over {sampled} nodes cannot carry "
            f"a release planned for {nodes} (each adds only its share of the noise)"
        )
    answers, extra, charges = runtime.respond(query, secure_sum=True)
    meta = {
        "site": runtime.site,
        "seconds": time.perf_counter() - started,
        "ops": [op.op for op in query.ops],
        **extra,
    }
    vec, reply = encode_secure_input(answers, meta, scale=query.secure_scale)
    metrics: dict[str, bool | bytes | float | int | str] = {REPLY_ENTRY: reply}  # public: meta, shapes
    fitres = FitRes(
        status=Status(code=Code.OK, message=""),
        parameters=ndarrays_to_parameters([vec]),
        num_examples=1,
        metrics=metrics,
    )
    out = Message(compat.fitres_to_recorddict(fitres, True), reply_to=msg)
    runtime.mark_sent(charges)  # handed to SecAgg+ (which masks it) next: the node's last point
    return out


def _decoded(decode):
    """An incoming message decoded; one the contract cannot read is refused (its structure,
    never data, is named). Encoding this node's own reply is not guarded so: a reply the
    contract cannot carry is the node's bug (an internal error)."""
    try:
        return decode()
    except ContractError as e:
        raise QueryRefused(str(e)) from None


def _guarded(handler, msg: Message, context: Context) -> Message:
    """Run a handler; turn every failure into a coded error reply with a fixed text.

    A node's own refusals (built from the query and its policy alone) may add their message;
    every other failure sends the code's fixed text only. The node's log gets the exception's
    type and, for the errors this code raises (whose messages carry no values by contract),
    its message; a pydantic error only where and what kind (never the input); an unexpected
    exception only its type and traceback frames (code lines, no message, no locals).
    """
    try:
        runtime = NodeRuntime.from_node_config(context.node_config)
    except SpecError as e:
        log.error("node config: %s", e)
        return Message(Error(code=CODE_INTERNAL, reason=f"node: {error_text(CODE_INTERNAL)}"), reply_to=msg)
    try:
        return handler(msg, runtime)
    except NotInStudy as e:
        return _error(msg, CODE_NOT_IN_STUDY, runtime.site, e, detail=str(e))
    except ProtocolMismatch as e:
        return _error(msg, CODE_PROTOCOL, runtime.site, e, public=True)
    except UnauthorizedQuery as e:
        return _error(msg, CODE_UNAUTHORIZED, runtime.site, e, public=True)
    except QueryRefused as e:
        return _error(msg, CODE_REFUSED, runtime.site, e, public=True)
    except ValidationError as e:
        return _error(msg, CODE_REFUSED, runtime.site, e, detail=_where(e))
    except PrivacyError as e:
        return _error(msg, CODE_BUDGET, runtime.site, e, public=True)
    except DataError as e:
        return _error(msg, CODE_DATA, runtime.site, e, detail=str(e))
    except Exception as e:  # noqa: BLE001 - whatever it is, it leaves as code 5000 only
        frames = "".join(traceback.format_tb(e.__traceback__)).rstrip()
        log.error(
            "site %s: unexpected %s (its message is withheld: it may quote the site's data)\n%s",
            runtime.site,
            type(e).__name__,
            frames,
        )
        return Message(
            Error(code=CODE_INTERNAL, reason=f"site {runtime.site}: {error_text(CODE_INTERNAL)}"),
            reply_to=msg,
        )


def _where(e: ValidationError) -> str:
    """Where a pydantic validation failed and what kind of failure, never the input."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['type']}"
        for err in e.errors(include_url=False, include_input=False, include_context=False)
    )


def _error(
    msg: Message, code: int, site: str, e: Exception, *, public: bool = False, detail: str | None = None
) -> Message:
    """Log the error locally (its type, and ``detail`` or, where ``public``, its message); send
    the code's fixed text, and the refusal's own message only where ``public`` (a node refusal,
    built from the query and policy alone)."""
    said = str(e) if public else detail
    log.error("site %s: %s%s", site, type(e).__name__, f": {said}" if said else "")
    reason = f"site {site}: {error_text(code)}"
    if public:
        reason += f": {str(e)[:500]}"
    return Message(Error(code=code, reason=reason), reply_to=msg)
