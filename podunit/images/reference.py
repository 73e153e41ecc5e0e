"""Image references in containers-transports(5) syntax.

    oci:PATH[:TAG]              OCI image layout directory
    oci-archive:PATH[:TAG]      tar of an OCI image layout
    docker-archive:PATH[:REF]   `docker save` output
    docker://NAME[:TAG][@DIGEST]  registry; a bare NAME means the same

Registry names are normalised as Docker does: `busybox` is
`docker.io/library/busybox:latest`. Parsing is pure and cheap; nothing here
touches the file system or the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LOCAL_TRANSPORTS = ("oci", "oci-archive", "docker-archive")
TRANSPORTS = ("docker", *LOCAL_TRANSPORTS)
DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"

# Grammar of github.com/distribution/reference, written out here.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}"
_PATH = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_NAMED_RE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_TAG_RE = re.compile(rf"^{_TAG}$")
SHA256_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class ReferenceError(ValueError):
    """The text is not a valid image reference; the message says why."""


@dataclass(frozen=True)
class ImageReference:
    """A parsed reference. For registries `path` is `DOMAIN/REPO`; for local
    transports it is the file system path and `tag` the optional tag/ref."""

    transport: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def is_local(self) -> bool:
        return self.transport in LOCAL_TRANSPORTS

    @property
    def domain(self) -> str:
        return self.path.split("/", 1)[0] if self.transport == "docker" else ""

    @property
    def repository(self) -> str:
        return self.path.split("/", 1)[1] if self.transport == "docker" else self.path

    def __str__(self) -> str:
        if self.transport == "docker":
            text = f"docker://{self.path}"
            if self.tag:
                text += f":{self.tag}"
            if self.digest:
                text += f"@{self.digest}"
            return text
        return f"{self.transport}:{self.path}" + (f":{self.tag}" if self.tag else "")


def parse_reference(text: str) -> ImageReference:
    """Parse `text`; raise ReferenceError with a one-line reason."""
    if not text or text != text.strip():
        raise ReferenceError("an image reference must be non-empty without surrounding spaces")
    transport, sep, rest = text.partition(":")
    if sep and transport in LOCAL_TRANSPORTS:
        return _parse_local(transport, rest)
    if transport == "docker" and rest.startswith("//"):
        return parse_registry_name(rest[2:])
    if sep and rest.startswith("/"):
        # "foo:/x" cannot be NAME:TAG (tags have no slash): a transport typo.
        raise ReferenceError(f'unknown transport "{transport}" (known: {", ".join(TRANSPORTS)})')
    return parse_registry_name(text)


def _parse_local(transport: str, rest: str) -> ImageReference:
    if not rest:
        raise ReferenceError(f"{transport}: needs a path")
    path, tag = rest, None
    # The tag is whatever follows the last colon, when that colon is after the
    # last slash (paths may contain colons, tags never contain slashes).
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        path, tag = rest[:colon], rest[colon + 1 :]
        if not path:
            raise ReferenceError(f"{transport}: needs a path before the tag")
        if transport != "docker-archive" and not _TAG_RE.match(tag):
            raise ReferenceError(f'{transport}: "{tag}" is not a valid tag')
    if "\0" in path:
        raise ReferenceError(f"{transport}: path contains a NUL byte")
    return ImageReference(transport, path, tag or None)


def parse_registry_name(name: str) -> ImageReference:
    """Docker-normalise NAME[:TAG][@DIGEST] into a docker:// reference."""
    match = _NAMED_RE.match(name)
    if match is None:
        raise ReferenceError(f'"{name}" is not a valid image reference')
    domain, path = match["domain"], match["path"]
    if domain and not ("." in domain or ":" in domain or domain == "localhost"):
        # The first component is part of the repository, not a registry host.
        path, domain = f"{domain}/{path}", None
    if domain is None:
        if path.lower() != path:
            raise ReferenceError(f'"{name}": repository names must be lowercase')
        domain = DEFAULT_REGISTRY
    if domain == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if len(f"{domain}/{path}") > 255:
        raise ReferenceError(f'"{name}": repository name is longer than 255 characters')
    digest = match["digest"]
    if digest is not None and digest.startswith("sha256:") and not SHA256_RE.match(digest):
        raise ReferenceError(f'"{name}": "{digest}" is not sha256: and 64 lowercase hex digits')
    tag = match["tag"] or (None if digest else DEFAULT_TAG)
    return ImageReference("docker", f"{domain}/{path}", tag, digest)
