"""Registry client against a fake registry (stdlib http.server on 127.0.0.1):
auth challenges and tokens, redirects, retries, Range resume, integrity."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from podunit.errors import ImageError, IntegrityError  # noqa: E402
from podunit.images.auth import AuthError  # noqa: E402
from podunit.images.http import HttpClient  # noqa: E402
from podunit.images.reference import parse_reference  # noqa: E402
from podunit.images.registries_conf import parse_registries_conf  # noqa: E402
from podunit.images.registry import RegistryClient, RegistrySource  # noqa: E402
from podunit.images.signatures import TrustError  # noqa: E402
from podunit.images.store import ImageStore  # noqa: E402
from tests.fixtures.images import (  # noqa: E402
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    TarBuilder,
    host_arch,
    make_layer,
    sha256,
)

Handler = Callable[[BaseHTTPRequestHandler], bool]  # True: handled


@dataclass
class FakeRegistry:
    """Serves manifests and blobs of one repository; hooks can misbehave."""

    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    hooks: list[Handler] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    port: int = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_image(self, files: dict[str, bytes], tag: str = "v1", **manifest_extra: Any) -> str:
        """A one-layer image; returns the manifest digest."""
        tb = TarBuilder()
        for name, data in files.items():
            tb.file(name, data)
        layer = make_layer(tb.bytes())
        config = json.dumps(
            {
                "architecture": host_arch(),
                "os": "linux",
                "config": {"Cmd": ["x"]},
                "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
            }
        ).encode()
        self.blobs[sha256(config)] = config
        self.blobs[layer.digest] = layer.blob
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [
                {"mediaType": layer.media_type, "digest": layer.digest, "size": len(layer.blob)}
            ],
            **manifest_extra,
        }
        data = json.dumps(manifest).encode()
        self.manifests[tag] = self.manifests[sha256(data)] = (data, OCI_MANIFEST)
        return sha256(data)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def reply(
                self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(length) if length else b""
                fake.requests.append((self.command, self.path, dict(self.headers)))
                for hook in fake.hooks:
                    if hook(self):
                        return
                parts = self.path.split("?")[0].split("/")
                if self.path == "/v2/":
                    return self.reply(200, b"{}")
                if len(parts) >= 5 and parts[-2] == "manifests":
                    if self.command == "PUT":
                        fake.uploads[parts[-1]] = self.body
                        return self.reply(201)
                    found = fake.manifests.get(parts[-1])
                    if found is None:
                        return self.reply(404)
                    return self.reply(200, found[0], {"Content-Type": found[1]})
                if len(parts) >= 5 and parts[-2] == "blobs":
                    data = fake.blobs.get(parts[-1])
                    if data is None:
                        return self.reply(404)
                    rng = self.headers.get("Range")
                    if rng:
                        start = int(rng.removeprefix("bytes=").rstrip("-"))
                        end = len(data) - 1
                        return self.reply(
                            206, data[start:], {"Content-Range": f"bytes {start}-{end}/{len(data)}"}
                        )
                    return self.reply(200, data)
                if self.path.endswith("/blobs/uploads/"):
                    return self.reply(202, b"", {"Location": "/v2/upload/1"})
                if self.path.startswith("/v2/upload/1"):
                    digest = self.path.split("digest=")[1].replace("%3A", ":")
                    fake.uploads[digest] = self.body
                    return self.reply(201)
                return self.reply(404)

            do_GET = do_HEAD = do_PUT = do_POST = handle_any  # noqa: N815

        return H


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    registry = FakeRegistry()
    server = ThreadingHTTPServer(("127.0.0.1", 0), registry.handler())
    registry.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield registry
    server.shutdown()
    server.server_close()


def http_for(*registries: FakeRegistry) -> HttpClient:
    return HttpClient(insecure=frozenset(r.host for r in registries), cert_dirs=(),
                      backoff=0.01, sleep=lambda s: None)  # fmt: skip


def source(fake: FakeRegistry, ref: str = "v1", creds: Any = None) -> RegistrySource:
    r = parse_reference(
        f"{fake.host}/repo:{ref}" if not ref.startswith("sha256:") else f"{fake.host}/repo@{ref}"
    )
    return RegistrySource(
        r, RegistryClient(fake.host, http_for(fake), creds, lookup_credentials=False)
    )


def pull(tmp_path: Path, src: RegistrySource, **kwargs: Any) -> Any:
    """Pull through the store with a given source (the transport is docker://)."""
    import contextlib

    import podunit.images.store as store_mod

    @contextlib.contextmanager
    def opener(ref: Any) -> Iterator[RegistrySource]:
        yield src

    store = ImageStore(tmp_path / "store", min_free=0, **kwargs)
    orig = store_mod._open_source
    store_mod._open_source = opener  # type: ignore[assignment]
    try:
        return store, store.pull(src.ref)
    finally:
        store_mod._open_source = orig


def test_pull_anonymous_and_by_digest(fake: FakeRegistry, tmp_path: Path) -> None:
    digest = fake.add_image({"hello": b"world"})
    store, image = pull(tmp_path, source(fake))
    assert image.manifest_digest == digest
    assert (image.layers[0] / "hello").read_bytes() == b"world"
    accept = next(h["Accept"] for m, p, h in fake.requests if "/manifests/" in p)
    for media_type in (OCI_INDEX, OCI_MANIFEST, "manifest.list.v2+json", "manifest.v2+json"):
        assert media_type in accept
    _, again = pull(tmp_path, source(fake, digest))
    assert again.layers == image.layers


def test_tampered_blob_and_wrong_size_leave_nothing(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.add_image({"a": b"1" * 1000})
    layer = next(d for d, b in fake.blobs.items() if b[:2] == b"\x1f\x8b")
    blob = bytearray(fake.blobs[layer])
    blob[-5] ^= 0xFF  # in the gzip trailer's CRC/ISIZE: inflates fine, hashes wrong
    fake.blobs[layer] = bytes(blob)
    with pytest.raises(IntegrityError, match="digest mismatch"):
        pull(tmp_path, source(fake))
    fake.blobs[layer] = fake.blobs[layer] + b"extra"
    with pytest.raises(IntegrityError, match="size mismatch|larger than its declared size"):
        pull(tmp_path, source(fake))
    assert not list((tmp_path / "store/layers/sha256").iterdir())
    assert not list((tmp_path / "store/images").iterdir())


def test_manifest_digest_mismatch_by_digest_ref(fake: FakeRegistry) -> None:
    digest = fake.add_image({"a": b""})
    data, ct = fake.manifests[digest]
    fake.manifests[digest] = (data + b" ", ct)
    with pytest.raises(IntegrityError, match="registry sent a manifest with digest"):
        source(fake, digest).read_index()


def test_media_type_confusion_is_refused(fake: FakeRegistry, tmp_path: Path) -> None:
    digest = fake.add_image({"a": b""})
    data, _ = fake.manifests["v1"]
    # Served as an index, but the document declares itself a manifest.
    fake.manifests["v1"] = (data, OCI_INDEX)
    with pytest.raises(IntegrityError, match="declares"):
        pull(tmp_path, source(fake))
    # An index whose child is served with another media type than it is referenced as.
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(data),
         "platform": {"os": "linux", "architecture": host_arch()}}]}).encode()  # fmt: skip
    fake.manifests["v2"] = (index, OCI_INDEX)
    fake.manifests[digest] = (data, OCI_INDEX)
    with pytest.raises(IntegrityError, match="served as"):
        pull(tmp_path, source(fake, "v2"))


