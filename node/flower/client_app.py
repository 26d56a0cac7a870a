"""Flower ClientApp of an on-premise node.

Thin by design (RecordDict -> validated query -> node service -> aggregates): the allow-list of
queries, validation and privacy accounting live in the installed ``node`` package, not in the
app bundle that ``flwr run`` ships. Errors go back as coded Flower errors with a message that
names the site and the problem but carries no row values; details stay in the node's log.
"""

from __future__ import annotations

import logging
import time

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from pydantic import ValidationError

from node.runtime import NodeRuntime, NotInStudy
from shared.errors import DataError, PrivacyError, QueryRefused, ReHealthError
from shared.wire import decode_query, encode_answer

log = logging.getLogger("rehealth.node")

#: Error codes returned to the coordinator.
CODE_REFUSED = 4001  # unknown or invalid query
CODE_DATA = 4002  # the site's data fail validation
CODE_BUDGET = 4003  # privacy budget exhausted, or the node's privacy policy refuses
CODE_NOT_IN_STUDY = 4004  # this site is not part of the study: declined, nothing computed
CODE_INTERNAL = 5000

app = ClientApp()


@app.query("study")
def study(msg: Message, context: Context) -> Message:
    """Answer one study message (one or more operations) with aggregates only."""
    return _guarded(_answer_study, msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of federated DP training of the risk model on this node's rows."""
    from node.flower import risk_handlers

    return _guarded(risk_handlers.train, msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate a risk model on this node's rows; only additive aggregates leave."""
    from node.flower import risk_handlers

    return _guarded(risk_handlers.evaluate, msg, context)


def _answer_study(msg: Message, runtime: NodeRuntime) -> Message:
    started = time.perf_counter()
    query = decode_query(msg.content)
    answers, extra = runtime.answer(query)
    meta = {"site": runtime.site, "seconds": time.perf_counter() - started,
            "ops": [op.op for op in query.ops], **extra}
    return Message(encode_answer(answers, meta), reply_to=msg)


def _guarded(handler, msg: Message, context: Context) -> Message:
    """Run a handler; turn every expected failure into a coded error reply."""
    runtime = NodeRuntime.from_node_config(context.node_config)
    try:
        return handler(msg, runtime)
    except NotInStudy as e:
        return _error(msg, CODE_NOT_IN_STUDY, runtime.site, e, public=True)
    except DataError as e:
        return _error(msg, CODE_DATA, runtime.site, e)
    except (ValidationError, ValueError, QueryRefused) as e:
        return _error(msg, CODE_REFUSED, runtime.site, e, public=True)
    except PrivacyError as e:
        return _error(msg, CODE_BUDGET, runtime.site, e, public=True)
    except ReHealthError as e:
        return _error(msg, CODE_INTERNAL, runtime.site, e)


def _error(msg: Message, code: int, site: str, e: Exception, *, public: bool = False) -> Message:
    """Log the full error locally; send a message without row values unless ``public``."""
    log.error("site %s: %s: %s", site, type(e).__name__, e)
    if public:
        reason = f"site {site}: {type(e).__name__}: {str(e)[:500]}"
    elif isinstance(e, DataError):
        where = f" (field {e.field})" if getattr(e, "field", None) else ""
        reason = f"site {site}: the site's data fail validation{where}; see the node's log"
    else:
        reason = f"site {site}: internal error ({type(e).__name__}); see the node's log"
    return Message(Error(code=code, reason=reason), reply_to=msg)
