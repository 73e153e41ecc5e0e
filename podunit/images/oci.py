"""OCI image layouts (directories and tar archives) and the JSON documents in them.

A source only hands out raw, unverified blob streams; the store verifies
them. Choosing the manifest (by tag, then by platform through nested
indexes) and parsing manifests and configs happens here, on bytes the
store has already checked against their digests.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from podunit.errors import ImageError, IntegrityError
from podunit.images.digest import (
    MAX_JSON_SIZE,
    Descriptor,
    check_digest,
    parse_descriptor,
    parse_json_object,
)
from podunit.images.reference import ImageReference

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
REF_NAME = "org.opencontainers.image.ref.name"
MAX_INDEX_DEPTH = 4

# uname machine -> GOARCH (what image platforms are written in).
GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


@dataclass(frozen=True)
class ImageConfig:
    """The parts of the image config's "config" object podunit uses."""

    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    env: tuple[str, ...]
    working_dir: str
    user: str


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]


class BlobSource(Protocol):
    """Where blobs come from: streams are raw and unverified."""

    description: str

    def read_index(self) -> bytes: ...

    def open_blob(self, desc: Descriptor) -> AbstractContextManager[IO[bytes]]: ...


# Fetch a small JSON blob verified against its descriptor (the store's job).
Fetch = Callable[[Descriptor, str], bytes]


def _check_layout_file(data: bytes, where: str) -> None:
    doc = parse_json_object(data, f"{where}/oci-layout")
    version = doc.get("imageLayoutVersion")
    if version != "1.0.0":
        raise ImageError(f"{where}: unsupported imageLayoutVersion {version!r} (need 1.0.0)")


