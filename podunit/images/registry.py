"""Pulling from (and, for signatures, pushing to) a distribution-spec registry.

`RegistrySource` is a BlobSource for the store: `read_index()` fetches the
manifest the reference names and presents it as a one-entry OCI index whose
descriptor carries the media type the registry served it as, so that the
store's usual path (select_manifest: platform choice, media type checks,
digest verification) applies unchanged. It is also the `SignatureSource`
handed to the trust verifier.

Authentication follows the server's `WWW-Authenticate` challenge: none
first, then Basic with stored credentials, or a Bearer token from the
challenge's realm for the scopes needed (refreshed when it expires or the
registry answers `insufficient_scope`). Blob downloads resume with `Range`
after a dropped connection; what the source hands out stays unverified
bytes: the store hashes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import IO, Any

from podunit.errors import ImageError, IntegrityError
from podunit.images.auth import AuthError, Challenge, Credentials, find_credentials
from podunit.images.auth import parse_www_authenticate as parse_challenges
from podunit.images.digest import MAX_JSON_SIZE, Descriptor, check_digest
from podunit.images.http import HttpClient, HttpError, Origin, Response
from podunit.images.oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
)
from podunit.images.reference import ImageReference
from podunit.images.registries_conf import Endpoint, load_registries_conf

log = logging.getLogger(__name__)

ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
SCHEMA1_TYPES = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
DOCKER_HUB_HOST = "registry-1.docker.io"
RESUME_ATTEMPTS = 5
TOKEN_MARGIN = 10.0  # seconds: refresh tokens before they expire, not after


def registry_host(domain: str) -> str:
    """Where the API of a reference's domain lives (Docker Hub is special)."""
    return DOCKER_HUB_HOST if domain == "docker.io" else domain


def _media_type(resp: Response) -> str:
    return (resp.headers.get("Content-Type") or "").split(";", 1)[0].strip()


