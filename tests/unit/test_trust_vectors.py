# ruff: noqa: E501  (tables of vectors and expected messages read best unwrapped)
"""Every shared containers/image signature vector, through podunit's verifier, with the
outcome its name says (see NOTICE.md next to the vectors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from podunit.images.reference import parse_reference
from podunit.images.signatures import TrustError
from podunit.trust.verifier import PolicyVerifier

from .test_trust_fakes import (
    LOOKASIDE,
    FakeSource,
    load_dir_image,
    serve,
    vector_bytes,
    vectors,
)

GPG_REPO = "docker.io/testing/manifest"
COSIGN_REPO = "192.168.64.2:5000/cosign-signed-single-sample"


def make_verifier(tmp_path: Path, requirement: dict[str, Any]) -> PolicyVerifier:
    policy = {"default": [{"type": "reject"}], "transports": {"docker": {"": [requirement]}}}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    regd = tmp_path / "registries.d"
    regd.mkdir(exist_ok=True)
    (regd / "default.yaml").write_text(f"default-docker:\n  lookaside: {LOOKASIDE}\n")
    return PolicyVerifier(path, registries_d=[regd])


def gpg_req(*keys: str, identity: str | None = None) -> dict[str, Any]:
    req: dict[str, Any] = {"type": "signedBy", "keyType": "GPGKeys"}
    req["keyPaths"] = [str(vectors() / k) for k in keys]
    if identity:
        req["signedIdentity"] = {"type": identity}
    return req


def cosign_req(key: str, identity: str | None = None) -> dict[str, Any]:
    req: dict[str, Any] = {"type": "sigstoreSigned", "keyPath": str(vectors() / key)}
    if identity:
        req["signedIdentity"] = {"type": identity}
    return req


def check(verifier: PolicyVerifier, ref_text: str, image_dir: str) -> str:
    """ "" when accepted, else the refusal message."""
    image = load_dir_image(image_dir)
    ref = parse_reference(ref_text)
    source = FakeSource()
    serve(source, ref, image)
    try:
        verifier(ref, image.digest, image.manifest or b"", source)
    except TrustError as exc:
        return str(exc)
    return ""


# ---- GPG "dir:" images ------------------------------------------------------------------

GPG_DIRS = [
    ("dir-img-valid", "public-key.gpg", ""),
    ("dir-img-valid-2", "public-key.gpg", ""),
    ("dir-img-mixed", "public-key.gpg", ""),  # one bad (not JSON), one good: accepted
    ("dir-img-valid-subkey", "public-key-with-subkey.gpg", ""),
    (
        "dir-img-unsigned",
        "public-key.gpg",
        "no GPG signature at file:///lookaside/testing/manifest@sha256=",
    ),
    (
        "dir-img-modified-manifest",
        "public-key.gpg",
        "the signature is for manifest sha256:20bf21ed",
    ),
    (
        "dir-img-manifest-digest-error",
        "public-key.gpg",
        "docker schema 1 manifests cannot be verified",
    ),
    ("dir-img-no-manifest", "public-key.gpg", "the manifest is not a JSON object"),
    # the right signatures, checked against the wrong key
    (
        "dir-img-valid",
        "public-key-2.gpg",
        "signed by key 08CD26E446E2E95249B7A405E932F44B23E8DD43, which is not one of the trusted keys",
    ),
]


@pytest.mark.parametrize(
    ("image_dir", "key", "refusal"), GPG_DIRS, ids=[f"{d}-{k}" for d, k, _ in GPG_DIRS]
)
def test_gpg_dir_vectors(tmp_path: Path, image_dir: str, key: str, refusal: str) -> None:
    message = check(make_verifier(tmp_path, gpg_req(key)), f"{GPG_REPO}:latest", image_dir)
    if not refusal:
        assert message == ""
    else:
        assert refusal in message
        assert "signedBy" in message  # names the requirement that failed


# ---- GPG signatures, one file each ------------------------------------------------------

SIGNATURES = [
    ("image.signature", "public-key.gpg", ""),
    ("no-optional-fields.signature", "public-key.gpg", ""),
    ("subkey.signature", "public-key-with-subkey.gpg", ""),
    ("subkey.signature-v3", "public-key-with-subkey.gpg", ""),
    ("image.signature", "pubring.gpg", ""),
    ("expired.signature", "public-key.gpg", "the signature has expired (EXPSIG)"),
    ("corrupt.signature", "public-key.gpg", "BADSIG"),
    ("corrupt.signature-v3", "public-key.gpg", "BADSIG"),
    ("invalid-blob.signature", "public-key.gpg", "signed payload is not valid JSON"),
    ("invalid-blob.signature-v3", "public-key.gpg", "signed payload is not valid JSON"),
    ("invalid-reference.signature", "public-key.gpg", "docker-reference is invalid"),
    ("subkey-revoked.signature", "public-key-with-revoked-subkey.gpg", "revoked (REVKEYSIG)"),
    ("subkey-revoked.signature-v3", "public-key-with-revoked-subkey.gpg", "revoked (REVKEYSIG)"),
    (
        "unknown-key.signature",
        "public-key.gpg",
        "signed by key 5F9470E3BC6C3B55, which is not one of the trusted keys",
    ),
    (
        "unknown-key.signature-v3",
        "public-key.gpg",
        "signed by key 5F9470E3BC6C3B55, which is not one",
    ),
    ("unsigned-encrypted.signature", "public-key.gpg", "no OpenPGP signature found"),
    ("unsigned-literal.signature", "public-key.gpg", "no OpenPGP signature found"),
    ("unknown-cosign-key.signature", "public-key.gpg", "no OpenPGP signature found"),
    (
        "image.signature",
        "public-key-2.gpg",
        "signed by key 08CD26E446E2E95249B7A405E932F44B23E8DD43, which is not one",
    ),
]


def check_signature(tmp_path: Path, sig: str, req: dict[str, Any], ref_text: str) -> str:
    manifest = vector_bytes(vectors() / "image.manifest.json")
    digest = "sha256:20bf21ed457b390829cdbeec8795a7bea1626991fda603e0d01b4e7f60427e55"
    ref = parse_reference(ref_text)
    source = FakeSource()
    from podunit.trust.lookaside import signature_url

    source.urls[signature_url(LOOKASIDE, ref, digest, 1)] = vector_bytes(vectors() / sig)
    try:
        make_verifier(tmp_path, req)(ref, digest, manifest, source)
    except TrustError as exc:
        return str(exc)
    return ""


@pytest.mark.parametrize(
    ("sig", "key", "refusal"), SIGNATURES, ids=[f"{s}-{k}" for s, k, _ in SIGNATURES]
)
def test_gpg_signature_vectors(tmp_path: Path, sig: str, key: str, refusal: str) -> None:
    # The signatures name "testing/manifest" with or without ":latest": a digest
    # reference needs only the repository to match (matchRepoDigestOrExact).
    ref = f"{GPG_REPO}@sha256:20bf21ed457b390829cdbeec8795a7bea1626991fda603e0d01b4e7f60427e55"
    message = check_signature(tmp_path, sig, gpg_req(key), ref)
    assert message == "" if not refusal else refusal in message, message


def test_gpg_signature_for_other_tag_refused(tmp_path: Path) -> None:
    message = check_signature(
        tmp_path, "subkey.signature", gpg_req("public-key-with-subkey.gpg"), f"{GPG_REPO}:v2"
    )
    assert (
        "the signature is for docker.io/testing/manifest:latest, which does not match docker.io/testing/manifest:v2"
        in message
    )


def test_gpg_key_data(tmp_path: Path) -> None:
    import base64

    req = {"type": "signedBy", "keyType": "GPGKeys",
           "keyData": base64.b64encode((vectors() / "public-key.gpg").read_bytes()).decode()}  # fmt: skip
    assert check(make_verifier(tmp_path, req), f"{GPG_REPO}:latest", "dir-img-valid") == ""


# ---- cosign ---------------------------------------------------------------------------

COSIGN_DIRS = [
    ("dir-img-cosign-valid", "cosign.pub", f"{COSIGN_REPO}:latest", "matchRepository", ""),
    ("dir-img-cosign-valid-2", "cosign.pub", f"{COSIGN_REPO}:latest", "matchRepository", ""),
    (
        "dir-img-cosign-valid-2",
        "cosign2.pub",
        f"{COSIGN_REPO}:latest",
        "matchRepository",
        "layer 1: not signed by any",
    ),
    ("dir-img-cosign-mixed", "cosign.pub", f"{COSIGN_REPO}:latest", "matchRepository", ""),
    (
        "dir-img-cosign-valid-with-tag",
        "cosign.pub",
        "192.168.64.2:5000/skopeo-signed:tag",
        None,
        "",
    ),
    (
        "dir-img-cosign-valid",
        "cosign2.pub",
        f"{COSIGN_REPO}:latest",
        "matchRepository",
        "not signed by any of the trusted keys",
    ),
    (
        "dir-img-cosign-modified-manifest",
        "cosign.pub",
        f"{COSIGN_REPO}:latest",
        "matchRepository",
        "the signature is for manifest sha256:634a8f35",
    ),
    (
        "dir-img-cosign-manifest-digest-error",
        "cosign.pub",
        f"{COSIGN_REPO}:latest",
        "matchRepository",
        "docker schema 1 manifests",
    ),
    (
        "dir-img-cosign-no-manifest",
        "cosign.pub",
        f"{COSIGN_REPO}:latest",
        "matchRepository",
        "the manifest is not a JSON object",
    ),
    (
        "dir-img-cosign-other-attachment",
        "cosign.pub",
        f"{COSIGN_REPO}:latest",
        "matchRepository",
        "no cosign signatures",
    ),
    # a repository-only identity (cosign's default) does not satisfy a tag pull exactly
    (
        "dir-img-cosign-valid",
        "cosign.pub",
        f"{COSIGN_REPO}:latest",
        None,
        "does not match 192.168.64.2:5000/cosign-signed-single-sample:latest",
    ),
    (
        "dir-img-cosign-valid-with-tag",
        "cosign.pub",
        "192.168.64.2:5000/skopeo-signed:other",
        None,
        "the signature is for 192.168.64.2:5000/skopeo-signed:tag",
    ),
]


@pytest.mark.parametrize(
    ("image_dir", "key", "ref", "identity", "refusal"), COSIGN_DIRS,
    ids=[f"{d}-{k}-{i}-{bool(r)}" for d, k, _, i, r in COSIGN_DIRS],
)  # fmt: skip
def test_cosign_dir_vectors(
    tmp_path: Path, image_dir: str, key: str, ref: str, identity: str | None, refusal: str
) -> None:
    message = check(make_verifier(tmp_path, cosign_req(key, identity)), ref, image_dir)
    if not refusal:
        assert message == ""
    else:
        assert refusal in message
        assert "sigstoreSigned" in message


def test_cosign_signature_for_other_key_file(tmp_path: Path) -> None:
    """unknown-cosign-key.signature alone: signed, but not by cosign.pub."""
    image = load_dir_image("dir-img-cosign-valid")
    image.signatures = [vector_bytes(vectors() / "unknown-cosign-key.signature")]
    ref = parse_reference(f"{COSIGN_REPO}:latest")
    source = FakeSource()
    serve(source, ref, image)
    verifier = make_verifier(tmp_path, cosign_req("cosign.pub", "matchRepository"))
    with pytest.raises(TrustError, match="not signed by any of the trusted keys"):
        verifier(ref, image.digest, image.manifest or b"", source)


def test_rsa_sigstore_key_refused_clearly(tmp_path: Path) -> None:
    message = check(
        make_verifier(tmp_path, cosign_req("some-rsa-key.pub")),
        f"{COSIGN_REPO}:latest",
        "dir-img-cosign-valid",
    )
    assert "RSAPublicKey keys are not supported; cosign keys are ECDSA P-256" in message


def test_gpg_signatures_do_not_satisfy_sigstore_and_back(tmp_path: Path) -> None:
    assert "no cosign signatures" in check(
        make_verifier(tmp_path, cosign_req("cosign.pub")), f"{GPG_REPO}:latest", "dir-img-valid"
    )
    message = check(
        make_verifier(tmp_path, gpg_req("public-key.gpg")),
        f"{COSIGN_REPO}:latest",
        "dir-img-cosign-valid",
    )
    assert "no GPG signature at" in message


def test_cosign_any_of_several_keys(tmp_path: Path) -> None:
    req = {"type": "sigstoreSigned", "keyPaths": [str(vectors() / "cosign2.pub"), str(vectors() / "cosign.pub")],
           "signedIdentity": {"type": "matchRepository"}}  # fmt: skip
    assert (
        check(make_verifier(tmp_path, req), f"{COSIGN_REPO}:latest", "dir-img-cosign-valid-2") == ""
    )
