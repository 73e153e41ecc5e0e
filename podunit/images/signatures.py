"""The seam between image transport and trust policy.

The image store calls a `Verifier` for every image it is about to accept,
after the manifest is fetched and verified against its digest and before any
layer is downloaded or unpacked. The verifier raises `TrustError` (an
ImageError) to refuse. Registry-backed sources hand it a `SignatureSource`
so it can fetch lookaside signatures and cosign signature artifacts over the
same connection, credentials and TLS settings as the pull itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from podunit.errors import ImageError
from podunit.images.reference import ImageReference


class TrustError(ImageError):
    """The trust policy refuses this image; the message says which requirement failed and why."""


class SignatureSource(Protocol):
    """What a verifier may ask of the source an image comes from."""

    def get_url(self, url: str) -> bytes | None:
        """GET an http(s):// or file:// URL (lookaside signatures); None on 404/ENOENT."""

    def get_manifest(self, ref: ImageReference, tag_or_digest: str) -> tuple[bytes, str] | None:
        """A manifest of the same repository by tag or digest: (bytes, media type); None on 404."""

    def get_blob(self, ref: ImageReference, digest: str) -> bytes:
        """A blob of the same repository, verified against `digest`."""

    def referrers(self, ref: ImageReference, digest: str) -> list[dict[str, Any]] | None:
        """OCI referrers of `digest` (descriptors); None when the registry has no referrers API."""

    def put_blob(self, ref: ImageReference, data: bytes) -> str:
        """Upload a blob to the repository; return its digest."""

    def put_manifest(
        self, ref: ImageReference, tag_or_digest: str, data: bytes, media_type: str
    ) -> str:
        """Upload a manifest under a tag (or by digest); return its digest."""


# Verifier(reference as the user wrote it, manifest digest, manifest bytes, source or None for
# local transports without signature storage).
Verifier = Callable[[ImageReference, str, bytes, SignatureSource | None], None]


# The X-Registry-Supports-Signatures list holds whole signatures inline (base64): bound it
# as containers/image does (iolimits.MaxSignatureListBodySize).
MAX_SIGNATURE_LIST_SIZE = 4 << 20


@runtime_checkable
class SignatureExtensionSource(Protocol):
    """A source that can ask its registry for the X-Registry-Supports-Signatures API
    (OpenShift's integrated registry and others): GPG simple signatures kept by the
    registry itself. Separate from SignatureSource so that sources without it (local
    transports, test doubles) need not implement it; the verifier checks with isinstance."""

    def extension_signatures(self, ref: ImageReference, digest: str) -> bytes | None:
        """The raw JSON signature list of manifest `digest` (at most
        MAX_SIGNATURE_LIST_SIZE bytes, unparsed: the verifier judges it); None when the
        registry does not advertise the extension or has no list for the digest."""
