"""Streaming readers: CSV and Parquet in chunks, with a site's column names mapped to ours,
and the checks that refuse a broken file before a single row of it is stored.

CSV cells are read as text (so a bad value is reported, not guessed into NaN) and blank lines
are kept as rows (they are quarantined as missing fields): the 1-based data-row number then
equals the line number minus one for files without quoted line breaks. Parquet rows are
numbered from 1 in file order.

A file is checked in two steps, both before anything is written (see :func:`sniff` and
:func:`preflight`): the first block (empty file, a gzip/ZIP/Excel/Parquet file under a CSV
name, a UTF-16/UTF-32 byte-order mark), then the whole file in the one pass that computes its
SHA-256 anyway (every byte valid UTF-8, no NUL byte, a gzip stream complete, a Parquet footer
present). Errors name the file, the byte offset and the line, and never a cell's value.
Whatever these checks cannot see (a malformed line, a corrupt Parquet row group) fails
mid-file; the pipeline then rolls the whole file back.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import re
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Iterator, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from node.ingest.schema import KindSpec
from shared.errors import DataError

#: Store-side column names an input file may not use.
RESERVED = frozenset({"pseudonym", "ingest_id", "ingest_row", "extras"})
_CSV = (".csv", ".txt", ".csv.gz", ".tsv")
_PARQUET = (".parquet", ".pq")

#: Bytes read per block by the checks and the SHA-256 pass.
BLOCK = 1 << 20
#: What to do with a text file that is not UTF-8.
_REEXPORT = "re-export it as CSV UTF-8 (in Excel: Save As > CSV UTF-8); no row was stored"
#: Magic bytes of files that are not CSV text, whatever their name says.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "a gzip archive: name it .csv.gz, or decompress it"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"PK\x05\x06", "a ZIP archive"),
    (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        "an old Excel (.xls) or other OLE2 document: export it as CSV UTF-8",
    ),
    (b"PAR1", "a Parquet file: name it .parquet"),
    (b"BZh", "a bzip2 archive: decompress it"),
    (b"\xfd7zXZ\x00", "an xz archive: decompress it"),
    (b"\x28\xb5\x2f\xfd", "a zstd archive: decompress it"),
    (b"%PDF", "a PDF document"),
)
#: Byte-order marks of encodings other than UTF-8 (UTF-32 LE first: it starts like UTF-16 LE).
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def file_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(_CSV):
        return "csv"
    if name.endswith(_PARQUET):
        return "parquet"
    raise DataError(
        f"{path.name}: unknown file type (CSV: {', '.join(_CSV)}; Parquet: {', '.join(_PARQUET)})"
    )


def _gzipped(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def file_sha256(path: Path, *, block: int = BLOCK) -> str:
    """SHA-256 of the file's bytes, unchecked (:func:`preflight` checks while it hashes)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


# --- first block -------------------------------------------------------------------------


def sniff(path: Path) -> None:
    """Refuse, from the first block alone, a file that cannot be what its name says.

    Cheap (one block), so it runs before the header is read and before the full pass.

    Raises:
        DataError: the file is empty, is a gzip/ZIP/Excel/Parquet/… file under a CSV name (or
            not gzip under a .gz name, not Parquet under a Parquet name), or is UTF-16/UTF-32.
    """
    with open(path, "rb") as fh:
        head = fh.read(BLOCK)
    if not head:
        raise DataError(f"{path.name}: the file is empty (0 bytes): export it again; no row was stored")
    if file_format(path) == "parquet":
        if not head.startswith(b"PAR1"):
            raise DataError(
                f"{path.name}: not a Parquet file (no PAR1 magic at byte 0){_what_it_is(path, head)}; "
                "no row was stored"
            )
        _check_parquet(path)
        return
    if _gzipped(path):
        if not head.startswith(b"\x1f\x8b"):
            raise DataError(f"{path.name}: named .gz but not a gzip file{_what_it_is(path, head)}")
        head = _gunzip_head(path)
        if not head:
            raise DataError(f"{path.name}: the compressed file holds no text (0 bytes); no row was stored")
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise DataError(
                f"{path.name}: not CSV text but {_describe(path, magic, what)}; no row was stored"
            )
    for bom, enc in _BOMS:
        if head.startswith(bom):
            raise DataError(
                f"{path.name}: the text is {enc}, not UTF-8 (byte-order mark at byte 0): {_REEXPORT}"
            )
    problem = _TextCheck().feed(head)  # the header line must be readable before it is read
    if problem is not None:
        raise _text_error(path, *problem, gz=_gzipped(path))


