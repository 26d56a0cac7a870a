"""Regenerate the Python code of the wire contract: ``python -m protos.generate``.

Runs grpcio-tools' bundled protoc (pinned in pyproject's ``test`` extra, so every checkout
generates the same bytes) over every ``.proto`` in this folder and writes ``*_pb2.py`` and
``*_pb2.pyi`` beside them. The generated files are committed, so a node or coordinator runs
without grpcio-tools; ``tests/unit/test_wire_contract.py`` regenerates into a temporary folder
and fails when the committed code is stale.

``--out DIR`` writes elsewhere (the staleness test uses it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def protos() -> list[Path]:
    """The contract's ``.proto`` files, sorted (generation order is part of reproducibility)."""
    return sorted(HERE.glob("*.proto"))


def generate(out: Path = HERE) -> list[Path]:
    """Generate into ``out``; return the files written.

    Raises:
        RuntimeError: protoc failed (its message is on stderr).
    """
    import grpc_tools
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    include = Path(grpc_tools.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    files = [p.name for p in protos()]
    args = ["protoc", f"-I{HERE}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}", *files]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(files)}")
    return sorted(p for stem in files for p in out.glob(Path(stem).stem + "_pb2.py*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protos.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write to (default: protos/)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
