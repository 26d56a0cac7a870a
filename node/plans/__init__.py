"""Personalised intervention plans: generated from the risk model, delivered by signed webhook,
and followed through the plan trajectory into the intervention log studies read.

* :mod:`node.plans.catalogue` — the node's plan catalogue (TOML configuration, not code);
* :mod:`node.plans.generate` — ranked plans for high-risk people (counterfactual risk reduction);
* :mod:`node.plans.signing` — HMAC-SHA256 signatures and the recipient id the employer sees;
* :mod:`node.plans.delivery` — webhooks with retries, backoff, dead letters and opt-outs;
* :mod:`node.plans.events` — opened/completed callbacks (verified, replay-proof) and imports.
"""
