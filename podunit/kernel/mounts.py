"""Mounts inside a container root, resolved so that nothing escapes it.

A container root is hostile: its directories may be symlinks pointing at the
host (`/etc -> /proc/1/root/etc`), and stage1 mounts onto paths inside it.
So every mount target is resolved by the kernel *inside* the root
(openat2 RESOLVE_IN_ROOT), created component by component relative to an
already-resolved parent fd, and the mount is made onto `/proc/self/fd/N` of
that resolved fd: the path string is never walked again.

The operations are data first (`MountOp` subclasses with `describe()`), then
executed in order by `execute_all()`, so stage1's plan can be printed with
`--debug` and replayed by hand.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from podunit.kernel import syscalls as sc
from podunit.kernel.openat2 import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2

_IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
PROPAGATION_FLAGS = {"rprivate": sc.MS_PRIVATE, "rslave": sc.MS_SLAVE, "rshared": sc.MS_SHARED}


def _relative(path: str) -> str:
    rel = os.path.normpath("/" + path).lstrip("/")
    return rel or "."


@contextmanager
def open_in_root(root_fd: int, path: str, *, create: str | None = None) -> Iterator[int]:
    """O_PATH fd of `path` resolved inside the root; with `create` ("dir" or
    "file") missing components are made (parents always as directories)."""
    rel = _relative(path)
    try:
        fd = openat2(root_fd, rel, os.O_PATH, _IN_ROOT)
    except FileNotFoundError:
        if create is None or rel == ".":
            raise
        parent, name = os.path.split(rel)
        with open_in_root(root_fd, parent or ".", create="dir") as parent_fd:
            _create_entry(parent_fd, name, create)
        fd = openat2(root_fd, rel, os.O_PATH, _IN_ROOT)
    try:
        yield fd
    finally:
        os.close(fd)


def _create_entry(parent_fd: int, name: str, kind: str) -> None:
    try:
        if kind == "dir":
            os.mkdir(name, 0o755, dir_fd=parent_fd)
        else:
            # O_NOFOLLOW|O_EXCL: never create through a symlink planted by the image.
            flags = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_WRONLY | os.O_CLOEXEC
            os.close(os.open(name, flags, 0o644, dir_fd=parent_fd))
    except FileExistsError:
        pass


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


class MountOp:
    """One step of building a container root; `target` is inside the root.

    Plain classes, not dataclasses: stage1 imports this on every container
    start, and dataclasses pulls in inspect/ast (several ms on small hosts)."""

    __slots__ = ("target",)

    def __init__(self, target: str) -> None:
        self.target = target

    def describe(self) -> str:
        raise NotImplementedError

    def execute(self, root_fd: int) -> None:
        raise NotImplementedError


class BindMount(MountOp):
    __slots__ = ("source", "read_only", "is_file", "recursive", "propagation", "extra_flags")

    def __init__(
        self,
        target: str,
        *,
        source: str,
        read_only: bool = False,
        is_file: bool = False,
        recursive: bool = True,
        propagation: str = "rprivate",
        extra_flags: int = sc.MS_NOSUID | sc.MS_NODEV,
    ) -> None:
        super().__init__(target)
        self.source = source
        self.read_only = read_only
        self.is_file = is_file
        self.recursive = recursive
        self.propagation = propagation
        self.extra_flags = extra_flags

    def describe(self) -> str:
        mode = "ro" if self.read_only else "rw"
        return f"bind {self.source} -> {self.target} ({mode}, {self.propagation})"

    def execute(self, root_fd: int) -> None:
        with open_in_root(root_fd, self.target, create="file" if self.is_file else "dir") as fd:
            _check_kind(fd, self.target, is_file=self.is_file)
            target = fd_path(fd)
            flags = sc.MS_BIND | (sc.MS_REC if self.recursive else 0)
            sc.mount(self.source, target, None, flags)
        # Remount and propagation must name the new mount, now on top of the path.
        with open_in_root(root_fd, self.target) as fd:
            target = fd_path(fd)
            if self.read_only or self.extra_flags:
                remount = sc.MS_BIND | sc.MS_REMOUNT | self.extra_flags
                remount |= sc.MS_RDONLY if self.read_only else 0
                _remount_keeping_locked_flags(target, remount)
            sc.mount(None, target, None, sc.MS_REC | PROPAGATION_FLAGS[self.propagation])


def _remount_keeping_locked_flags(target: str, flags: int) -> None:
    """A bind remount must keep flags the source mount has locked (nosuid,
    nodev, noexec...) or the kernel refuses with EPERM; add them back."""
    st = os.statvfs(target)
    locked = 0
    for st_flag, ms_flag in (
        (os.ST_NOSUID, sc.MS_NOSUID),
        (os.ST_NODEV, sc.MS_NODEV),
        (os.ST_NOEXEC, sc.MS_NOEXEC),
        (os.ST_RDONLY, sc.MS_RDONLY),
    ):
        if st.f_flag & st_flag:
            locked |= ms_flag
    sc.mount(None, target, None, flags | locked)


def _check_kind(fd: int, target: str, *, is_file: bool) -> None:
    mode = os.fstat(fd).st_mode
    if is_file and stat.S_ISDIR(mode):
        raise OSError(errno.EISDIR, "a file is to be mounted on a directory", target)
    if not is_file and not stat.S_ISDIR(mode):
        raise OSError(errno.ENOTDIR, "a directory is to be mounted on a non-directory", target)


class FsMount(MountOp):
    """A kernel file system (proc, sysfs, tmpfs, devpts, mqueue)."""

    __slots__ = ("fstype", "flags", "data", "read_only")

    def __init__(
        self,
        target: str,
        *,
        fstype: str,
        flags: int = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
        data: str | None = None,
        read_only: bool = False,
    ) -> None:
        super().__init__(target)
        self.fstype = fstype
        self.flags = flags
        self.data = data
        self.read_only = read_only

    def describe(self) -> str:
        return f"mount {self.fstype} on {self.target} ({self.data or 'defaults'})"

    def execute(self, root_fd: int) -> None:
        with open_in_root(root_fd, self.target, create="dir") as fd:
            _check_kind(fd, self.target, is_file=False)
            flags = self.flags | (sc.MS_RDONLY if self.read_only else 0)
            sc.mount(self.fstype, fd_path(fd), self.fstype, flags, self.data)


class Symlink(MountOp):
    __slots__ = ("link_target",)

    def __init__(self, target: str, *, link_target: str) -> None:
        super().__init__(target)
        self.link_target = link_target

    def describe(self) -> str:
        return f"symlink {self.target} -> {self.link_target}"

    def execute(self, root_fd: int) -> None:
        parent, name = os.path.split(_relative(self.target))
        with open_in_root(root_fd, parent or ".", create="dir") as parent_fd:
            try:
                os.symlink(self.link_target, name, dir_fd=parent_fd)
            except FileExistsError:
                pass


class MaskPath(MountOp):
    """Hide a path: /dev/null over files, an empty read-only tmpfs over dirs."""

    __slots__ = ("null_device",)

    def __init__(self, target: str, *, null_device: str = "/dev/null") -> None:
        super().__init__(target)
        self.null_device = null_device

    def describe(self) -> str:
        return f"mask {self.target}"

    def execute(self, root_fd: int) -> None:
        try:
            with open_in_root(root_fd, self.target) as fd:
                target = fd_path(fd)
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    sc.mount(
                        "tmpfs",
                        target,
                        "tmpfs",
                        sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV,
                        "size=0",
                    )
                else:
                    sc.mount(self.null_device, target, None, sc.MS_BIND)
        except FileNotFoundError:
            pass  # nothing to hide on this kernel


class ReadOnlyPath(MountOp):
    """Make an existing path read-only by binding it onto itself."""

    def describe(self) -> str:
        return f"read-only {self.target}"

    def execute(self, root_fd: int) -> None:
        try:
            with open_in_root(root_fd, self.target) as fd:
                target = fd_path(fd)
                sc.mount(target, target, None, sc.MS_BIND | sc.MS_REC)
            with open_in_root(root_fd, self.target) as fd:
                _remount_keeping_locked_flags(
                    fd_path(fd), sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY
                )
        except FileNotFoundError:
            pass


def execute_all(root: str, ops: Sequence[MountOp], *, debug: bool = False) -> None:
    """Run `ops` in order inside `root`; each error names the step that failed."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for op in ops:
            if debug:
                print(f"stage1: {op.describe()}", flush=True)
            try:
                op.execute(root_fd)
            except OSError as exc:
                raise OSError(exc.errno, f"{op.describe()}: {exc.strerror}") from exc
    finally:
        os.close(root_fd)
