"""Running a federation: a local multi-node launcher and the `flwr run` client."""
