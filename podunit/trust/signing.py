"""`podunit sign`: GPG simple signatures into a lookaside directory (as skopeo writes
them) and cosign signatures pushed to the registry, over the manifest the store will
verify (for docker:// references the top-level one: an index for multi-platform images)."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

from podunit import __version__
from podunit.images.reference import ImageReference, ReferenceError
from podunit.images.signatures import SignatureSource, TrustError
from podunit.trust import cosign, gpg, lookaside
from podunit.trust.identity import DockerName, parse_docker_name
from podunit.trust.payload import COSIGN_TYPE, GPG_TYPE, make_payload

CREATOR = f"podunit {__version__}"


def signed_identity(ref: ImageReference, identity: str | None) -> DockerName:
    """What the signature will name: --identity, else the reference without digest."""
    if identity:
        try:
            return parse_docker_name(identity)
        except ReferenceError as exc:
            raise TrustError(f"--identity: {exc}") from None
    if ref.transport != "docker":
        raise TrustError(f"{ref}: a local image has no registry name; give --identity NAME:TAG")
    return DockerName(ref.path, ref.tag, None)


@contextlib.contextmanager
def registry(ref: ImageReference) -> Iterator[SignatureSource]:
    from podunit.images.registry import open_registry

    with open_registry(ref) as source:
        yield source


def manifest_digest(ref: ImageReference, source: SignatureSource | None) -> str:
    """The digest the verifier will be asked about for `ref`."""
    if ref.transport == "docker":
        if source is None:
            if ref.digest:
                return ref.digest
            raise TrustError(f"{ref}: needs the registry to find the manifest")
        found = source.get_manifest(ref, ref.digest or ref.tag or "latest")
        if found is None:
            raise TrustError(f"{ref}: no such manifest in the registry")
        return "sha256:" + hashlib.sha256(found[0]).hexdigest()
    from podunit.images.digest import Descriptor, read_verified
    from podunit.images.oci import open_source, select_manifest

    with open_source(ref) as blobs:

        def fetch(desc: Descriptor, what: str) -> bytes:
            with blobs.open_blob(desc) as f:
                return read_verified(f, desc, what)

        desc, _ = select_manifest(blobs, ref.tag, fetch)
        return desc.digest


def sign_gpg(ref: ImageReference, key_id: str, directory: Path, identity: str | None) -> Path:
    name = signed_identity(ref, identity)
    if ref.transport == "docker" and not ref.digest:
        with registry(ref) as source:
            digest = manifest_digest(ref, source)
    else:
        digest = manifest_digest(ref, None)
    optional = {"creator": CREATOR, "timestamp": int(time.time())}
    data = gpg.sign(make_payload(digest, name, GPG_TYPE, optional), key_id)
    repository = name.name.split("/", 1)[1]
    return lookaside.write_signature(directory, repository, digest, data)


def key_password(env_value: str | None, no_password: bool) -> bytes | None:
    if no_password:
        return None
    if not env_value:
        raise TrustError("set PODUNIT_KEY_PASSWORD to encrypt the key, or pass --no-password")
    return env_value.encode()


def sign_cosign(
    ref: ImageReference, key_path: Path, password: bytes | None, identity: str | None
) -> tuple[str, str]:
    """Push a cosign signature; (image manifest digest, signature manifest digest)."""
    if ref.transport != "docker":
        raise TrustError(f"{ref}: cosign signatures are stored in a registry (docker://)")
    key = cosign.load_private_key(key_path, password)
    name = signed_identity(ref, identity)
    with registry(ref) as source:
        return sign_cosign_with(source, ref, key, name)


def sign_cosign_with(
    source: SignatureSource, ref: ImageReference, key: object, name: DockerName
) -> tuple[str, str]:
    from cryptography.hazmat.primitives.asymmetric import ec

    assert isinstance(key, ec.EllipticCurvePrivateKey)
    digest = manifest_digest(ref, source)
    payload = make_payload(digest, name, COSIGN_TYPE, None)
    return digest, cosign.push_signature(source, ref, digest, payload, key)
