"""Reading tar shards fast: one pass, a direct parse of each 512-byte header, samples grouped by key.

Python's ``tarfile`` (which webdataset's ``tarfile_to_samples`` uses) builds a TarInfo per member and parses its
fields in Python: 0.12 ms per sample of three members here, against 0.024 ms for this reader (measured on a
512-sample shard), and a third of what decoding the sample's stored crop costs.
The loaders read every member of every shard, so this module parses only what a shard needs: the name (ustar
prefix, pax ``path`` and GNU long names included), the size (pax ``size`` and base-256 too), the type, and the
header checksum. Directories, links and global headers are skipped. Anything inconsistent (a bad checksum, a
bad pax record, a truncated header or member) raises :class:`ShardFormatError`, a ``tarfile.ReadError``, so
callers' ``except tarfile.TarError`` handling applies unchanged.

Keys follow webdataset's rule: the key is the member path up to the first dot of its file name, the extension
is the rest, lower-cased (``dir/abc.seg.PNG`` -> key ``dir/abc``, extension ``seg.png``); consecutive members
with the same key form one sample; members without an extension belong to none.
"""
from __future__ import annotations

import logging
import os
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

log = logging.getLogger(__name__)

__all__ = ["ShardFormatError", "iter_members", "group_samples", "iter_tar", "tar_samples", "count_samples"]

_BLOCK = 512
_ZERO = bytes(_BLOCK)
_REGULAR = (b"0", b"\0", b"7")
_CRT_MOD = 255 * 65521
_READ_BUFFER = 1 << 18      # a shard is read from start to end: 256 KiB reads, not a read call per member


class ShardFormatError(tarfile.ReadError):
    """A tar shard that cannot be read as written (the message names the file)."""


def _number(field: bytes, what: str, where) -> int:
    if field[:1] and field[0] & 0x80:                    # GNU base-256 (sizes >= 8 GiB)
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ShardFormatError(f"{where}: bad {what} field in a tar header") from None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _checksum_ok(hdr: bytes, stored: int) -> bool:
    # The unsigned checksum U is the byte sum of the header with its checksum field read as 8 spaces. A Python
    # sum over 512 bytes was a third of the reader's cost; in C, zlib's adler32 gives U mod 65521 and the header
    # as a little-endian integer gives U mod 255 (256 = 1 mod 255). The moduli are coprime and U <= 512 * 255 <
    # 255 * 65521, so for such ``stored`` both residues agree exactly when U == stored (tested against the sum).
    x = hdr[:148] + b"        " + hdr[156:]
    if 0 <= stored < _CRT_MOD and zlib.adler32(x) & 0xFFFF == (1 + stored) % 65521 \
            and int.from_bytes(x, "little") % 255 == stored % 255:
        return True
    unsigned = sum(x)
    signed = unsigned - 256 * sum(1 for b in hdr[:148] + hdr[156:] if b > 127)   # some old writers sign bytes
    return signed == stored


