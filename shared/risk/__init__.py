"""The cardiovascular risk model: architecture (torch), tiers, federated averaging and evaluation.

Only :mod:`shared.risk.model` imports torch; tiers, averaging, metrics and the numpy forward pass
are plain numpy so nodes can score and coordinators can aggregate without loading torch.
"""
