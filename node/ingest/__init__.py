"""Ingestion: streaming readers, vectorised validation, quarantine, idempotent loading."""

from node.ingest.pipeline import DEFAULT_CHUNK_ROWS, IngestSummary, ingest_file
from node.ingest.schema import KINDS, SPECS, FieldSpec, KindSpec, spec_for
from node.ingest.validate import REASONS, ChunkResult, validate_chunk

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "KINDS",
    "REASONS",
    "SPECS",
    "ChunkResult",
    "FieldSpec",
    "IngestSummary",
    "KindSpec",
    "ingest_file",
    "spec_for",
    "validate_chunk",
]
