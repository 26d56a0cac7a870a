"""Streaming readers: CSV and Parquet in chunks, with a site's column names mapped to ours.

CSV cells are read as text (so a bad value is reported, not guessed into NaN) and blank lines
are kept as rows (they are quarantined as missing fields): the 1-based data-row number then
equals the line number minus one for files without quoted line breaks. Parquet rows are
numbered from 1 in file order.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator, Mapping

import pandas as pd
import pyarrow.parquet as pq

from node.ingest.schema import KindSpec
from shared.errors import DataError

#: Store-side column names an input file may not use.
RESERVED = frozenset({"pseudonym", "ingest_id", "ingest_row", "extras"})
_CSV = (".csv", ".txt", ".csv.gz", ".tsv")
_PARQUET = (".parquet", ".pq")


def file_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(_CSV):
        return "csv"
    if name.endswith(_PARQUET):
        return "parquet"
    raise DataError(
        f"{path.name}: unknown file type (CSV: {', '.join(_CSV)}; Parquet: {', '.join(_PARQUET)})"
    )


def file_sha256(path: Path, *, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def read_header(path: Path) -> list[str]:
    if file_format(path) == "parquet":
        return list(pq.ParquetFile(path).schema_arrow.names)
    sep = "\t" if path.name.lower().endswith(".tsv") else ","
    return list(pd.read_csv(path, nrows=0, sep=sep, encoding="utf-8-sig").columns)


def plan_columns(header: list[str], spec: KindSpec, mapping: Mapping[str, str]) -> dict[str, str]:
    """Which file columns to read, renamed to ours: ``{file column: our column}``.

    Raises:
        DataError: a mapped column is not in the file, two columns map to one name, or a
            required column is missing (names the columns and suggests ``--map``).
    """
    unknown = [c for c in mapping if c not in header]
    if unknown:
        raise DataError(f"--map names column(s) not in the file: {', '.join(unknown)}")
    renamed = {c: mapping.get(c, c) for c in header}
    ours = list(renamed.values())
    clash = sorted({c for c in ours if ours.count(c) > 1})
    if clash:
        raise DataError(f"several file columns map to {', '.join(clash)}")
    reserved = sorted(RESERVED & set(ours))
    if reserved:
        raise DataError(
            f"column name(s) {', '.join(reserved)} are reserved by the store; rename them with --map",
            field=reserved[0],
        )
    missing = [f for f in spec.required if f not in ours]
    if missing:
        raise DataError(
            f"{spec.kind} file lacks required column(s) {', '.join(missing)}; map a site's own "
            "names with --map theirs=ours",
            field=missing[0],
        )
    known = {f.name for f in spec.fields}
    return {c: o for c, o in renamed.items() if o in known or (spec.extras and o not in spec.ignored)}


def iter_chunks(
    path: Path, columns: Mapping[str, str], *, chunk_rows: int, text_columns: frozenset[str] = frozenset()
) -> Iterator[pd.DataFrame]:
    """Chunks of at most ``chunk_rows`` rows, only ``columns``, renamed to ours.

    CSV columns named (ours) in ``text_columns`` are read as text (ids keep leading zeros);
    the others are parsed as numbers by pandas' C parser, and a column holding a value that
    is not a number comes back as text for the validator to flag row by row. Only an empty
    cell is missing: "NA" or "n/a" stay text and are reported as the wrong type.
    """
    if file_format(path) == "parquet":
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=list(columns)):
            yield batch.to_pandas().rename(columns=dict(columns))
        return
    sep = "\t" if path.name.lower().endswith(".tsv") else ","
    dtype = {c: str for c, ours in columns.items() if ours in text_columns}
    # No usecols: with it pandas silently ignores surplus fields in a row; without it a
    # row with too many fields is an error naming the line.
    reader = pd.read_csv(
        path,
        sep=sep,
        dtype=dtype,
        keep_default_na=False,
        na_values=[""],
        skip_blank_lines=False,
        chunksize=chunk_rows,
        low_memory=False,
        encoding="utf-8-sig",
    )
    try:
        for chunk in reader:
            yield chunk[list(columns)].rename(columns=dict(columns))
    except pd.errors.ParserError as e:
        # pandas names the line; the message holds counts, never cell values.
        raise DataError(f"{path.name}: malformed CSV: {e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path.name}: not UTF-8 text (byte {e.start})") from None
