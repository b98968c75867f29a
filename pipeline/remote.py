"""Shards from anywhere: local paths, ``http(s)://`` URLs, ``pipe:`` commands, ``s3://`` and ``gs://`` objects.

One function opens a shard (or its ``build.json``) for reading, whatever the spec (issue 14): ``http(s)://``
through the standard library (no curl needed; a 404 or a refused connection is an OSError naming the URL);
``pipe:CMD`` and ``gs://`` through webdataset's ``gopen`` (a subprocess whose exit status is checked when the
stream closes; ``gs://`` runs ``gsutil cat``); ``s3://`` as ``pipe:aws s3 cp URL -`` (the AWS CLI). Streams are
read once, front to back (the tar reader never seeks on them).
"""
from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

__all__ = ["URL_SCHEMES", "is_url", "url_join", "url_parent", "open_stream", "read_bytes"]

URL_SCHEMES = ("http://", "https://", "pipe:", "s3://", "gs://")
TIMEOUT_S = 60


def is_url(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(URL_SCHEMES)


def url_join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def url_parent(url: str) -> str:
    return url.rsplit("/", 1)[0]


def open_stream(spec, buffering: int = -1) -> BinaryIO:
    """A binary stream of a local file or a URL (module docstring). OSError naming the spec when it cannot be
    opened (missing file, HTTP error, unreachable host). ``buffering``: of a local file, as for ``open``."""
    if not is_url(spec):
        return open(spec, "rb", buffering=buffering)
    if spec.startswith(("http://", "https://")):
        try:
            return urllib.request.urlopen(spec, timeout=TIMEOUT_S)  # noqa: S310 - the user's own shard URL
        except urllib.error.HTTPError as e:
            raise OSError(f"HTTP {e.code} {e.reason} for {spec}") from None
        except (urllib.error.URLError, TimeoutError) as e:
            raise OSError(f"cannot reach {spec} ({getattr(e, 'reason', e)})") from None
    from webdataset.gopen import gopen
    if spec.startswith("s3://"):
        return gopen(f"pipe:aws s3 cp {spec} -", "rb")
    return gopen(spec, "rb")


def read_bytes(spec) -> bytes:
    """The whole content of a local file or a URL (a build.json); OSError naming the spec otherwise."""
    if not is_url(spec):
        return Path(spec).read_bytes()
    with open_stream(spec) as f:
        return f.read()