class RegistryClient:
    """Authenticated requests to one registry; safe to share between threads."""

    def __init__(
        self,
        domain: str,
        http: HttpClient | None = None,
        credentials: Credentials | None = None,
        *,
        lookup_credentials: bool = True,
        insecure: bool = False,
    ) -> None:
        self.domain = domain
        self.http = http or HttpClient()
        self.base = self.http.base_url(registry_host(domain), insecure)
        self._creds = credentials
        self._lookup = lookup_credentials and credentials is None
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def credentials(self, repository: str | None) -> Credentials | None:
        if self._creds is None and self._lookup:
            self._creds = find_credentials(self.domain, repository)
            self._lookup = False
        return self._creds

    # ---- authentication -------------------------------------------------------

    def _authorization(self, scopes: tuple[str, ...], repository: str | None) -> str | None:
        with self._lock:
            challenge = self._challenge
            if challenge is None:
                return None  # anonymous until the registry asks for more
            if challenge.scheme == "basic":
                creds = self.credentials(repository)
                return creds.basic() if creds else None
            cached = self._tokens.get(scopes)
            if cached is not None and cached[1] > time.monotonic():
                return f"Bearer {cached[0]}"
            token, lifetime = self._fetch_token(challenge, scopes, repository)
            self._tokens[scopes] = (token, time.monotonic() + max(1.0, lifetime - TOKEN_MARGIN))
            return f"Bearer {token}"

    def _fetch_token(
        self, challenge: Challenge, scopes: tuple[str, ...], repository: str | None
    ) -> tuple[str, float]:
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthError(f"{self.domain}: Bearer challenge without a realm")
        query: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            query.append(("service", challenge.params["service"]))
        query += [("scope", s) for s in scopes]
        sep = "&" if "?" in realm else "?"
        url = realm + (sep + urllib.parse.urlencode(query) if query else "")
        creds = self.credentials(repository)
        token_origin = Origin.of(url)

        def auth_for(origin: Origin) -> str | None:
            return creds.basic() if creds and origin == token_origin else None

        with self.http.request("GET", url, auth_for=auth_for) as resp:
            body = resp.read_all(1 << 20)
            if resp.status in (401, 403):
                who = f"as {creds.username}" if creds else "anonymously"
                raise AuthError(
                    f"{self.domain}: the token service {token_origin.hostport} refused "
                    f"{who} (HTTP {resp.status})"
                )
            if resp.status != 200:
                raise AuthError(f"{self.domain}: token service answered HTTP {resp.status}")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise AuthError(f"{self.domain}: token service sent no valid JSON") from None
        if not isinstance(token, str) or not token:
            raise AuthError(f"{self.domain}: token service sent no token")
        return token, lifetime

    def _on_unauthorized(self, resp: Response, scopes: tuple[str, ...]) -> tuple[str, ...]:
        """Learn from a 401: the scheme to use and any scope the server wants."""
        challenges = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
        chosen = next((c for c in challenges if c.scheme == "bearer"), None) or next(
            (c for c in challenges if c.scheme == "basic"), None
        )
        if chosen is None:
            raise AuthError(f"{self.domain}: HTTP 401 without a Basic or Bearer challenge")
        with self._lock:
            self._challenge = chosen
            self._tokens.pop(scopes, None)  # expired or too narrow
        extra = chosen.params.get("scope", "").split()
        return tuple(dict.fromkeys([*scopes, *extra]))

    def request(
        self,
        method: str,
        path: str,
        *,
        repository: str | None,
        actions: str = "pull",
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """Request `path` (under /v2/ or an absolute URL) with authentication."""
        url = path if "://" in path else self.base + path
        scopes: tuple[str, ...] = (f"repository:{repository}:{actions}",) if repository else ()
        for attempt in range(3):

            def auth_for(_origin: Origin, wanted: tuple[str, ...] = scopes) -> str | None:
                return self._authorization(wanted, repository)

            resp = self.http.request(method, url, headers=headers, body=body, auth_for=auth_for)
            if resp.status != 401 or attempt == 2:
                break
            resp.close()
            scopes = self._on_unauthorized(resp, scopes)
        if resp.status == 401:
            resp.close()
            creds = self.credentials(repository)
            if creds is None:
                raise AuthError(
                    f"{self.domain}: authentication required (no credentials found; "
                    f"run: podunit login {self.domain})"
                )
            raise AuthError(f"{self.domain}: credentials of {creds.username} were rejected")
        if resp.status == 403:
            resp.close()
            raise AuthError(f"{self.domain}: access to {repository or path} denied (HTTP 403)")
        return resp

    def check_login(self) -> None:
        """GET /v2/ with credentials: AuthError unless they are accepted."""
        with self.request("GET", "/v2/", repository=None) as resp:
            resp.read_all(1 << 20)
            if resp.status != 200:
                raise HttpError(f"{self.base}/v2/: HTTP {resp.status}", resp.status)
        if self._challenge is None and self._creds is not None:
            # The registry let us in anonymously: force a check of the credentials.
            with self._lock:
                self._challenge = Challenge("basic", {})


class _ResumingBlob(io.RawIOBase):
    """A blob body that re-requests the rest with Range when the connection drops."""

    def __init__(self, source: RegistrySource, desc: Descriptor) -> None:
        self._source = source
        self._desc = desc
        self._offset = 0
        self._resumes = 0
        self._resp: Response | None = self._open(0)

    def _open(self, offset: int) -> Response:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = self._source.client.request(
            "GET",
            f"/v2/{self._source.repository}/blobs/{self._desc.digest}",
            repository=self._source.repository,
            headers=headers,
        )
        if resp.status == 404:
            resp.close()
            raise ImageError(f"{self._source.description}: blob {self._desc.digest} not found")
        if offset and resp.status == 206:
            start = (resp.headers.get("Content-Range") or "").removeprefix("bytes ").split("-")[0]
            if start != str(offset):
                resp.close()
                raise HttpError(f"blob {self._desc.digest}: resumed at {start}, not {offset}")
        elif offset and resp.status == 200:
            skip = offset  # the server ignores Range: skip what we already have
            while skip:
                chunk = resp.read(min(skip, 1 << 20))
                if not chunk:
                    break
                skip -= len(chunk)
        elif resp.status != 200:
            resp.close()
            raise HttpError(f"blob {self._desc.digest}: HTTP {resp.status}", resp.status)
        return resp

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any, /) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1, /) -> bytes:
        while True:
            if self._resp is None:
                return b""
            try:
                data = self._resp.read(size)
            except (OSError, HttpError, ValueError) as exc:
                data, error = b"", str(exc)
            else:
                error = "connection closed early"
            if data:
                self._offset += len(data)
                return data
            if self._offset >= self._desc.size:
                self._resp.close()
                self._resp = None
                return b""  # the store decides whether the bytes are right
            self._resp.close()
            self._resp = None
            self._resumes += 1
            if self._resumes > RESUME_ATTEMPTS:
                raise HttpError(f"blob {self._desc.digest}: {error} at byte {self._offset}")
            log.info("blob %s: %s at %d; resuming", self._desc.digest, error, self._offset)
            self._resp = self._open(self._offset)

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        super().close()


