"""cosign (sigstore) signatures made with a key: verification, key generation, signing.

cosign stores the signatures of image sha256:HEX in the same repository, as the manifest
tagged `sha256-HEX.sig` (or, with OCI 1.1 registries, as a referrer of the image whose
artifactType is the cosign signature type). Each layer of that manifest is one signature:
its blob is the simple-signing payload, its annotation `dev.cosignproject.cosign/signature`
the base64 ECDSA P-256/SHA-256 signature over exactly those bytes. Keyless signing
(Fulcio certificates, Rekor entries) is out of scope; certificate and bundle annotations
are ignored, since the signature must verify with a policy key either way.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from podunit.images.reference import ImageReference
from podunit.images.signatures import SignatureSource, TrustError
from podunit.trust.payload import (
    MAX_SIGNATURE_SIZE,
    MAX_SIGNATURES,
    SignatureRejected,
    strict_json,
)

SIMPLESIGNING_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_ARTIFACT_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DIR_PREFIX = b"\x00sigstore-json\n"  # containers/image "dir:" and storage format
MAX_MANIFEST_SIZE = 4 << 20


@dataclass(frozen=True)
class CosignSignature:
    where: str  # for messages: which manifest layer or file
    media_type: str
    payload: bytes
    signature: str  # base64, as in the annotation


def signature_tag(manifest_digest: str) -> str:
    algo, _, hex_ = manifest_digest.partition(":")
    return f"{algo}-{hex_}.sig"


def load_public_key(data: bytes, name: str) -> ec.EllipticCurvePublicKey:
    """A PEM public key usable for cosign signatures (ECDSA P-256)."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TrustError(f"key {name}: not a PEM public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        kind = type(key).__name__.lstrip("_")
        raise TrustError(f"key {name}: {kind} keys are not supported; cosign keys are ECDSA P-256")
    return key


