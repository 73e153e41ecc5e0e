"""GPG signatures from the registry's X-Registry-Supports-Signatures API: a fake registry
on 127.0.0.1 serves the shared containers/image vectors through it, podunit's real
RegistrySource asks, and the verifier judges (order: lookaside first, then the registry)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from podunit.images.http import HttpClient
from podunit.images.reference import parse_reference
from podunit.images.registry import RegistryClient, RegistrySource
from podunit.images.signatures import MAX_SIGNATURE_LIST_SIZE, TrustError
from podunit.trust.extension import parse_signature_list
from podunit.trust.lookaside import signature_url
from podunit.trust.payload import MAX_SIGNATURES
from podunit.trust.verifier import PolicyVerifier

from .test_trust_fakes import SIMPLE_SIGNING_PREFIX, DirImage, load_dir_image, vectors

REPOSITORY = "testing/manifest"  # what the vectors' signatures name, under docker.io


@dataclass
class SignatureRegistry:
    """Answers /v2/ (advertising the extension or not) and the signature lists; records
    every request path."""

    advertise: bool = True
    lists: dict[str, bytes] = field(default_factory=dict)  # request path -> body
    status: int = 200  # of the signature list, when it exists
    requests: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def publish(self, digest: str, entries: list[Any]) -> None:
        body = json.dumps({"signatures": entries}).encode()
        self.lists[f"/extensions/v2/{REPOSITORY}/signatures/{digest}"] = body

    def handler(self) -> type[BaseHTTPRequestHandler]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                registry.requests.append(self.path)
                if self.path == "/v2/":
                    extension = {"X-Registry-Supports-Signatures": "1"}
                    return self.reply(200, b"{}", extension if registry.advertise else {})
                body = registry.lists.get(self.path)
                if body is None:
                    return self.reply(404, b"", {})
                return self.reply(registry.status, body, {"Content-Type": "application/json"})

        return Handler


@pytest.fixture
def registry() -> Iterator[SignatureRegistry]:
    fake = SignatureRegistry()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


def source_for(registry: SignatureRegistry) -> RegistrySource:
    http = HttpClient(insecure=frozenset({registry.host}), cert_dirs=(), backoff=0.01,
                      sleep=lambda _s: None)  # fmt: skip
    ref = parse_reference(f"{registry.host}/{REPOSITORY}:latest")
    client = RegistryClient(registry.host, http, lookup_credentials=False)
    return RegistrySource(ref, client)


def verifier_for(tmp_path: Path, registry: SignatureRegistry, key: str) -> PolicyVerifier:
    """signedBy `key` for the fake registry; the vectors name docker.io/testing/manifest,
    so the policy maps this registry's name onto that one (as for a mirror)."""
    requirement = {
        "type": "signedBy", "keyType": "GPGKeys", "keyPath": str(vectors() / key),
        "signedIdentity": {"type": "remapIdentity", "prefix": registry.host,
                           "signedPrefix": "docker.io"},
    }  # fmt: skip
    policy = {"default": [{"type": "reject"}], "transports": {"docker": {"": [requirement]}}}
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    regd = tmp_path / "registries.d"
    regd.mkdir(exist_ok=True)
    (regd / "lookaside.yaml").write_text(f"default-docker:\n  lookaside: {lookaside(tmp_path)}\n")
    return PolicyVerifier(tmp_path / "policy.json", registries_d=[regd])


def lookaside(tmp_path: Path) -> str:
    return f"file://{tmp_path}/sigstore"


def valid_image() -> DirImage:
    image = load_dir_image("dir-img-valid")
    assert image.manifest is not None and image.signatures
    return image


def openpgp(signature: bytes) -> bytes:
    """The bare OpenPGP message (dir: copies may prefix it with the format's magic)."""
    return signature.removeprefix(SIMPLE_SIGNING_PREFIX)


def entry(digest: str, signature: bytes, **fields: Any) -> dict[str, Any]:
    doc = {"version": 2, "type": "atomic", "name": f"{digest}@{'0' * 32}",
           "content": base64.b64encode(openpgp(signature)).decode()}  # fmt: skip
    return {**doc, **fields}


def verify(tmp_path: Path, registry: SignatureRegistry, image: DirImage, key: str) -> str:
    """ "" when accepted, else the refusal message."""
    source = source_for(registry)
    try:
        verifier_for(tmp_path, registry, key)(
            source.ref, image.digest, image.manifest or b"", source
        )
    except TrustError as exc:
        return str(exc)
    finally:
        source.client.http.close()
    return ""


