"""Test doubles for trust tests: an in-memory SignatureSource (a registry with lookaside
storage), and the shared containers/image signature vectors served through it.

The vectors' "dir-img-*" directories are skopeo "dir:" copies whose symlinks were copied as
small files holding the link target: `vector_bytes` follows those.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from podunit.images.reference import ImageReference
from podunit.trust.cosign import DIR_PREFIX, SIGNATURE_ANNOTATION, SIMPLESIGNING_TYPE
from podunit.trust.lookaside import signature_url

REPO = Path(__file__).resolve().parents[2]
VECTORS = Path(
    os.environ.get(
        "PODUNIT_SIGNATURE_VECTORS", REPO.parent / "shared/fixtures/containers-image-signatures"
    )
)
SIMPLE_SIGNING_PREFIX = b"\x00simple-signing\n"
LOOKASIDE = "file:///lookaside"


def vectors() -> Path:
    if not (VECTORS / "NOTICE.md").is_file():
        pytest.fail(f"signature test vectors missing at {VECTORS} (set PODUNIT_SIGNATURE_VECTORS)")
    return VECTORS


def vector_bytes(path: Path) -> bytes:
    """A vector file's content, following copied-symlink stubs ("../other/file")."""
    data = path.read_bytes()
    for _ in range(5):
        if len(data) < 200 and data.startswith(b"../"):
            path = (path.parent / data.decode().strip()).resolve()
            data = path.read_bytes()
    return data


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class DirImage:
    manifest: bytes | None
    signatures: list[bytes]

    @property
    def digest(self) -> str:
        return digest_of(self.manifest or b"")


def load_dir_image(name: str) -> DirImage:
    base = vectors() / name
    manifest = vector_bytes(base / "manifest.json") if (base / "manifest.json").exists() else None
    sigs = []
    index = 1
    while (base / f"signature-{index}").exists():
        sigs.append(vector_bytes(base / f"signature-{index}"))
        index += 1
    return DirImage(manifest, sigs)


@dataclass
class FakeSource:
    """A registry (manifests, blobs, optional referrers API) plus lookaside URLs."""

    urls: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    referrer_lists: dict[tuple[str, str], list[dict[str, Any]]] | None = None
    calls: list[str] = field(default_factory=list)

    def get_url(self, url: str) -> bytes | None:
        self.calls.append(f"get_url {url}")
        return self.urls.get(url)

    def get_manifest(self, ref: ImageReference, tag_or_digest: str) -> tuple[bytes, str] | None:
        self.calls.append(f"get_manifest {tag_or_digest}")
        return self.manifests.get((ref.path, tag_or_digest))

    def get_blob(self, ref: ImageReference, digest: str) -> bytes:
        self.calls.append(f"get_blob {digest}")
        data = self.blobs[(ref.path, digest)]
        assert digest_of(data) == digest
        return data

    def referrers(self, ref: ImageReference, digest: str) -> list[dict[str, Any]] | None:
        self.calls.append(f"referrers {digest}")
        if self.referrer_lists is None:
            return None
        return self.referrer_lists.get((ref.path, digest), [])

    def put_blob(self, ref: ImageReference, data: bytes) -> str:
        digest = digest_of(data)
        self.blobs[(ref.path, digest)] = data
        return digest

    def put_manifest(
        self, ref: ImageReference, tag_or_digest: str, data: bytes, media_type: str
    ) -> str:
        digest = digest_of(data)
        self.manifests[(ref.path, tag_or_digest)] = (data, media_type)
        self.manifests[(ref.path, digest)] = (data, media_type)
        return digest


def cosign_layer(source: FakeSource, ref: ImageReference, stored: bytes) -> dict[str, Any]:
    """A cosign signature-manifest layer for a signature in containers/image stored form."""
    import base64

    doc = json.loads(stored[len(DIR_PREFIX) :])
    payload = base64.b64decode(doc["payload"])
    return {
        "mediaType": doc["mimeType"],
        "size": len(payload),
        "digest": source.put_blob(ref, payload),
        "annotations": {SIGNATURE_ANNOTATION: doc["annotations"][SIGNATURE_ANNOTATION]},
    }


def serve(source: FakeSource, ref: ImageReference, image: DirImage) -> None:
    """Publish a dir: image's signatures as a registry would: GPG ones in the lookaside,
    cosign ones as layers of the sha256-HEX.sig manifest."""
    gpg_index, layers = 1, []
    for sig in image.signatures:
        if sig.startswith(DIR_PREFIX):
            layers.append(cosign_layer(source, ref, sig))
            continue
        if sig.startswith(SIMPLE_SIGNING_PREFIX):
            sig = sig[len(SIMPLE_SIGNING_PREFIX) :]
        source.urls[signature_url(LOOKASIDE, ref, image.digest, gpg_index)] = sig
        gpg_index += 1
    if layers:
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {}, "layers": layers}  # fmt: skip
        tag = "sha256-" + image.digest.split(":")[1] + ".sig"
        source.put_manifest(ref, tag, json.dumps(manifest).encode(), "")


def test_vector_stubs_resolve() -> None:
    image = load_dir_image("dir-img-mixed")
    assert image.manifest is not None and image.manifest.startswith(b"{")
    assert [s[:1] for s in image.signatures] != [b"."] * len(image.signatures)
    assert SIMPLESIGNING_TYPE.encode() in vector_bytes(
        vectors() / "dir-img-cosign-valid/signature-1"
    )
