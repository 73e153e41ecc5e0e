"""Docker names in signatures and the signedIdentity rules of containers-policy.json(5).

A signature names the image it vouches for ("docker-reference"); the policy says how that
name must relate to the reference being pulled. Names are compared in their normalised
form ("busybox" is "docker.io/library/busybox"), but unlike a pull reference a signed name
keeps the difference between "repo" and "repo:latest": matchExact cares.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from podunit.images.reference import ImageReference, ReferenceError, parse_registry_name

IDENTITY_TYPES = (
    "matchRepoDigestOrExact",
    "matchExact",
    "matchRepository",
    "exactReference",
    "exactRepository",
    "remapIdentity",
)
_HOST_RE = re.compile(
    r"^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?$"
)


@dataclass(frozen=True)
class DockerName:
    """A normalised docker name (DOMAIN/REPO), with the tag and digest as written."""

    name: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_docker_name(text: str) -> DockerName:
    """Parse NAME[:TAG][@DIGEST] Docker-normalised; ReferenceError if invalid."""
    ref = parse_registry_name(text)
    # parse_registry_name adds ":latest" to bare names; find out whether TAG was written.
    without_digest = text.split("@", 1)[0]
    tagged = ":" in without_digest.rsplit("/", 1)[-1]
    return DockerName(ref.path, ref.tag if tagged else None, ref.digest)


def image_name(ref: ImageReference) -> DockerName | None:
    """What a signature must name for `ref`; None for local transports (no docker name).
    A reference with a digest is identified by it: that is what was pulled."""
    if ref.transport != "docker":
        return None
    if ref.digest:
        return DockerName(ref.path, None, ref.digest)
    return DockerName(ref.path, ref.tag, None)


def is_host(text: str) -> bool:
    return bool(_HOST_RE.match(text))


def canonical_name(text: str) -> str | None:
    """The normalised form of a repository or namespace name, or None if invalid."""
    try:
        name = parse_docker_name(text)
    except ReferenceError:
        return None
    return name.name if name.tag is None and name.digest is None else None


@dataclass(frozen=True)
class Identity:
    """A signedIdentity object: `reference` is dockerReference or dockerRepository."""

    type: str = "matchRepoDigestOrExact"
    reference: str = ""
    prefix: str = ""
    signed_prefix: str = ""

    def describe(self) -> str:
        if self.type == "exactReference":
            return f"exactReference {self.reference}"
        if self.type == "exactRepository":
            return f"exactRepository {self.reference}"
        if self.type == "remapIdentity":
            return f"remapIdentity {self.prefix} -> {self.signed_prefix}"
        return self.type


def _remap(identity: Identity, image: DockerName) -> DockerName:
    prefix = identity.prefix
    text = str(image)
    # The prefix matches whole components only: "example.com/a" is not a prefix of
    # "example.com/ab", but is of "example.com/a", "example.com/a/b" and "example.com/a:tag".
    if not text.startswith(prefix):
        return image
    rest = text[len(prefix) :]
    if image.name != prefix and not rest.startswith("/"):
        return image
    try:
        return parse_docker_name(identity.signed_prefix + rest)
    except ReferenceError:
        return image


def _repo_digest_or_exact(image: DockerName, signed: DockerName) -> bool:
    if image.digest:
        return image.name == signed.name
    return image == signed


def identity_mismatch(identity: Identity, image: DockerName | None, signed: DockerName) -> str:
    """Why `signed` does not satisfy `identity` for `image`; "" when it does."""
    kind = identity.type
    if kind == "exactReference":
        ok = signed == parse_docker_name(identity.reference)
    elif kind == "exactRepository":
        ok = signed.name == identity.reference
    elif image is None:
        return (
            f"the signature names {signed}, but this image has no docker reference to compare "
            f"it with ({kind}); use exactReference or exactRepository for local images"
        )
    elif kind == "matchExact":
        ok = image == signed
    elif kind == "matchRepository":
        ok = image.name == signed.name
    elif kind == "remapIdentity":
        ok = _repo_digest_or_exact(_remap(identity, image), signed)
    else:  # matchRepoDigestOrExact, the default
        ok = _repo_digest_or_exact(image, signed)
    if ok:
        return ""
    return (
        f"the signature is for {signed}, which does not match {image or 'the image'} "
        f"under signedIdentity {identity.describe()}"
    )