def list_path(image: DirImage) -> str:
    return f"/extensions/v2/{REPOSITORY}/signatures/{image.digest}"


# ---- through the registry ------------------------------------------------------------


def test_signature_from_the_extension_is_accepted(
    tmp_path: Path, registry: SignatureRegistry
) -> None:
    image = valid_image()
    registry.publish(image.digest, [entry(image.digest, image.signatures[0])])
    assert verify(tmp_path, registry, image, "public-key.gpg") == ""
    assert registry.requests == ["/v2/", list_path(image)]


def test_lookaside_is_read_first_and_the_registry_not_asked(
    tmp_path: Path, registry: SignatureRegistry
) -> None:
    image = valid_image()
    ref = parse_reference(f"{registry.host}/{REPOSITORY}:latest")
    path = Path(signature_url(lookaside(tmp_path), ref, image.digest, 1).removeprefix("file://"))
    path.parent.mkdir(parents=True)
    path.write_bytes(openpgp(image.signatures[0]))
    registry.publish(image.digest, [entry(image.digest, image.signatures[0])])
    assert verify(tmp_path, registry, image, "public-key.gpg") == ""
    assert registry.requests == []


def test_registry_without_the_extension_is_not_asked_for_signatures(
    tmp_path: Path, registry: SignatureRegistry
) -> None:
    image = valid_image()
    registry.advertise = False
    registry.publish(image.digest, [entry(image.digest, image.signatures[0])])
    message = verify(tmp_path, registry, image, "public-key.gpg")
    assert "(signedBy, keys" in message
    assert f"no GPG signature at {lookaside(tmp_path)}/{REPOSITORY}@sha256=" in message
    assert f"no signature extension at {registry.host}" in message
    assert registry.requests == ["/v2/"]


def test_extension_signature_by_an_untrusted_key_is_refused(
    tmp_path: Path, registry: SignatureRegistry
) -> None:
    image = valid_image()
    registry.publish(image.digest, [entry(image.digest, image.signatures[0])])
    message = verify(tmp_path, registry, image, "public-key-2.gpg")
    assert (
        f"{registry.host}/extensions/v2/{REPOSITORY}/signatures/{image.digest} entry 0" in message
    )
    assert "which is not one of the trusted keys" in message


def test_unusable_entries_are_skipped_and_a_good_one_still_counts(
    tmp_path: Path, registry: SignatureRegistry
) -> None:
    image = valid_image()
    good = entry(image.digest, image.signatures[0])
    bad: list[Any] = [
        entry(image.digest, image.signatures[0], type="cosign"),
        entry(image.digest, image.signatures[0], version=1),
        entry(image.digest, image.signatures[0], content="not base64!"),
        entry(image.digest, image.signatures[0], name=f"sha256:{'1' * 64}@x"),
        "not an object",
    ]
    registry.publish(image.digest, [*bad, good])
    assert verify(tmp_path, registry, image, "public-key.gpg") == ""
    registry.publish(image.digest, bad)
    message = verify(tmp_path, registry, image, "public-key.gpg")
    for why in ("entry 0 (sha256:", "is not a version 2 atomic signature",
                "content is not base64", "listed for another manifest",
                "entry 4 skipped: not an object"):  # fmt: skip
        assert why in message, message


@pytest.mark.parametrize(
    ("body", "status", "refusal"),
    [
        (b"x" * (MAX_SIGNATURE_LIST_SIZE + 1), 200, f"larger than {MAX_SIGNATURE_LIST_SIZE} bytes"),
        (b"[]", 200, 'no "signatures" array'),
        (b'{"signatures": [], "signatures": []}', 200, 'duplicate key "signatures"'),
        (b"{}", 500, "HTTP 500"),
    ],
    ids=["oversized", "not-a-list", "ambiguous", "server-error"],
)
def test_unusable_lists_are_refused_with_the_reason(
    tmp_path: Path, registry: SignatureRegistry, body: bytes, status: int, refusal: str
) -> None:
    image = valid_image()
    registry.lists[list_path(image)] = body
    registry.status = status
    message = verify(tmp_path, registry, image, "public-key.gpg")
    assert "(signedBy, keys" in message and refusal in message, message


# ---- the list format alone -------------------------------------------------------------


def test_too_many_entries_are_refused_as_a_whole() -> None:
    image = valid_image()
    entries = [entry(image.digest, image.signatures[0])] * (MAX_SIGNATURES + 1)
    with pytest.raises(ValueError, match=f"more than {MAX_SIGNATURES} signatures"):
        parse_signature_list(json.dumps({"signatures": entries}).encode(), image.digest)
