"""Registry credentials and authentication challenges.

Credentials are looked up as podman and skopeo do (containers-auth.json(5)),
first file with a matching entry wins:

    $REGISTRY_AUTH_FILE
    ${XDG_RUNTIME_DIR}/containers/auth.json
    /run/containers/<uid>/auth.json              (root: /run/containers/0/...)
    $HOME/.config/containers/auth.json
    $HOME/.docker/config.json                    (Docker's file)

Within a file the most specific key wins: `host/ns/repo`, then `host/ns`,
then `host`; Docker's legacy `https://index.docker.io/v1/` means docker.io.

Docker's credential helpers are honoured as Docker does: a `credHelpers`
entry for the host is asked first, then the `auths` entries, then the
`credsStore` default helper (Docker leaves empty `auths` placeholders for
what the store holds). A helper is `docker-credential-NAME get` with the
server URL on stdin; it answers `{"Username": ..., "Secret": ...}`. Note
that podunit usually runs as root from units, where helpers that need a
desktop keyring have nothing to ask: `pass` or a file-based helper works.

`podunit login` writes the first file of the list that applies (as podman
does); `podunit logout` removes the entry from it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podunit.errors import ImageError
from podunit.run import CommandError, run

log = logging.getLogger(__name__)

HELPER_TIMEOUT = 30.0
IDENTITY_TOKEN_USER = "<token>"  # what helpers answer for an OAuth identity token
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"  # the key Docker's tools use for Hub


class AuthError(ImageError):
    """Authentication with a registry failed or is impossible; says why."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic", "bearer"
    params: dict[str, str]


# RFC 7235 tokens and quoted strings (with backslash escapes).
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM_RE = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))\s*(?:,|$)')
_SCHEME_RE = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")


def parse_www_authenticate(header: str) -> list[Challenge]:
    """All challenges in a WWW-Authenticate value; malformed parts are skipped."""
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        while pos < len(header) and header[pos] in " ,":
            pos += 1
        m = _SCHEME_RE.match(header, pos)
        if m is None:
            break
        scheme, pos = m.group(1).lower(), m.end()
        params: dict[str, str] = {}
        while True:
            p = _PARAM_RE.match(header, pos)
            if p is None:
                break
            # A following "scheme param=" looks like a param without "=" after
            # the token; _PARAM_RE needs "=", so it stops there.
            value = p.group(2) if p.group(2) is not None else p.group(3)
            params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = p.end()
        challenges.append(Challenge(scheme, params))
    return challenges


