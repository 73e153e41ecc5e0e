# ruff: noqa: E501  (tables read best unwrapped)
"""Policy parsing, validation messages, scope selection and signedIdentity matching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podunit.images.reference import parse_reference
from podunit.images.signatures import TrustError
from podunit.trust.identity import Identity, identity_mismatch, image_name, parse_docker_name
from podunit.trust.policy import PolicyError, load_policy, parse_policy, scope_candidates
from podunit.trust.verifier import PolicyVerifier

from .test_trust_fakes import vectors

ACCEPT = [{"type": "insecureAcceptAnything"}]
REJECT = [{"type": "reject"}]


def test_scope_candidates_docker() -> None:
    ref = parse_reference("docker://a.b.example.com:5000/ns1/ns2/repo:tag")
    assert scope_candidates(ref) == [
        "a.b.example.com:5000/ns1/ns2/repo:tag", "a.b.example.com:5000/ns1/ns2/repo",
        "a.b.example.com:5000/ns1/ns2", "a.b.example.com:5000/ns1", "a.b.example.com:5000",
        "*.b.example.com", "*.example.com", "*.com", "",
    ]  # fmt: skip


def test_scope_candidates_digest_and_paths(tmp_path: Path) -> None:
    digest = "sha256:" + "a" * 64
    assert scope_candidates(parse_reference(f"busybox@{digest}"))[:2] == [
        f"docker.io/library/busybox@{digest}",
        "docker.io/library/busybox",
    ]
    ref = parse_reference(f"oci:{tmp_path}/img:v1")
    real = str(tmp_path.resolve())
    assert scope_candidates(ref)[:3] == [f"{real}/img:v1", f"{real}/img", real]
    assert scope_candidates(ref)[-1] == ""
    assert "/" not in scope_candidates(ref)


POLICY = {
    "default": REJECT,
    "transports": {
        "docker": {
            "": [{"type": "reject"}],
            "example.com": ACCEPT,
            "example.com/secure": [{"type": "reject"}],
            "example.com/secure/open:v1": ACCEPT,
            "*.example.org": ACCEPT,
            "*.deep.example.org": [{"type": "reject"}],
        },
        "oci": {"/srv/images": ACCEPT},
    },
}
EVALUATION = [
    ("docker://example.com/app:1", "example.com"),
    ("docker://example.com/secure/app:1", "example.com/secure"),
    ("docker://example.com/secure/open:v1", "example.com/secure/open:v1"),
    ("docker://example.com/secure/open:v2", "example.com/secure"),
    ("docker://example.com:5000/app", ""),  # host:port is another scope
    ("docker://registry.example.org/app", "*.example.org"),
    ("docker://x.deep.example.org/app", "*.deep.example.org"),
    ("docker://example.org/app", ""),  # *.example.org does not cover example.org itself
    ("busybox", ""),
    ("oci:/srv/images/app:1", "/srv/images"),
    ("oci:/srv/imagesX", "default"),
    ("oci-archive:/srv/images/a.tar", "default"),
]


@pytest.mark.parametrize(("ref", "scope"), EVALUATION)
def test_most_specific_scope_wins(ref: str, scope: str) -> None:
    policy = parse_policy(POLICY, "test")
    assert policy.requirements_for(parse_reference(ref))[0] == scope


INVALID = [
    ({}, "default: missing"),
    ({"default": []}, "default: must be a non-empty list of requirements"),
    ({"default": ACCEPT, "extra": 1}, "extra: unknown field"),
    ({"default": [{"type": "acceptAll"}]}, "default[0].type: unknown requirement type 'acceptAll'"),
    (
        {"default": [{"type": "reject", "keyPath": "/k"}]},
        "default[0].keyPath: unknown field for reject",
    ),
    (
        {
            "default": REJECT,
            "transports": {"docker": {"x.io": [{"type": "signedBy", "keyType": "GPGKeys"}]}},
        },
        'transports.docker["x.io"][0]: needs exactly one of keyPath/keyPaths/keyData',
    ),
    (
        {
            "default": REJECT,
            "transports": {
                "docker": {"x.io": [{"type": "signedBy", "keyType": "PGP", "keyPath": "/k"}]}
            },
        },
        'transports.docker["x.io"][0].keyType: must be one of GPGKeys',
    ),
    (
        {
            "default": REJECT,
            "transports": {
                "docker": {"x.io": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "k.gpg"}]}
            },
        },
        "transports.docker[\"x.io\"][0].keyPath: 'k.gpg' must be an absolute path",
    ),
    (
        {
            "default": REJECT,
            "transports": {"docker": {"x.io": [{"type": "sigstoreSigned", "keyData": "!!"}]}},
        },
        'transports.docker["x.io"][0].keyData: is not valid base64',
    ),
    (
        {
            "default": REJECT,
            "transports": {
                "docker": {"x.io": [{"type": "sigstoreSigned", "keyPath": "/k", "keyData": "AA=="}]}
            },
        },
        "needs exactly one of keyPath/keyPaths/keyData/keyDatas (has keyPath, keyData)",
    ),
    (
        {
            "default": REJECT,
            "transports": {
                "docker": {
                    "x.io": [
                        {
                            "type": "sigstoreSigned",
                            "keyPath": "/k",
                            "signedIdentity": {"type": "matchAll"},
                        }
                    ]
                }
            },
        },
        'transports.docker["x.io"][0].signedIdentity: type must be one of',
    ),
    (
        {
            "default": REJECT,
            "transports": {
                "docker": {
                    "x.io": [
                        {
                            "type": "sigstoreSigned",
                            "keyPath": "/k",
                            "signedIdentity": {
                                "type": "exactReference",
                                "dockerReference": "x.io/app",
                            },
                        }
                    ]
                }
            },
        },
        "signedIdentity.dockerReference: 'x.io/app' must be a fully qualified reference with a tag or digest",
    ),
    (
        {
            "default": REJECT,
            "transports": {
                "docker": {
                    "x.io": [
                        {
                            "type": "sigstoreSigned",
                            "keyPath": "/k",
                            "signedIdentity": {"type": "exactRepository"},
                        }
                    ]
                }
            },
        },
        "signedIdentity.dockerRepository: missing (required by exactRepository)",
    ),
    (
        {"default": REJECT, "transports": {"oci": {"relative/dir": ACCEPT}}},
        'transports.oci["relative/dir"]: "relative/dir" must be an absolute path',
    ),
    (
        {"default": REJECT, "transports": {"oci": {"/": ACCEPT}}},
        "the root directory is not a scope",
    ),
]


@pytest.mark.parametrize(("doc", "message"), INVALID)
def test_validation_names_json_path(doc: object, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(doc, "/etc/podunit/policy.json")
    assert message in str(info.value)
    assert str(info.value).startswith("/etc/podunit/policy.json: ")


def test_validation_reports_every_problem() -> None:
    doc = {"default": [{"type": "nope"}], "transports": {"oci": {"rel": ACCEPT}}}
    with pytest.raises(PolicyError) as info:
        parse_policy(doc, "p")
    assert len(info.value.problems) == 2


def test_strict_json_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text('{"default": [{"type": "reject"}], "default": []}')
    with pytest.raises(PolicyError, match='duplicate key "default"'):
        load_policy(path)


def test_containers_example_policy_loads_with_warnings() -> None:
    policy = load_policy(vectors() / "policy.json")
    warnings = "\n".join(policy.warnings)
    assert "transports.dir: podunit does not pull from dir:" in warnings
    assert "signedBaseLayer is not implemented" in warnings
    assert "keyType X509Certificates is not implemented" in warnings
    assert '"bogus/key-data-example" is not fully qualified' in warnings
    ref = parse_reference("docker://registry.access.redhat.com/rhel7/rhel:latest")
    assert policy.requirements_for(ref)[0] == "registry.access.redhat.com"
    assert (
        policy.requirements_for(parse_reference("docker://foo.redhat.com/x"))[0] == "*.redhat.com"
    )
    assert (
        policy.requirements_for(parse_reference("docker://foo.access.redhat.com/x"))[0]
        == "*.access.redhat.com"
    )


def verifier_for(tmp_path: Path, doc: object) -> PolicyVerifier:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(doc))
    return PolicyVerifier(path, registries_d=[])


MANIFEST = b'{"schemaVersion": 2}'
DIGEST = "sha256:" + __import__("hashlib").sha256(MANIFEST).hexdigest()


def refusal(verifier: PolicyVerifier, ref: str) -> str:
    try:
        verifier(parse_reference(ref), DIGEST, MANIFEST, None)
    except TrustError as exc:
        return str(exc)
    return ""


def test_builtin_default_policy(tmp_path: Path) -> None:
    verifier = PolicyVerifier(tmp_path / "absent.json")
    assert refusal(verifier, f"oci:{tmp_path}/img") == ""
    assert refusal(verifier, f"oci-archive:{tmp_path}/img.tar") == ""
    message = refusal(verifier, "busybox")
    assert "built-in trust policy" in message
    assert message.endswith("podunit trust set --type accept docker.io/library/busybox")


def test_explicit_policy_applies_to_local_transports(tmp_path: Path) -> None:
    verifier = verifier_for(tmp_path, {"default": REJECT})
    message = refusal(verifier, f"oci:{tmp_path}/img")
    assert "no scope matched, so the default" in message and "default[0] (reject" in message
    assert f"podunit trust set --type accept --transport oci {tmp_path}/img" in message


def test_signature_requirement_on_local_image(tmp_path: Path) -> None:
    req = {"type": "sigstoreSigned", "keyPath": str(vectors() / "cosign.pub")}
    verifier = verifier_for(tmp_path, {"default": [req]})
    assert "oci: images carry no signatures" in refusal(verifier, f"oci:{tmp_path}/img")


def test_keyless_refused_as_not_supported(tmp_path: Path) -> None:
    req = {
        "type": "sigstoreSigned",
        "fulcio": {"caPath": "/ca", "oidcIssuer": "https://o", "subjectEmail": "a@b"},
        "rekorPublicKeyPath": "/r",
    }
    verifier = verifier_for(
        tmp_path, {"default": ACCEPT, "transports": {"docker": {"quay.io": [req]}}}
    )
    message = refusal(verifier, "quay.io/x/y:1")
    assert "keyless sigstore verification (Fulcio certificates, Rekor) is not supported" in message
    assert refusal(verifier, "docker.io/x/y:1") == ""


def test_all_requirements_must_hold(tmp_path: Path) -> None:
    verifier = verifier_for(tmp_path, {"default": [ACCEPT[0], REJECT[0]]})
    assert "default[1] (reject" in refusal(verifier, "busybox")


def test_manifest_must_match_digest(tmp_path: Path) -> None:
    verifier = verifier_for(tmp_path, {"default": ACCEPT})
    with pytest.raises(TrustError, match="does not match its digest"):
        verifier(parse_reference("busybox"), "sha256:" + "0" * 64, MANIFEST, None)


def test_broken_policy_fails_closed_on_use_only(tmp_path: Path) -> None:
    (tmp_path / "policy.json").write_text("{")
    verifier = PolicyVerifier(tmp_path / "policy.json")  # constructing does not read it
    with pytest.raises(PolicyError, match="not valid JSON"):
        verifier(parse_reference(f"oci:{tmp_path}"), DIGEST, MANIFEST, None)


# ---- signedIdentity ---------------------------------------------------------------------

D1 = "sha256:" + "1" * 64
IDENTITY = [
    # (identity, pulled reference, signed docker-reference, matches)
    (Identity("matchExact"), "example.com/app:1", "example.com/app:1", True),
    (Identity("matchExact"), "example.com/app:1", "example.com/app", False),
    (Identity("matchExact"), f"example.com/app@{D1}", f"example.com/app@{D1}", True),
    (Identity("matchExact"), f"example.com/app@{D1}", "example.com/app:1", False),
    (Identity(), "example.com/app:1", "example.com/app:1", True),
    (Identity(), "example.com/app:1", "example.com/app:2", False),
    (Identity(), "example.com/app:1", "example.com/app", False),
    (Identity(), f"example.com/app@{D1}", "example.com/app:anything", True),
    (Identity(), f"example.com/app@{D1}", "example.com/other:1", False),
    (Identity(), "busybox", "busybox:latest", True),
    (Identity(), "busybox", "docker.io/library/busybox:latest", True),
    (Identity("matchRepository"), "example.com/app:1", "example.com/app:2", True),
    (Identity("matchRepository"), "example.com/app:1", "example.com/app2:1", False),
    (
        Identity("exactReference", "example.com/signed:v1"),
        "mirror.io/x:9",
        "example.com/signed:v1",
        True,
    ),
    (
        Identity("exactReference", "example.com/signed:v1"),
        "mirror.io/x:9",
        "example.com/signed:v2",
        False,
    ),
    (
        Identity("exactRepository", "example.com/signed"),
        "mirror.io/x:9",
        "example.com/signed:v2",
        True,
    ),
    (
        Identity("exactRepository", "example.com/signed"),
        "mirror.io/x:9",
        "example.com/other:v2",
        False,
    ),
    (
        Identity("remapIdentity", prefix="mirror:5000/vendor", signed_prefix="vendor.example.com"),
        "mirror:5000/vendor/app:1",
        "vendor.example.com/app:1",
        True,
    ),
    (
        Identity("remapIdentity", prefix="mirror:5000/vendor", signed_prefix="vendor.example.com"),
        "mirror:5000/vendor/app:1",
        "vendor.example.com/app:2",
        False,
    ),
    (
        Identity("remapIdentity", prefix="mirror:5000/vendor", signed_prefix="vendor.example.com"),
        "mirror:5000/vendorx/app:1",
        "vendor.example.comx/app:1",
        False,
    ),
    (
        Identity("remapIdentity", prefix="mirror:5000/vendor", signed_prefix="vendor.example.com"),
        "mirror:5000/other/app:1",
        "mirror:5000/other/app:1",
        True,
    ),
    (
        Identity("remapIdentity", prefix="mirror:5000", signed_prefix="docker.io"),
        "mirror:5000/library/busybox:1",
        "busybox:1",
        True,
    ),
]


@pytest.mark.parametrize(("identity", "pulled", "signed", "matches"), IDENTITY)
def test_signed_identity(identity: Identity, pulled: str, signed: str, matches: bool) -> None:
    why = identity_mismatch(
        identity, image_name(parse_reference(pulled)), parse_docker_name(signed)
    )
    assert (why == "") == matches, why


def test_identity_keeps_tagless_names_apart() -> None:
    assert parse_docker_name("testing/manifest").tag is None
    assert parse_docker_name("testing/manifest:latest").tag == "latest"
    assert parse_docker_name("localhost:5000/app").tag is None
    assert str(parse_docker_name("busybox")) == "docker.io/library/busybox"
