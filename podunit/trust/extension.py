"""GPG simple signatures kept by the registry: the X-Registry-Supports-Signatures API.

A registry that answers `GET /v2/` with `X-Registry-Supports-Signatures: 1` (OpenShift's
integrated registry, for one) serves the signatures of a manifest at
`GET /extensions/v2/<repository>/signatures/<digest>`:

    {"signatures": [{"version": 2, "type": "atomic",
                     "name": "sha256:<hex>@<random id>", "content": "<base64 signature>"}]}

`content` is the same OpenPGP message skopeo writes to a lookaside store. Entries of
another version or type are skipped (as containers/image does: a future kind of
signature is not an error), each with a note for the refusal message in case nothing
else verifies. Everything here comes from the registry and is bounded before use.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from podunit.errors import ImageError
from podunit.images.reference import ImageReference
from podunit.images.signatures import (
    MAX_SIGNATURE_LIST_SIZE,
    SignatureExtensionSource,
    SignatureSource,
)
from podunit.trust.payload import MAX_SIGNATURE_SIZE, MAX_SIGNATURES, strict_json

SCHEMA_VERSION = 2
SIGNATURE_TYPE = "atomic"
# Each signature is inside the list, so the list's bound (4 MiB) bounds them all: a
# decoded entry is at most 3 MiB, under the 4 MiB any signature may have.
assert MAX_SIGNATURE_LIST_SIZE * 3 // 4 <= MAX_SIGNATURE_SIZE


class _Skipped(Exception):
    """One entry does not hold a usable signature; says which and why."""


def signatures_url(ref: ImageReference, digest: str) -> str:
    """Where the list lives, for messages (the source makes the request itself)."""
    return f"{ref.domain}/extensions/v2/{ref.repository}/signatures/{digest}"


def fetch_signatures(
    source: SignatureSource, ref: ImageReference, digest: str
) -> tuple[list[tuple[str, bytes]], list[str]]:
    """(where, signature) of each usable entry, and notes on what could not be used: the
    verifier reports them only if no signature passes."""
    if not isinstance(source, SignatureExtensionSource):
        return [], []
    url = signatures_url(ref, digest)
    try:
        data = source.extension_signatures(ref, digest)
    except (ImageError, OSError) as exc:
        # Not fatal here: another signature may still pass. If none does, the refusal
        # says the extension could not be read, and why.
        return [], [f"signature extension of {ref.domain}: {exc}"]
    if data is None:
        return [], [f"no signature extension at {ref.domain} (or no list for this manifest)"]
    try:
        found, notes = parse_signature_list(data, digest)
    except ValueError as exc:
        return [], [f"signature extension {url}: {exc}"]
    return [(f"{url} {label}", sig) for label, sig in found], [f"{url} {n}" for n in notes]


def parse_signature_list(data: bytes, digest: str) -> tuple[list[tuple[str, bytes]], list[str]]:
    """(label, signature bytes) of each usable entry, and a note for each skipped one.
    ValueError when the whole list is unusable (not JSON, no array, too many entries)."""
    doc = strict_json(data, "the signature list", MAX_SIGNATURE_LIST_SIZE)
    entries = doc.get("signatures") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError('the signature list has no "signatures" array')
    if len(entries) > MAX_SIGNATURES:
        raise ValueError(f"more than {MAX_SIGNATURES} signatures in the list; refusing it")
    found: list[tuple[str, bytes]] = []
    notes: list[str] = []
    for index, entry in enumerate(entries):
        try:
            found.append(_entry(entry, index, digest))
        except _Skipped as exc:
            notes.append(str(exc))
    return found, notes


def _entry(entry: Any, index: int, digest: str) -> tuple[str, bytes]:
    if not isinstance(entry, dict):
        raise _Skipped(f"entry {index} skipped: not an object")
    name = entry.get("name")
    label = f"entry {index}" + (f" ({name})" if isinstance(name, str) else "")
    if entry.get("version") != SCHEMA_VERSION or entry.get("type") != SIGNATURE_TYPE:
        kind = f"version {entry.get('version')!r}, type {entry.get('type')!r}"
        raise _Skipped(f"{label} skipped: {kind} is not a version 2 atomic signature")
    # Names are "<digest>@<id>": an entry named for another manifest is misfiled (or
    # replayed). The payload check would refuse it too; this says so plainly.
    if isinstance(name, str) and "@" in name and name.partition("@")[0] != digest:
        raise _Skipped(f"{label} skipped: listed for another manifest")
    content = entry.get("content")
    if not isinstance(content, str) or not content:
        raise _Skipped(f'{label} skipped: no "content" string')
    try:
        return label, base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise _Skipped(f"{label} skipped: content is not base64") from None
