"""A small HTTP(S) client for registries, on the standard library alone.

Why not urllib3 or urllib.request: we need exact control over four things
that both make awkward or version-dependent (Debian ships urllib3 1.26,
pip users get 2.x with a different retry and redirect API):

* redirects: registries send blob GETs to a CDN or object store on another
  host; the `Authorization` header must not follow (it is a credential for
  the registry only), while `Range` and `Accept` must;
* retries on 429/5xx and dropped connections with backoff and `Retry-After`;
* TLS per registry: system CAs plus `certs.d/HOST[:PORT]/*.crt` (and client
  certificates `*.cert`/`*.key`), plain HTTP only for insecure registries;
* streaming bodies that the caller reads in pieces (and resumes with
  `Range`, see registry.py), with keep-alive connections reused per thread.

http.client and ssl give all that in a few hundred lines with no third-party
code between us and the bytes.
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from podunit.errors import ImageError
from podunit.images.registries_conf import load_registries_conf

log = logging.getLogger(__name__)

CERTS_DIRS = ("/etc/containers/certs.d", "/etc/docker/certs.d")
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_REDIRECTS = 5
MAX_RETRY_AFTER = 60.0
USER_AGENT = "podunit/0.1"


class HttpError(ImageError):
    """A request failed; `status` is the HTTP status, 0 for network errors."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def insecure_registries(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """Registries (HOST[:PORT]) reached over plain HTTP.

    From `$PODUNIT_INSECURE_REGISTRIES` (comma or space separated) and the
    registry configuration (registries_conf: `insecure = true` in
    containers-registries.conf(5) tables, or podunit's older line format
    `insecure HOST[:PORT]` in /etc/podunit/registries.conf).
    """
    return load_registries_conf(environ).insecure()


def certs_dirs(environ: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """Directories holding HOST[:PORT]/ CA and client certificates.

    `$PODUNIT_CERTS_DIR` (colon separated) replaces the system defaults,
    so tests need not write to /etc.
    """
    env = os.environ if environ is None else environ
    override = env.get("PODUNIT_CERTS_DIR")
    dirs = override.split(":") if override else list(CERTS_DIRS)
    return tuple(Path(d) for d in dirs if d)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HttpError(f"{url}: not an http(s) URL")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise HttpError(f"{url}: bad port") from None
        return cls(parts.scheme, parts.hostname, port)

    @property
    def hostport(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass
class Response:
    """A response whose body is read by the caller; close() when done."""

    status: int
    headers: http.client.HTTPMessage
    url: str
    _raw: http.client.HTTPResponse
    _release: Callable[[bool], None]
    _closed: bool = False

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(None if size < 0 else size)
        if (size < 0 or not data) and not self._closed:
            self._finish(reusable=self._raw.isclosed())
        return data

    def read_all(self, limit: int) -> bytes:
        """The whole body, refusing more than `limit` bytes."""
        data = self._raw.read(limit + 1)
        if len(data) > limit:
            self.close()
            raise HttpError(f"{self.url}: response larger than {limit} bytes", self.status)
        self._finish(reusable=self._raw.isclosed())
        return data

    def _finish(self, reusable: bool) -> None:
        if not self._closed:
            self._closed = True
            self._release(reusable)

    def close(self) -> None:
        self._finish(reusable=self._raw.isclosed() and self._raw.length in (None, 0))

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Gets the Authorization value for an origin (None: send none).
AuthFor = Callable[[Origin], str | None]


@dataclass
class HttpClient:
    """Connections (kept alive per thread), TLS settings, redirects, retries."""

    insecure: frozenset[str] = field(default_factory=insecure_registries)
    cert_dirs: tuple[Path, ...] = field(default_factory=certs_dirs)
    timeout: float = 60.0
    attempts: int = 5
    backoff: float = 0.5  # first retry delay; doubles, with jitter
    sleep: Callable[[float], None] = time.sleep
    _contexts: dict[str, ssl.SSLContext] = field(default_factory=dict)
    _local: threading.local = field(default_factory=threading.local)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def base_url(self, registry: str, insecure: bool = False) -> str:
        scheme = "http" if insecure or registry in self.insecure else "https"
        return f"{scheme}://{registry}"

    # ---- TLS --------------------------------------------------------------------

    def ssl_context(self, hostport: str) -> ssl.SSLContext:
        with self._lock:
            ctx = self._contexts.get(hostport)
            if ctx is None:
                ctx = self._contexts[hostport] = self._make_context(hostport)
            return ctx

    def _make_context(self, hostport: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        for base in self.cert_dirs:
            d = base / hostport
            try:
                names = sorted(os.listdir(d))
            except OSError:
                continue
            for name in names:
                path = d / name
                try:
                    if name.endswith(".crt"):
                        ctx.load_verify_locations(cafile=str(path))
                    elif name.endswith(".cert"):
                        ctx.load_cert_chain(str(path), str(path.with_suffix(".key")))
                except (OSError, ssl.SSLError) as exc:
                    raise HttpError(f"{path}: cannot load certificate: {exc}") from None
        return ctx

    # ---- connections ------------------------------------------------------------

    def _pool(self) -> dict[Origin, http.client.HTTPConnection]:
        pool: dict[Origin, http.client.HTTPConnection] | None = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        return pool

    def _connection(self, origin: Origin) -> http.client.HTTPConnection:
        conn = self._pool().pop(origin, None)
        if conn is not None:
            return conn
        if origin.scheme == "https":
            return http.client.HTTPSConnection(
                origin.host,
                origin.port,
                timeout=self.timeout,
                context=self.ssl_context(origin.hostport),
            )
        return http.client.HTTPConnection(origin.host, origin.port, timeout=self.timeout)

    def close(self) -> None:
        for conn in self._pool().values():
            conn.close()
        self._pool().clear()

    # ---- requests ---------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        auth_for: AuthFor | None = None,
    ) -> Response:
        """One logical request: redirects followed, transient failures retried.

        `auth_for(origin)` supplies Authorization for the registry's own
        origin only: after a redirect to another origin it is not called.
        """
        first = Origin.of(url)
        for _ in range(MAX_REDIRECTS + 1):
            origin = Origin.of(url)
            send = {"User-Agent": USER_AGENT, **(headers or {})}
            if auth_for is not None and origin == first:
                value = auth_for(origin)
                if value:
                    send["Authorization"] = value
            resp = self._with_retries(method, url, origin, send, body)
            if resp.status in (301, 302, 303, 307, 308) and method in ("GET", "HEAD"):
                location = resp.headers.get("Location")
                resp.close()
                if not location:
                    raise HttpError(f"{url}: redirect without Location", resp.status)
                url = urllib.parse.urljoin(url, location)
                if Origin.of(url).scheme == "http" and first.scheme == "https":
                    raise HttpError(f"{url}: refusing a redirect from https to plain http")
                log.debug("redirected to %s", url)
                continue
            return resp
        raise HttpError(f"{url}: more than {MAX_REDIRECTS} redirects")

    def _with_retries(
        self, method: str, url: str, origin: Origin, headers: dict[str, str], body: bytes | None
    ) -> Response:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            last = attempt == self.attempts
            try:
                resp = self._send(method, url, origin, headers, body)
            except (OSError, http.client.HTTPException) as exc:
                # Name lookup and certificate failures do not heal by waiting.
                permanent = isinstance(exc, socket.gaierror | ssl.SSLCertVerificationError)
                if last or permanent or method not in ("GET", "HEAD", "PUT"):
                    raise HttpError(f"{method} {url}: {_describe(exc)}") from None
                log.info("%s %s: %s; retrying in %.1f s", method, url, _describe(exc), delay)
                self.sleep(delay * random.uniform(0.8, 1.2))
                delay *= 2
                continue
            if resp.status not in RETRY_STATUSES or last:
                return resp
            wait = parse_retry_after(resp.headers.get("Retry-After"))
            resp.close()
            wait = min(MAX_RETRY_AFTER, wait if wait is not None else delay)
            log.info("%s %s: HTTP %d; retrying in %.1f s", method, url, resp.status, wait)
            self.sleep(wait)
            delay *= 2
        raise AssertionError("unreachable")

    def _send(
        self, method: str, url: str, origin: Origin, headers: dict[str, str], body: bytes | None
    ) -> Response:
        parts = urllib.parse.urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # A kept-alive connection may have been closed by the server meanwhile:
        # one immediate retry on a fresh connection before counting a failure.
        for fresh in (False, True):
            conn = self._connection(origin) if not fresh else self._new_connection(origin)
            try:
                conn.request(method, target, body=body, headers=headers)
                raw = conn.getresponse()
            except (ConnectionError, http.client.RemoteDisconnected, BrokenPipeError):
                conn.close()
                if fresh:
                    raise
                continue
            except BaseException:
                conn.close()
                raise
            return Response(raw.status, raw.headers, url, raw, self._releaser(origin, conn))
        raise AssertionError("unreachable")

    def _new_connection(self, origin: Origin) -> http.client.HTTPConnection:
        self._pool().pop(origin, None)
        return self._connection(origin)

    def _releaser(self, origin: Origin, conn: http.client.HTTPConnection) -> Callable[[bool], None]:
        def release(reusable: bool) -> None:
            if reusable and origin not in self._pool():
                self._pool()[origin] = conn
            else:
                conn.close()

        return release


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__
