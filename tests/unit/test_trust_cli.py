# ruff: noqa: E501  (expected messages read best unwrapped)
"""`podunit trust|key|sign` against a temporary policy, and cosign signing end to end
through an in-memory registry (FakeSource)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from podunit.cli import main
from podunit.images.reference import parse_reference
from podunit.images.signatures import TrustError
from podunit.trust import signing
from podunit.trust.verifier import PolicyVerifier

from .test_trust_fakes import FakeSource, digest_of, vectors


@pytest.fixture
def policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "etc" / "policy.json"
    monkeypatch.setenv("PODUNIT_POLICY", str(path))
    return path


def podunit(*args: str) -> int:
    return main(list(args))


def test_set_show_add_key_remove(policy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert podunit("trust", "set", "--type", "accept", "docker.io/library/busybox") == 0
    doc = json.loads(policy.read_text())
    assert doc["default"] == [{"type": "reject"}]  # started from the built-in default
    assert doc["transports"]["oci"] == {"": [{"type": "insecureAcceptAnything"}]}
    assert doc["transports"]["docker"]["docker.io/library/busybox"] == [
        {"type": "insecureAcceptAnything"}
    ]
    key = str(vectors() / "public-key.gpg")
    assert podunit("trust", "add-key", "docker.io/library/busybox", key) == 0
    reqs = json.loads(policy.read_text())["transports"]["docker"]["docker.io/library/busybox"]
    assert reqs == [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": key}]
    cosign_key = str(vectors() / "cosign.pub")
    assert podunit("trust", "add-key", "docker.io/library/busybox", cosign_key) == 0
    assert (
        podunit("trust", "add-key", "docker.io/library/busybox", str(vectors() / "pubring.gpg"))
        == 0
    )
    reqs = json.loads(policy.read_text())["transports"]["docker"]["docker.io/library/busybox"]
    assert [r["type"] for r in reqs] == ["signedBy", "sigstoreSigned"]
    assert reqs[0]["keyPaths"] == [key, str(vectors() / "pubring.gpg")]
    capsys.readouterr()
    assert podunit("trust", "show") == 0
    out = capsys.readouterr().out
    assert f"policy: {policy}" in out
    assert "docker.io/library/busybox" in out and "sigstoreSigned" in out
    assert podunit("trust", "show", "--json") == 0
    assert json.loads(capsys.readouterr().out) == json.loads(policy.read_text())
    assert podunit("trust", "remove", "docker.io/library/busybox") == 0
    assert "docker" not in json.loads(policy.read_text())["transports"]


def test_set_validates_before_writing(
    policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert podunit("trust", "set", "--type", "reject", "default") == 0
    before = policy.read_text()
    assert podunit("trust", "set", "--type", "accept", "busybox") == 1
    assert 'did you mean "docker.io/library/busybox"' in capsys.readouterr().err
    bad_key = tmp_path / "not-a-key.gpg"
    bad_key.write_text("hello")
    assert podunit("trust", "set", "--type", "signedBy", "-f", str(bad_key), "quay.io") == 1
    assert "not-a-key.gpg: not an OpenPGP key" in capsys.readouterr().err
    assert (
        podunit(
            "trust",
            "set",
            "--type",
            "sigstoreSigned",
            "-f",
            str(vectors() / "some-rsa-key.pub"),
            "quay.io",
        )
        == 1
    )
    assert "keys are not supported" in capsys.readouterr().err
    assert podunit("trust", "set", "--type", "signedBy", "quay.io") == 1
    assert "needs at least one --pubkeysfile" in capsys.readouterr().err
    assert policy.read_text() == before
    assert not [p for p in policy.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_import_containers_policy(policy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert podunit("trust", "import", str(vectors() / "policy.json")) == 0
    err = capsys.readouterr().err
    assert "signedBaseLayer is not implemented" in err
    assert "cannot read key /keys/employee-gpg-keyring" in err
    assert json.loads(policy.read_text()) == json.loads((vectors() / "policy.json").read_text())


def test_import_refuses_invalid(
    policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"default": [{"type": "signedBy", "keyType": "GPGKeys"}]}))
    assert podunit("trust", "import", str(bad)) == 1
    assert "default[0]: needs exactly one of keyPath/keyPaths/keyData" in capsys.readouterr().err
    assert not policy.exists()


# ---- cosign keys and signing -----------------------------------------------------------


def test_key_generate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from podunit.trust.cosign import load_private_key, load_public_key

    monkeypatch.delenv("PODUNIT_KEY_PASSWORD", raising=False)
    assert podunit("key", "generate", "--output", str(tmp_path / "a")) == 1  # no password
    monkeypatch.setenv("PODUNIT_KEY_PASSWORD", "secret")
    assert podunit("key", "generate", "--output", str(tmp_path / "a")) == 0
    assert (tmp_path / "a.key").stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "a.key").read_bytes()
    load_public_key((tmp_path / "a.pub").read_bytes(), "a.pub")
    load_private_key(tmp_path / "a.key", b"secret")
    with pytest.raises(TrustError, match="wrong password"):
        load_private_key(tmp_path / "a.key", b"nope")
    assert podunit("key", "generate", "--output", str(tmp_path / "a")) == 1  # no overwrite
    assert podunit("key", "generate", "--no-password", "-o", str(tmp_path / "b")) == 0
    assert b"BEGIN PRIVATE KEY" in (tmp_path / "b.key").read_bytes()


REF = "registry.example.com/team/app:1.0"
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {}, "layers": []}).encode()  # fmt: skip


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> FakeSource:
    source = FakeSource(referrer_lists={})
    ref = parse_reference(REF)
    source.put_manifest(ref, "1.0", MANIFEST, "application/vnd.oci.image.manifest.v1+json")

    @contextlib.contextmanager
    def fake_registry(_ref: object) -> Iterator[FakeSource]:
        yield source

    monkeypatch.setattr(signing, "registry", fake_registry)
    return source


def cosign_verifier(tmp_path: Path, pub: Path) -> PolicyVerifier:
    path = tmp_path / "verify-policy.json"
    req = {"type": "sigstoreSigned", "keyPath": str(pub)}
    path.write_text(
        json.dumps(
            {
                "default": [{"type": "reject"}],
                "transports": {"docker": {"registry.example.com/team": [req]}},
            }
        )
    )
    return PolicyVerifier(path, registries_d=[])


def test_sign_cosign_and_verify(
    tmp_path: Path, registry: FakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PODUNIT_KEY_PASSWORD", "pw")
    assert podunit("key", "generate", "-o", str(tmp_path / "k")) == 0
    assert podunit("sign", "--key", str(tmp_path / "k.key"), REF) == 0
    assert podunit("sign", "--key", str(tmp_path / "k.key"), REF) == 0  # same signature: kept once
    ref = parse_reference(REF)
    tag = "sha256-" + digest_of(MANIFEST).split(":")[1] + ".sig"
    sig_manifest = json.loads(registry.manifests[(ref.path, tag)][0])
    assert len(sig_manifest["layers"]) == 1
    assert (
        sig_manifest["layers"][0]["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    )
    payload = registry.blobs[(ref.path, sig_manifest["layers"][0]["digest"])]
    assert json.loads(payload)["critical"]["identity"] == {"docker-reference": REF}
    assert json.loads(payload)["optional"] is None
    verify = cosign_verifier(tmp_path, tmp_path / "k.pub")
    registry.calls.clear()
    verify(ref, digest_of(MANIFEST), MANIFEST, registry)
    assert registry.calls[0].startswith("referrers ")  # the referrers API is asked first
    # another key's signature is added next to the first; both verify independently
    assert podunit("key", "generate", "--no-password", "-o", str(tmp_path / "other")) == 0
    assert podunit("sign", "--key", str(tmp_path / "other.key"), REF) == 0
    assert len(json.loads(registry.manifests[(ref.path, tag)][0])["layers"]) == 2
    cosign_verifier(tmp_path, tmp_path / "other.pub")(ref, digest_of(MANIFEST), MANIFEST, registry)


def test_cosign_refusals(
    tmp_path: Path, registry: FakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert podunit("key", "generate", "--no-password", "-o", str(tmp_path / "k")) == 0
    assert podunit("key", "generate", "--no-password", "-o", str(tmp_path / "wrong")) == 0
    assert podunit("sign", "--key", str(tmp_path / "k.key"), REF) == 0
    ref, digest = parse_reference(REF), digest_of(MANIFEST)
    with pytest.raises(TrustError, match="not signed by any of the trusted keys"):
        cosign_verifier(tmp_path, tmp_path / "wrong.pub")(ref, digest, MANIFEST, registry)
    other_tag = parse_reference("registry.example.com/team/app:2.0")
    with pytest.raises(
        TrustError,
        match="the signature is for registry.example.com/team/app:1.0, which does not match registry.example.com/team/app:2.0",
    ):
        cosign_verifier(tmp_path, tmp_path / "k.pub")(other_tag, digest, MANIFEST, registry)
    # tampered payload: same signature, payload naming another digest
    tag = "sha256-" + digest.split(":")[1] + ".sig"
    sig_manifest = json.loads(registry.manifests[(ref.path, tag)][0])
    layer = sig_manifest["layers"][0]
    payload = registry.blobs[(ref.path, layer["digest"])].replace(b"team/app:1.0", b"team/app:2.0")
    layer["digest"], layer["size"] = registry.put_blob(ref, payload), len(payload)
    registry.put_manifest(ref, tag, json.dumps(sig_manifest).encode(), "")
    with pytest.raises(
        TrustError, match="not signed by any of the trusted keys \\(or the payload was changed\\)"
    ):
        cosign_verifier(tmp_path, tmp_path / "k.pub")(other_tag, digest, MANIFEST, registry)


def test_cosign_referrers_preferred(tmp_path: Path, registry: FakeSource) -> None:
    """A signature published as an OCI 1.1 referrer is found without the .sig tag."""
    assert podunit("key", "generate", "--no-password", "-o", str(tmp_path / "k")) == 0
    assert podunit("sign", "--key", str(tmp_path / "k.key"), REF) == 0
    ref, digest = parse_reference(REF), digest_of(MANIFEST)
    tag = "sha256-" + digest.split(":")[1] + ".sig"
    data, media_type = registry.manifests.pop((ref.path, tag))
    assert registry.referrer_lists is not None
    registry.referrer_lists[(ref.path, digest)] = [
        {"mediaType": media_type, "digest": digest_of(data), "size": len(data),
         "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json"}]  # fmt: skip
    registry.calls.clear()
    cosign_verifier(tmp_path, tmp_path / "k.pub")(ref, digest, MANIFEST, registry)
    assert f"get_manifest {tag}" not in registry.calls


def test_sign_needs_identity_for_local_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert podunit("sign", "--gpg", "ABCD", "--lookaside", str(tmp_path), f"oci:{tmp_path}") == 1
    assert "give --identity NAME:TAG" in capsys.readouterr().err