def auth_files(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Credential files in lookup order (see the module docstring)."""
    env = os.environ if environ is None else environ
    files: list[Path] = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers/auth.json")
    files.append(Path(f"/run/containers/{os.getuid()}/auth.json"))
    home = env.get("HOME")
    if home:
        files.append(Path(home) / ".config/containers/auth.json")
        files.append(Path(home) / ".docker/config.json")
    return files


def login_file(environ: Mapping[str, str] | None = None) -> Path:
    """Where `login` writes: $REGISTRY_AUTH_FILE, else the runtime auth.json."""
    return auth_files(environ)[0]


def normalize_key(key: str) -> str:
    """auth.json key -> HOST[/PATH]; Docker's legacy URL forms become hosts."""
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
            # Docker wrote "https://index.docker.io/v1/": only the host counts.
            key = key.split("/", 1)[0]
            break
    key = key.rstrip("/")
    if key in ("index.docker.io", "registry-1.docker.io"):
        return "docker.io"
    return key


def _lookup_keys(registry: str, repository: str | None) -> list[str]:
    keys = []
    if repository:
        parts = repository.split("/")
        keys = [f"{registry}/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1)]
    return [*keys, registry]


def _decode_entry(entry: object, where: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("auth"):
        try:
            raw = base64.b64decode(str(entry["auth"]), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError(f"{where}: the auth entry is not base64 of USER:PASSWORD") from None
        user, sep, password = raw.partition(":")
        if not sep:
            raise AuthError(f"{where}: the auth entry is not base64 of USER:PASSWORD")
        return Credentials(user, password)
    if entry.get("username") and entry.get("password") is not None:
        return Credentials(str(entry["username"]), str(entry["password"]))
    return None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(1 << 20))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AuthError(f"{path}: cannot read credentials: {exc}") from None
    return doc if isinstance(doc, dict) else {}


def _table(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    return {normalize_key(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def _server_url(registry: str) -> str:
    """What Docker passes a helper for a registry (Hub keeps its legacy URL)."""
    return DOCKER_HUB_SERVER if registry == "docker.io" else registry


def run_helper(
    helper: str, registry: str, where: str, environ: Mapping[str, str] | None = None
) -> Credentials | None:
    """Ask `docker-credential-<helper>` for `registry`; None if it has nothing."""
    if not helper or "/" in helper:
        raise AuthError(f"{where}: invalid credential helper name {helper!r}")
    argv = [f"docker-credential-{helper}", "get"]
    env = {"PATH": environ["PATH"]} if environ is not None and "PATH" in environ else None
    try:
        proc = run(argv, capture=True, check=False, input=_server_url(registry).encode(),
                   env=env, timeout=HELPER_TIMEOUT)  # fmt: skip
    except CommandError as exc:
        if "not found" in exc.reason:
            # As if it had no entry: an anonymous pull can still work, and one
            # that cannot says "authentication required" anyway.
            log.warning("%s: %s is not installed; ignoring it", where, argv[0])
            return None
        raise AuthError(f"{where}: credential helper {exc}") from None
    if proc.returncode != 0:
        # The helpers' protocol: "credentials not found" on stdout, exit 1.
        said = (proc.stdout or b"").decode(errors="replace").strip()
        if "not found" in said.lower():
            return None
        detail = said or (proc.stderr or b"").decode(errors="replace").strip()
        raise AuthError(f"{where}: {argv[0]} failed for {registry}: {detail[:300]}")
    return _parse_helper_answer(proc.stdout or b"", argv[0], registry)


def _parse_helper_answer(out: bytes, helper: str, registry: str) -> Credentials:
    try:
        doc = json.loads(out)
        user, secret = doc["Username"], doc["Secret"]
    except (ValueError, KeyError, TypeError):
        raise AuthError(f"{helper}: no Username/Secret JSON for {registry}") from None
    if not isinstance(user, str) or not isinstance(secret, str):
        raise AuthError(f"{helper}: no Username/Secret JSON for {registry}")
    if user == IDENTITY_TOKEN_USER:
        raise AuthError(
            f"{helper}: {registry} has an identity token (OAuth refresh token), which podunit "
            f"does not support; log in with a password or access token: podunit login {registry}"
        )
    return Credentials(user, secret)


def _from_file(
    path: Path, registry: str, wanted: list[str], environ: Mapping[str, str] | None
) -> Credentials | None:
    doc = _read_config(path)
    helper = _table(doc, "credHelpers").get(registry)
    if isinstance(helper, str):
        found = run_helper(helper, registry, f"{path}: credHelpers", environ)
        if found is not None:
            return found
    auths = _table(doc, "auths")
    for key in wanted:
        if key in auths:
            creds = _decode_entry(auths[key], f"{path}: {key}")
            if creds is not None:
                return creds
    store = doc.get("credsStore")
    if isinstance(store, str) and store:
        return run_helper(store, registry, f"{path}: credsStore", environ)
    return None


def find_credentials(
    registry: str, repository: str | None = None, environ: Mapping[str, str] | None = None
) -> Credentials | None:
    """Credentials for `registry` (HOST[:PORT]) and optionally one repository."""
    host = normalize_key(registry)
    wanted = _lookup_keys(host, repository)
    for path in auth_files(environ):
        creds = _from_file(path, host, wanted, environ)
        if creds is not None:
            return creds
    return None


def _write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".auth-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # credentials: owner only
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _load_doc(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes() or b"{}")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AuthError(f"{path}: cannot read credentials: {exc}") from None
    if not isinstance(doc, dict):
        raise AuthError(f"{path}: not a JSON object")
    return doc


def store_credentials(registry: str, creds: Credentials, path: Path) -> None:
    doc = _load_doc(path)
    auths = doc.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise AuthError(f'{path}: "auths" is not an object')
    raw = f"{creds.username}:{creds.password}".encode()
    auths[registry] = {"auth": base64.b64encode(raw).decode()}
    _write_json_atomic(path, doc)


def remove_credentials(registry: str, path: Path) -> bool:
    """Remove the entry for `registry`; False if there was none."""
    doc = _load_doc(path)
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        return False
    keys = [k for k in auths if normalize_key(k) == normalize_key(registry)]
    for key in keys:
        del auths[key]
    if keys:
        _write_json_atomic(path, doc)
    return bool(keys)
