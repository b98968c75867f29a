"""pipeline.tario: the fast tar reader agrees with tarfile on every header form and names damage clearly."""
from __future__ import annotations

import io
import logging
import tarfile

import pytest

from pipeline.tario import (ShardFormatError, _checksum_ok, count_samples, group_samples, iter_members, iter_tar,
                            tar_samples)


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"", kind=tarfile.REGTYPE, **kw) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, (len(data) if kind == tarfile.REGTYPE else 0)
    for k, v in kw.items():
        setattr(info, k, v)
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _tarfile_members(blob: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf if m.isfile()]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_match_tarfile_for_every_header_form(fmt):
    long_dir = "d" * 120                                   # > 100 chars: ustar prefix / GNU 'L' / pax path
    names = ["a.jpg", "a.json", f"{long_dir}/b.seg.png", "x" * 96 + ".npz", "empty.txt"]
    if fmt != tarfile.USTAR_FORMAT:
        names.append("k" * 150 + ".jpg")                  # no '/' to split at: only GNU / pax can store it
    if fmt == tarfile.PAX_FORMAT:
        names.append("ünïcode.json")                      # non-ASCII: a pax path record
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        _add(tf, "somedir", kind=tarfile.DIRTYPE)
        for i, n in enumerate(names):
            _add(tf, n, bytes(range(256)) * i + b"end" * (n != "empty.txt"))
        _add(tf, "link", kind=tarfile.SYMTYPE, linkname="a.jpg")
    blob = buf.getvalue()
    assert list(iter_members(io.BytesIO(blob))) == _tarfile_members(blob)


def test_samples_group_by_webdataset_keys(caplog):
    members = [("dir.v1/s0.jpg", b"1"), ("dir.v1/s0.seg.PNG", b"2"), ("dir.v1/s1.jpg", b"3"), ("README", b"4"),
               ("dir/.hidden", b"5"), ("s2.jpg", b"6")]
    assert list(group_samples(members)) == [{"__key__": "dir.v1/s0", "jpg": b"1", "seg.png": b"2"},
                                            {"__key__": "dir.v1/s1", "jpg": b"3"}, {"__key__": "s2", "jpg": b"6"}]
    with caplog.at_level(logging.WARNING, logger="pipeline.tario"):           # two ids that map to one key
        out = list(group_samples([("s0.jpg", b"1"), ("s0.json", b"j"), ("s0.jpg", b"2"), ("s1.jpg", b"3")], "x.tar"))
    assert out == [{"__key__": "s0", "jpg": b"1", "json": b"j"}, {"__key__": "s0", "jpg": b"2"},
                   {"__key__": "s1", "jpg": b"3"}]
    assert "x.tar: member s0.jpg repeats in sample s0" in caplog.text


def test_old_style_directory_entries_are_not_members():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        _add(tf, "a.jpg", b"x")
    blob = bytearray(buf.getvalue())
    v7 = tarfile.TarInfo("olddir/")                           # a V7 directory: type '\0' and a trailing slash
    hdr = bytearray(v7.tobuf(tarfile.USTAR_FORMAT))
    hdr[156:157] = b"\0"
    hdr[148:156] = b" " * 8
    hdr[148:155] = f"{sum(hdr):06o}\0".encode()
    blob = bytes(hdr) + bytes(blob)
    assert list(iter_members(io.BytesIO(blob))) == [("a.jpg", b"x")] == _tarfile_members(blob)


def _shard(path, n: int) -> bytes:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(n):
            for ext in ("jpg", "json", "npz"):
                _add(tf, f"s{i:03d}.{ext}", f"{ext}{i}".encode() * 100)
    return path.read_bytes()


def test_iter_tar_and_count(tmp_path):
    blob = _shard(tmp_path / "a.tar", 5)
    (tmp_path / "cut.tar").write_bytes(blob[:512 * 29 + 100])   # the last member's data is cut short
    with pytest.raises(ShardFormatError, match="cut.tar: truncated"):
        count_samples(tmp_path / "cut.tar")                   # even though counting seeks over the data
    samples = list(iter_tar(tmp_path / "a.tar"))
    assert [s["__key__"] for s in samples] == [f"s{i:03d}" for i in range(5)]
    assert samples[3] == {"__key__": "s003", "jpg": b"jpg3" * 100, "json": b"json3" * 100, "npz": b"npz3" * 100}
    assert count_samples(tmp_path / "a.tar") == 5


