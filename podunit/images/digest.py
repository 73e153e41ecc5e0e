"""Digests, descriptors and streams that hash what passes through them.

Everything an image source hands us is hostile until its sha256 matches a
digest we already trust (the chain starts at the manifest descriptor in
index.json, which the user chose). A digest string becomes a file name only
after `check_digest` accepted it, so `sha256:../../etc` never reaches a path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from podunit.errors import ImageError, IntegrityError
from podunit.images.reference import SHA256_RE

CHUNK = 1 << 20
# JSON documents (index, manifest, config) are small; refuse absurd ones
# before reading them into memory.
MAX_JSON_SIZE = 8 << 20


def check_digest(digest: object, what: str = "digest") -> str:
    """Return the hex part of a valid `sha256:<64 lowercase hex>` digest."""
    if not isinstance(digest, str) or not SHA256_RE.match(digest):
        shown = digest if isinstance(digest, str) else type(digest).__name__
        raise IntegrityError(f'{what}: "{shown!s:.100}" is not sha256: and 64 lowercase hex digits')
    return digest[len("sha256:") :]


@dataclass(frozen=True)
class Platform:
    os: str = ""
    architecture: str = ""
    variant: str = ""


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor whose digest and size have been validated."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()

    @property
    def hex(self) -> str:
        return self.digest[len("sha256:") :]


def parse_descriptor(obj: object, what: str) -> Descriptor:
    """Validate a descriptor JSON object; IntegrityError on anything malformed."""
    if not isinstance(obj, dict):
        raise IntegrityError(f"{what}: descriptor is not a JSON object")
    media_type = obj.get("mediaType", "")
    size = obj.get("size")
    if not isinstance(media_type, str):
        raise IntegrityError(f"{what}: mediaType is not a string")
    check_digest(obj.get("digest"), f"{what} digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise IntegrityError(f"{what}: size must be a non-negative integer")
    raw_ann = obj.get("annotations") or {}
    if not isinstance(raw_ann, dict):
        raise IntegrityError(f"{what}: annotations is not an object")
    annotations = {str(k): str(v) for k, v in raw_ann.items()}
    plat = obj.get("platform")
    platform = None
    if isinstance(plat, dict):
        platform = Platform(
            str(plat.get("os", "")), str(plat.get("architecture", "")), str(plat.get("variant", ""))
        )
    urls = obj.get("urls") or []
    return Descriptor(
        media_type,
        obj["digest"],
        size,
        annotations,
        platform,
        tuple(str(u) for u in urls) if isinstance(urls, list) else (),
    )


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class HashingReader:
    """Wraps a stream: hashes and counts every byte read, refuses past `limit`.

    `limit` is the declared size: reading more than that means the source
    lies about the blob, and we stop instead of streaming it forever.
    """

    def __init__(self, src: Readable, name: str, limit: int | None = None) -> None:
        self._src = src
        self.name = name
        self.limit = limit
        self.count = 0
        self.hasher = hashlib.sha256()
        self.tee: BinaryIO | None = None

    def read(self, size: int = -1, /) -> bytes:
        if size is None or size < 0:
            size = CHUNK
        if self.limit is not None:
            # Ask for one byte past the limit so that an oversized blob shows.
            size = max(0, min(size, self.limit + 1 - self.count))
            if size == 0:
                return b""
        data = self._src.read(size)
        if data:
            self.count += len(data)
            if self.limit is not None and self.count > self.limit:
                raise IntegrityError(
                    f"{self.name}: blob is larger than its declared size {self.limit}"
                )
            self.hasher.update(data)
            if self.tee is not None:
                self.tee.write(data)
        return data

    def drain(self) -> None:
        """Read to the end so that the digest covers the whole stream."""
        while self.read(CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()

    def verify(self, expected_digest: str, expected_size: int | None) -> None:
        """IntegrityError naming the blob unless size and digest match."""
        if expected_size is not None and self.count != expected_size:
            raise IntegrityError(
                f"{self.name}: size mismatch: expected {expected_size} bytes, got {self.count}"
            )
        if self.digest != expected_digest:
            raise IntegrityError(
                f"{self.name}: digest mismatch: expected {expected_digest}, got {self.digest}"
            )


def read_verified(src: Readable, desc: Descriptor, what: str) -> bytes:
    """Read a small blob fully and verify it against its descriptor."""
    if desc.size > MAX_JSON_SIZE:
        raise ImageError(f"{what} {desc.digest}: {desc.size} bytes is too large for a {what}")
    reader = HashingReader(src, f"{what} {desc.digest}", desc.size)
    parts = []
    while chunk := reader.read(CHUNK):
        parts.append(chunk)
    reader.verify(desc.digest, desc.size)
    return b"".join(parts)


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise IntegrityError(f"{what}: not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise IntegrityError(f"{what}: not a JSON object")
    return obj
