"""The coordinator's study around the driver (:mod:`shared.driver`): sites, signed grants, runs,
the result."""
