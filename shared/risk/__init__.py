"""The cardiovascular risk model's pure parts: architecture description, tiers, federated
averaging and evaluation.

All numpy, so nodes can score and coordinators can aggregate without loading torch. The torch
``nn.Module`` that a node trains lives on the node's side (:mod:`node.risk.model`): ``shared``
imports neither torch nor Flower (``tests/unit/test_layering.py``).
"""
