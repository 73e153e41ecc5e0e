"""The content-addressed image store.

Layout under the state dir ROOT (all directories 0700: layers hold setuid
binaries that host users must not reach):

    blobs/sha256/<hex>               verified blobs (manifests, configs, layers), 0444
    layers/sha256/<diffid-hex>/rootfs   unpacked layer, an overlayfs lowerdir
    images/<sha256 of reference>.json   manifest digest, config digest, diff_ids
    tmp/<token>/                     one pull's partial work
    locks/tmp-<token>.lock           held (flock) by the pull owning tmp/<token>
    locks/sha256-<diffid-hex>.lock   held while that layer is being unpacked

Crash safety: everything is built in tmp/<token> and renamed into place only
after it is complete and verified, image record last, so `kill -9` at any
point leaves complete things or nothing. A later pull removes tmp entries
whose lock nobody holds. Concurrency: layer locks are taken in sorted order
(no deadlock between pulls sharing layers) and presence is re-checked under
the lock, so each layer is unpacked once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from podunit.errors import ImageError, IntegrityError
from podunit.images.digest import (
    CHUNK,
    Descriptor,
    HashingReader,
    Readable,
    check_digest,
    parse_json_object,
    read_verified,
)
from podunit.images.oci import (
    BlobSource,
    ImageConfig,
    open_source,
    parse_config,
    parse_manifest,
    select_manifest,
)
from podunit.images.reference import ImageReference

if TYPE_CHECKING:
    from podunit.images.progress import Progress
    from podunit.images.signatures import SignatureSource, Verifier

__all__ = ["Image", "ImageConfig", "ImageStore"]

log = logging.getLogger(__name__)

SUPPORTED_TRANSPORTS = ("oci", "oci-archive", "docker", "docker-archive")
DEFAULT_BOMB_MIN = 1 << 30
DEFAULT_BOMB_RATIO = 100
DEFAULT_WORKERS = 4  # layers fetched and unpacked at once
MIN_FREE_FLOOR = 256 << 20
SPACE_CHECK_EVERY = 16 << 20  # bytes written between free-space checks
# Read layers ahead in a thread (prefetch.py); PODUNIT_PREFETCH=0 turns it off
# (for comparing, and for debugging with one thread per layer).
PREFETCH = os.environ.get("PODUNIT_PREFETCH", "1") != "0"


def default_min_free() -> int | None:
    """`$PODUNIT_MIN_FREE` (bytes) or None: the larger of 256 MiB and 1% of the fs."""
    text = os.environ.get("PODUNIT_MIN_FREE", "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ImageError(f"PODUNIT_MIN_FREE={text!r}: expected a number of bytes") from None


@dataclass(frozen=True)
class Image:
    reference: str
    manifest_digest: str
    config_digest: str
    config: ImageConfig
    layers: tuple[Path, ...]  # lowest layer first


@dataclass
class _Pull:
    """One pull's staging area: things to publish once all is verified."""

    work: Path
    source: BlobSource
    progress: Progress | None = None
    blobs: dict[str, Path] = field(default_factory=dict)  # final path -> staged file
    layers: dict[str, Path] = field(default_factory=dict)  # diff hex -> staged layer dir
    fetched: dict[str, bytes] = field(default_factory=dict)  # JSON docs, by digest
    cancel: threading.Event = field(default_factory=threading.Event)

    def staged_blob(self, name: str) -> Path:
        return self.work / f"blob-{name}"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Watched:
    """A stream that reports progress, stops when the pull is cancelled (a
    sibling layer failed) and refuses to go on when the disk is nearly full."""

    def __init__(
        self, src: Readable, pull: _Pull, digest: str | None, space: Callable[[], None]
    ) -> None:
        self._src = src
        self._pull = pull
        self._digest = digest
        self._space = space
        self._since_check = 0

    def read(self, size: int = CHUNK, /) -> bytes:
        if self._pull.cancel.is_set():
            raise ImageError("pull cancelled: another layer failed")
        data = self._src.read(size)
        self._since_check += len(data)
        if self._since_check >= SPACE_CHECK_EVERY:
            self._since_check = 0
            self._space()
        if data and self._digest and self._pull.progress is not None:
            self._pull.progress.layer_advance(self._digest, len(data))
        return data