def _what_it_is(path: Path, head: bytes) -> str:
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return f" but {_describe(path, magic, what)}"
    return ""


def _describe(path: Path, magic: bytes, what: str) -> str:
    """``what`` a file with ``magic`` is; a ZIP archive holding a workbook is named as one."""
    if magic.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            names = []
        if any(n.startswith("xl/") for n in names):
            return "an Excel workbook (.xlsx): export the sheet as CSV UTF-8"
        if any(n.startswith("content.xml") for n in names):
            return "an OpenDocument spreadsheet: export the sheet as CSV UTF-8"
        return f"{what}: extract the CSV file from it"
    return what


def _gunzip_head(path: Path, n: int = 1 << 16) -> bytes:
    """Up to ``n`` bytes of a gzip file's text (a truncated or corrupt start is an error)."""
    try:
        with gzip.open(path, "rb") as g:
            return g.read(n)
    except (OSError, EOFError, zlib.error):
        raise DataError(
            f"{path.name}: the gzip stream is corrupt or cut off at its start: copy the file again; "
            "no row was stored"
        ) from None


# --- the full pass -----------------------------------------------------------------------


class _TextCheck:
    """Incremental checks of a byte stream fed block by block: valid UTF-8, no NUL byte.

    ASCII blocks (the common case) cost two C scans (``isascii``, a ``find`` for NUL); other
    blocks go through an incremental UTF-8 decoder, which keeps a multi-byte character split
    across two blocks for the next one. Offsets are exact: counted from the first byte fed.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.offset = 0  # bytes fed so far

    def feed(self, block: bytes, *, final: bool = False) -> tuple[int, str] | None:
        """The first problem in ``block`` as ``(offset, what)``, or None."""
        bad: list[tuple[int, str]] = []
        nul = block.find(b"\x00")
        if nul >= 0:
            bad.append((self.offset + nul, "a NUL byte (0x00)"))
        pending = len(self._decoder.getstate()[0])  # bytes of a character begun in the last block
        if pending or final or not block.isascii():
            try:
                self._decoder.decode(block, final)
            except UnicodeDecodeError as e:
                bad.append((self.offset - pending + e.start, "a byte sequence that is not UTF-8"))
        self.offset += len(block)
        return min(bad) if bad else None


def _line_of(stream: io.BufferedIOBase, offset: int) -> int:
    """1-based line number of byte ``offset`` of ``stream`` (read from its start)."""
    lines, seen = 1, 0
    while seen < offset:
        block = stream.read(min(BLOCK, offset - seen))
        if not block:
            break
        lines += block.count(b"\n")
        seen += len(block)
    return lines


def _text_error(path: Path, offset: int, what: str, *, gz: bool) -> DataError:
    with open(path, "rb") as raw:
        line = _line_of(gzip.GzipFile(fileobj=raw) if gz else raw, offset)
    where = f"byte {offset} of the decompressed text" if gz else f"byte {offset}"
    if "NUL" in what:
        hint = (
            "a NUL cannot be stored: remove it (a file full of them is binary, or UTF-16 without "
            "a byte-order mark: re-export it as CSV UTF-8); no row was stored"
        )
    else:
        hint = (
            'the text is probably Latin-1/Windows-1252: set encoding = "cp1252" in a mapping file '
            f"(--mapping), or {_REEXPORT}"
        )
    return DataError(f"{path.name}: {what} at {where} (line {line}): {hint}", row=max(line - 1, 0))


def preflight(path: Path, *, block: int = BLOCK) -> str:
    """The file's SHA-256, computed in one pass that also checks every byte.

    CSV: every byte is valid UTF-8 and none is NUL (a ``.csv.gz`` is decompressed on the
    fly: the stream must be complete and its CRC right, and offsets count decompressed
    text). Parquet files are only hashed (:func:`sniff` checked their footer).

    Raises:
        DataError: names the file, the exact byte offset and the line of the first bad
            byte (or that a gzip stream is cut off), and what to do.
    """
    fmt = file_format(path)
    h = hashlib.sha256()
    check = _TextCheck() if fmt == "csv" else None
    gz = _Gunzip(path) if fmt == "csv" and _gzipped(path) else None
    with open(path, "rb") as fh:
        while data := fh.read(block):
            h.update(data)
            if check is None:
                continue
            texts = gz.feed(data) if gz is not None else (data,)
            for text in texts:
                problem = check.feed(text)
                if problem is not None:
                    raise _text_error(path, *problem, gz=gz is not None)
    if check is not None:
        if gz is not None:
            gz.finish()
        if (problem := check.feed(b"", final=True)) is not None:
            raise _text_error(path, *problem, gz=gz is not None)
    return h.hexdigest()


class _Gunzip:
    """Decompress a gzip file's blocks as they are hashed; every member must be complete.

    Output is produced in bounded pieces (a small, highly compressed block cannot expand
    into gigabytes in memory).
    """

    _OUT = 1 << 22

    def __init__(self, path: Path) -> None:
        self.path = path
        self.consumed = 0  # compressed bytes fed
        self._d = zlib.decompressobj(wbits=31)

    def _pieces(self, data: bytes) -> Iterator[bytes]:
        while data:
            try:
                out = self._d.decompress(data, self._OUT)
            except zlib.error:
                raise DataError(
                    f"{self.path.name}: the gzip stream is corrupt near compressed byte {self.consumed}: "
                    "copy the file again or re-compress it; no row was stored"
                ) from None
            if out:
                yield out
            if self._d.eof:  # a member ended: another may follow (concatenated gzip), or zeros
                data = self._d.unused_data.lstrip(b"\x00")
                if data:
                    self._d = zlib.decompressobj(wbits=31)
            else:
                data = self._d.unconsumed_tail

    def feed(self, data: bytes) -> Iterator[bytes]:
        yield from self._pieces(data)
        self.consumed += len(data)

    def finish(self) -> None:
        if not self._d.eof:
            raise DataError(
                f"{self.path.name}: the gzip stream is cut off (the file ends after {self.consumed} "
                "compressed bytes, before the end of the stream): the copy is incomplete; copy the "
                "file again; no row was stored"
            )


def _check_parquet(path: Path) -> None:
    """The footer is there (a cut-off copy loses it first) and can be read."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(size - 4, 0))
        tail = fh.read(4)
    if tail != b"PAR1" or size < 12:
        raise DataError(
            f"{path.name}: the Parquet file is truncated (no footer at its end, {path.stat().st_size} "
            "bytes): the copy is incomplete; copy or export it again; no row was stored"
        )
    try:
        pq.ParquetFile(path).metadata  # noqa: B018 - reads and checks the footer
    except (pa.ArrowException, OSError):
        raise DataError(
            f"{path.name}: the Parquet footer (the file's metadata) is corrupt: export the file "
            "again; no row was stored"
        ) from None


