"""`docker save` archives (docker-archive:PATH[:REF]), read in place.

Both forms have a top-level `manifest.json`: a list of
`{"Config": FILE, "RepoTags": [...], "Layers": [FILE, ...]}`. The legacy
form names files `<sha256>.json` and `<id>/layer.tar`; since Docker 25 the
archive is also an OCI layout and the files are `blobs/sha256/<hex>`.

There is no registry manifest in either, so we build a Docker schema 2
manifest for the store to follow, from what can be verified:

* the config's digest is its file name (`<hex>.json` or `blobs/sha256/<hex>`);
  the store refuses the config if its content does not hash to that name;
* an uncompressed layer tar's digest is its diff_id, which the config lists;
  the store checks the tar against it while unpacking;
* a compressed layer (some OCI-form archives) must be named by its digest.

So nothing in the archive is trusted beyond the config file name, which is
what `docker load` trusts too. Members are streamed out of the tar, never
extracted.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any

from podunit.errors import ImageError, IntegrityError
from podunit.images.compress import OCI_LAYER
from podunit.images.digest import MAX_JSON_SIZE, Descriptor, check_digest, parse_json_object
from podunit.images.oci import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    open_archive,
    open_member,
    parse_config,
)
from podunit.images.reference import ImageReference, ReferenceError, parse_registry_name

LAYER_TYPES = {"none": OCI_LAYER, "gzip": OCI_LAYER + "+gzip", "zstd": OCI_LAYER + "+zstd"}
_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}


def _member_name(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _digest_from_name(name: str) -> str | None:
    """`<hex>.json`, `<hex>.tar` or `blobs/sha256/<hex>` -> sha256:<hex>."""
    base = name.rsplit("/", 1)[-1]
    if name.startswith("blobs/sha256/"):
        hex_ = base
    elif base.endswith((".json", ".tar")) and "/" not in name:
        hex_ = base.rsplit(".", 1)[0]
    else:
        return None
    try:
        check_digest("sha256:" + hex_)
    except IntegrityError:
        return None
    return "sha256:" + hex_


def _normalise_tag(text: str) -> str | None:
    try:
        ref = parse_registry_name(text)
    except ReferenceError:
        return None
    return f"{ref.path}:{ref.tag}" if ref.tag else ref.path


class DockerArchive:
    """A BlobSource over a `docker save` tar."""

    def __init__(self, ref: ImageReference, tf: tarfile.TarFile) -> None:
        self.description = str(ref)
        self._tf = tf
        self._members: dict[str, tarfile.TarInfo] = {}
        for member in tf.getmembers():
            self._members[_member_name(member.name)] = member  # later duplicates win
        entries = self._manifest_entries()
        self.entry = self._choose(entries, ref.tag)
        self.repo_tags: list[str] = [
            t for t in self.entry.get("RepoTags") or [] if isinstance(t, str)
        ]
        self._blobs: dict[str, str] = {}  # digest -> member name
        self._manifest = self._synthesise()

    # ---- reading members ----------------------------------------------------------

    def _open(self, name: str) -> IO[bytes]:
        return open_member(self._tf, self._members.get(_member_name(name)), name, self.description)

    def _read_small(self, name: str) -> bytes:
        with self._open(name) as f:
            data = f.read(MAX_JSON_SIZE + 1)
        if len(data) > MAX_JSON_SIZE:
            raise ImageError(f"{self.description}: {name} is too large")
        return data

    def _manifest_entries(self) -> list[dict[str, Any]]:
        try:
            doc = json.loads(self._read_small("manifest.json"))
        except ValueError as exc:
            raise IntegrityError(f"{self.description}: manifest.json: {exc}") from None
        if not isinstance(doc, list) or not doc or not all(isinstance(e, dict) for e in doc):
            raise IntegrityError(f"{self.description}: manifest.json is not a list of images")
        return doc

    def _choose(self, entries: list[dict[str, Any]], wanted: str | None) -> dict[str, Any]:
        if wanted is None:
            if len(entries) != 1:
                raise ImageError(
                    f"{self.description}: {len(entries)} images in the archive, name one with "
                    ":REF or :@INDEX"
                )
            return entries[0]
        if wanted.startswith("@") and wanted[1:].isdigit():
            index = int(wanted[1:])
            if index >= len(entries):
                raise ImageError(f"{self.description}: no image @{index}")
            return entries[index]
        target = _normalise_tag(wanted)
        for entry in entries:
            tags = [_normalise_tag(t) for t in entry.get("RepoTags") or [] if isinstance(t, str)]
            if target is not None and target in tags:
                return entry
        raise ImageError(f'{self.description}: no image tagged "{wanted}"')

    # ---- the synthesised manifest ---------------------------------------------------

    def _synthesise(self) -> bytes:
        config_name = self.entry.get("Config")
        layer_names = self.entry.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list):
            raise IntegrityError(f"{self.description}: manifest.json entry lacks Config/Layers")
        config_digest = _digest_from_name(_member_name(config_name))
        if config_digest is None:
            raise IntegrityError(
                f"{self.description}: config {config_name!r} is not named by its digest, "
                "so it cannot be verified"
            )
        config_data = self._read_small(config_name)
        self._blobs[config_digest] = config_name
        _, diff_ids = parse_config(
            parse_json_object(config_data, f"config {config_name}"), f"config {config_name}"
        )
        if len(diff_ids) != len(layer_names):
            raise IntegrityError(
                f"{self.description}: {len(layer_names)} layers but the config lists "
                f"{len(diff_ids)} diff_ids"
            )
        layers = [self._layer(n, d) for n, d in zip(layer_names, diff_ids, strict=True)]
        doc = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": DOCKER_CONFIG,
                "digest": config_digest,
                "size": self._members[_member_name(config_name)].size,
            },
            "layers": layers,
        }
        return json.dumps(doc, sort_keys=True).encode()

    def _layer(self, name: object, diff_id: str) -> dict[str, Any]:
        if not isinstance(name, str):
            raise IntegrityError(f"{self.description}: layer names must be strings")
        with self._open(name) as f:
            head = f.read(4)
        kind = _MAGIC.get(head) or _MAGIC.get(head[:2]) or "none"
        if kind == "none":
            digest = diff_id  # an uncompressed layer's digest is its diff_id
        else:
            named = _digest_from_name(_member_name(name))
            if named is None:
                raise IntegrityError(
                    f"{self.description}: compressed layer {name!r} is not named by its digest"
                )
            digest = named
        self._blobs[digest] = name
        size = self._members[_member_name(name)].size
        return {"mediaType": LAYER_TYPES[kind], "digest": digest, "size": size}

    # ---- BlobSource -----------------------------------------------------------------

    def read_index(self) -> bytes:
        digest = "sha256:" + hashlib.sha256(self._manifest).hexdigest()
        desc = {"mediaType": DOCKER_MANIFEST, "digest": digest, "size": len(self._manifest)}
        self._blobs[digest] = ""
        return json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode()

    def open_blob(self, desc: Descriptor) -> AbstractContextManager[IO[bytes]]:
        check_digest(desc.digest)
        name = self._blobs.get(desc.digest)
        if name is None:
            raise ImageError(f"{self.description}: no blob {desc.digest} in the archive")
        if name == "":
            return io.BytesIO(self._manifest)
        return self._open(name)


@contextlib.contextmanager
def open_docker_archive(ref: ImageReference) -> Iterator[DockerArchive]:
    with open_archive(ref, Path(ref.path)) as tf:
        yield DockerArchive(ref, tf)


def archive_kind(path: Path) -> str:
    """ "docker-archive" or "oci-archive", from the members of the tar at path."""
    try:
        with tarfile.open(path, mode="r:*") as tf:
            names = {_member_name(m.name) for m in tf.getmembers()}
    except FileNotFoundError:
        raise ImageError(f"{path} does not exist") from None
    except (tarfile.TarError, OSError) as exc:
        raise ImageError(f"{path}: not a readable tar archive: {exc}") from None
    if "manifest.json" in names:
        return "docker-archive"
    if "oci-layout" in names and "index.json" in names:
        return "oci-archive"
    raise ImageError(f"{path}: neither a docker-archive (manifest.json) nor an oci-archive")
