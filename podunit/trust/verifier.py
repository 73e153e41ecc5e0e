"""The `Verifier` the image store calls: the policy in force, applied to one image.

    verify = make_verifier()            # once per command; the policy is read on first use
    verify(ref, manifest_digest, manifest_bytes, source_or_None)   # raises TrustError

The store calls it after the manifest is fetched and checked against its digest and before
any layer is fetched or unpacked. Every requirement of the most specific matching scope
must hold; a signature requirement holds when at least one signature passes all checks
(others may be for other keys or tools, so they are skipped, but their reasons are kept
for the error message in case none passes).

GPG signatures of a registry image are read from two stores, in this order, the second
only when no signature from the first satisfies the requirement:

1. the lookaside store of registries.d (the scope's, else default-docker's, else skopeo's
   built-in file:///var/lib/containers/sigstore): where `skopeo copy --sign-by` and
   `podunit sign --gpg` write, usually a local or nearby file;
2. the registry's own signature extension (X-Registry-Supports-Signatures), when its
   /v2/ endpoint advertises it: two more round trips, so only when needed.

Signatures from both are candidates alike; a refusal lists why each one failed.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from podunit.images.reference import ImageReference
from podunit.images.signatures import SignatureSource, TrustError, Verifier
from podunit.trust import extension, gpg, lookaside
from podunit.trust.identity import identity_mismatch, image_name
from podunit.trust.payload import (
    COSIGN_TYPE,
    GPG_TYPE,
    Payload,
    SignatureRejected,
    parse_payload,
    strict_json,
)
from podunit.trust.policy import Policy, Requirement, load_policy, policy_path

if TYPE_CHECKING:
    # cosign needs `cryptography` (tens of ms to import and initialise OpenSSL): loaded
    # only when a policy asks for a cosign signature.
    from cryptography.hazmat.primitives.asymmetric import ec

    from podunit.trust import cosign


@dataclass
class _Image:
    """One verification: the image and, fetched at most once, its signatures."""

    ref: ImageReference
    digest: str
    manifest: bytes
    source: SignatureSource | None
    gpg: list[tuple[str, bytes]] = field(default_factory=list)
    gpg_stores_read: int = 0  # how many of _GPG_STORES have been read into `gpg`
    cosign: list[cosign.CosignSignature] | None = None
    notes: list[str] = field(default_factory=list)


class _Refused(Exception):
    """A requirement does not hold; becomes a TrustError naming it."""


def open_scope_command(ref: ImageReference) -> str:
    """The one command that lets this image's repository in without signatures."""
    scope = ref.path if ref.transport == "docker" else os.path.abspath(ref.path)
    transport = "" if ref.transport == "docker" else f"--transport {ref.transport} "
    return f"podunit trust set --type accept {transport}{scope}"