def test_schema1_is_refused_clearly(fake: FakeRegistry, tmp_path: Path) -> None:
    doc = json.dumps({"schemaVersion": 1, "name": "repo", "fsLayers": []}).encode()
    fake.manifests["v1"] = (doc, "application/vnd.docker.distribution.manifest.v1+prettyjws")
    with pytest.raises(ImageError, match="schema 1 manifests are not supported"):
        pull(tmp_path, source(fake))


def test_basic_auth_from_challenge(fake: FakeRegistry, tmp_path: Path) -> None:
    from podunit.images.auth import Credentials

    fake.add_image({"a": b"b"})
    good = "Basic " + base64.b64encode(b"u:p").decode()

    def need_basic(h: BaseHTTPRequestHandler) -> bool:
        if h.headers.get("Authorization") == good:
            return False
        h.reply(401, b"", {"WWW-Authenticate": 'Basic realm="fake"'})  # type: ignore[attr-defined]
        return True

    fake.hooks.append(need_basic)
    with pytest.raises(AuthError, match="authentication required"):
        pull(tmp_path, source(fake))
    with pytest.raises(AuthError, match="credentials of u were rejected"):
        pull(tmp_path, source(fake, creds=Credentials("u", "wrong")))
    _, image = pull(tmp_path, source(fake, creds=Credentials("u", "p")))
    assert image.layers


