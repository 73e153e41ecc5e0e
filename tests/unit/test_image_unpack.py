"""Hostile layer corpus for podunit.images.unpack, drawn from the CVE history.

Every case is unpacked next to a "victim" directory that the layer's links
point at and a sentinel directory beside the layer; afterwards nothing
outside the layer may have changed (nor the host files some cases target),
and the layer is either refused or its effect is contained inside it.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from podunit.errors import ImageError, IntegrityError  # noqa: E402
from podunit.images.unpack import keep_xattr, normalize_name, unpack_layer  # noqa: E402
from tests.fixtures.images import TarBuilder  # noqa: E402

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (mknod, chown, trusted xattrs)"
)
HOST_FILES = ("/etc/passwd", "/etc/shadow", "/etc/hostname")
REFUSE = "refuse"
EITHER = "either"  # refused or contained: only "nothing escaped" is asserted


@dataclass
class Env:
    base: Path
    rootfs: Path
    victim: Path
    sentinel: Path


def snapshot(base: Path, skip: Path) -> dict[str, tuple[int, int, bytes | str]]:
    """Type, mode and content of everything under base except `skip`."""
    out: dict[str, tuple[int, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        if Path(dirpath) == skip.parent:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                content: bytes | str = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                content = p.read_bytes()
            else:
                content = b""
            # A directory's link count moves when rootfs is created in it.
            nlink = 0 if stat.S_ISDIR(st.st_mode) else st.st_nlink
            out[str(p)] = (st.st_mode, nlink, content)
    return out


def host_state() -> dict[str, tuple[int, int, int, int]]:
    state = {}
    for name in HOST_FILES:
        with_st = os.lstat(name) if os.path.lexists(name) else None
        if with_st is not None:
            state[name] = (with_st.st_ino, with_st.st_nlink, with_st.st_size, with_st.st_mtime_ns)
    return state


@pytest.fixture
def env(tmp_path: Path) -> Env:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_text("original\n")
    layer = tmp_path / "layer"
    layer.mkdir()
    sentinel = layer / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep").write_text("sentinel\n")
    return Env(tmp_path, layer / "rootfs", victim, sentinel)


def run_case(env: Env, tar: bytes, expect: str | Callable[[Env], None]) -> None:
    before, host_before = snapshot(env.base, env.rootfs), host_state()
    try:
        if expect == REFUSE:
            with pytest.raises(ImageError):
                unpack_layer(io.BytesIO(tar), env.rootfs, "test layer")
        elif expect == EITHER:
            try:
                unpack_layer(io.BytesIO(tar), env.rootfs, "test layer")
            except ImageError:
                pass
        else:
            unpack_layer(io.BytesIO(tar), env.rootfs, "test layer")
            assert callable(expect)
            expect(env)
    finally:
        assert snapshot(env.base, env.rootfs) == before, "something changed outside the layer"
        assert host_state() == host_before, "a host file changed"
        assert not os.path.lexists("/pwned") and not os.path.lexists("/etc/pwned")


def is_file(rel: str, data: bytes | None = None) -> Callable[[Env], None]:
    def check(env: Env) -> None:
        p = env.rootfs / rel
        assert stat.S_ISREG(p.lstat().st_mode), f"{rel} is not a regular file in the layer"
        if data is not None:
            assert p.read_bytes() == data

    return check


def both(*checks: Callable[[Env], None]) -> Callable[[Env], None]:
    def check(env: Env) -> None:
        for c in checks:
            c(env)

    return check


def _link_chain(victim: Path) -> bytes:
    tar = TarBuilder().symlink("l0", "l1")
    for i in range(1, 60):
        tar.symlink(f"l{i}", f"l{i + 1}")
    return tar.symlink("l60", "l0").file("l0/pwned", b"x").bytes()


def _cve_2025_4517(victim: Path) -> bytes:
    # Python tarfile CVE-2025-4517: nested long directory names make
    # realpath() give up past PATH_MAX, then a symlink climbing out with
    # "../" is trusted and a link through it escapes.
    comp = "d" * 247
    steps = "abcdefghijklmnop"
    tar, path = TarBuilder(), ""
    for step in steps:
        tar.dir(path + comp)
        tar.symlink(path + step, comp)
        path = path + step + "/"
    up = "/".join([".."] * len(steps))
    tar.symlink(path + "up", up + "/" + "../" * 10 + str(victim)[1:])
    tar.symlink("escape", path + "up")
    return tar.file("escape/file", b"pwned").bytes()


def _uid_overflow() -> bytes:
    info = TarBuilder.info("f", tarfile.REGTYPE, 0o644)
    info.pax_headers = {"uid": str(2**32 - 1)}
    return TarBuilder().add(info, b"x").bytes()


def _check_root(env: Env) -> None:
    st = env.rootfs.lstat()
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755
    assert (st.st_uid, st.st_gid) == (0, 0)


def _mode_is(env: Env, rel: str, mode: int) -> None:
    assert stat.S_IMODE((env.rootfs / rel).lstat().st_mode) == mode


def _same_inode(env: Env, a: str, b: str) -> None:
    assert (env.rootfs / a).lstat().st_ino == (env.rootfs / b).lstat().st_ino


def _readlink_is(env: Env, rel: str, target: str) -> None:
    assert os.readlink(env.rootfs / rel) == target


# Each case: id -> (builder(victim path) -> tar bytes, expectation).
Builder = Callable[[Path], bytes]
CASES: dict[str, tuple[Builder, str | Callable[[Env], None]]] = {
    "absolute-name": (
        lambda v: TarBuilder().file("/etc/pwned", b"x").file(f"{v}/file", b"evil").bytes(),
        both(is_file("etc/pwned", b"x"), lambda e: is_file(f"{e.victim}"[1:] + "/file")(e)),
    ),
    "dotdot-escape": (lambda v: TarBuilder().file("../escape", b"x").bytes(), REFUSE),
    "dotdot-deep": (lambda v: TarBuilder().dir("a").file("a/../../../pwned").bytes(), REFUSE),
    "dotdot-in-dir-entry": (lambda v: TarBuilder().dir("a/..").bytes(), REFUSE),
    "symlink-parent-root": (
        lambda v: TarBuilder().symlink("a", "/").file("a/etc/pwned", b"x").bytes(),
        is_file("etc/pwned", b"x"),
    ),
    "symlink-parent-dotdot": (
        lambda v: TarBuilder().symlink("a", "../../..").file("a/pwned", b"x").bytes(),
        is_file("pwned", b"x"),
    ),
    "symlink-parent-to-host-dir": (
        lambda v: TarBuilder().symlink("a", str(v)).file("a/pwned", b"x").bytes(),
        REFUSE,  # resolves to a missing dir inside the layer: dangling
    ),
    "symlink-parent-to-host-dir-existing-inside": (
        lambda v: TarBuilder().dir(str(v)).symlink("a", str(v)).file("a/pwned", b"x").bytes(),
        lambda e: is_file(f"{e.victim}"[1:] + "/pwned", b"x")(e),
    ),
    "write-through-final-symlink": (
        lambda v: TarBuilder().symlink("x", str(v / "file")).file("x", b"evil").bytes(),
        is_file("x", b"evil"),
    ),
    "proc-self-exe-overwrite": (
        lambda v: (
            TarBuilder()
            .dir("bin")
            .symlink("bin/sh", "/proc/self/exe")
            .file("bin/sh", b"#!evil")
            .bytes()
        ),
        is_file("bin/sh", b"#!evil"),
    ),
    "proc-self-as-parent": (
        lambda v: TarBuilder().symlink("p", "/proc/self").file("p/exe", b"evil").bytes(),
        REFUSE,
    ),
    "proc-root-magiclink-parent": (
        lambda v: TarBuilder().symlink("r", "/proc/1/root").file("r/pwned", b"evil").bytes(),
        REFUSE,
    ),
    "hardlink-etc-shadow": (lambda v: TarBuilder().hardlink("s", "/etc/shadow").bytes(), REFUSE),
    "hardlink-host-victim": (
        lambda v: TarBuilder().hardlink("s", str(v / "file")).bytes(),
        REFUSE,
    ),
    "hardlink-dotdot": (lambda v: TarBuilder().hardlink("x", "../x").bytes(), REFUSE),
    "hardlink-through-symlink": (
        lambda v: TarBuilder().symlink("d", "/etc").hardlink("h", "d/passwd").bytes(),
        REFUSE,
    ),
    "hardlink-through-symlink-to-host": (
        lambda v: TarBuilder().symlink("d", str(v)).hardlink("h", "d/file").bytes(),
        REFUSE,
    ),
    "hardlink-not-yet-extracted": (
        lambda v: TarBuilder().hardlink("h", "later").file("later", b"x").bytes(),
        REFUSE,
    ),
    "hardlink-to-symlink": (
        lambda v: TarBuilder().symlink("s", str(v / "file")).hardlink("h", "s").bytes(),
        REFUSE,
    ),
    "hardlink-to-file-replaced-by-symlink": (
        lambda v: (
            TarBuilder().file("a", b"x").symlink("a", str(v / "file")).hardlink("b", "a").bytes()
        ),
        REFUSE,
    ),
    "hardlink-to-directory": (lambda v: TarBuilder().dir("d").hardlink("h", "d").bytes(), REFUSE),
    "dir-replaced-by-symlink-then-file": (
        lambda v: TarBuilder().dir("d").symlink("d", str(v)).file("d/pwned", b"x").bytes(),
        REFUSE,
    ),
    "dir-replaced-by-root-symlink-then-file": (
        lambda v: TarBuilder().dir("d").symlink("d", "/").file("d/etc/x", b"x").bytes(),
        both(is_file("etc/x", b"x"), lambda e: _readlink_is(e, "d", "/")),
    ),
    "symlink-then-dir-same-name": (
        lambda v: TarBuilder().symlink("d", str(v)).dir("d").file("d/f", b"x").bytes(),
        is_file("d/f", b"x"),
    ),
    "symlink-deep-dotdot": (
        lambda v: (
            TarBuilder()
            .dir("a/b/c")
            .symlink("a/b/c/up", "../" * 40)
            .file("a/b/c/up/pwned", b"x")
            .bytes()
        ),
        is_file("pwned", b"x"),
    ),
    "symlink-loop-chain": (
        _link_chain,
        REFUSE,  # ELOOP, never an escape
    ),
    "long-path-beyond-path-max": (
        lambda v: TarBuilder().file("d/" * 2100 + "f", b"x").bytes(),
        REFUSE,
    ),
    "long-component": (lambda v: TarBuilder().file("n" * 300, b"x").bytes(), REFUSE),
    "long-symlink-depth-trick": (_cve_2025_4517, EITHER),
    "root-as-symlink": (
        lambda v: TarBuilder().symlink(".", str(v)).file("pwned", b"x").bytes(),
        REFUSE,
    ),
    "root-as-symlink-dot-slash": (
        lambda v: TarBuilder().symlink("./", str(v)).file("pwned", b"x").bytes(),
        REFUSE,
    ),
    "root-as-file": (lambda v: TarBuilder().file("/", b"x").bytes(), REFUSE),
    "root-dir-entry-ignored": (
        lambda v: TarBuilder().dir(".", 0o777, 1000, 1000).file("f", b"x").bytes(),
        lambda e: _check_root(e),
    ),
    "nul-in-name": (lambda v: TarBuilder().pax_name("a\0/../../pwned", b"x").bytes(), REFUSE),
    "whiteout-dotdot": (lambda v: TarBuilder().file("a/.wh...").bytes(), REFUSE),
    "whiteout-dot": (lambda v: TarBuilder().file("a/.wh..").bytes(), REFUSE),
    "unknown-entry-type": (
        lambda v: TarBuilder().add(TarBuilder.info("vol", b"V", 0o644)).bytes(),
        REFUSE,
    ),
    "uid-out-of-range": (lambda v: _uid_overflow(), REFUSE),
    "duplicate-file-later-wins": (
        lambda v: TarBuilder().file("f", b"one").file("f", b"two").bytes(),
        is_file("f", b"two"),
    ),
    "file-then-dir": (
        lambda v: TarBuilder().file("x", b"one").dir("x").file("x/y", b"y").bytes(),
        is_file("x/y", b"y"),
    ),
    "dir-then-file": (
        lambda v: TarBuilder().dir("y").file("y/c", b"c").file("y", b"file").bytes(),
        is_file("y", b"file"),
    ),
    "read-only-dir-does-not-block": (
        lambda v: TarBuilder().dir("ro", 0o555).file("ro/f", b"x").bytes(),
        both(is_file("ro/f", b"x"), lambda e: _mode_is(e, "ro", 0o555)),
    ),
    "hardlink-valid-same-inode": (
        lambda v: TarBuilder().file("etc/x", b"x").hardlink("y", "/etc/x").bytes(),
        lambda e: _same_inode(e, "etc/x", "y"),
    ),
    "absolute-symlink-kept-as-is": (
        lambda v: TarBuilder().symlink("l", "/etc/passwd").bytes(),
        lambda e: _readlink_is(e, "l", "/etc/passwd"),
    ),
}


@needs_root
@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_corpus(env: Env, case: str) -> None:
    build, expect = CASES[case]
    run_case(env, build(env.victim), expect)


@needs_root
def test_device_node_via_hardlink_refused(env: Env) -> None:
    tar = (
        TarBuilder().dir("dev").device("dev/null", tarfile.CHRTYPE, 1, 3).hardlink("x", "dev/null")
    )
    run_case(env, tar.bytes(), REFUSE)


@needs_root
def test_devices_and_fifo_created(env: Env) -> None:
    tar = (
        TarBuilder()
        .device("null", tarfile.CHRTYPE, 1, 3)
        .device("loop", tarfile.BLKTYPE, 7, 0)
        .fifo("pipe")
    )

    def check(e: Env) -> None:
        st = (e.rootfs / "null").lstat()
        assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
        assert stat.S_IMODE(st.st_mode) == 0o666
        assert stat.S_ISBLK((e.rootfs / "loop").lstat().st_mode)
        assert stat.S_ISFIFO((e.rootfs / "pipe").lstat().st_mode)

    run_case(env, tar.bytes(), check)


@needs_root
def test_setuid_kept_after_chown(env: Env) -> None:
    tar = TarBuilder().file("su", b"x", 0o4755).file("sg", b"y", 0o6750, uid=1000, gid=1000)
    tar.dir("shared", 0o2775, 0, 1000)

    def check(e: Env) -> None:
        su, sg, shared = (e.rootfs / n for n in ("su", "sg", "shared"))
        assert stat.S_IMODE(su.stat().st_mode) == 0o4755
        assert stat.S_IMODE(sg.stat().st_mode) == 0o6750
        assert (sg.stat().st_uid, sg.stat().st_gid) == (1000, 1000)
        assert stat.S_IMODE(shared.stat().st_mode) == 0o2775
        assert shared.stat().st_gid == 1000

    run_case(env, tar.bytes(), check)


@needs_root
def test_xattrs_filtered(env: Env) -> None:
    cap = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)  # CAP_NET_BIND_SERVICE
    xattrs = {
        "trusted.overlay.redirect": b"/etc",
        "trusted.overlay.opaque": b"y",
        "trusted.other": b"z",
        "user.overlay.redirect": b"/etc",
        "user.mime": b"text/plain",
        "security.capability": cap,
        "security.selinux": b"system_u:object_r:shadow_t:s0",
    }
    tar = TarBuilder().file("f", b"x", 0o755, xattrs=xattrs)

    def check(e: Env) -> None:
        names = set(os.listxattr(e.rootfs / "f", follow_symlinks=False))
        assert "user.mime" in names and "security.capability" in names
        assert not any(n.startswith("trusted.") or ".overlay." in n for n in names)
        assert "security.selinux" not in names or os.path.exists("/sys/fs/selinux/enforce")
        assert os.getxattr(e.rootfs / "f", "security.capability") == cap

    run_case(env, tar.bytes(), check)


@needs_root
def test_whiteout_and_opaque_dir(env: Env) -> None:
    tar = TarBuilder().dir("etc").file("etc/.wh.passwd").dir("opq").file("opq/.wh..wh..opq")
    tar.file(".wh..wh.plnk")  # AUFS hard-link dir marker: ignored

    def check(e: Env) -> None:
        st = (e.rootfs / "etc" / "passwd").lstat()
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
        assert os.getxattr(e.rootfs / "opq", "trusted.overlay.opaque") == b"y"
        assert not (e.rootfs / ".wh..wh.plnk").exists()
        assert not (e.rootfs / "etc" / ".wh.passwd").exists()

    run_case(env, tar.bytes(), check)


@needs_root
def test_metadata_applied(env: Env) -> None:
    tar = TarBuilder().dir("d", 0o750, 5, 6).file("d/f", b"data", 0o640, 7, 8).symlink("d/l", "f")

    def check(e: Env) -> None:
        d, f, link = e.rootfs / "d", e.rootfs / "d" / "f", e.rootfs / "d" / "l"
        assert (stat.S_IMODE(d.stat().st_mode), d.stat().st_uid, d.stat().st_gid) == (0o750, 5, 6)
        assert (stat.S_IMODE(f.stat().st_mode), f.stat().st_uid, f.stat().st_gid) == (0o640, 7, 8)
        assert d.stat().st_mtime == 1_700_000_000 and f.stat().st_mtime == 1_700_000_000
        assert link.lstat().st_mtime == 1_700_000_000

    run_case(env, tar.bytes(), check)


def test_large_file_streams(env: Env) -> None:
    data = hashlib.sha256(b"seed").digest() * (3 << 16)  # 6 MiB, several chunks
    run_case(env, TarBuilder().file("big", data).bytes(), is_file("big", data))


def test_empty_and_garbage_streams(env: Env) -> None:
    unpack_layer(io.BytesIO(b""), env.rootfs, "empty")
    assert list(env.rootfs.iterdir()) == []
    with pytest.raises(IntegrityError):
        unpack_layer(io.BytesIO(b"not a tar" * 100), env.base / "other", "garbage")


def test_truncated_stream_refused(env: Env) -> None:
    tar = TarBuilder().file("f", b"x" * 10000).bytes()
    with pytest.raises(ImageError):
        unpack_layer(io.BytesIO(tar[:3000]), env.rootfs, "truncated")


def test_normalize_name() -> None:
    assert normalize_name("./a//b/./c/", "t") == ("a", "b", "c")
    assert normalize_name("/", "t") == ()
    for bad in ("..", "a/../b", "a\0b", "/../x"):
        with pytest.raises(IntegrityError):
            normalize_name(bad, "t")


def test_keep_xattr() -> None:
    assert keep_xattr("user.foo") and keep_xattr("security.capability")
    for name in ("trusted.overlay.opaque", "user.overlay.origin", "security.selinux", "system.x"):
        assert not keep_xattr(name)