class PolicyVerifier:
    def __init__(self, path: Path | None = None, registries_d: Sequence[Path] | None = None):
        self.path = policy_path(path)
        self._registries_d = registries_d
        self._policy: Policy | None = None
        self._lookaside: lookaside.LookasideConfig | None = None
        self._keyrings: dict[tuple[str, ...], gpg.Keyring] = {}
        self._cosign_keys: dict[tuple[str, ...], list[tuple[str, ec.EllipticCurvePublicKey]]] = {}
        self._lock = threading.Lock()

    @property
    def policy(self) -> Policy:
        # Read on first use, not at construction: commands that end up pulling nothing
        # must not fail on a policy problem.
        with self._lock:
            if self._policy is None:
                self._policy = load_policy(self.path)
            return self._policy

    def __call__(
        self, ref: ImageReference, digest: str, manifest: bytes, source: SignatureSource | None
    ) -> None:
        policy = self.policy
        scope, requirements = policy.requirements_for(ref)
        if "sha256:" + hashlib.sha256(manifest).hexdigest() != digest:
            raise TrustError(f"{ref}: the manifest does not match its digest {digest}")
        image = _Image(ref, digest, manifest, source)
        for req in requirements:
            try:
                self._check(req, image)
            except _Refused as exc:
                raise TrustError(self._message(policy, scope, req, ref, str(exc))) from None

    def _message(
        self, policy: Policy, scope: str, req: Requirement, ref: ImageReference, why: str
    ) -> str:
        if policy.builtin and req.type == "reject":
            return (
                f"{ref}: refused: podunit's built-in trust policy (used because {self.path} "
                "does not exist) accepts local oci:, oci-archive: and docker-archive: images "
                "but rejects registry images unless they are signed by a trusted key. To "
                f"accept this repository without signatures, run:\n    {open_scope_command(ref)}"
            )
        where = f'scope "{scope}"' if scope != "default" else "no scope matched, so the default"
        text = f"{ref}: refused by trust policy {policy.source} ({where}): "
        text += f"requirement {req.describe()} {why}"
        if req.type == "reject":
            text += "\nTo accept this repository without signatures, run:\n    "
            text += open_scope_command(ref)
        return text

    def _check(self, req: Requirement, image: _Image) -> None:
        if req.unsupported:
            raise _Refused(f"cannot be checked: {req.unsupported}")
        if req.type == "insecureAcceptAnything":
            return
        if req.type == "reject":
            raise _Refused("rejects every image")
        if image.source is None:
            raise _Refused(f"is not satisfied: {image.ref.transport}: images carry no signatures")
        try:
            if strict_json(image.manifest, "manifest").get("schemaVersion") == 1:
                raise _Refused("is not satisfied: docker schema 1 manifests cannot be verified")
        except (ValueError, AttributeError):
            raise _Refused("is not satisfied: the manifest is not a JSON object") from None
        if req.type == "signedBy":
            self._check_gpg(req, image)
        else:
            self._check_cosign(req, image)

    def _check_gpg(self, req: Requirement, image: _Image) -> None:
        keyring = self._keyring(req)
        reasons = []
        for where, data in self._gpg_signatures(image):
            try:
                result = gpg.verify(data, keyring)
                self._check_payload(req, image, parse_payload(result.payload, GPG_TYPE))
                return
            except SignatureRejected as exc:
                reasons.append(f"{where}: {exc}")
        raise _Refused(
            "is not satisfied: " + ("; ".join(reasons + image.notes) or "no GPG signatures")
        )

    def _gpg_signatures(self, image: _Image) -> Iterator[tuple[str, bytes]]:
        """The image's GPG signatures, reading the next store (see the module docstring)
        only when the caller wants more than those read so far. Cached on `image`, so a
        scope with several signedBy requirements reads each store once."""
        index = 0
        while True:
            while index < len(image.gpg):
                yield image.gpg[index]
                index += 1
            if image.ref.transport != "docker" or image.gpg_stores_read == len(_GPG_STORES):
                return
            store = _GPG_STORES[image.gpg_stores_read]
            image.gpg_stores_read += 1
            found, notes = store(self, image)
            image.gpg += found
            image.notes += notes

    def _lookaside_signatures(self, image: _Image) -> tuple[list[tuple[str, bytes]], list[str]]:
        assert image.source is not None
        base = self._lookaside_config().base_url(image.ref)
        found = lookaside.fetch_signatures(image.source, base, image.ref, image.digest)
        first = lookaside.signature_url(base, image.ref, image.digest, 1)
        return found, [] if found else [f"no GPG signature at {first}"]

    def _extension_signatures(self, image: _Image) -> tuple[list[tuple[str, bytes]], list[str]]:
        assert image.source is not None
        return extension.fetch_signatures(image.source, image.ref, image.digest)

    def _check_cosign(self, req: Requirement, image: _Image) -> None:
        from podunit.trust import cosign

        assert image.source is not None
        keys = self._public_keys(req)
        if image.cosign is None:
            image.cosign = cosign.fetch_signatures(image.source, image.ref, image.digest)
        reasons = []
        for sig in image.cosign:
            try:
                cosign.verify_signature(sig, keys)
                self._check_payload(req, image, parse_payload(sig.payload, COSIGN_TYPE))
                return
            except SignatureRejected as exc:
                reasons.append(f"{sig.where}: {exc}")
        if not reasons:
            tag = cosign.signature_tag(image.digest)
            reasons.append(f"no cosign signatures (no referrers, no {tag} tag)")
        raise _Refused("is not satisfied: " + "; ".join(reasons))

    @staticmethod
    def _check_payload(req: Requirement, image: _Image, payload: Payload) -> None:
        if payload.manifest_digest != image.digest:
            raise SignatureRejected(
                f"the signature is for manifest {payload.manifest_digest}, not this image's "
                f"{image.digest} (wrong image, or the image was changed)"
            )
        why = identity_mismatch(req.identity, image_name(image.ref), payload.identity)
        if why:
            raise SignatureRejected(why)

    def _lookaside_config(self) -> lookaside.LookasideConfig:
        with self._lock:
            if self._lookaside is None:
                self._lookaside = lookaside.load_lookaside(self._registries_d)
            return self._lookaside

    def _keyring(self, req: Requirement) -> gpg.Keyring:
        cache_key = tuple(k.describe() if k.path else repr(k.data) for k in req.keys)
        with self._lock:
            if cache_key not in self._keyrings:
                try:
                    keys = [k.read() for k in req.keys]
                    self._keyrings[cache_key] = gpg.Keyring(keys, [k.describe() for k in req.keys])
                except TrustError as exc:
                    raise _Refused(f"cannot be checked: {exc}") from None
            return self._keyrings[cache_key]

    def _public_keys(self, req: Requirement) -> list[tuple[str, ec.EllipticCurvePublicKey]]:
        from podunit.trust import cosign

        cache_key = tuple(k.describe() if k.path else repr(k.data) for k in req.keys)
        with self._lock:
            if cache_key not in self._cosign_keys:
                try:
                    self._cosign_keys[cache_key] = [
                        (k.describe(), cosign.load_public_key(k.read(), k.describe()))
                        for k in req.keys
                    ]
                except TrustError as exc:
                    raise _Refused(f"cannot be checked: {exc}") from None
            return self._cosign_keys[cache_key]


_GpgStore = Callable[[PolicyVerifier, _Image], tuple[list[tuple[str, bytes]], list[str]]]
_GPG_STORES: tuple[_GpgStore, ...] = (
    PolicyVerifier._lookaside_signatures,
    PolicyVerifier._extension_signatures,
)


def make_verifier(policy_path: Path | None = None) -> Verifier:
    """The verifier for the policy at `policy_path` (default: $PODUNIT_POLICY, else
    /etc/podunit/policy.json, else the built-in default). Reuse it for all images of one
    command: keys and keyrings are prepared once."""
    return PolicyVerifier(policy_path)
