"""Thin ctypes wrapper of openat2(2) (Linux 5.6+).

Python's os module has no openat2, and image unpacking depends on the kernel
resolving paths *inside* a directory tree (RESOLVE_IN_ROOT): user-space path
checks race with, or are fooled by, symlinks that the same hostile tar stream
creates. Only what the image code needs is exposed.
"""

from __future__ import annotations

import ctypes
import errno
import os

# Syscall numbers: 437 on the generic table (x86_64, aarch64, riscv64...).
_SYSCALL_NR = {"x86_64": 437, "aarch64": 437, "arm64": 437, "riscv64": 437, "ppc64le": 437}

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
RESOLVE_CACHED = 0x20


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _syscall_nr() -> int:
    machine = os.uname().machine  # not platform: a slow import for stage1
    try:
        return _SYSCALL_NR[machine]
    except KeyError:
        raise OSError(errno.ENOSYS, f"openat2: unknown syscall number on {machine}") from None


def openat2(dirfd: int, path: str | bytes, flags: int, resolve: int, mode: int = 0) -> int:
    """Open `path` relative to `dirfd`; return the new fd or raise OSError.

    EAGAIN (a concurrent rename seen during RESOLVE_IN_ROOT/BENEATH lookup) is
    retried a few times, as the kernel documentation recommends.
    """
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    raw = os.fsencode(path)
    nr = _syscall_nr()
    for _ in range(16):
        fd = _syscall(
            ctypes.c_long(nr),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(raw),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):
            raise OSError(err, f"openat2: {os.strerror(err)}", os.fsdecode(raw))
    raise OSError(errno.EAGAIN, "openat2: path kept changing during lookup", os.fsdecode(raw))


def supported() -> bool:
    """True when the running kernel implements openat2."""
    root = os.open("/", os.O_PATH | os.O_CLOEXEC)
    try:
        os.close(openat2(root, ".", os.O_PATH, RESOLVE_IN_ROOT))
    except OSError as exc:
        return exc.errno != errno.ENOSYS
    finally:
        os.close(root)
    return True
