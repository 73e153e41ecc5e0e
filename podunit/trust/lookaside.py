"""Where GPG signatures live: lookaside stores configured as in containers-registries.d(5).

    # /etc/containers/registries.d/example.yaml (or /etc/podunit/registries.d/)
    default-docker:
      lookaside: https://sigs.example.com/default
    docker:
      registry.example.com/team:
        lookaside: file:///srv/sigstore

A signature of manifest sha256:HEX of registry.example.com/team/app is then
<base>/team/app@sha256=HEX/signature-1, -2, ... up to the first that is missing. The
registry host is not part of the path (as skopeo and podman lay it out). `sigstore` is the
older name of `lookaside` and means the same. Without any configuration the default is
skopeo's own, file:///var/lib/containers/sigstore.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podunit.images.reference import ImageReference
from podunit.images.signatures import SignatureSource, TrustError
from podunit.trust.payload import MAX_SIGNATURE_SIZE, MAX_SIGNATURES

REGISTRIES_D = (Path("/etc/containers/registries.d"), Path("/etc/podunit/registries.d"))
REGISTRIES_D_ENV = "PODUNIT_REGISTRIES_D"  # colon-separated directories, for tests
BUILTIN_LOOKASIDE = "file:///var/lib/containers/sigstore"
_ENTRY_FIELDS = {
    "lookaside", "lookaside-staging", "sigstore", "sigstore-staging", "use-sigstore-attachments",
}  # fmt: skip
MAX_CONFIG_SIZE = 1 << 20


def registries_dirs() -> tuple[Path, ...]:
    env = os.environ.get(REGISTRIES_D_ENV)
    return tuple(Path(p) for p in env.split(":") if p) if env else REGISTRIES_D


@dataclass
class LookasideConfig:
    default: str | None = None
    scopes: dict[str, str] = field(default_factory=dict)

    def base_url(self, ref: ImageReference) -> str:
        """The lookaside base URL for a docker reference: most specific scope wins."""
        from podunit.trust.policy import scope_candidates

        for scope in scope_candidates(ref)[:-1]:
            if scope in self.scopes:
                return self.scopes[scope]
        return self.default or BUILTIN_LOOKASIDE


def _entry_url(entry: object, where: str) -> str | None:
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise TrustError(f"{where}: must be a mapping")
    unknown = sorted(set(entry) - _ENTRY_FIELDS)
    if unknown:
        raise TrustError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
    url = entry.get("lookaside", entry.get("sigstore"))
    if url is None:
        return None
    if not isinstance(url, str):
        raise TrustError(f"{where}.lookaside: must be a URL string")
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("file", "http", "https"):
        raise TrustError(f"{where}.lookaside: {url!r} is not a file://, http:// or https:// URL")
    return url.rstrip("/")


def _load_file(path: Path) -> dict[str, Any]:
    import yaml

    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_SIZE + 1)
    if len(data) > MAX_CONFIG_SIZE:
        raise TrustError(f"{path}: larger than {MAX_CONFIG_SIZE} bytes")
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise TrustError(f"{path}: invalid YAML: {exc}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise TrustError(f"{path}: must be a mapping")
    unknown = sorted(set(doc) - {"default-docker", "docker"})
    if unknown:
        raise TrustError(f"{path}: unknown top-level field(s) {', '.join(map(str, unknown))}")
    return doc


def load_lookaside(dirs: Sequence[Path] | None = None) -> LookasideConfig:
    """Merge every *.yaml of the directories. A scope defined twice in one directory is an
    error (as in containers/image); a later directory (podunit's own) overrides an earlier."""
    config = LookasideConfig()
    for directory in registries_dirs() if dirs is None else dirs:
        try:
            files = sorted(p for p in directory.iterdir() if p.suffix == ".yaml")
        except (FileNotFoundError, NotADirectoryError):
            continue
        seen: dict[str, Path] = {}
        for path in files:
            doc = _load_file(path)
            if (
                url := _entry_url(doc.get("default-docker"), f"{path}: default-docker")
            ) is not None:
                if "default-docker" in seen:
                    raise TrustError(
                        f"{path}: default-docker is also defined in {seen['default-docker']}"
                    )
                seen["default-docker"] = path
                config.default = url
            docker = doc.get("docker") or {}
            if not isinstance(docker, dict):
                raise TrustError(f"{path}: docker: must be a mapping of scopes")
            for scope, entry in docker.items():
                url = _entry_url(entry, f"{path}: docker.{scope}")
                if url is None:
                    continue
                if scope in seen:
                    raise TrustError(f"{path}: docker.{scope} is also defined in {seen[scope]}")
                seen[scope] = path
                config.scopes[str(scope)] = url
    return config


def signature_url(base: str, ref: ImageReference, manifest_digest: str, index: int) -> str:
    algo, _, hex_ = manifest_digest.partition(":")
    return f"{base}/{ref.repository}@{algo}={hex_}/signature-{index}"


def fetch_signatures(
    source: SignatureSource, base: str, ref: ImageReference, manifest_digest: str
) -> list[tuple[str, bytes]]:
    """(url, bytes) of signature-1, -2, ... until one is missing."""
    result: list[tuple[str, bytes]] = []
    for index in range(1, MAX_SIGNATURES + 2):
        url = signature_url(base, ref, manifest_digest, index)
        data = source.get_url(url)
        if data is None:
            return result
        if index > MAX_SIGNATURES:
            raise TrustError(f"{ref}: more than {MAX_SIGNATURES} signatures at {base}; refusing")
        if len(data) > MAX_SIGNATURE_SIZE:
            raise TrustError(f"{url}: signature larger than {MAX_SIGNATURE_SIZE} bytes")
        result.append((url, data))
    return result


def write_signature(directory: Path, repository: str, manifest_digest: str, data: bytes) -> Path:
    """Store `data` as the next free signature-N of the image, atomically."""
    algo, _, hex_ = manifest_digest.partition(":")
    target = directory / f"{repository}@{algo}={hex_}"
    target.mkdir(parents=True, exist_ok=True)
    for index in range(1, MAX_SIGNATURES + 1):
        path = target / f"signature-{index}"
        if path.exists():
            continue
        staged = target / f".signature-{index}.{os.getpid()}.tmp"
        staged.write_bytes(data)
        try:
            os.link(staged, path)  # fails if another signer took the index meanwhile
        except FileExistsError:
            continue
        finally:
            staged.unlink()
        return path
    raise TrustError(f"{target}: already has {MAX_SIGNATURES} signatures")