def test_missing_end_blocks_are_tolerated(tmp_path):
    blob = _shard(tmp_path / "a.tar", 3)
    end = len(blob.rstrip(b"\0"))
    (tmp_path / "cut.tar").write_bytes(blob[:-(-end // 512) * 512])    # keep the last member's padding only
    assert count_samples(tmp_path / "cut.tar") == 3


@pytest.mark.parametrize("damage", ["truncated data", "truncated header", "bad checksum", "not a tar",
                                    "bad pax size"])
def test_damage_is_a_tar_error_naming_the_file(tmp_path, damage):
    blob = _shard(tmp_path / "a.tar", 3)
    bad = tmp_path / "bad.tar"
    if damage == "truncated data":
        bad.write_bytes(blob[:512 * 7 + 100])
    elif damage == "truncated header":
        bad.write_bytes(blob[:512 * 6 + 100])
    elif damage == "bad checksum":
        b = bytearray(blob)
        b[512 * 4 + 10] ^= 0x20                               # a name byte of a later header
        bad.write_bytes(bytes(b))
    elif damage == "bad pax size":                            # pax data is not covered by the checksum
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            _add(tf, "s000.jpg", b"x" * 10, pax_headers={"size": "10"})
        bad.write_bytes(buf.getvalue().replace(b"size=10", b"size=1z"))
    else:
        bad.write_bytes(b"PK\x03\x04" + b"\x01" * 2000)
    with pytest.raises(tarfile.TarError, match="bad.tar") as e:
        list(iter_tar(bad))
    assert isinstance(e.value, ShardFormatError)
    if damage in ("truncated header", "bad checksum", "bad pax size"):   # tarfile ends the archive there (or
        return                                                          # raises a ValueError of its own)
    with pytest.raises(tarfile.ReadError):                    # tarfile agrees that the file is damaged
        with tarfile.open(bad) as tf:
            [tf.extractfile(m).read() for m in tf if m.isfile()]


def test_tar_samples_warns_and_continues_or_raises(tmp_path, caplog):
    good = _shard(tmp_path / "good.tar", 4)
    (tmp_path / "cut.tar").write_bytes(good[:512 * 14 + 700])  # 2 samples, s002.jpg, then a cut in s002.json
    urls = [{"url": str(tmp_path / "cut.tar")}, {"url": str(tmp_path / "good.tar")}]
    with caplog.at_level(logging.WARNING, logger="pipeline.tario"):
        out = list(tar_samples(iter(urls)))
    assert [(s["__url__"][-8:], s["__key__"]) for s in out][:3] == [("/cut.tar", "s000"), ("/cut.tar", "s001"),
                                                                    ("good.tar", "s000")]   # s002 is dropped
    assert len(out) == 2 + 4
    assert "cut.tar: leaving the rest of this shard" in caplog.text
    with pytest.raises(ShardFormatError, match="cut.tar"):
        list(tar_samples(iter(urls), on_error="raise"))


def test_checksum_check_equals_the_byte_sum():
    """_checksum_ok reads the unsigned sum through two residues (its comment): the same verdict as the sums, also
    for stored values one modulus away and for the signed sum of old writers."""
    import random
    rnd = random.Random(0)
    for i in range(3000):
        hdr = bytes(rnd.choice((0, 0, 0, rnd.randrange(256), rnd.randrange(128))) for _ in range(512))
        if i % 3 == 0:
            hdr = bytes(rnd.randrange(256) for _ in range(512))
        unsigned = sum(hdr[:148]) + 256 + sum(hdr[156:])
        signed = unsigned - 256 * sum(1 for b in hdr[:148] + hdr[156:] if b > 127)
        for stored in (unsigned, signed, unsigned + 65521, unsigned - 65521, unsigned + 255, unsigned - 255,
                       unsigned + 255 * 65521, unsigned + 1, -1, 0, rnd.randrange(1 << 24)):
            assert _checksum_ok(hdr, stored) == (stored in (unsigned, signed)), (i, stored)
