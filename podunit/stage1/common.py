"""Helpers shared by the stage1 commands: plan loading, sd_notify, errors."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, cast

from podunit.paths import sandboxes_dir

if TYPE_CHECKING:
    from podunit.plan import PodPlan


def plan_path(pod: str) -> Path:
    return sandboxes_dir() / pod / "plan.json"


def load_plan(pod: str) -> PodPlan:
    with open(plan_path(pod), "rb") as f:
        return cast("PodPlan", json.load(f))


def sd_notify(message: str) -> None:
    """Send `message` to systemd's notification socket, if there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


def sd_notify_barrier(timeout_ms: int = 5000) -> None:
    """Wait until systemd has processed every notification sent before
    (BARRIER=1, systemd >= 246): it closes the fd we pass once it has."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    import array
    import select

    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            fds = array.array("i", [write_fd])
            sock.sendmsg([b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        os.close(write_fd)
        write_fd = -1
        poller = select.poll()
        poller.register(read_fd, select.POLLHUP)
        poller.poll(timeout_ms)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"podunit-stage1: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def mkdirs(path: str | Path, mode: int = 0o755) -> None:
    os.makedirs(path, mode=mode, exist_ok=True)


def mount_points() -> list[str]:
    """Mount points of this mount namespace, in mountinfo order."""
    with open("/proc/self/mountinfo") as f:
        return [_unescape(line.split()[4]) for line in f]


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo (octal)."""
    if "\\" not in field:
        return field
    out, i = bytearray(), 0
    raw = field.encode()
    while i < len(raw):
        if raw[i] == 0x5C and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode(errors="surrogateescape")


def unmount_tree(base: Path) -> None:
    """Detach every mount at or below `base`, deepest first (mounts stacked
    on one point are each listed, so all of them go); a mount already gone
    with its parent is not an error."""
    import errno

    from podunit.kernel import syscalls as sc

    if not base.exists():
        return
    prefix = str(base).rstrip("/") + "/"
    for point in sorted(mount_points(), key=len, reverse=True):
        if point == str(base) or point.startswith(prefix):
            try:
                sc.umount(point, sc.MNT_DETACH | sc.UMOUNT_NOFOLLOW)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOENT):
                    raise


def remove_tree(path: str) -> None:
    """rm -rf without following symlinks (shutil is a slow import for stage1).
    Directories are opened relative to their parent with O_NOFOLLOW, so a
    symlink planted in an app's writable layer cannot redirect the removal."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return
    except (NotADirectoryError, OSError):
        _unlink_quietly(path)
        return
    try:
        _clear_dir(fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def _clear_dir(dir_fd: int) -> None:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.scandir(dir_fd) as entries:
        names = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
    for name, is_dir in names:
        if not is_dir:
            os.unlink(name, dir_fd=dir_fd)
            continue
        fd = os.open(name, flags, dir_fd=dir_fd)
        try:
            _clear_dir(fd)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=dir_fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