class ImageStore:
    def __init__(
        self,
        root: Path,
        *,
        bomb_min: int = DEFAULT_BOMB_MIN,
        bomb_ratio: int = DEFAULT_BOMB_RATIO,
        keep_layer_blobs: bool = True,
        verifier: Verifier | None = None,
        min_free: int | None = None,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        self.root = Path(root)
        self.bomb_min = bomb_min
        self.bomb_ratio = bomb_ratio
        self.keep_layer_blobs = keep_layer_blobs
        self.verifier = verifier
        # None: the larger of 256 MiB and 1% of the file system (see _check_space).
        self.min_free = min_free if min_free is not None else default_min_free()
        self.workers = max(1, workers)
        self.blobs = self.root / "blobs" / "sha256"
        self.layers = self.root / "layers" / "sha256"
        self.images = self.root / "images"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self.unpacked: list[str] = []  # diff_ids unpacked by this object (logs, tests)

    # ---- public API -----------------------------------------------------------

    def layer_dir(self, diff_id: str) -> Path:
        """The overlayfs lowerdir of a layer (kept short: option strings are
        limited to one page)."""
        return self.layers / check_digest(diff_id) / "rootfs"

    def pull(self, ref: ImageReference, *, progress: Progress | None = None) -> Image:
        """Copy the image into the store, verifying everything; return it."""
        from podunit.images import compress  # imported on the first pull only

        if ref.transport not in SUPPORTED_TRANSPORTS:
            raise ImageError(f"{ref}: pulling from {ref.transport} is not supported yet")
        self._ensure_dirs()
        with contextlib.ExitStack() as stack:
            # Shared: pulls run side by side; gc/rmi take it exclusively so that
            # they never delete what a pull has published but not yet recorded.
            stack.enter_context(self._lock("store", shared=True))
            self._clean_stale_tmp()
            work = stack.enter_context(self._workdir())
            source = stack.enter_context(_open_source(ref))
            pull = _Pull(work, source, progress)
            mdesc, manifest, config, diff_ids = self._resolve(pull, ref)
            for desc in manifest.layers:
                compress.layer_compression(desc.media_type, f"layer {desc.digest}")  # fail early
            self._verify_trust(pull, ref, mdesc)
            self._unpack_missing(pull, stack, manifest.layers, diff_ids)
            self._publish(pull)
            record = {
                "reference": self._key(ref),
                "manifest_digest": mdesc.digest,
                "config_digest": manifest.config.digest,
                "diff_ids": list(diff_ids),
                "size": manifest.config.size + sum(d.size for d in manifest.layers),
                "created": config_created(pull.fetched.get(manifest.config.digest, b"")),
            }
            self._write_record(work, ref, record)
        return Image(
            str(ref),
            mdesc.digest,
            manifest.config.digest,
            config,
            tuple(self.layer_dir(d) for d in diff_ids),
        )

    def _resolve(
        self, pull: _Pull, ref: ImageReference
    ) -> tuple[Descriptor, Any, ImageConfig, tuple[str, ...]]:
        """Manifest descriptor, manifest, config and diff_ids, all verified."""
        tag = None if ref.transport in ("docker", "docker-archive") else ref.tag
        mdesc, mdoc = select_manifest(
            pull.source, tag, lambda d, what: self._fetch_json(pull, d, what)
        )
        manifest = parse_manifest(mdoc, mdesc)
        cdata = self._fetch_json(pull, manifest.config, "config")
        config, diff_ids = parse_config(
            parse_json_object(cdata, f"config {manifest.config.digest}"),
            f"config {manifest.config.digest}",
        )
        if len(manifest.layers) != len(diff_ids):
            raise IntegrityError(
                f"manifest {mdesc.digest}: {len(manifest.layers)} layers but config "
                f"{manifest.config.digest} lists {len(diff_ids)} diff_ids"
            )
        return mdesc, manifest, config, diff_ids

    def _verify_trust(self, pull: _Pull, ref: ImageReference, mdesc: Descriptor) -> None:
        """Ask the verifier about the top-level manifest (what the reference
        names: an index for multi-platform images, as signatures are made
        over it), before any layer is fetched."""
        if self.verifier is None:
            return
        top: tuple[str, bytes] | None = getattr(pull.source, "top", None)
        digest, data = top if top is not None else (mdesc.digest, pull.fetched[mdesc.digest])
        sig_source: SignatureSource | None = None
        if ref.transport == "docker":
            sig_source = pull.source  # type: ignore[assignment]  # RegistrySource
        self.verifier(ref, digest, data, sig_source)

    def lookup(self, ref: ImageReference) -> Image | None:
        """The stored image for `ref`, or None; never reads the source."""
        try:
            with open(self._record_path(ref), "rb") as f:
                record = parse_json_object(f.read(1 << 20), "image record")
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return self._image_from_record(ref, record)
        except (ImageError, OSError) as exc:
            log.warning("%s: stored image is incomplete or damaged (%s)", ref, exc)
            return None

    # ---- records ------------------------------------------------------------------

    @staticmethod
    def _key(ref: ImageReference) -> str:
        # Local paths are made absolute so "oci:img" and "oci:./img" are one image.
        if ref.is_local:
            ref = ImageReference(ref.transport, os.path.abspath(ref.path), ref.tag, ref.digest)
        return str(ref)

    def _record_path(self, ref: ImageReference) -> Path:
        return self.images / (hashlib.sha256(self._key(ref).encode()).hexdigest() + ".json")

    def _write_record(self, work: Path, ref: ImageReference, record: dict[str, Any]) -> None:
        staged = work / "record.json"
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, json.dumps(record, indent=1).encode() + b"\n")
        finally:
            os.close(fd)
        os.rename(staged, self._record_path(ref))

    def _image_from_record(self, ref: ImageReference, record: dict[str, Any]) -> Image:
        if record.get("reference") != self._key(ref):
            raise ImageError("record is for another reference")
        manifest_digest = record.get("manifest_digest")
        config_digest = record.get("config_digest")
        check_digest(manifest_digest, "record manifest_digest")
        hex_ = check_digest(config_digest, "record config_digest")
        with open(self.blobs / hex_, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = read_verified(f, Descriptor("", str(config_digest), size), "config")
        config, diff_ids = parse_config(parse_json_object(data, "config"), "config")
        if list(diff_ids) != record.get("diff_ids"):
            raise ImageError("record and config disagree on layers")
        layers = tuple(self.layer_dir(d) for d in diff_ids)
        for layer in layers:
            if not layer.is_dir():
                raise ImageError(f"layer {layer} is missing")
        return Image(str(ref), str(manifest_digest), str(config_digest), config, layers)

    # ---- blobs ----------------------------------------------------------------------

    def _fetch_json(self, pull: _Pull, desc: Descriptor, what: str) -> bytes:
        """A small blob, verified; from the store if there, else staged."""
        hex_ = check_digest(desc.digest, f"{what} digest")
        try:
            with open(self.blobs / hex_, "rb") as f:
                pull.fetched[desc.digest] = read_verified(f, desc, what)
                return pull.fetched[desc.digest]
        except FileNotFoundError:
            pass
        with pull.source.open_blob(desc) as f:
            data = read_verified(f, desc, what)
        pull.fetched[desc.digest] = data
        staged = pull.staged_blob(hex_)
        if not staged.exists():
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            pull.blobs[hex_] = staged
        return data

    # ---- layers ---------------------------------------------------------------------

    def _unpack_missing(
        self,
        pull: _Pull,
        stack: contextlib.ExitStack,
        layers: tuple[Descriptor, ...],
        diff_ids: tuple[str, ...],
    ) -> None:
        wanted: dict[str, Descriptor] = {}
        for desc, diff_id in zip(layers, diff_ids, strict=True):
            hex_ = check_digest(diff_id)
            if hex_ not in wanted and not (self.layers / hex_).is_dir():
                wanted[hex_] = desc
        # Locks in sorted order: pulls sharing layers cannot deadlock. They
        # stay held until this pull has published (or failed), so a second
        # process pulling the same image waits and then finds the layers.
        for hex_ in sorted(wanted):
            stack.enter_context(self._lock(f"sha256-{hex_}"))
        todo: list[tuple[Descriptor, str]] = []
        for desc, diff_id in zip(layers, diff_ids, strict=True):
            hex_ = diff_id[len("sha256:") :]
            if hex_ in wanted and not (self.layers / hex_).is_dir():
                todo.append((desc, diff_id))
                wanted.pop(hex_)  # the same layer twice in one image: once
            elif pull.progress is not None:
                pull.progress.layer_done(desc.digest, "present")
        self._check_space(sum(d.size for d, _ in todo))
        if len(todo) <= 1 or self.workers == 1:
            for desc, diff_id in todo:
                self._unpack_task(pull, desc, diff_id)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.workers, thread_name_prefix="layer") as pool:
            futures = [pool.submit(self._unpack_task, pull, d, i) for d, i in todo]
            errors = []
            for future in futures:
                exc = future.exception()
                if exc is not None:
                    pull.cancel.set()  # the others stop at their next read
                    errors.append(exc)
        # The first real failure, not the "cancelled" of its siblings.
        real = [e for e in errors if "pull cancelled" not in str(e)]
        if errors:
            raise (real or errors)[0]

    def _unpack_task(self, pull: _Pull, desc: Descriptor, diff_id: str) -> None:
        hex_ = diff_id[len("sha256:") :]
        staged = pull.work / f"layer-{hex_}"
        os.mkdir(staged, 0o755)
        if pull.progress is not None:
            pull.progress.layer_start(desc.digest, desc.size)
        self._unpack_one(pull, desc, diff_id, staged / "rootfs")
        pull.layers[hex_] = staged
        if pull.progress is not None:
            pull.progress.layer_done(desc.digest, "pulled")

    def _unpack_one(self, pull: _Pull, desc: Descriptor, diff_id: str, rootfs: Path) -> None:
        from podunit.images import compress  # imported on the first pull only

        name = f"layer {desc.digest}"
        kind = compress.layer_compression(desc.media_type, name)
        stored = self.blobs / desc.hex
        with contextlib.ExitStack() as stack:
            tee: BinaryIO | None = None
            try:
                src: Readable = stack.enter_context(open(stored, "rb"))
            except FileNotFoundError:
                src = stack.enter_context(pull.source.open_blob(desc))
                if self.keep_layer_blobs:
                    tee = stack.enter_context(open(pull.staged_blob(desc.hex), "xb"))
            compressed = HashingReader(
                _Watched(src, pull, desc.digest, self._check_space), name, desc.size
            )
            compressed.tee = tee
            try:
                tar_digest = self._unpack_stream(pull, compressed, kind, rootfs, name)
            except ImageError as exc:
                if "pull cancelled" in str(exc) or "refusing to fill" in str(exc):
                    raise
                # Corrupt data usually shows as a tar or gzip error first; a
                # digest mismatch is the real cause, so report that instead.
                compressed.drain()
                compressed.verify(desc.digest, desc.size)
                raise exc from None
            compressed.verify(desc.digest, desc.size)
            if tar_digest != diff_id:
                raise IntegrityError(
                    f"{name}: diff_id mismatch: expected {diff_id}, got {tar_digest}"
                )
            if tee is not None:
                tee.flush()
                os.fchmod(tee.fileno(), 0o444)
                pull.blobs[desc.hex] = pull.staged_blob(desc.hex)
        log.info("unpacked %s (diff_id %s)", name, diff_id)
        self.unpacked.append(diff_id)

    def _unpack_stream(
        self, pull: _Pull, compressed: HashingReader, kind: str, rootfs: Path, name: str
    ) -> str:
        """Unpack and read to the end; return the digest of the uncompressed tar."""
        from podunit.images import compress  # imported on the first pull only

        if kind == "none":
            # The blob is the tar: one hash serves as digest and diff_id.
            self._unpack_ahead(compressed, rootfs, name)
            return compressed.digest
        plain = compress.BoundedReader(compressed, kind, self.bomb_min, self.bomb_ratio)
        tar = HashingReader(
            _Watched(plain, pull, None, self._check_space), f"{name} (uncompressed)"
        )
        self._unpack_ahead(tar, rootfs, name)
        compressed.drain()
        return tar.digest

    @staticmethod
    def _unpack_ahead(tar: HashingReader, rootfs: Path, name: str) -> None:
        """Unpack with the reading chain (download, hashes, decompression) in
        a thread of its own (see prefetch.py); read to the end of `tar`."""
        from podunit.images import unpack  # imported on the first pull only

        if not PREFETCH:
            unpack.unpack_layer(tar, rootfs, name)
            tar.drain()
            return
        # closing(): on any error the reader thread is stopped and joined
        # before the caller reads the chain again to report a digest mismatch.
        from podunit.images.prefetch import Prefetcher

        with contextlib.closing(Prefetcher(tar)) as ahead:
            unpack.unpack_layer(ahead, rootfs, name)
            ahead.finish()

    def _check_space(self, upcoming: int = 0) -> None:
        """ImageError while there is still room: never let a pull fill the disk."""
        st = os.statvfs(self.root)
        free = st.f_bavail * st.f_frsize
        keep = self.min_free
        if keep is None:
            keep = max(MIN_FREE_FLOOR, st.f_blocks * st.f_frsize // 100)
        if free - upcoming < keep:
            need = f" for {upcoming >> 20} MiB of layers" if upcoming else ""
            raise ImageError(
                f"image store {self.root}: refusing to fill the disk: {free >> 20} MiB free"
                f"{need}, keeping at least {keep >> 20} MiB (set PODUNIT_MIN_FREE to change)"
            )

    def _publish(self, pull: _Pull) -> None:
        """Everything verified: rename blobs, then layers, into place."""
        for hex_, staged in pull.blobs.items():
            os.rename(staged, self.blobs / hex_)  # same content if it raced
        for hex_, staged in pull.layers.items():
            try:
                os.rename(staged, self.layers / hex_)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                log.debug("layer %s appeared concurrently; keeping that one", hex_)

    # ---- directories, tmp and locks ---------------------------------------------

    def _ensure_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for path in (self.blobs, self.layers, self.images, self.tmp, self.locks):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path in (self.root / "blobs", self.root / "layers"):
            path.chmod(0o700)

    @contextlib.contextmanager
    def _lock(self, name: str, blocking: bool = True, shared: bool = False) -> Iterator[int]:
        fd = os.open(self.locks / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            fcntl.flock(fd, mode if blocking else mode | fcntl.LOCK_NB)
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _workdir(self) -> Iterator[Path]:
        """tmp/<token>, owned by this pull for as long as it holds its lock."""
        while True:
            token = f"{os.getpid()}-{secrets.token_hex(6)}"
            lock_path = self.locks / f"tmp-{token}.lock"
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink > 0:
                break
            os.close(fd)  # a cleaner took it for stale between open and flock
        work = self.tmp / token
        try:
            os.mkdir(work, 0o700)
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)
            os.unlink(lock_path)
            os.close(fd)

    def _clean_stale_tmp(self) -> None:
        """Remove work dirs of pulls that died (their lock is free)."""
        for entry in os.scandir(self.tmp):
            lock_path = self.locks / f"tmp-{entry.name}.lock"
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                shutil.rmtree(entry.path, ignore_errors=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # its pull is alive
            try:
                log.info("removing stale %s", entry.path)
                shutil.rmtree(entry.path, ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock_path)
            finally:
                os.close(fd)
        for lock in self.locks.glob("tmp-*.lock"):
            if (self.tmp / lock.name[4:-5]).exists():
                continue
            with contextlib.suppress(OSError), self._lock(lock.name[:-5], blocking=False):
                lock.unlink()


def config_created(data: bytes) -> str:
    """The config's "created" timestamp, "" when absent or unreadable."""
    try:
        created = json.loads(data).get("created") if data else None
    except (ValueError, AttributeError):
        return ""
    return created if isinstance(created, str) else ""


@contextlib.contextmanager
def _open_source(ref: ImageReference) -> Iterator[BlobSource]:
    """The BlobSource for any transport; registry code is imported only when used."""
    if ref.transport == "docker":
        from podunit.images.registry import open_registry

        with open_registry(ref) as registry:
            yield registry
    elif ref.transport == "docker-archive":
        from podunit.images.docker_archive import open_docker_archive

        with open_docker_archive(ref) as archive:
            yield archive
    else:
        with open_source(ref) as source:
            yield source
