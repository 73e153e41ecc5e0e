"""Store maintenance: list, tag, remove, garbage-collect and verify.

What pods use is read from their plans (`RUNTIME/sandboxes/*/plan.json`), for
pods in any state: a stopped pod may be started again and its overlay needs
every lower layer it was planned with. An unreadable plan makes gc refuse
to run rather than guess: deleting a layer a pod needs is not repairable.

gc and rmi hold the store lock exclusively; pulls hold it shared. So gc
never sees a pull's published-but-not-yet-recorded blobs as garbage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podunit.errors import ImageError
from podunit.images.digest import CHUNK, check_digest, parse_json_object
from podunit.images.reference import ImageReference, ReferenceError, parse_reference
from podunit.images.store import Image, ImageStore
from podunit.paths import SANDBOXES

log = logging.getLogger(__name__)


@dataclass
class InUse:
    references: set[str] = field(default_factory=set)  # store keys of pods' images
    layers: set[str] = field(default_factory=set)  # diff_id hex of pods' layers
    pods: dict[str, set[str]] = field(default_factory=dict)  # store key -> pod names


def pods_in_use(store: ImageStore, runtime: Path) -> InUse:
    """Images and layers that pods (running, stopped or failed) are planned on."""
    used = InUse()
    # "pods" is where plans lived before they moved to SANDBOXES; a pod started
    # by an older podunit must still protect its layers.
    plans = [*(runtime / SANDBOXES).glob("*/plan.json"), *(runtime / "pods").glob("*/plan.json")]
    for plan_path in sorted(plans):
        try:
            plan = json.loads(plan_path.read_bytes())
            apps = plan["init_apps"] + plan["apps"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ImageError(
                f"{plan_path}: unreadable pod plan ({exc}); not removing images"
            ) from None
        for app in apps:
            for layer in app.get("layers", []):
                used.layers.add(Path(layer).parent.name)
            with contextlib.suppress(ReferenceError, TypeError):
                key = store._key(parse_reference(app["image"]))
                used.references.add(key)
                used.pods.setdefault(key, set()).add(plan.get("name", plan_path.parent.name))
    return used


def _records(store: ImageStore) -> Iterator[tuple[Path, dict[str, Any]]]:
    try:
        paths = sorted(store.images.glob("*.json"))
    except OSError:
        return
    for path in paths:
        try:
            record = parse_json_object(path.read_bytes(), str(path))
        except (OSError, ImageError) as exc:
            log.warning("%s: unreadable image record: %s", path, exc)
            continue
        yield path, record


def list_images(store: ImageStore) -> list[dict[str, Any]]:
    """ref, digest, size, created of every stored image."""
    out = []
    for _, record in _records(store):
        out.append(
            {
                "ref": record.get("reference"),
                "digest": record.get("manifest_digest"),
                "config_digest": record.get("config_digest"),
                "size": record.get("size", 0),
                "created": record.get("created", ""),
            }
        )
    return sorted(out, key=lambda x: str(x["ref"]))


def tag_image(store: ImageStore, image: Image, ref: ImageReference) -> None:
    """Record `image` (already stored) under another reference as well."""
    source = store.images / (hashlib.sha256(_key_of(store, image)).hexdigest() + ".json")
    record = parse_json_object(source.read_bytes(), str(source))
    record["reference"] = store._key(ref)
    tmp = store.images / f".{os.getpid()}.tag.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.rename(tmp, store._record_path(ref))


def _key_of(store: ImageStore, image: Image) -> bytes:
    return store._key(parse_reference(image.reference)).encode()


def remove_image(store: ImageStore, ref: ImageReference, runtime: Path) -> list[str]:
    """Remove the record of `ref` and whatever nothing else uses; refuses
    while a pod uses the image. Returns what was removed."""
    store._ensure_dirs()
    with store._lock("store"):
        used = pods_in_use(store, runtime)
        key = store._key(ref)
        if key in used.references:
            pods = ", ".join(sorted(used.pods[key]))
            raise ImageError(f"{ref}: in use by pod(s) {pods}; remove them first")
        path = store._record_path(ref)
        try:
            path.unlink()
        except FileNotFoundError:
            raise ImageError(f"{ref}: no such image in the store") from None
        return [str(ref), *_collect(store, used)]


def prune(store: ImageStore, runtime: Path, all_unused: bool = False) -> list[str]:
    """Remove unreferenced blobs and layers; with all_unused also every image
    no pod uses."""
    store._ensure_dirs()
    with store._lock("store"):
        store._clean_stale_tmp()
        used = pods_in_use(store, runtime)
        removed = []
        if all_unused:
            for path, record in list(_records(store)):
                if record.get("reference") not in used.references:
                    path.unlink()
                    removed.append(str(record.get("reference")))
        return removed + _collect(store, used)


def _referenced(store: ImageStore) -> tuple[set[str], set[str]]:
    """(blob hexes, layer hexes) reachable from image records."""
    blobs: set[str] = set()
    layers: set[str] = set()
    for _, record in _records(store):
        try:
            manifest_hex = check_digest(record.get("manifest_digest"))
            blobs.add(manifest_hex)
            blobs.add(check_digest(record.get("config_digest")))
            layers.update(check_digest(d) for d in record.get("diff_ids", []))
            with open(store.blobs / manifest_hex, "rb") as f:
                manifest = json.loads(f.read(8 << 20))
            blobs.update(check_digest(x.get("digest")) for x in manifest.get("layers", []))
        except (ImageError, OSError, ValueError, AttributeError) as exc:
            log.warning("record %s: %s", record.get("reference"), exc)
    return blobs, layers


def _collect(store: ImageStore, used: InUse) -> list[str]:
    blobs, layers = _referenced(store)
    layers |= used.layers
    removed = []
    for entry in os.scandir(store.layers):
        if entry.name not in layers:
            # Rename first so that a crash mid-rmtree leaves no half layer
            # that looks complete; tmp is cleaned by later pulls.
            doomed = store.tmp / f"gc-{entry.name}"
            os.rename(entry.path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            removed.append(f"layer sha256:{entry.name}")
    for entry in os.scandir(store.blobs):
        if entry.name not in blobs:
            os.unlink(entry.path)
            removed.append(f"blob sha256:{entry.name}")
    return removed


@dataclass
class VerifyReport:
    checked: int = 0
    corrupt: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)  # image refs missing blobs/layers
    repaired: list[str] = field(default_factory=list)


def verify_store(store: ImageStore, repair: bool = False) -> VerifyReport:
    """Re-hash every blob; find images whose blobs or layers are missing.
    With repair, remove corrupt blobs and the records of broken images (a
    later pull fetches them again); layers in use by pods are never touched."""
    report = VerifyReport()
    store._ensure_dirs()
    with store._lock("store"):
        for entry in sorted(os.scandir(store.blobs), key=lambda e: e.name):
            report.checked += 1
            h = hashlib.sha256()
            with open(entry.path, "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
            if h.hexdigest() != entry.name:
                report.corrupt.append(f"sha256:{entry.name}")
                if repair:
                    os.unlink(entry.path)
                    report.repaired.append(f"removed corrupt blob sha256:{entry.name}")
        for path, record in list(_records(store)):
            ref = str(record.get("reference"))
            if store.lookup(parse_reference(ref)) is None or _missing_blobs(store, record):
                report.incomplete.append(ref)
                if repair:
                    path.unlink()
                    report.repaired.append(f"removed record of {ref} (pull it again)")
    return report


def _missing_blobs(store: ImageStore, record: dict[str, Any]) -> bool:
    try:
        return not (store.blobs / check_digest(record.get("manifest_digest"))).is_file()
    except ImageError:
        return True
