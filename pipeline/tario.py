"""Reading tar shards fast: one pass, a direct parse of each 512-byte header, samples grouped by key.

Python's ``tarfile`` (which webdataset's ``tarfile_to_samples`` uses) builds a TarInfo per member and parses its
fields in Python: about 0.3 ms per sample of three members here, as much as decoding the sample's stored crop.
The loaders read every member of every shard, so this module parses only what a shard needs: the name (ustar
prefix, pax ``path`` and GNU long names included), the size (pax ``size`` and base-256 too), the type, and the
header checksum. Directories, links and global headers are skipped. Anything inconsistent (a bad checksum, a
truncated member, two members with the same name in one sample) raises :class:`ShardFormatError`, a
``tarfile.ReadError``, so callers' ``except tarfile.TarError`` handling applies unchanged.

Keys follow webdataset's rule: the key is the member path up to the first dot of its file name, the extension
is the rest (``dir/abc.seg.png`` -> key ``dir/abc``, extension ``seg.png``); consecutive members with the same
key form one sample.
"""
from __future__ import annotations

import logging
import tarfile
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

log = logging.getLogger(__name__)

__all__ = ["ShardFormatError", "iter_members", "group_samples", "iter_tar", "tar_samples", "count_samples"]

_BLOCK = 512
_ZERO = bytes(_BLOCK)
_REGULAR = (b"0", b"\0", b"7")


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
    unsigned = sum(hdr[:148]) + 256 + sum(hdr[156:])
    if unsigned == stored:
        return True
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


def iter_members(f: BinaryIO, where="tar") -> Iterator[tuple[str, bytes]]:
    """(name, data) of every regular file of a tar stream, in order. ``where`` names the stream in errors."""
    pax: dict[str, str] = {}
    long_name = None
    while True:
        hdr = f.read(_BLOCK)
        if not hdr or hdr == _ZERO:                      # end of archive (missing end blocks are tolerated)
            return
        if len(hdr) < _BLOCK:
            raise ShardFormatError(f"{where}: truncated tar (header)")
        if not _checksum_ok(hdr, _number(hdr[148:156], "checksum", where)):
            raise ShardFormatError(f"{where}: bad tar header checksum (a damaged or non-tar file)")
        size = int(pax["size"]) if "size" in pax else _number(hdr[124:136], "size", where)
        typ = hdr[156:157]
        padding = -size % _BLOCK
        data = _read_exact(f, size, where, "member data")
        if padding:
            _read_exact(f, padding, where, "padding")
        if typ in _REGULAR:
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
        elif typ != b"g":                                # directories, links, ...: skipped; a global
            pax, long_name = {}, None                    # pax header does not consume the pending name


def _split_key(name: str) -> tuple[str, str]:
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


def group_samples(members: Iterable[tuple[str, bytes]], where="tar") -> Iterator[dict]:
    """(name, data) pairs -> {'__key__', ext: bytes} per run of members with the same key."""
    cur = None
    for name, data in members:
        key, ext = _split_key(name)
        if cur is not None and cur["__key__"] != key:
            yield cur
            cur = None
        if cur is None:
            cur = {"__key__": key}
        if ext in cur:
            raise ShardFormatError(f"{where}: member {name} appears twice in a row (two samples share a key)")
        cur[ext] = data
    if cur is not None:
        yield cur


def iter_tar(path) -> Iterator[dict]:
    """{'__key__', ext: bytes} per sample of a shard file, in file order."""
    with open(path, "rb") as f:
        yield from group_samples(iter_members(f, path), path)


def count_samples(path) -> int:
    """Samples (keys with a .json member) in a shard file; reads headers and data once."""
    return sum(1 for s in iter_tar(path) if "json" in s)


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
        except (OSError, tarfile.TarError) as e:
            if on_error == "raise":
                raise
            log.warning("%s: leaving the rest of this shard: %s", Path(url).name, e)
