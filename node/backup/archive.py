"""The backup archive: a tar of files, compressed, then encrypted and authenticated in chunks.

A backup holds the node's pseudonymised health data, so it is never written in clear: anyone
who copies the archive off the backup disk learns nothing, and anyone who alters it (a flipped
bit, a cut-off tail, chunks swapped or replayed from another archive) is refused before a single
byte of it reaches the store.

Layout (v1)::

    magic "RHBAK1\\n" | salt (16) | nonce prefix (7) | header length (4, BE) | header (JSON)
    then chunks: ciphertext length (4, BE) | AES-256-GCM ciphertext of ≤ 1 MiB plaintext + tag

- Key: HKDF-SHA256 of the node's pseudonym key (the one secret a node already keeps, and
  must keep to use its store at all), with the archive's random salt and a fixed label, so
  every archive has its own key and the pseudonym key itself is never used for encryption.
- Nonce of chunk *i*: prefix ‖ *i* (4 bytes) ‖ last-flag (1 byte) — the STREAM construction
  (Hoang, Reyhanitabar, Rogaway, Vizár 2015): chunks cannot be reordered, dropped or cut off
  at a chunk boundary without the tag check failing or the last flag missing.
- Every chunk authenticates the whole clear prefix (magic … header) as associated data: the
  header (format, the key's fingerprint prefix) cannot be edited either.

The header says only which key the archive needs (8 hex digits of the key's fingerprint) and
when it was made; everything else (the manifest) is inside the encrypted tar.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.errors import DataError

MAGIC = b"RHBAK1\n"
FORMAT = 1
CHUNK = 1 << 20  # plaintext bytes per chunk
_SALT, _PREFIX, _TAG = 16, 7, 16
_INFO = b"rehealth-node-backup-v1"
_MAX_HEADER = 4096
#: zlib level: pseudonyms are hex (half their bytes compress away); level 3 gains 5 % for 20 % more
#: time, level 6 10 % for three times the time (100k persons: 28.8 MiB → 15.2 MiB at level 1)
_LEVEL = 1


class ArchiveError(DataError):
    """The archive is not a backup this node can read: not one, another key's, or altered."""


def _key(secret: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(secret)


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= 1 << 32:
        raise ArchiveError("backup too large for one archive (2^32 chunks)")
    return prefix + struct.pack(">I", index) + (b"\x01" if last else b"\x00")


class _EncryptingWriter(io.RawIOBase):
    """A write-only stream: compresses, cuts into chunks, encrypts each (see module notes)."""

    def __init__(self, out: BinaryIO, secret: bytes, header: dict) -> None:
        salt, self._prefix = os.urandom(_SALT), os.urandom(_PREFIX)
        head = json.dumps(header, sort_keys=True).encode()
        self._aad = MAGIC + salt + self._prefix + struct.pack(">I", len(head)) + head
        out.write(self._aad)
        self._out, self._aead = out, AESGCM(_key(secret, salt))
        self._zip = zlib.compressobj(_LEVEL)
        self._buf = bytearray()
        self._index = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._buf += self._zip.compress(bytes(data))
        while len(self._buf) > CHUNK:  # keep one chunk back: the last one carries the flag
            self._seal(bytes(self._buf[:CHUNK]), last=False)
            del self._buf[:CHUNK]
        return len(data)

    def finish(self) -> None:
        self._buf += self._zip.flush()
        while len(self._buf) > CHUNK:
            self._seal(bytes(self._buf[:CHUNK]), last=False)
            del self._buf[:CHUNK]
        self._seal(bytes(self._buf), last=True)
        self._buf.clear()

    def _seal(self, plain: bytes, *, last: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._prefix, self._index, last), plain, self._aad)
        self._out.write(struct.pack(">I", len(sealed)) + sealed)
        self._index += 1