def _open_regular(path: Path, where: str) -> IO[bytes]:
    # O_NONBLOCK so that a FIFO planted in the layout cannot hang us; it is
    # then refused as not a regular file.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ImageError(f"{where}: {path.name} is missing") from None
    except OSError as exc:
        raise ImageError(f"{where}: cannot open {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageError(f"{where}: {path} is not a regular file")
    os.set_blocking(fd, True)
    return open(fd, "rb", buffering=0)


class LayoutDir:
    """An OCI image layout directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"oci:{path}"
        if not path.is_dir():
            raise ImageError(f"{self.description}: not a directory")
        with _open_regular(path / "oci-layout", self.description) as f:
            _check_layout_file(f.read(4096), self.description)

    def read_index(self) -> bytes:
        with _open_regular(self.path / "index.json", self.description) as f:
            return f.read(MAX_JSON_SIZE + 1)

    def open_blob(self, desc: Descriptor) -> AbstractContextManager[IO[bytes]]:
        hex_ = check_digest(desc.digest)
        return _open_regular(self.path / "blobs" / "sha256" / hex_, self.description)


class LayoutArchive:
    """A tar of an OCI image layout, read in place: members are streamed
    straight out of the archive, nothing is extracted."""

    def __init__(self, path: Path, tf: tarfile.TarFile) -> None:
        self.description = f"oci-archive:{path}"
        self._tf = tf
        self._members: dict[str, tarfile.TarInfo] = {}
        for member in tf.getmembers():
            name = "/".join(p for p in member.name.split("/") if p not in ("", "."))
            self._members[name] = member  # later duplicates win, as for tar
        with self._open("oci-layout") as f:
            _check_layout_file(f.read(4096), self.description)

    def _open(self, name: str) -> IO[bytes]:
        return open_member(self._tf, self._members.get(name), name, self.description)

    def read_index(self) -> bytes:
        with self._open("index.json") as f:
            return f.read(MAX_JSON_SIZE + 1)

    def open_blob(self, desc: Descriptor) -> AbstractContextManager[IO[bytes]]:
        return self._open("blobs/sha256/" + check_digest(desc.digest))


@contextlib.contextmanager
def open_source(ref: ImageReference) -> Iterator[BlobSource]:
    """Open the layout or archive named by an oci: or oci-archive: reference."""
    path = Path(ref.path)
    if ref.transport == "oci":
        yield LayoutDir(path)
        return
    if ref.transport != "oci-archive":
        raise ImageError(f"{ref}: the {ref.transport} transport is not supported yet")
    with open_archive(ref, path) as tf:
        yield LayoutArchive(path, tf)


def open_member(
    tf: tarfile.TarFile, member: tarfile.TarInfo | None, name: str, description: str
) -> IO[bytes]:
    """A regular file of an image archive; anything else (missing, link,
    device) is refused: archives are hostile."""
    if member is None:
        raise ImageError(f"{description}: {name} is missing from the archive")
    if not member.isreg():
        raise ImageError(f"{description}: {name} is not a regular file in the archive")
    f = tf.extractfile(member)
    assert f is not None  # regular members always have a file object
    return f


@contextlib.contextmanager
def open_archive(ref: ImageReference, path: Path) -> Iterator[tarfile.TarFile]:
    """The tar file behind an archive transport; errors name the reference,
    including a corrupt member found while the caller reads it."""
    try:
        tf = tarfile.open(path, mode="r:*")
    except FileNotFoundError:
        raise ImageError(f"{ref}: {path} does not exist") from None
    except (tarfile.TarError, OSError) as exc:
        raise ImageError(f"{ref}: cannot read archive: {exc}") from None
    with tf:
        try:
            yield tf
        except tarfile.TarError as exc:
            raise ImageError(f"{ref}: corrupt archive: {exc}") from None


def host_platform() -> tuple[str, str]:
    machine = os.uname().machine  # what platform.machine() returns, without its import
    return "linux", GOARCH.get(machine, machine)


def _descriptors(doc: dict[str, Any], key: str, what: str) -> list[Descriptor]:
    raw = doc.get(key)
    if not isinstance(raw, list):
        raise IntegrityError(f"{what}: {key} is not a list")
    return [parse_descriptor(d, f"{what} {key}[{i}]") for i, d in enumerate(raw)]


def _by_tag(index: list[Descriptor], tag: str | None, where: str) -> Descriptor:
    if tag is None:
        if len(index) != 1:
            tags = sorted({d.annotations.get(REF_NAME, "") for d in index} - {""})
            raise ImageError(
                f"{where}: {len(index)} images in the layout, name one with :TAG "
                f"(tags: {', '.join(tags) or 'none'})"
            )
        return index[0]
    found = [d for d in index if d.annotations.get(REF_NAME) == tag]
    if not found:
        tags = sorted({d.annotations.get(REF_NAME, "") for d in index} - {""})
        raise ImageError(f'{where}: no image tagged "{tag}" (tags: {", ".join(tags) or "none"})')
    if len(found) > 1:
        matching = [d for d in found if _platform_matches(d)]
        if len(matching) != 1:
            raise ImageError(f'{where}: several images are tagged "{tag}"')
        return matching[0]
    return found[0]


def _platform_matches(desc: Descriptor) -> bool:
    if desc.platform is None:
        return False
    os_name, arch = host_platform()
    return desc.platform.os == os_name and desc.platform.architecture == arch


def _pick_platform(manifests: list[Descriptor], what: str) -> Descriptor:
    candidates = []
    for desc in manifests:
        if desc.annotations.get("vnd.docker.reference.type") == "attestation-manifest":
            continue  # buildkit provenance/SBOM, not runnable
        if desc.media_type not in MANIFEST_TYPES + INDEX_TYPES:
            continue
        if _platform_matches(desc):
            candidates.append(desc)
    if not candidates:
        os_name, arch = host_platform()
        raise ImageError(f"{what}: no image for platform {os_name}/{arch}")
    # arm64 images may carry variant "v8"; prefer it or no variant at all.
    candidates.sort(key=lambda d: d.platform is not None and d.platform.variant not in ("", "v8"))
    return candidates[0]


def check_media_type(doc: dict[str, Any], desc: Descriptor, what: str) -> None:
    """The document's own mediaType must be what it was referenced as."""
    declared = doc.get("mediaType")
    if declared is not None and declared != desc.media_type:
        raise IntegrityError(
            f"{what} {desc.digest}: referenced as {desc.media_type or 'no media type'} "
            f"but declares {declared}"
        )
    if desc.media_type in MANIFEST_TYPES and "manifests" in doc:
        raise IntegrityError(f"{what} {desc.digest}: referenced as a manifest but is an index")
    if desc.media_type in INDEX_TYPES and "layers" in doc:
        raise IntegrityError(f"{what} {desc.digest}: referenced as an index but is a manifest")


def select_manifest(
    source: BlobSource, tag: str | None, fetch: Fetch
) -> tuple[Descriptor, dict[str, Any]]:
    """Follow index.json (by tag) and nested indexes (by platform) to a manifest."""
    raw = source.read_index()
    if len(raw) > MAX_JSON_SIZE:
        raise ImageError(f"{source.description}: index.json is too large")
    index = parse_json_object(raw, f"{source.description}/index.json")
    desc = _by_tag(_descriptors(index, "manifests", "index.json"), tag, source.description)
    for _ in range(MAX_INDEX_DEPTH):
        if desc.media_type not in INDEX_TYPES + MANIFEST_TYPES:
            raise ImageError(
                f"{source.description}: {desc.digest}: unsupported media type {desc.media_type!r}"
            )
        kind = "index" if desc.media_type in INDEX_TYPES else "manifest"
        doc = parse_json_object(fetch(desc, kind), f"{kind} {desc.digest}")
        check_media_type(doc, desc, kind)
        if kind == "manifest":
            return desc, doc
        desc = _pick_platform(_descriptors(doc, "manifests", f"index {desc.digest}"), kind)
    raise ImageError(f"{source.description}: image indexes nested too deeply")


def parse_manifest(doc: dict[str, Any], desc: Descriptor) -> Manifest:
    what = f"manifest {desc.digest}"
    if doc.get("schemaVersion") != 2:
        raise ImageError(f"{what}: unsupported schemaVersion {doc.get('schemaVersion')!r}")
    config = parse_descriptor(doc.get("config"), f"{what} config")
    if config.media_type not in CONFIG_TYPES:
        raise ImageError(f"{what}: config media type {config.media_type!r} is not an image")
    return Manifest(config, tuple(_descriptors(doc, "layers", what)))


def _strings(value: object, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise IntegrityError(f"{what}: must be a list of strings")
    return tuple(value)


def _string(value: object, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise IntegrityError(f"{what}: must be a string")
    return value


def parse_config(doc: dict[str, Any], what: str) -> tuple[ImageConfig, tuple[str, ...]]:
    """ImageConfig and the layer diff_ids of an image config document."""
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise IntegrityError(f'{what}: rootfs.type must be "layers"')
    diff_ids = _strings(rootfs.get("diff_ids"), f"{what}: rootfs.diff_ids") or ()
    for i, diff_id in enumerate(diff_ids):
        check_digest(diff_id, f"{what}: rootfs.diff_ids[{i}]")
    cfg = doc.get("config") or {}
    if not isinstance(cfg, dict):
        raise IntegrityError(f"{what}: config is not an object")
    image_config = ImageConfig(
        entrypoint=_strings(cfg.get("Entrypoint"), f"{what}: Entrypoint"),
        cmd=_strings(cfg.get("Cmd"), f"{what}: Cmd"),
        env=_strings(cfg.get("Env"), f"{what}: Env") or (),
        working_dir=_string(cfg.get("WorkingDir"), f"{what}: WorkingDir"),
        user=_string(cfg.get("User"), f"{what}: User"),
    )
    return image_config, diff_ids
