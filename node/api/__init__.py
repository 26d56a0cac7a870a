"""The node's REST API: real-time and batch risk scoring, and group views, behind API keys.

Per-person scores are returned only to the authenticated caller of this node's own API; nothing
here talks to the coordinator.
"""

from node.api.app import create_app

__all__ = ["create_app"]
