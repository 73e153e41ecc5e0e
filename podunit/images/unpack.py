"""Unpack one image layer (an uncompressed tar stream) into a fresh directory.

Threat model
------------
Every layer is hostile. It comes from whoever built or tampered with the
image, and we unpack it as root, so one mistake writes anywhere on the host.
The attacker controls every header field (names, link targets, types, modes,
owners, device numbers, xattrs, sizes) and the order and repetition of
entries. Known attack families, all handled here:

* path escape: absolute names, `..` components, NUL bytes, over-long names;
* symlink traversal: a symlink planted by an earlier entry (`a -> /`,
  `a -> ../../..`, `/proc/self/exe`, a directory replaced by a symlink) used
  as a parent of a later entry, or as the final component of a later entry
  (write through the link);
* hard links to host files (`/etc/shadow`), through symlinks, to paths not
  yet extracted, to symlinks or device nodes;
* the layer root itself (`.`) being replaced by a symlink or file;
* privileged metadata: overlay control xattrs (`trusted.overlay.*`) smuggled
  in to redirect lookups on the host, device nodes sneaked in via links;
* resource abuse: decompression bombs are bounded by the caller
  (compress.BoundedReader); file data is written as it streams, never
  preallocated from header sizes.

Defences. Python's tarfile is used only to parse headers and stream data; it
never touches the file system. Names are normalised and `..` refused
outright (the whole layer fails: a layer that tries is not trustworthy).
Parent directories are opened with openat2(RESOLVE_IN_ROOT |
RESOLVE_NO_MAGICLINKS), so the kernel resolves symlinks as if the layer root
were `/`: nothing can resolve outside it, whatever earlier entries planted.
The final component is always created relative to that directory fd and is
never followed (O_NOFOLLOW|O_EXCL after removing what was there, symlinkat,
mknodat, linkat). Hard-link sources are resolved inside the root with no
symlinks at all and must be regular files this layer created. Ownership is
applied before modes (so setuid bits survive chown), and directory modes and
times are applied at the end, after re-checking the inode, so a read-only
directory cannot block later entries and a swapped path cannot redirect
them. Only `user.*` and `security.capability` xattrs are kept.

The target directory lives in a private (0700, root-owned) tmp dir of the
image store; no other process races us inside it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from podunit.errors import ImageError, IntegrityError
from podunit.images.digest import CHUNK, Readable
from podunit.kernel.openat2 import (
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    openat2,
)

log = logging.getLogger(__name__)

_IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
_DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to chown
_DIR_CACHE_MAX = 256
# tarfile's stream buffer is re-sliced on every header read, so a large one
# costs a copy per member; file data still moves in CHUNK-sized reads.
TAR_BUFSIZE = 64 << 10
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"


def normalize_name(name: str, what: str) -> tuple[str, ...]:
    """Split a member name into components; `()` is the layer root.

    Leading `/` and `./`, empty and `.` components are dropped; `..` anywhere
    or a NUL byte refuses the layer.
    """
    if "\0" in name:
        raise IntegrityError(f"{what}: NUL byte in name {name!r}")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise IntegrityError(f'{what}: ".." in name {name!r}')
    return parts


def keep_xattr(name: str) -> bool:
    """Only unprivileged user xattrs and file capabilities survive."""
    if name.startswith("trusted.") or ".overlay." in name:
        return False
    return name.startswith("user.") or name == "security.capability"


@dataclass
class _DirMeta:
    dev: int
    ino: int
    uid: int
    gid: int
    mode: int
    mtime_ns: int | None


def _mtime_ns(member: tarfile.TarInfo) -> int | None:
    try:
        return int(round(float(member.mtime) * 1e9))
    except (OverflowError, ValueError, TypeError):
        return None


def _set_times(target: int | str, mtime_ns: int | None, dir_fd: int | None = None) -> None:
    if mtime_ns is None:
        return
    try:
        if isinstance(target, int):
            os.utime(target, ns=(mtime_ns, mtime_ns))
        else:
            os.utime(target, ns=(mtime_ns, mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
    except (OverflowError, ValueError):
        pass  # out-of-range header time: the file keeps "now", harmless


class _Unpacker:
    def __init__(self, rootfd: int, name: str) -> None:
        self.root = rootfd
        self.name = name
        self.dirs: dict[str, int] = {}  # resolved parent path -> O_PATH fd
        self.stale: list[int] = []  # cache fds to close once the member is done
        self.files: set[tuple[int, int]] = set()  # (dev, ino) of regular files made here
        self.dir_meta: dict[tuple[str, ...], _DirMeta] = {}

    # ---- directory fd cache -------------------------------------------------

    def close(self) -> None:
        self._invalidate()
        self.close_stale()

    def _invalidate(self) -> None:
        # Any removal can change what a cached path resolves to. The fds may
        # still be in use by the current member, so close them afterwards.
        self.stale.extend(self.dirs.values())
        self.dirs.clear()

    def close_stale(self) -> None:
        for fd in self.stale:
            os.close(fd)
        self.stale.clear()

    def parent(self, parts: tuple[str, ...]) -> int:
        """O_PATH fd of directory `parts`, resolved inside the root; created
        (component by component, never through a symlink) when missing."""
        if not parts:
            return self.root
        key = "/".join(parts)
        fd = self.dirs.get(key)
        if fd is not None:
            return fd
        if len(self.dirs) > _DIR_CACHE_MAX:
            self._invalidate()
        try:
            fd = openat2(self.root, key, _DIR_PATH, _IN_ROOT)
        except FileNotFoundError:
            return self._make_parents(parts)
        self.dirs[key] = fd
        return fd

    def _make_parents(self, parts: tuple[str, ...]) -> int:
        cur = self.root
        for i, comp in enumerate(parts):
            key = "/".join(parts[: i + 1])
            fd = self.dirs.get(key)
            if fd is None:
                try:
                    fd = openat2(self.root, key, _DIR_PATH, _IN_ROOT)
                except FileNotFoundError:
                    fd = self._mkdir_implicit(cur, comp, key)
                self.dirs[key] = fd
            cur = fd
        return cur

    def _mkdir_implicit(self, parent_fd: int, comp: str, key: str) -> int:
        try:
            os.mkdir(comp, 0o755, dir_fd=parent_fd)
        except FileExistsError:
            # It exists but did not resolve: a dangling symlink. Creating a
            # directory "through" it is exactly what we must not do.
            raise IntegrityError(
                f"{self.name}: cannot create directory {key}: a dangling symlink is in the way"
            ) from None
        os.chmod(comp, 0o755, dir_fd=parent_fd)  # not subject to umask
        return os.open(comp, _DIR_PATH | os.O_NOFOLLOW, dir_fd=parent_fd)

    # ---- helpers ------------------------------------------------------------

    def _clear(self, pfd: int, base: str, keep_dir: bool) -> bool:
        """Remove what is at `base` (later entries win). True if a directory
        was kept because `keep_dir`."""
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            shutil.rmtree(base, dir_fd=pfd)
        else:
            os.unlink(base, dir_fd=pfd)
        self._invalidate()
        return False

    def _set_xattrs(self, fd: int, member: tarfile.TarInfo) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            xname = key[len("SCHILY.xattr.") :]
            if not keep_xattr(xname):
                log.debug("%s: %s: dropping xattr %s", self.name, member.name, xname)
                continue
            try:
                os.setxattr(fd, xname, value.encode("utf-8", "surrogateescape"))
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
                    raise
                log.warning("%s: %s: xattr %s not supported here", self.name, member.name, xname)

    def _chmod_path(self, pfd: int, base: str, mode: int) -> None:
        # fchmodat cannot refuse to follow a final symlink, so chmod the
        # inode through an O_PATH fd opened with O_NOFOLLOW.
        fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            os.chmod(f"/proc/self/fd/{fd}", mode)
        finally:
            os.close(fd)

    # ---- entry types ----------------------------------------------------------

    def regular(self, tf: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, base: str) -> None:
        self._clear(pfd, base, keep_dir=False)
        mode = m.mode & 0o7777
        # Created with its permission bits, and chown/chmod only where the
        # result differs (another owner, umask, setuid): most files of an
        # image are root's with plain modes, so two syscalls per file (and
        # two inode updates in the journal) are saved.
        fd = os.open(base, _NEW_FILE, mode & 0o777, dir_fd=pfd)
        try:
            src = tf.extractfile(m)
            if src is not None:
                while chunk := src.read(CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
            st = os.fstat(fd)
            if (st.st_uid, st.st_gid) != (m.uid, m.gid):
                os.fchown(fd, m.uid, m.gid)
            if stat.S_IMODE(st.st_mode) != mode:
                os.fchmod(fd, mode)  # after chown, which clears setuid
            self._set_xattrs(fd, m)
            _set_times(fd, _mtime_ns(m))
            self.files.add((st.st_dev, st.st_ino))
        finally:
            os.close(fd)

    def directory(self, m: tarfile.TarInfo, parts: tuple[str, ...], pfd: int) -> None:
        base = parts[-1]
        if not self._clear(pfd, base, keep_dir=True):
            os.mkdir(base, 0o700, dir_fd=pfd)
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            self._set_xattrs(fd, m)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        # Owner, mode and times at the end: see finish().
        self.dir_meta[parts] = _DirMeta(
            st.st_dev, st.st_ino, m.uid, m.gid, m.mode & 0o7777, _mtime_ns(m)
        )

    def symlink(self, m: tarfile.TarInfo, pfd: int, base: str) -> None:
        if not m.linkname or "\0" in m.linkname:
            raise IntegrityError(f"{self.name}: {m.name!r}: invalid symlink target")
        self._clear(pfd, base, keep_dir=False)
        # The target is stored as-is: it is only ever resolved inside a root.
        os.symlink(m.linkname, base, dir_fd=pfd)
        os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        _set_times(base, _mtime_ns(m), dir_fd=pfd)

    def hardlink(self, m: tarfile.TarInfo, pfd: int, base: str) -> None:
        what = f"{self.name}: hard link {m.name!r} -> {m.linkname!r}"
        target = normalize_name(m.linkname, what)
        if not target:
            raise IntegrityError(f"{what}: target is the layer root")
        try:
            sfd = openat2(
                self.root,
                "/".join(target),
                os.O_PATH | os.O_NOFOLLOW,
                RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
            )
        except OSError as exc:
            raise IntegrityError(
                f"{what}: target is not a file extracted earlier in this layer ({exc.strerror})"
            ) from None
        try:
            st = os.fstat(sfd)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) not in self.files:
                raise IntegrityError(f"{what}: target is not a regular file of this layer")
            with contextlib.suppress(FileNotFoundError):
                dst = os.stat(base, dir_fd=pfd, follow_symlinks=False)
                if (dst.st_dev, dst.st_ino) == (st.st_dev, st.st_ino):
                    return  # already the same file
            self._clear(pfd, base, keep_dir=False)
            os.link(f"/proc/self/fd/{sfd}", base, dst_dir_fd=pfd, follow_symlinks=True)
        finally:
            os.close(sfd)

    def node(self, m: tarfile.TarInfo, pfd: int, base: str) -> None:
        if m.ischr():
            kind, dev = stat.S_IFCHR, os.makedev(m.devmajor, m.devminor)
        elif m.isblk():
            kind, dev = stat.S_IFBLK, os.makedev(m.devmajor, m.devminor)
        else:
            kind, dev = stat.S_IFIFO, 0
        self._clear(pfd, base, keep_dir=False)
        os.mknod(base, kind | 0o600, dev, dir_fd=pfd)
        os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        self._chmod_path(pfd, base, m.mode & 0o7777)
        _set_times(base, _mtime_ns(m), dir_fd=pfd)

    def whiteout(self, parts: tuple[str, ...]) -> None:
        base = parts[-1]
        if base == OPAQUE_MARKER:
            # The parent directory hides everything below it in lower layers.
            self.parent(parts[:-1])  # creates it if missing
            fd = openat2(
                self.root, "/".join(parts[:-1]) or ".", os.O_RDONLY | os.O_DIRECTORY, _IN_ROOT
            )
            try:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
            finally:
                os.close(fd)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # other AUFS metadata (.wh..wh.plnk etc.): meaningless here
        hidden = base[len(WHITEOUT_PREFIX) :]
        if hidden in ("", ".", ".."):
            raise IntegrityError(f"{self.name}: invalid whiteout {'/'.join(parts)!r}")
        pfd = self.parent(parts[:-1])
        self._clear(pfd, hidden, keep_dir=False)
        # overlayfs whiteout: a 0:0 character device with the hidden name.
        os.mknod(hidden, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)

    # ---- driver ---------------------------------------------------------------

    def member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = normalize_name(m.name, self.name)
        if not parts:
            if m.isdir():
                return  # the layer root stays 0755 root:root
            raise IntegrityError(f"{self.name}: entry {m.name!r} would replace the layer root")
        for ident in (m.uid, m.gid):
            if not 0 <= ident <= _MAX_ID:
                raise IntegrityError(f"{self.name}: {m.name!r}: invalid owner id {ident}")
        if parts[-1].startswith(WHITEOUT_PREFIX):
            self.whiteout(parts)
            return
        if m.isdir():
            self.directory(m, parts, self.parent(parts[:-1]))
            return
        pfd, base = self.parent(parts[:-1]), parts[-1]
        if m.isreg():
            self.regular(tf, m, pfd, base)
        elif m.issym():
            self.symlink(m, pfd, base)
        elif m.islnk():
            self.hardlink(m, pfd, base)
        elif m.ischr() or m.isblk() or m.isfifo():
            self.node(m, pfd, base)
        else:
            raise IntegrityError(f"{self.name}: {m.name!r}: unsupported tar entry type {m.type!r}")

    def finish(self) -> None:
        """Apply directory owners, modes and times, deepest first."""
        for parts in sorted(self.dir_meta, key=len, reverse=True):
            meta = self.dir_meta[parts]
            try:
                fd = openat2(
                    self.root,
                    "/".join(parts),
                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                    _IN_ROOT,
                )
            except OSError:
                continue  # replaced or removed by a later entry
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (meta.dev, meta.ino):
                    continue  # not the directory that entry created
                if (st.st_uid, st.st_gid) != (meta.uid, meta.gid):
                    os.fchown(fd, meta.uid, meta.gid)
                if stat.S_IMODE(st.st_mode) != meta.mode:
                    os.fchmod(fd, meta.mode)  # after chown, which clears setgid
                _set_times(fd, meta.mtime_ns)
            finally:
                os.close(fd)


@contextlib.contextmanager
def _open_root(rootfs: Path) -> Iterator[int]:
    os.mkdir(rootfs, 0o755)
    os.chown(rootfs, 0, 0, follow_symlinks=False)
    os.chmod(rootfs, 0o755, follow_symlinks=False)
    fd = os.open(rootfs, _DIR_PATH | os.O_NOFOLLOW)
    try:
        yield fd
    finally:
        os.close(fd)


def unpack_layer(stream: Readable, rootfs: Path, name: str) -> None:
    """Create `rootfs` (must not exist) and unpack the tar `stream` into it.

    Raises IntegrityError for a hostile or malformed layer, ImageError for
    other failures. On error `rootfs` is left partial: the caller discards it.
    The stream is read only up to the tar end marker; the caller drains it.
    """
    with contextlib.ExitStack() as stack:
        rootfd = stack.enter_context(_open_root(rootfs))
        unpacker = _Unpacker(rootfd, name)
        stack.callback(unpacker.close)
        current = "(header)"
        try:
            # Stream mode only calls read(); the cast satisfies the stub's protocol.
            fileobj = cast(IO[bytes], stream)
            tf = stack.enter_context(tarfile.open(fileobj=fileobj, mode="r|", bufsize=TAR_BUFSIZE))
            while (member := tf.next()) is not None:
                current = member.name
                unpacker.member(tf, member)
                unpacker.close_stale()
                # tarfile keeps every header it read; a stream needs none of them.
                vars(tf)["members"].clear()
            unpacker.finish()
        except tarfile.ReadError as exc:
            if "empty file" in str(exc) and current == "(header)":
                return  # a zero-byte layer: nothing to unpack
            raise IntegrityError(f"{name}: not a valid tar stream: {exc}") from None
        except tarfile.TarError as exc:
            raise IntegrityError(f"{name}: not a valid tar stream: {exc}") from None
        except OSError as exc:
            shown = current if len(current) < 200 else current[:200] + "..."
            raise ImageError(f"{name}: {shown!r}: {exc.strerror or exc}") from None