# --- header and chunks -------------------------------------------------------------------


def _csv_sep(path: Path, delimiter: str | None = None) -> str:
    if delimiter is not None:
        return delimiter
    return "\t" if path.name.lower().endswith(".tsv") else ","


#: Delimiters a header line read as one column is checked for (what spreadsheets export).
_OTHER_DELIMITERS = ((";", "semicolon"), ("\t", "tab"), ("|", "pipe"), (",", "comma"))


def read_header(path: Path, *, delimiter: str | None = None) -> list[str]:
    """The file's column names exactly as written (pandas would rename a repeated ``age`` to
    ``age.1`` and a blank one to ``Unnamed: 3``).

    Raises:
        DataError: the file cannot be read, has no header line, repeats a column name, or
            reads as one column that another delimiter would split (a semicolon CSV read
            with commas): the error names the delimiter to set.
    """
    if file_format(path) == "parquet":
        try:
            names = list(pq.ParquetFile(path).schema_arrow.names)
        except (pa.ArrowException, OSError):
            raise DataError(f"{path.name}: cannot read the Parquet schema: export the file again") from None
    else:
        try:
            with (
                gzip.open(path, "rt", encoding="utf-8-sig", newline="")
                if _gzipped(path)
                else open(path, encoding="utf-8-sig", newline="")
            ) as fh:
                names = next(csv.reader(fh, delimiter=_csv_sep(path, delimiter)), [])
        except (UnicodeDecodeError, OSError, EOFError, zlib.error, csv.Error):
            raise DataError(f"{path.name}: cannot read the header line: {_REEXPORT}") from None
        if not any(n.strip() for n in names):
            raise DataError(f"{path.name}: the first line holds no column names (a header line is required)")
        _check_delimiter(path, names, _csv_sep(path, delimiter))
    _check_unique(path, names)
    return names