def test_bearer_token_scope_refresh_and_insufficient_scope(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    fake.add_image({"a": b"b"})
    issued: list[list[str]] = []
    expired: set[str] = set()

    def bearer(h: BaseHTTPRequestHandler) -> bool:
        if h.path.startswith("/token"):
            from urllib.parse import parse_qs, urlsplit

            q = parse_qs(urlsplit(h.path).query)
            issued.append(sorted(q.get("scope", [])))
            token = f"t{len(issued)}"
            h.reply(200, json.dumps({"token": token, "expires_in": 300}).encode())  # type: ignore[attr-defined]
            return True
        auth = h.headers.get("Authorization", "")
        challenge = (
            f'Bearer realm="http://{fake.host}/token",service="fake",scope="repository:repo:pull"'
        )
        if not auth.startswith("Bearer ") or auth[7:] in expired:
            h.reply(401, b"", {"WWW-Authenticate": challenge + ',error="invalid_token"'})  # type: ignore[attr-defined]
            return True
        if "/blobs/" in h.path and auth == "Bearer t1":
            # The first token lacks a scope the registry wants for blobs.
            expired.add("t1")
            h.reply(
                401,
                b"",
                {
                    "WWW-Authenticate": challenge.replace(":pull", ":pull extra:scope")
                    + ',error="insufficient_scope"'
                },
            )  # type: ignore[attr-defined]
            return True
        return False

    fake.hooks.append(bearer)
    _, image = pull(tmp_path, source(fake))
    assert image.layers
    assert issued[0] == ["repository:repo:pull"]
    assert any("extra:scope" in scopes for scopes in issued[1:])
    # Tokens are sent to the registry, never to another origin; Basic is never sent.
    assert all(not h.get("Authorization", "").startswith("Basic") for _, _, h in fake.requests)


def test_retries_on_429_and_5xx_with_retry_after(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.add_image({"a": b"b"})
    failures = {"n": 0}
    slept: list[float] = []

    def flaky(h: BaseHTTPRequestHandler) -> bool:
        if "/manifests/" in h.path and failures["n"] < 2:
            failures["n"] += 1
            status, headers = (429, {"Retry-After": "3"}) if failures["n"] == 1 else (503, {})
            h.reply(status, b"busy", headers)  # type: ignore[attr-defined]
            return True
        return False

    fake.hooks.append(flaky)
    src = source(fake)
    src.client.http.sleep = slept.append
    pull(tmp_path, src)
    assert failures["n"] == 2 and slept[0] == 3.0 and len(slept) == 2


def test_redirect_to_other_host_drops_authorization(fake: FakeRegistry, tmp_path: Path) -> None:
    from podunit.images.auth import Credentials

    cdn = FakeRegistry()
    server = ThreadingHTTPServer(("127.0.0.1", 0), cdn.handler())
    cdn.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fake.add_image({"big": b"x" * 5000})
        cdn.blobs.update(fake.blobs)

        def redirect(h: BaseHTTPRequestHandler) -> bool:
            if not h.headers.get("Authorization"):
                h.reply(401, b"", {"WWW-Authenticate": 'Basic realm="r"'})  # type: ignore[attr-defined]
                return True
            if "/blobs/" in h.path:
                h.reply(
                    307,
                    b"",
                    {"Location": f"http://{cdn.host}/v2/repo/blobs/{h.path.rsplit('/', 1)[1]}"},
                )  # type: ignore[attr-defined]
                return True
            return False

        fake.hooks.append(redirect)
        src = source(fake, creds=Credentials("u", "p"))
        src.client.http = http_for(fake, cdn)
        pull(tmp_path, src)
        assert cdn.requests and all("Authorization" not in h for _, _, h in cdn.requests)
    finally:
        server.shutdown()
        server.server_close()


def test_interrupted_blob_resumes_with_range(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.add_image({"big": bytes(range(256)) * 4000})
    layer = next(d for d, b in fake.blobs.items() if b[:2] == b"\x1f\x8b")
    cut = {"done": False}

    def drop(h: BaseHTTPRequestHandler) -> bool:
        if h.path.endswith(layer) and not cut["done"]:
            cut["done"] = True
            data = fake.blobs[layer]
            h.send_response(200)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.close_connection = True
            return True
        return False

    fake.hooks.append(drop)
    _, image = pull(tmp_path, source(fake))
    assert (image.layers[0] / "big").stat().st_size == 256 * 4000
    ranges = [h.get("Range") for _, p, h in fake.requests if p.endswith(layer)]
    assert ranges[0] is None and ranges[1] == f"bytes={len(fake.blobs[layer]) // 2}-"


def test_verifier_runs_before_any_layer_is_fetched(fake: FakeRegistry, tmp_path: Path) -> None:
    digest = fake.add_image({"a": b"b"})
    seen: list[Any] = []

    def refuse(ref: Any, manifest_digest: str, data: bytes, sig: Any) -> None:
        seen.append((manifest_digest, hashlib.sha256(data).hexdigest(), sig))
        raise TrustError("policy says no")

    with pytest.raises(TrustError, match="policy says no"):
        pull(tmp_path, source(fake), verifier=refuse)
    assert seen[0][0] == digest and seen[0][1] == digest[7:]
    assert isinstance(seen[0][2], RegistrySource)
    layer = next(d for d, b in fake.blobs.items() if b[:2] == b"\x1f\x8b")
    assert not any(p.endswith(layer) for _, p, _ in fake.requests)


def test_signature_source_reads_and_writes(fake: FakeRegistry, tmp_path: Path) -> None:
    digest = fake.add_image({"a": b"b"})
    src = source(fake)
    ref = src.ref
    assert src.get_manifest(ref, digest) == (fake.manifests[digest][0], OCI_MANIFEST)
    assert src.get_manifest(ref, "nope") is None
    config = next(d for d, b in fake.blobs.items() if b.startswith(b"{"))
    assert src.get_blob(ref, config) == fake.blobs[config]
    assert src.referrers(ref, digest) is None  # the fake has no referrers API
    assert src.put_blob(ref, b"sig") == sha256(b"sig") and fake.uploads[sha256(b"sig")] == b"sig"
    assert src.put_manifest(ref, "sha256-x.sig", b"{}", OCI_MANIFEST) == sha256(b"{}")
    (tmp_path / "sig").write_bytes(b"s")
    assert src.get_url(f"file://{tmp_path}/sig") == b"s"
    assert src.get_url(f"file://{tmp_path}/none") is None
    assert src.get_url(f"http://{fake.host}/v2/none") is None


def test_disk_space_guard_stops_pull(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.add_image({"a": b"b"})
    src = source(fake)
    store = ImageStore(tmp_path / "store", min_free=1 << 62)
    import podunit.images.store as store_mod

    orig = store_mod._open_source
    store_mod._open_source = lambda ref: __import__("contextlib").nullcontext(src)  # type: ignore[assignment]
    try:
        with pytest.raises(ImageError, match="refusing to fill the disk"):
            store.pull(src.ref)
    finally:
        store_mod._open_source = orig
    assert not list((tmp_path / "store/layers/sha256").iterdir())


# ---- mirrors ----------------------------------------------------------------------------------


@pytest.fixture
def mirror() -> Iterator[FakeRegistry]:
    registry = FakeRegistry()
    server = ThreadingHTTPServer(("127.0.0.1", 0), registry.handler())
    registry.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield registry
    server.shutdown()
    server.server_close()


def mirrored_source(fake: FakeRegistry, mirror: FakeRegistry, conf_text: str) -> RegistrySource:
    conf = parse_registries_conf(conf_text)
    ref = parse_reference(f"{fake.host}/repo:v1")
    endpoints = conf.endpoints(ref.domain, ref.repository, by_digest=False)
    return RegistrySource(ref, endpoints=endpoints, http=http_for(fake, mirror))


def test_mirror_serves_manifest_and_blobs(
    fake: FakeRegistry, mirror: FakeRegistry, tmp_path: Path
) -> None:
    digest = mirror.add_image({"from": b"mirror"})
    conf = f"""
[[registry]]
location = "{fake.host}"
[[registry.mirror]]
location = "127.0.0.1:1/down"
[[registry.mirror]]
location = "{mirror.host}/cache"
"""
    _, image = pull(tmp_path, mirrored_source(fake, mirror, conf))
    assert image.manifest_digest == digest
    assert (image.layers[0] / "from").read_bytes() == b"mirror"
    # Everything, blobs included, came from the mirror, under its path.
    assert fake.requests == []
    assert {p.split("/")[2:4] == ["cache", "repo"] for _, p, _ in mirror.requests} == {True}


def test_mirror_without_the_image_falls_back_to_primary(
    fake: FakeRegistry, mirror: FakeRegistry, tmp_path: Path
) -> None:
    digest = fake.add_image({"from": b"primary"})
    conf = f'[[registry]]\nlocation = "{fake.host}"\n'
    conf += f'[[registry.mirror]]\nlocation = "{mirror.host}"\n'
    _, image = pull(tmp_path, mirrored_source(fake, mirror, conf))
    assert image.manifest_digest == digest
    assert [p for _, p, _ in mirror.requests] == ["/v2/repo/manifests/v1"]
    assert not any("/blobs/" in p for _, p, _ in mirror.requests)
    # A tag-only mirror is skipped for digest pulls altogether.
    only_tags = conf + 'pull-from-mirror = "tag-only"\n'
    mirror.requests.clear()
    ends = parse_registries_conf(only_tags).endpoints(fake.host, "repo", by_digest=True)
    assert [e.mirror for e in ends] == [False]


def test_no_endpoint_has_it_names_each(fake: FakeRegistry, mirror: FakeRegistry) -> None:
    conf = f'[[registry]]\nlocation = "{fake.host}"\n'
    conf += f'[[registry.mirror]]\nlocation = "{mirror.host}"\n'
    with pytest.raises(ImageError, match=f"{mirror.host}/repo: manifest unknown.*{fake.host}"):
        mirrored_source(fake, mirror, conf).read_index()
