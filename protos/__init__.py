"""The wire contract between coordinator and node.

* ``rehealth_v1.proto``: every message that crosses (study query, typed replies per operation,
  error codes with their fixed texts, the protocol version, the risk job envelope);
* ``rehealth_v1_pb2.py`` / ``.pyi``: generated from it by ``python -m protos.generate``
  (committed; ``tests/unit/test_wire_contract.py`` fails when they are stale);
* :mod:`protos.codec`: the only encoder and decoder, inside Flower's records.

This package imports nothing on import, so :mod:`shared.protocol` can read the version and the
error codes from the generated module without pulling in Flower.
"""