def _check_delimiter(path: Path, names: list[str], used: str) -> None:
    """A header read as a single column that another delimiter splits is a delimiter mistake,
    not a file lacking columns: say which delimiter to set (column names are not row values)."""
    if len(names) != 1:
        return
    for sep, word in _OTHER_DELIMITERS:
        if sep != used and sep in names[0]:
            n = len(names[0].split(sep))
            raise DataError(
                f"{path.name}: the header line reads as one column with delimiter {used!r}, but holds "
                f"{n} {word}-separated names: the file is {word}-separated; set delimiter = {sep!r} "
                "in the mapping file (--mapping); no row was stored"
            )


def _check_unique(path: Path, names: list[str]) -> None:
    """Every column name once, also after trimming and ignoring case: which of two ``age``
    columns holds the age is a guess this node does not make."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names, start=1):
        norm = name.strip().casefold()
        if not norm:
            continue  # an unnamed column (a trailing delimiter): never read
        if norm in seen:
            same = "" if names[seen[norm] - 1] == name else " (ignoring case and spaces)"
            raise DataError(
                f"{path.name}: column {name.strip()!r} appears twice{same}, as columns {seen[norm]} and {i}: "
                "keep one, or rename the other; no row was stored",
                field=name.strip(),
            )
        seen[norm] = i


def plan_columns(header: list[str], spec: KindSpec, mapping: Mapping[str, str]) -> dict[str, str]:
    """Which file columns to read, renamed to ours: ``{file column: our column}``.

    Raises:
        DataError: a mapped column is not in the file, two columns map to one name, or a
            required column is missing (names the columns and suggests ``--map``).
    """
    unknown = [c for c in mapping if c not in header]
    if unknown:
        raise DataError(
            f"the column mapping names column(s) not in the file: {', '.join(unknown)} "
            f"(the file's columns: {', '.join(c for c in header if c.strip())})"
        )
    renamed = {c: mapping.get(c, c) for c in header if c.strip()}
    ours = list(renamed.values())
    clash = sorted({c for c in ours if ours.count(c) > 1})
    if clash:
        raise DataError(f"several file columns map to {', '.join(clash)}", field=clash[0])
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


def check_columns(path: Path, columns: Mapping[str, str]) -> None:
    """Column types the readers cannot take as text, refused before a row is stored: a
    Parquet BINARY column would be read as Python bytes reprs (``b'\\x..'``), silently.

    Raises:
        DataError: names the column and what to do.
    """
    if file_format(path) != "parquet":
        return
    schema = pq.ParquetFile(path).schema_arrow
    for name in columns:
        typ = schema.field(name).type
        if pa.types.is_binary(typ) or pa.types.is_large_binary(typ) or pa.types.is_fixed_size_binary(typ):
            raise DataError(
                f"{path.name}: column {name!r} holds binary data, not text (Parquet type {typ}): "
                "write it as a string (UTF-8) column; no row was stored",
                field=name,
            )


def iter_chunks(
    path: Path,
    columns: Mapping[str, str],
    *,
    chunk_rows: int,
    text_columns: frozenset[str] = frozenset(),
    delimiter: str | None = None,
) -> Iterator[pd.DataFrame]:
    """Chunks of at most ``chunk_rows`` rows, only ``columns``, renamed to ours.

    CSV columns named (ours) in ``text_columns`` are read as text (ids keep leading zeros);
    the others are parsed as numbers by pandas' C parser, and a column holding a value that
    is not a number comes back as text for the validator to flag row by row. Only an empty
    cell is missing: "NA" or "n/a" stay text and are reported as the wrong type.

    Raises:
        DataError: mid-file, a line is malformed (named), a Parquet row group cannot be
            read (named), or the text cannot be decoded; never with a cell's value.
    """
    if file_format(path) == "parquet":
        yield from _parquet_chunks(path, columns, chunk_rows=chunk_rows)
        return
    dtype = {c: str for c, ours in columns.items() if ours in text_columns}
    # No usecols: with it pandas silently ignores surplus fields in a row; without it a
    # row with too many fields is an error naming the line. index_col=False: otherwise a
    # file whose every row has one field more than its header would have its first column
    # taken as the index and every other column shifted by one, silently.
    reader = pd.read_csv(
        path,
        sep=_csv_sep(path, delimiter),
        dtype=dtype,
        keep_default_na=False,
        na_values=[""],
        skip_blank_lines=False,
        chunksize=chunk_rows,
        low_memory=False,
        encoding="utf-8-sig",
        index_col=False,
    )
    rows = 0
    with reader:
        while True:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", pd.errors.ParserWarning)
                    chunk = next(reader, None)
            except pd.errors.ParserError as e:
                # pandas names the line (the header is line 1; a quoted line break counts as
                # one line); its message holds counts, never cell values.
                raise DataError(f"{path.name}: malformed CSV: {_parser_error(e)}; {_FIX_LINE}") from None
            except UnicodeDecodeError as e:  # preflight() checks every byte first: not expected
                raise DataError(
                    f"{path.name}: not UTF-8 text near data row {rows + 1} ({e.reason}): {_REEXPORT}"
                ) from None
            except (EOFError, zlib.error, OSError):  # preflight() checks the gzip stream first
                raise DataError(
                    f"{path.name}: the file could not be read after data row {rows} (cut off or "
                    "changed while being read): copy it again"
                ) from None
            if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
                raise DataError(
                    f"{path.name}: malformed CSV: rows {rows + 1}..{rows + chunk_rows} hold more fields "
                    f"than the header line names; {_FIX_LINE}"
                )
            if chunk is None:
                return
            rows += len(chunk)
            yield chunk[list(columns)].rename(columns=dict(columns))


_FIX_LINE = "fix or remove that line (or quote the field holding the delimiter) and run the command again"


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _parser_error(e: BaseException) -> str:
    """pandas' tokenizer error in an operator's words (its line counts the header as line 1)."""
    text = _first_line(e)
    m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
    if m is None:
        return text
    expected, line, saw = (int(g) for g in m.groups())
    return f"line {line} (data row {line - 1}) has {saw} fields where the header line has {expected}"


def _parquet_chunks(path: Path, columns: Mapping[str, str], *, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Parquet batches; a row group that cannot be read is named (found by reading the row
    groups from the failing batch's first row on, one by one, only after a failure)."""
    pf = pq.ParquetFile(path)
    rows = 0
    batches = pf.iter_batches(batch_size=chunk_rows, columns=list(columns))
    while True:
        try:
            batch = next(batches, None)
            if batch is None:
                return
            frame = batch.to_pandas()
        except (pa.ArrowException, OSError, ValueError, EOFError):
            raise _row_group_error(path, pf, list(columns), rows) from None
        rows += len(frame)
        yield frame.rename(columns=dict(columns))


def _row_group_error(path: Path, pf: pq.ParquetFile, columns: list[str], rows: int) -> DataError:
    md = pf.metadata
    start = 0
    for i in range(md.num_row_groups):
        n = md.row_group(i).num_rows
        if start + n > rows:  # holds rows not yet read
            try:
                pf.read_row_group(i, columns=columns)
            except (pa.ArrowException, OSError, ValueError, EOFError):
                return DataError(
                    f"{path.name}: Parquet row group {i} (numbered from 0, of {md.num_row_groups}; "
                    f"data rows {start + 1}..{start + n}) is corrupt and cannot be read: export the "
                    "file again",
                    row=start + 1,
                )
        start += n
    return DataError(
        f"{path.name}: the Parquet file cannot be read after data row {rows}: export the file again",
        row=rows + 1,
    )