class RegistrySource:
    """A docker:// reference as a BlobSource and a SignatureSource.

    The reference may be served by several endpoints (registries_conf:
    mirrors in order, then the primary location). `read_index` settles on
    the first that has the manifest; `client` and `repository` then name
    that endpoint, so blobs come from where the manifest came from and
    credentials are those of the host actually contacted.
    """

    def __init__(
        self,
        ref: ImageReference,
        client: RegistryClient | None = None,
        *,
        endpoints: list[Endpoint] | None = None,
        http: HttpClient | None = None,
    ) -> None:
        if ref.transport != "docker":
            raise ImageError(f"{ref}: not a registry reference")
        self.ref = ref
        self.description = str(ref)
        self.repository = ref.repository
        if endpoints is None and client is None:
            conf = load_registries_conf()
            endpoints = conf.endpoints(ref.domain, ref.repository, ref.digest is not None)
            http = http or HttpClient(insecure=conf.insecure())
        self._http = http or (client.http if client is not None else HttpClient())
        self._endpoints = endpoints or [Endpoint(ref.domain, ref.repository, False, mirror=False)]
        primary = self._endpoints[-1]
        self._clients: dict[Endpoint, RegistryClient] = {primary: client} if client else {}
        self.client = self._client_for(primary)
        self._manifests: dict[str, bytes] = {}
        self.top: tuple[str, bytes] | None = None  # digest and bytes of what ref names

    def _client_for(self, endpoint: Endpoint) -> RegistryClient:
        client = self._clients.get(endpoint)
        if client is None:
            client = RegistryClient(endpoint.host, self._http, insecure=endpoint.insecure)
            self._clients[endpoint] = client
        return client

    # ---- manifests --------------------------------------------------------------

    def fetch_manifest(self, repository: str, reference: str) -> tuple[bytes, str] | None:
        """(bytes, media type) of a manifest by tag or digest; None on 404."""
        return self._fetch_manifest(self.client, repository, reference)

    def _fetch_manifest(
        self, client: RegistryClient, repository: str, reference: str
    ) -> tuple[bytes, str] | None:
        with client.request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            repository=repository,
            headers={"Accept": ACCEPT},
        ) as resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise HttpError(f"{self.description}: manifest: HTTP {resp.status}", resp.status)
            data = resp.read_all(MAX_JSON_SIZE)
            return data, self._resolve_type(data, _media_type(resp))

    def _resolve_type(self, data: bytes, served: str) -> str:
        try:
            doc: Any = json.loads(data)
        except ValueError:
            raise IntegrityError(f"{self.description}: manifest is not valid JSON") from None
        declared = doc.get("mediaType") if isinstance(doc, dict) else None
        schema = doc.get("schemaVersion") if isinstance(doc, dict) else None
        if served in SCHEMA1_TYPES or declared in SCHEMA1_TYPES or schema == 1:
            raise ImageError(
                f"{self.description}: Docker schema 1 manifests are not supported (deprecated "
                "since 2017 and unverifiable); re-push the image with a current tool"
            )
        if served in INDEX_TYPES + MANIFEST_TYPES:
            return served
        # Some registries serve OCI documents as application/json: trust the
        # document's own type then (select_manifest still checks its shape).
        if declared in INDEX_TYPES + MANIFEST_TYPES:
            return str(declared)
        if isinstance(doc, dict) and "manifests" in doc:
            return OCI_INDEX
        if isinstance(doc, dict) and "layers" in doc:
            return OCI_MANIFEST
        raise ImageError(f"{self.description}: unsupported manifest type {served!r}")

    def _from_endpoints(self, wanted: str) -> tuple[bytes, str]:
        """The manifest from the first endpoint that serves it; switches
        `client` and `repository` to that endpoint."""
        failures: list[str] = []
        for endpoint in self._endpoints:
            client = self._client_for(endpoint)
            try:
                found = self._fetch_manifest(client, endpoint.repository, wanted)
            except (HttpError, AuthError) as exc:
                if len(self._endpoints) == 1:
                    raise
                # A mirror that is down or refuses us is skipped, as podman does.
                log.info("%s: %s; trying the next endpoint", endpoint, exc)
                failures.append(f"{endpoint}: {exc}")
                continue
            if found is None:
                failures.append(f"{endpoint}: manifest unknown")
                continue
            if endpoint.mirror:
                log.info("%s: pulling from mirror %s", self.description, endpoint)
            self.client, self.repository = client, endpoint.repository
            return found
        if len(self._endpoints) == 1:
            raise ImageError(f"{self.description}: manifest unknown (no such tag or digest)")
        raise ImageError(
            f"{self.description}: no mirror nor the registry has it: " + "; ".join(failures)
        )

    def read_index(self) -> bytes:
        wanted = self.ref.digest or self.ref.tag or "latest"
        data, media_type = self._from_endpoints(wanted)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.ref.digest and digest != self.ref.digest:
            raise IntegrityError(
                f"{self.description}: registry sent a manifest with digest {digest}"
            )
        self._manifests[digest] = data
        self.top = (digest, data)
        desc = {"mediaType": media_type, "digest": digest, "size": len(data)}
        return json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode()

    def _child_manifest(self, desc: Descriptor) -> bytes:
        found = self.fetch_manifest(self.repository, desc.digest)
        if found is None:
            raise ImageError(f"{self.description}: manifest {desc.digest} not found")
        data, served = found
        if served != desc.media_type:
            raise IntegrityError(
                f"{self.description}: {desc.digest} is referenced as {desc.media_type} "
                f"but served as {served}"
            )
        return data

    def open_blob(self, desc: Descriptor) -> AbstractContextManager[IO[bytes]]:
        check_digest(desc.digest)
        if desc.digest in self._manifests:
            return io.BytesIO(self._manifests[desc.digest])
        if desc.media_type in INDEX_TYPES + MANIFEST_TYPES:
            return io.BytesIO(self._child_manifest(desc))
        return io.BufferedReader(_ResumingBlob(self, desc), 1 << 20)

    # ---- SignatureSource ----------------------------------------------------------

    def _repo(self, ref: ImageReference) -> str:
        """`ref`'s repository at the endpoint in use (a mirror may have
        another path for it)."""
        if ref.transport != "docker" or ref.domain != self.ref.domain:
            raise ImageError(f"{ref}: not in registry {self.ref.domain}")
        if ref.repository == self.ref.repository:
            return self.repository
        if self.repository != self.ref.repository or self.client.domain != self.ref.domain:
            raise ImageError(f"{ref}: not available from mirror {self.client.domain}")
        return ref.repository

    def get_url(self, url: str) -> bytes | None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "file":
            try:
                with open(urllib.parse.unquote(parts.path), "rb") as f:
                    return f.read(MAX_JSON_SIZE)
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise ImageError(f"{url}: {exc.strerror}") from None
        with self.client.http.request("GET", url) as resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise HttpError(f"{url}: HTTP {resp.status}", resp.status)
            return resp.read_all(MAX_JSON_SIZE)

    def get_manifest(self, ref: ImageReference, tag_or_digest: str) -> tuple[bytes, str] | None:
        found = self.fetch_manifest(self._repo(ref), tag_or_digest)
        if found is not None and tag_or_digest.startswith("sha256:"):
            if "sha256:" + hashlib.sha256(found[0]).hexdigest() != tag_or_digest:
                raise IntegrityError(f"{ref}: manifest {tag_or_digest} does not match its digest")
        return found

    def get_blob(self, ref: ImageReference, digest: str) -> bytes:
        check_digest(digest)
        repo = self._repo(ref)
        with self.client.request("GET", f"/v2/{repo}/blobs/{digest}", repository=repo) as resp:
            if resp.status != 200:
                raise HttpError(f"{ref}: blob {digest}: HTTP {resp.status}", resp.status)
            data = resp.read_all(MAX_JSON_SIZE)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"{ref}: blob {digest} does not match its digest")
        return data

    def referrers(self, ref: ImageReference, digest: str) -> list[dict[str, Any]] | None:
        check_digest(digest)
        repo = self._repo(ref)
        with self.client.request(
            "GET",
            f"/v2/{repo}/referrers/{digest}",
            repository=repo,
            headers={"Accept": OCI_INDEX},
        ) as resp:
            if resp.status in (404, 405):
                return None
            if resp.status != 200:
                raise HttpError(f"{ref}: referrers: HTTP {resp.status}", resp.status)
            data = resp.read_all(MAX_JSON_SIZE)
        try:
            manifests = json.loads(data).get("manifests")
        except (ValueError, AttributeError):
            raise IntegrityError(f"{ref}: referrers response is not an index") from None
        return [m for m in manifests or [] if isinstance(m, dict)]

    def extension_signatures(self, ref: ImageReference, digest: str) -> bytes | None:
        """SignatureExtensionSource: the X-Registry-Supports-Signatures list of `digest`."""
        from podunit.images.signatures import MAX_SIGNATURE_LIST_SIZE

        check_digest(digest)
        repo = self._repo(ref)
        # Only a registry that advertises the extension on its /v2/ endpoint has it (as
        # containers/image decides): elsewhere the path is unknown and its error is noise.
        with self.client.request("GET", "/v2/", repository=None) as resp:
            resp.read_all(1 << 20)
            if resp.headers.get("X-Registry-Supports-Signatures") != "1":
                return None
        path = f"/extensions/v2/{repo}/signatures/{digest}"
        with self.client.request("GET", path, repository=repo) as resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise HttpError(f"{ref}: signature extension: HTTP {resp.status}", resp.status)
            return resp.read_all(MAX_SIGNATURE_LIST_SIZE)

    def put_blob(self, ref: ImageReference, data: bytes) -> str:
        repo = self._repo(ref)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = f"/v2/{repo}/blobs/{digest}"
        with self.client.request("HEAD", path, repository=repo, actions="pull,push") as resp:
            if resp.status == 200:
                return digest
        with self.client.request(
            "POST", f"/v2/{repo}/blobs/uploads/", repository=repo, actions="pull,push", body=b""
        ) as resp:
            location = resp.headers.get("Location")
            if resp.status != 202 or not location:
                raise HttpError(f"{ref}: starting an upload: HTTP {resp.status}", resp.status)
        url = urllib.parse.urljoin(self.client.base + "/", location)
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": digest})
        headers = {"Content-Type": "application/octet-stream"}
        with self.client.request(
            "PUT", url, repository=repo, actions="pull,push", headers=headers, body=data
        ) as resp:
            if resp.status != 201:
                raise HttpError(f"{ref}: uploading blob {digest}: HTTP {resp.status}", resp.status)
        return digest

    def put_manifest(
        self, ref: ImageReference, tag_or_digest: str, data: bytes, media_type: str
    ) -> str:
        repo = self._repo(ref)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with self.client.request(
            "PUT",
            f"/v2/{repo}/manifests/{tag_or_digest}",
            repository=repo,
            actions="pull,push",
            headers={"Content-Type": media_type},
            body=data,
        ) as resp:
            if resp.status != 201:
                raise HttpError(f"{ref}: uploading manifest: HTTP {resp.status}", resp.status)
        return digest


@contextlib.contextmanager
def open_registry(ref: ImageReference) -> Iterator[RegistrySource]:
    source = RegistrySource(ref)
    try:
        yield source
    finally:
        source.client.http.close()