def _pax_records(data: bytes, where) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise ShardFormatError(f"{where}: bad pax header record") from None
        record = data[space + 1:pos + length - 1]            # without the trailing newline
        if length <= 0 or b"=" not in record:
            raise ShardFormatError(f"{where}: bad pax header record")
        k, _, v = record.partition(b"=")
        out[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _read_exact(f: BinaryIO, n: int, where, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ShardFormatError(f"{where}: truncated tar ({what})")
    return data


def iter_members(f: BinaryIO, where="tar", read_data: bool = True) -> Iterator[tuple[str, bytes | None]]:
    """(name, data) of every regular file of a tar stream, in order; data is None with ``read_data=False`` (the
    member is skipped by seeking). ``where`` names the stream in errors."""
    pax: dict[str, str] = {}
    long_name = None
    while True:
        hdr = f.read(_BLOCK)
        if not hdr or hdr == _ZERO:                      # end of archive (missing end blocks are tolerated)
            if not read_data and _past_end(f):
                raise ShardFormatError(f"{where}: truncated tar (member data)")
            return
        if len(hdr) < _BLOCK:
            raise ShardFormatError(f"{where}: truncated tar (header)")
        if not _checksum_ok(hdr, _number(hdr[148:156], "checksum", where)):
            raise ShardFormatError(f"{where}: bad tar header checksum (a damaged or non-tar file)")
        if "size" in pax:                                # the checksum does not cover pax data
            try:
                size = int(pax["size"])
            except ValueError:
                raise ShardFormatError(f"{where}: bad pax size record {pax['size']!r}") from None
        else:
            size = _number(hdr[124:136], "size", where)
        if size < 0:
            raise ShardFormatError(f"{where}: negative member size in a tar header")
        typ = hdr[156:157]
        regular = typ in _REGULAR and not (typ == b"\0" and hdr[:100].split(b"\0", 1)[0].endswith(b"/"))
        padded = size + (-size % _BLOCK)
        if typ in (b"x", b"L") or (regular and read_data):
            data = _read_exact(f, size, where, "member data")     # then the padding: no copy of the data
            if padded != size:
                _read_exact(f, padded - size, where, "member data")
        else:
            data = _skip(f, padded, where)
        if regular:
            if "path" in pax:
                name = pax["path"]
            elif long_name is not None:
                name = long_name
            else:
                name = _text(hdr[0:100])
                if hdr[257:262] == b"ustar" and hdr[345:346] != b"\0":
                    name = _text(hdr[345:500]) + "/" + name
            pax, long_name = {}, None
            yield name, data
        elif typ == b"x":                                # per-member pax header: applies to the next member
            pax = _pax_records(data, where)
        elif typ == b"L":                                # GNU long name of the next member
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif typ != b"g":                                # directories (also old-style: type 0 and a trailing
            pax, long_name = {}, None                    # '/'), links, ...: skipped; a global pax header does
                                                         # not consume the pending name


def _skip(f: BinaryIO, n: int, where) -> None:
    """Skip n bytes: seek where the stream can (an overshoot is caught at the end by :func:`_past_end`)."""
    try:
        f.seek(n, 1)
    except (OSError, ValueError, AttributeError):        # a pipe: read and drop
        _read_exact(f, n, where, "member data")


def _past_end(f: BinaryIO) -> bool:
    try:
        return f.tell() > os.fstat(f.fileno()).st_size
    except (OSError, ValueError, AttributeError):
        return False


def _split_key(name: str) -> tuple[str, str] | None:
    """webdataset's base_plus_ext: (path up to the first dot of the file name, the rest lower-cased), or None
    for a file name without a dot (such members belong to no sample)."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot <= slash:
        return None
    return name[:dot], name[dot + 1:].lower()


def group_samples(members: Iterable[tuple[str, bytes]], where="tar") -> Iterator[dict]:
    """(name, data) pairs -> {'__key__', ext: bytes} per run of members with the same key. A member whose
    extension the current sample already has starts a new sample with the same key (logged: two sample ids that
    map to one key), as newer webdataset versions do; members without an extension are skipped."""
    cur = None
    for name, data in members:
        split = _split_key(name)
        if split is None:
            continue
        key, ext = split
        if cur is not None and (cur["__key__"] != key or ext in cur):
            if cur["__key__"] == key:
                log.warning("%s: member %s repeats in sample %s; starting a new sample", where, name, key)
            yield cur
            cur = None
        if cur is None:
            cur = {"__key__": key}
        cur[ext] = data
    if cur is not None:
        yield cur


def iter_tar(path) -> Iterator[dict]:
    """{'__key__', ext: bytes} per sample of a shard file or URL (:mod:`pipeline.remote`), in file order."""
    from .remote import open_stream
    with open_stream(path, buffering=_READ_BUFFER) as f:
        yield from group_samples(iter_members(f, path), path)


def count_samples(path) -> int:
    """Samples (keys with a .json member) in a shard file; reads the headers only."""
    from .remote import open_stream
    with open_stream(path) as f:
        return sum(1 for s in group_samples(iter_members(f, path, read_data=False), path) if "json" in s)


def tar_samples(src: Iterable[dict], on_error: str = "warn") -> Iterator[dict]:
    """webdataset pipeline stage: {'url': path} -> samples with ``__key__`` and ``__url__``. With
    ``on_error="warn"`` a shard that fails part-way is logged and left, like ``wds.warn_and_continue``: the
    samples before the damage are kept, the one being read is dropped; with ``"raise"`` the error propagates."""
    for item in src:
        url = item["url"]
        try:
            for sample in iter_tar(url):
                sample["__url__"] = url
                yield sample
        except (OSError, tarfile.TarError, ValueError) as e:
            if on_error == "raise":
                raise
            log.warning("%s: leaving the rest of this shard: %s", Path(url).name, e)