def verify_signature(
    sig: CosignSignature, keys: list[tuple[str, ec.EllipticCurvePublicKey]]
) -> str:
    """The name of the key that made `sig`; SignatureRejected otherwise."""
    if sig.media_type != SIMPLESIGNING_TYPE:
        raise SignatureRejected(f"media type {sig.media_type!r} is not a cosign signature")
    try:
        raw = base64.b64decode(sig.signature, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureRejected("the signature annotation is not valid base64") from None
    for name, key in keys:
        try:
            key.verify(raw, sig.payload, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        return name
    raise SignatureRejected("not signed by any of the trusted keys (or the payload was changed)")


def parse_sigstore_json(data: bytes, where: str) -> CosignSignature:
    """A signature in containers/image's stored form: DIR_PREFIX and a JSON object."""
    if not data.startswith(DIR_PREFIX):
        raise SignatureRejected("not a sigstore signature")
    try:
        doc = strict_json(data[len(DIR_PREFIX) :], "sigstore signature")
        payload = base64.b64decode(doc["payload"], validate=True)
        annotations = doc.get("annotations") or {}
        return CosignSignature(
            where, str(doc["mimeType"]), payload, str(annotations[SIGNATURE_ANNOTATION])
        )
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise SignatureRejected(f"malformed sigstore signature ({exc})") from None


def _signature_layers(
    source: SignatureSource, ref: ImageReference, data: bytes, where: str
) -> list[CosignSignature]:
    try:
        doc = strict_json(data, f"signature manifest {where}", MAX_MANIFEST_SIZE)
        layers = doc["layers"]
        if not isinstance(layers, list):
            raise TypeError("layers is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise TrustError(f"{ref}: signature manifest {where} is malformed: {exc}") from None
    result = []
    for i, layer in enumerate(layers[: MAX_SIGNATURES + 1]):
        if i == MAX_SIGNATURES:
            raise TrustError(f"{ref}: more than {MAX_SIGNATURES} cosign signatures; refusing")
        layer_where = f"{where} layer {i}"
        if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLESIGNING_TYPE:
            continue  # another kind of attachment: not ours to judge
        annotations = layer.get("annotations")
        signature = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
        size, digest = layer.get("size"), layer.get("digest")
        if not isinstance(signature, str) or not isinstance(digest, str):
            continue
        if not isinstance(size, int) or not 0 <= size <= MAX_SIGNATURE_SIZE:
            raise TrustError(f"{ref}: {layer_where}: payload size {size!r} is out of bounds")
        payload = source.get_blob(ref, digest)
        result.append(CosignSignature(layer_where, SIMPLESIGNING_TYPE, payload, signature))
    return result


def fetch_signatures(
    source: SignatureSource, ref: ImageReference, manifest_digest: str
) -> list[CosignSignature]:
    """The cosign signatures of an image: referrers first, then the .sig tag."""
    result = []
    referrers = source.referrers(ref, manifest_digest)
    for desc in (referrers or [])[:MAX_SIGNATURES]:
        if not isinstance(desc, dict) or desc.get("artifactType") != SIGNATURE_ARTIFACT_TYPE:
            continue
        digest = desc.get("digest")
        got = source.get_manifest(ref, digest) if isinstance(digest, str) else None
        if got is not None:
            result += _signature_layers(source, ref, got[0], f"referrer {digest}")
    if result:
        return result
    tag = signature_tag(manifest_digest)
    got = source.get_manifest(ref, tag)
    return _signature_layers(source, ref, got[0], tag) if got is not None else []


# ---- keys and signing ------------------------------------------------------------------


def generate_key(prefix: Path, password: bytes | None) -> tuple[Path, Path]:
    """PREFIX.key (PKCS#8 PEM, encrypted unless password is None) and PREFIX.pub."""
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password is not None
        else serialization.NoEncryption()
    )
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_path, pub_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for path in (key_path, pub_path):
        if path.exists():
            raise TrustError(f"{path} exists; not overwriting a key")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        f.write(private)
    pub_path.write_bytes(public)
    return key_path, pub_path


def load_private_key(path: Path, password: bytes | None) -> ec.EllipticCurvePrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TrustError(f"cannot read {path}: {exc.strerror}") from None
    if b"SIGSTORE PRIVATE KEY" in data:
        raise TrustError(
            f"{path}: cosign's own encrypted key format is not supported; "
            "use a PKCS#8 PEM key (podunit key generate)"
        )
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" not in data:
        password = None  # an unencrypted key needs none, whatever the environment says
    try:
        key = serialization.load_pem_private_key(data, password)
    except TypeError:
        raise TrustError(f"{path}: the key is encrypted: set PODUNIT_KEY_PASSWORD") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TrustError(f"{path}: cannot load the private key (wrong password?): {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise TrustError(f"{path}: not an ECDSA P-256 private key")
    return key


def sign_payload(key: ec.EllipticCurvePrivateKey, payload: bytes) -> str:
    return base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()


def _existing_layers(source: SignatureSource, ref: ImageReference, tag: str) -> list[Any]:
    got = source.get_manifest(ref, tag)
    if got is None:
        return []
    try:
        layers = strict_json(got[0], "signature manifest", MAX_MANIFEST_SIZE)["layers"]
    except (ValueError, KeyError, TypeError):
        raise TrustError(f"{ref}: the existing {tag} is not a cosign signature manifest") from None
    return list(layers) if isinstance(layers, list) else []


def _already_signed(
    layers: list[Any], payload_digest: str, payload: bytes, key: ec.EllipticCurvePublicKey
) -> bool:
    """Whether a layer already holds this payload signed by this key. ECDSA signatures
    differ each time, so comparing layers would add a duplicate per run."""
    for layer in layers:
        if not isinstance(layer, dict) or layer.get("digest") != payload_digest:
            continue
        annotations = layer.get("annotations")
        sig = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
        try:
            verify_signature(
                CosignSignature("", SIMPLESIGNING_TYPE, payload, str(sig)), [("", key)]
            )
            return True
        except SignatureRejected:
            continue
    return False


def push_signature(
    source: SignatureSource,
    ref: ImageReference,
    manifest_digest: str,
    payload: bytes,
    key: ec.EllipticCurvePrivateKey,
) -> str:
    """Sign `payload` and add it as a layer of the image's `sha256-HEX.sig` manifest,
    keeping the signatures there (as cosign does); return that manifest's digest."""
    tag = signature_tag(manifest_digest)
    layers = _existing_layers(source, ref, tag)
    payload_digest = source.put_blob(ref, payload)
    if not _already_signed(layers, payload_digest, payload, key.public_key()):
        layers.append(
            {
                "mediaType": SIMPLESIGNING_TYPE,
                "size": len(payload),
                "digest": payload_digest,
                "annotations": {SIGNATURE_ANNOTATION: sign_payload(key, payload)},
            }
        )
    config = {
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [layer.get("digest") for layer in layers]},
    }
    config_data = json.dumps(config, separators=(",", ":")).encode()
    config_digest = source.put_blob(ref, config_data)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config_data), "digest": config_digest},
        "layers": layers,
    }
    data = json.dumps(manifest, separators=(",", ":")).encode()
    return source.put_manifest(ref, tag, data, OCI_MANIFEST)