class _DecryptingReader(io.RawIOBase):
    """A read-only stream over an archive's chunks: authenticates, decrypts, decompresses.
    Raises :class:`ArchiveError` at the first chunk that fails, and at an end without the
    last chunk (a truncated archive)."""

    def __init__(self, src: BinaryIO, secret: bytes, where: str) -> None:
        self._src, self._where = src, where
        self.header, self._aad, salt, self._prefix = read_header(src, where)
        self._aead = AESGCM(_key(secret, salt))
        self._unzip = zlib.decompressobj()
        self._index, self._done, self._pending = 0, False, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._pending and not self._done:
            self._pending = self._unzip.decompress(self._next_chunk())
            if self._done:
                self._pending += self._unzip.flush()
                if not self._unzip.eof:
                    raise ArchiveError(f"{self._where}: the archive's content is incomplete")
        n = min(len(b), len(self._pending))
        b[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _next_chunk(self) -> bytes:
        raw = self._src.read(4)
        if len(raw) < 4:
            raise ArchiveError(f"{self._where} is truncated (it ends before its last chunk)")
        (size,) = struct.unpack(">I", raw)
        if size > CHUNK + _TAG + 1024:  # before reading: a forged length must not cost memory
            raise ArchiveError(f"{self._where} is corrupt (chunk {self._index} is too long)")
        sealed = self._src.read(size)
        if len(sealed) != size:
            raise ArchiveError(f"{self._where} is truncated (in chunk {self._index})")
        for last in (False, True):
            try:
                plain = self._aead.decrypt(_nonce(self._prefix, self._index, last), sealed, self._aad)
            except InvalidTag:
                continue
            self._index += 1
            if last:
                self._done = True
                if self._src.read(1):
                    raise ArchiveError(f"{self._where} has data after its last chunk (altered)")
            return plain
        if self._index == 0:
            raise ArchiveError(
                f"{self._where} cannot be authenticated with this node's key: it was made with "
                f"another key (fingerprint {self.header.get('key', '?')}) or it was altered"
            )
        raise ArchiveError(f"{self._where} was altered (chunk {self._index} fails its authentication)")


def read_header(src: BinaryIO, where: str) -> tuple[dict, bytes, bytes, bytes]:
    """The clear header: (header dict, the authenticated prefix bytes, salt, nonce prefix)."""
    magic = src.read(len(MAGIC))
    if magic != MAGIC:
        raise ArchiveError(f"{where} is not a ReHealth node backup (rehealth node backup makes them)")
    salt, prefix, raw_len = src.read(_SALT), src.read(_PREFIX), src.read(4)
    if len(raw_len) < 4:
        raise ArchiveError(f"{where} is truncated (in its header)")
    (n,) = struct.unpack(">I", raw_len)
    head = src.read(n) if n <= _MAX_HEADER else b""
    try:
        header = json.loads(head)
        assert isinstance(header, dict)
    except Exception:  # noqa: BLE001 - any malformed header is the same refusal
        raise ArchiveError(f"{where} has a corrupt header") from None
    if header.get("format") != FORMAT:
        raise ArchiveError(f"{where} is backup format {header.get('format')!r}; this version reads {FORMAT}")
    return header, magic + salt + prefix + raw_len + head, salt, prefix


def write_archive(path: Path, secret: bytes, header: dict, files: dict[str, Path]) -> None:
    """Write ``files`` (archive name → file) as an encrypted archive at ``path`` (0600),
    atomically: a partial archive never carries the final name."""
    tmp = path.with_name(f".{path.name}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            enc = _EncryptingWriter(out, secret, {"format": FORMAT, **header})
            with tarfile.open(fileobj=enc, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for name, file in files.items():
                    tar.add(file, arcname=name, recursive=False)
            enc.finish()
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def extract_archive(path: Path, secret: bytes, into: Path, names: set[str]) -> dict:
    """Authenticate the whole archive while extracting its regular files named in ``names``
    into ``into``; return its clear header. Nothing is extracted outside ``into``; an archive
    that fails authentication anywhere raises (the caller then discards ``into``)."""
    where = f"backup {path}"
    try:
        src = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise ArchiveError(f"cannot read {where}: {e.strerror}") from None
    with src:
        reader = _DecryptingReader(src, secret, where)
        buffered = io.BufferedReader(reader, CHUNK)
        try:
            with tarfile.open(fileobj=buffered, mode="r|") as tar:
                for member in tar:
                    if member.name not in names or not member.isfile():
                        raise ArchiveError(f"{where} holds an unexpected entry")
                    tar.extract(member, into, filter="data")
            while buffered.read(CHUNK):  # authenticate to the last chunk (tar padding)
                pass
        except tarfile.TarError:
            raise ArchiveError(f"{where} is corrupt (its content is not a backup)") from None
        return reader.header
