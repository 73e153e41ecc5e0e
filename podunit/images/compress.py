"""Layer media types and bounded streaming decompression.

Decompression output is produced in bounded pieces (never "all of this
chunk at once": 1 MiB of gzip can inflate to 1 GiB), and a decompression
bomb is refused while streaming: past both `bomb_min` bytes and `bomb_ratio`
times the compressed bytes consumed so far.
"""

from __future__ import annotations

import importlib
import zlib
from types import ModuleType
from typing import Any

from podunit.errors import ImageError, IntegrityError
from podunit.images.digest import CHUNK, HashingReader, Readable

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

_COMPRESSION = {
    OCI_LAYER: "none",
    OCI_LAYER + "+gzip": "gzip",
    OCI_LAYER + "+zstd": "zstd",
    DOCKER_LAYER_GZIP: "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
}


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# isal's zlib-compatible decompressor is several times faster than zlib's.
_zlib: Any = _optional("isal.isal_zlib") or zlib


def layer_compression(media_type: str, what: str) -> str:
    """Compression ("none", "gzip", "zstd") of a layer media type, or ImageError."""
    if media_type.endswith("+encrypted"):
        raise ImageError(f"{what}: encrypted layers ({media_type}) are not supported")
    if ".nondistributable." in media_type or media_type == DOCKER_FOREIGN:
        raise ImageError(
            f"{what}: non-distributable (foreign) layers ({media_type}) are not supported"
        )
    try:
        kind = _COMPRESSION[media_type]
    except KeyError:
        raise ImageError(f'{what}: unsupported layer media type "{media_type}"') from None
    if kind == "zstd" and _optional("zstandard") is None:
        raise ImageError(f"{what}: zstd layer, but the Python zstandard module is not installed")
    return kind


class _GzipReader:
    """Multi-member gzip stream decoder with bounded output per read."""

    def __init__(self, src: Readable, name: str) -> None:
        self._src = src
        self._name = name
        self._d = _zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = b""
        self._eof = False
        self._started = False

    def read(self, size: int = CHUNK, /) -> bytes:
        while not self._eof:
            if not self._pending:
                self._pending = self._src.read(CHUNK)
                if not self._pending:
                    if self._started and not self._d.eof:
                        raise IntegrityError(f"{self._name}: truncated gzip stream")
                    self._eof = True
                    break
            self._started = True
            try:
                out: bytes = self._d.decompress(self._pending, size)
            except zlib.error as exc:
                raise IntegrityError(f"{self._name}: corrupt gzip data: {exc}") from None
            if self._d.eof:
                # A new gzip member may follow (concatenated gzip files).
                self._pending = self._d.unused_data
                self._d = _zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._started = False
            else:
                self._pending = self._d.unconsumed_tail
            if out:
                return out
        return b""


class BoundedReader:
    """Decompressed stream that refuses to grow past the bomb bound."""

    def __init__(
        self, compressed: HashingReader, kind: str, bomb_min: int, bomb_ratio: int
    ) -> None:
        self._compressed = compressed
        self._bomb_min = bomb_min
        self._bomb_ratio = bomb_ratio
        self.count = 0
        self._inner: Readable
        if kind == "none":
            self._inner = compressed
        elif kind == "gzip":
            self._inner = _GzipReader(compressed, compressed.name)
        else:
            zstd: Any = importlib.import_module("zstandard")
            self._inner = zstd.ZstdDecompressor().stream_reader(
                compressed, read_size=CHUNK, read_across_frames=True
            )

    def read(self, size: int = CHUNK, /) -> bytes:
        if size is None or size < 0:
            size = CHUNK
        try:
            data = self._inner.read(size)
        except IntegrityError:
            raise
        except Exception as exc:  # zstandard.ZstdError has no importable base here
            if type(exc).__name__ != "ZstdError":
                raise
            raise IntegrityError(f"{self._compressed.name}: corrupt zstd data: {exc}") from None
        self.count += len(data)
        if self.count > self._bomb_min and self.count > self._bomb_ratio * max(
            1, self._compressed.count
        ):
            raise ImageError(
                f"{self._compressed.name}: refusing decompression bomb: {self.count} bytes "
                f"from {self._compressed.count} compressed bytes"
            )
        return data
