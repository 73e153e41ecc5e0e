"""A real systemd 252 booted in a systemd-nspawn container, for integration tests.

The machines podunit is developed on do not run systemd as PID 1, and podunit is nothing without
a systemd to talk to. So the integration tests boot the host's own systemd in a container whose
root is an overlay of the host's root: every host package (podman, crun, containerd, skopeo, ...)
is there, writes stay in the overlay's upper dir, and the repository is bound read-only at its own
path so that the code under test is the working tree. See shared/TESTBED.md for why each step is
needed on these machines (cgroup v1 "hybrid", nspawn mounting the controllers read-only, ...).

    with Testbed() as tb:
        tb.run(["systemctl", "is-system-running"])

As a script (for debugging, and for the demo on machines whose PID 1 is not systemd):

    python3 tests/testbed.py shell
    python3 tests/testbed.py run -- systemctl status
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import itertools
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

log = logging.getLogger("podunit.testbed")

REPO = Path(__file__).resolve().parent.parent
# Not tmpfs and not an overlay: the overlay's upper dir must be on the same real file system as
# its lower dir ("/") for the boot to work, and /var/tmp is on "/" here.
WORK_PARENT = Path("/var/tmp")
WORK_PREFIX = "podunit-testbed-"
CGROUP_PREFIX = "podunit-testbed-"
STATE_IN_CONTAINER = Path("/var/lib/podunit")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_ENV = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8"}
HOSTNAME = "podunit-testbed"

# Units masked in the container: they fail there, wait for things a container never gets, or
# would do background work (and write to copies of the host's data) in the middle of tests.
MASKED_UNITS = (
    # No terminal: the console is a pipe, and there are no ttys.
    "getty@.service",
    "serial-getty@.service",
    "console-getty.service",
    "container-getty@.service",
    # The private network has only "lo": these would wait minutes for a route.
    "systemd-networkd-wait-online.service",
    "NetworkManager-wait-online.service",
    # The host's own daemons and their data, copied into the overlay: not ours to start.
    "postgresql.service",
    "postgresql@.service",
    "docker.service",
    "docker.socket",
    # Periodic housekeeping that would run (and use the 2 CPUs) during tests.
    "apt-daily.timer",
    "apt-daily.service",
    "apt-daily-upgrade.timer",
    "apt-daily-upgrade.service",
    "dpkg-db-backup.timer",
    "dpkg-db-backup.service",
    "e2scrub_all.timer",
    "e2scrub_all.service",
    "e2scrub_reap.service",
    "fstrim.timer",
    "fstrim.service",
    "logrotate.timer",
    "man-db.timer",
    "man-db.service",
    # Nothing to do in a container (no pstore, the host keeps the clock).
    "systemd-pstore.service",
    "systemd-timesyncd.service",
    # podman's own restart/auto-update logic acts on every container it finds.
    "podman-auto-update.timer",
    "podman-auto-update.service",
    "podman-restart.service",
)
# Peers that tests may start themselves (so: disabled, not masked) but that must not start at
# boot: the comparison tests want them stopped unless asked for.
DISABLED_UNITS = (
    "containerd.service",
    "docker-registry.service",
    "podman.service",
    "podman.socket",
)

# Where close() copies each testbed's log to, if set.
LOG_DIR_ENV = "PODUNIT_TESTBED_LOG_DIR"
BOOT_TIMEOUT = 60.0
SHUTDOWN_TIMEOUT = 30.0

_sequence = itertools.count()


class TestbedError(RuntimeError):
    """The testbed could not be started, or is not running."""

    __test__ = False  # not a pytest test class, despite the name


class CommandFailed(AssertionError):
    """A command run in the testbed exited non-zero (an AssertionError, so pytest shows it)."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"command in testbed failed with exit code {returncode}: {shlex.join(self.argv)}\n"
            f"--- stdout ---\n{stdout}--- stderr ---\n{stderr}"
        )


@dataclass(frozen=True)
class Bind:
    """A host directory bound into the container."""

    host: Path
    container: Path
    read_only: bool = False

    def nspawn_option(self) -> str:
        return f"--bind{'-ro' if self.read_only else ''}={self.host}:{self.container}"


# --------------------------------------------------------------------------------------------
# cgroups: nspawn and the container go into cgroups of their own, so that nothing the container
# does lands in (or is limited by) cgroups that belong to someone else, and so that everything
# it started can be found and killed at the end.
# --------------------------------------------------------------------------------------------


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1 : i + 4]) == 3 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class Mount:
    root: str
    mountpoint: Path
    options: frozenset[str]
    fstype: str
    super_options: frozenset[str]


def read_mountinfo(pid: int | str = "self") -> list[Mount]:
    mounts = []
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        left, right = line.split(" - ", 1)
        fields = left.split()
        fstype, _source, super_opts = right.split(" ", 2)
        mounts.append(
            Mount(
                root=_unescape_mountinfo(fields[3]),
                mountpoint=Path(_unescape_mountinfo(fields[4])),
                options=frozenset(fields[5].split(",")),
                fstype=fstype,
                super_options=frozenset(super_opts.split(",")),
            )
        )
    return mounts


def current_cgroups() -> list[Path]:
    """The directories of the cgroups this process is in, one per mounted hierarchy."""
    mounts = [m for m in read_mountinfo() if m.fstype in ("cgroup", "cgroup2")]
    dirs = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy_id, controllers, path = line.split(":", 2)
        if hierarchy_id == "0":
            candidates = [m for m in mounts if m.fstype == "cgroup2"]
        else:
            wanted = set(controllers.split(","))
            candidates = [m for m in mounts if m.fstype == "cgroup" and wanted <= m.super_options]
        for mount in candidates:
            # A mount of a sub-tree only shows the cgroups below its root.
            root = mount.root.rstrip("/")
            if path == root or path.startswith(root + "/"):
                dirs.append(mount.mountpoint / path[len(root) :].lstrip("/"))
                break
    return dirs


def _procs(cgroup: Path) -> list[int]:
    try:
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def _join_cgroups(procs_files: Sequence[Path]) -> None:
    # Runs in the forked child before exec, so that the command starts inside the cgroups.
    pid = str(os.getpid())
    for procs in procs_files:
        with open(procs, "w") as f:
            f.write(pid)


class OwnCgroups:
    """One new child cgroup of this process's cgroup in every hierarchy, removed at the end."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dirs: list[Path] = []

    def create(self) -> None:
        for parent in current_cgroups():
            child = parent / self.name
            child.mkdir()
            self.dirs.append(child)
            # A v1 cpuset cgroup has no CPUs and no memory nodes until told: copy the parent's.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (parent / knob).exists():
                    (child / knob).write_text((parent / knob).read_text().strip() or "\n")

    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def pids(self) -> set[int]:
        pids: set[int] = set()
        for top in self.dirs:
            for d in self._tree(top):
                pids.update(_procs(d))
        return pids

    def kill_all(self, timeout: float = 10.0) -> None:
        """SIGKILL every process in these cgroups (all of them were started by this testbed)."""
        deadline = time.monotonic() + timeout
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        if pids:
            log.warning("processes left in testbed cgroups after SIGKILL: %s", sorted(pids))

    def remove(self) -> None:
        """Kill what is left, then remove the cgroups, deepest first."""
        if not self.dirs:
            return
        self.kill_all()
        for top in self.dirs:
            for d in self._tree(top):
                self._rmdir(d)
        self.dirs = [d for d in self.dirs if d.exists()]
        if self.dirs:
            log.warning("could not remove cgroups: %s", self.dirs)

    @staticmethod
    def _tree(top: Path) -> list[Path]:
        """top and every cgroup below it, children before their parent."""
        if not top.is_dir():
            return []
        subdirs = [Path(root) / d for root, dirs, _ in os.walk(top) for d in dirs]
        subdirs.sort(key=lambda p: len(p.parts), reverse=True)
        return [*subdirs, top]

    @staticmethod
    def _rmdir(d: Path, timeout: float = 5.0) -> None:
        # A cgroup whose last process just died can be busy for a moment.
        deadline = time.monotonic() + timeout
        while True:
            try:
                d.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    log.warning("cannot remove cgroup %s", d)
                    return
                time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# mounts of the work dir
# --------------------------------------------------------------------------------------------


def _mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below directory, deepest first."""
    found = {
        m.mountpoint
        for m in read_mountinfo()
        if m.mountpoint == directory or directory in m.mountpoint.parents
    }
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _unmount_all_under(directory: Path) -> None:
    for _attempt in range(5):
        mounts = _mounts_under(directory)
        if not mounts:
            return
        for mountpoint in mounts:
            result = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True)
            if result.returncode != 0:
                log.warning("umount %s: %s; detaching it lazily", mountpoint, result.stderr.strip())
                subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


# --------------------------------------------------------------------------------------------
# the container's root
# --------------------------------------------------------------------------------------------


def _prepare_root(root: Path) -> None:
    """Turn the overlay of the host's root into a machine of its own."""
    # journald refuses to link journals of a machine that has the host's machine-id, and
    # D-Bus keeps a copy of it: regenerate both.
    for path in (root / "etc/machine-id", root / "var/lib/dbus/machine-id"):
        path.unlink(missing_ok=True)
    subprocess.run(["systemd-machine-id-setup", f"--root={root}"], check=True, capture_output=True)
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.parent.is_dir():
        dbus_id.symlink_to("/etc/machine-id")
    (root / "etc/hostname").write_text(HOSTNAME + "\n")

    unit_dir = root / "etc/systemd/system"
    for unit in MASKED_UNITS:
        target = unit_dir / unit
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to("/dev/null")
    # "Disable" = drop the symlinks that pull the unit in at boot; the unit stays startable.
    for wants in unit_dir.glob("*.wants"):
        for unit in DISABLED_UNITS + MASKED_UNITS:
            link = wants / unit
            if link.is_symlink():
                link.unlink()


# --------------------------------------------------------------------------------------------
# the testbed
# --------------------------------------------------------------------------------------------


class Testbed:
    """A booted systemd in a systemd-nspawn container over an overlay of the host's root.

    binds: extra (host dir, dir in container, read_only) bind mounts.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        binds: Sequence[tuple[str | Path, str | Path, bool]] = (),
        *,
        boot_timeout: float = BOOT_TIMEOUT,
    ) -> None:
        self.name = f"{CGROUP_PREFIX}{os.getpid()}-{next(_sequence)}"
        self.boot_timeout = boot_timeout
        self.extra_binds = [Bind(Path(h), Path(c), ro) for h, c, ro in binds]
        self.workdir: Path | None = None
        self.leader: int | None = None
        self.memory_limits_enforced = False
        self.boot_seconds: float | None = None
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._nspawn_log: IO[bytes] | None = None
        self._cgroups = OwnCgroups(self.name)
        self._container_procs_files: list[Path] = []
        self._spawned: list[subprocess.Popen[Any]] = []
        self._closed = False

    # ---- paths --------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if self.workdir is None:
            raise TestbedError("testbed not started")
        return self.workdir / name

    @property
    def root(self) -> Path:
        """The container's root as seen from the host (the overlay's mount point)."""
        return self._path("root")

    @property
    def state_dir(self) -> Path:
        """Host directory bound at /var/lib/podunit in the container (a real file system, so
        podunit can put overlays on it)."""
        return self._path("state")

    @property
    def shared_dir(self) -> Path:
        """Host directory bound at the same path in the container: files put here by the host
        (e.g. test images) are at the same path inside."""
        return self._path("shared")

    @property
    def log_path(self) -> Path:
        """The testbed's log: nspawn's output (the container's console) and the harness's notes."""
        return self._path("testbed.log")

    def _note(self, message: str) -> None:
        log.info("%s", message)
        if self.workdir is not None and self.log_path.parent.is_dir():
            with open(self.log_path, "a") as f:
                f.write(f"[testbed {time.strftime('%H:%M:%S')}] {message}\n")

    # ---- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Testbed:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Set up the root and the cgroups, boot, and make cgroup limits work."""
        if self.workdir is not None:
            raise TestbedError("testbed already started")
        self._closed = False
        atexit.register(self.close)  # a safety net: pytest may not get to the fixture's teardown
        started = time.monotonic()
        try:
            self.workdir = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=WORK_PARENT))
            # mkdtemp makes it 0700; the shared dir below must be reachable by anyone inside.
            self.workdir.chmod(0o755)
            for sub in ("upper", "work", "root", "state", "shared"):
                (self.workdir / sub).mkdir()
            subprocess.run(
                [
                    "mount", "-t", "overlay", "overlay",
                    "-o", f"lowerdir=/,upperdir={self._path('upper')},workdir={self._path('work')}",
                    str(self.root),
                ],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            _prepare_root(self.root)
            self._boot()
        except BaseException as error:
            details = self._log_tail()  # before close() deletes the log
            self.close()
            if isinstance(error, Exception):
                reason = str(error)
                if isinstance(error, subprocess.CalledProcessError):
                    reason += f": {error.stderr}"
                raise TestbedError(f"testbed failed to start: {reason}\n{details}") from error
            raise
        self.boot_seconds = time.monotonic() - started
        self._note(f"ready in {self.boot_seconds:.1f} s")

    def _boot(self) -> None:
        self._cgroups = OwnCgroups(self.name)
        self._cgroups.create()
        self._start_nspawn()
        self.leader = self._find_leader()
        self._container_procs_files = self._container_root_cgroups()
        self._wait_until_running()
        self._enable_cgroup_controllers()
        self.memory_limits_enforced = self._check_memory_limits()
        self._note(f"memory limits enforced: {self.memory_limits_enforced}")

    def _nspawn_argv(self) -> list[str]:
        binds = [
            Bind(self.state_dir, STATE_IN_CONTAINER),
            Bind(self.shared_dir, self.shared_dir),
            Bind(REPO, REPO, read_only=True),
            *self.extra_binds,
        ]
        return [
            "systemd-nspawn",
            f"--directory={self.root}",
            "--boot",
            "--register=no",  # no systemd-machined on a host whose PID 1 is not systemd
            "--keep-unit",  # and no unit to create: stay in the cgroups we made
            "--private-network",
            "--capability=all",
            # nspawn's seccomp filter blocks the keyring, which runtimes (containerd) need.
            "--system-call-filter=add_key keyctl request_key",
            "--console=pipe",
            f"--machine={self.name}",
            *[b.nspawn_option() for b in binds],
        ]

    def _start_nspawn(self) -> None:
        argv = self._nspawn_argv()
        self._note(f"starting {shlex.join(argv)}")
        self._nspawn_log = open(self.log_path, "ab")  # closed in _stop()
        procs_files = self._cgroups.procs_files()
        self._nspawn = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._nspawn_log,
            stderr=subprocess.STDOUT,
            # Our own session: a ^C at the terminal must reach the container only through us.
            start_new_session=True,
            preexec_fn=lambda: _join_cgroups(procs_files),
        )

    def _find_leader(self, timeout: float = 10.0) -> int:
        """The container's PID 1: the descendant of nspawn that runs systemd in a new PID ns."""
        assert self._nspawn is not None
        our_pidns = os.readlink("/proc/self/ns/pid")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise TestbedError(f"systemd-nspawn exited with {self._nspawn.returncode}")
            for pid in _descendants(self._nspawn.pid):
                with contextlib.suppress(OSError):
                    if (
                        Path(f"/proc/{pid}/comm").read_text().strip() == "systemd"
                        and os.readlink(f"/proc/{pid}/ns/pid") != our_pidns
                    ):
                        self._note(f"container leader is PID {pid}")
                        return pid
            time.sleep(0.02)
        raise TestbedError(f"no systemd appeared under systemd-nspawn in {timeout} s")

    def _container_root_cgroups(self) -> list[Path]:
        """cgroup.procs of the container's root cgroups (its cgroup namespace's root).

        Commands run through nsenter go there: inside they see themselves in "/" like any
        process of the machine, and close() finds and kills them with the rest.
        """
        files = []
        for d in self._cgroups.dirs:
            # nspawn makes "payload" (the container) and "supervisor" (itself) in the
            # hierarchies it manages, and uses our cgroup as it is in the others.
            payload = d / "payload"
            files.append((payload if payload.is_dir() else d) / "cgroup.procs")
        return files

    def _wait_until_running(self) -> None:
        """Until the manager says running or degraded; on degraded, log what failed."""
        deadline = time.monotonic() + self.boot_timeout
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            result = self._nsenter_run(
                ["systemctl", "is-system-running", "--wait"],
                timeout=max(1.0, deadline - time.monotonic()),
            )
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                break
            # Early on the manager may not accept connections yet ("offline", errors).
            time.sleep(0.1)
        else:
            raise TestbedError(
                f"systemd in the testbed not running after {self.boot_timeout} s: {state!r}"
            )
        if state == "degraded":
            failed = self._nsenter_run(["systemctl", "--failed", "--no-pager", "--full"])
            self._note(f"system degraded; failed units:\n{failed.stdout}")
        else:
            self._note("system running")

    def _enable_cgroup_controllers(self) -> None:
        """Make cgroup limits (MemoryMax=, TasksMax=, ...) work inside.

        nspawn mounts the v1 controller hierarchies read-only in the container, so its systemd
        silently applies no limits. Remount them read-write in the container's mount namespace
        and re-execute the manager so that it sees (and realizes) them.
        """
        assert self.leader is not None
        readonly = [
            m.mountpoint
            for m in read_mountinfo(self.leader)
            if m.fstype == "cgroup" and "ro" in m.options
            and m.mountpoint.parent == Path("/sys/fs/cgroup")
        ]  # fmt: skip
        for mountpoint in readonly:
            subprocess.run(
                ["nsenter", "-t", str(self.leader), "-m",
                 "mount", "-o", "remount,bind,rw,nosuid,nodev,noexec", str(mountpoint)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
        self._note(f"remounted read-write: {' '.join(map(str, readonly))}")
        self.run(["systemctl", "daemon-reexec"])
        self._wait_until_running()

    def _check_memory_limits(self) -> bool:
        """Is MemoryMax= enforced? An allocation over the limit must be killed, while the same
        command under the limit must succeed (so a broken command is not taken for a kill)."""

        def allocate(megabytes: int) -> subprocess.CompletedProcess[str]:
            return self.run(
                ["systemd-run", "--wait", "--quiet", "--collect",
                 "-p", "MemoryMax=32M", "-p", "MemorySwapMax=0",
                 "/usr/bin/python3", "-c", f"b = b'x' * ({megabytes} << 20)"],
                check=False, timeout=60,
            )  # fmt: skip

        under, over = allocate(4), allocate(200)
        self._note(
            f"4 MiB under MemoryMax=32M: exit {under.returncode}; 200 MiB: exit {over.returncode}"
        )
        return under.returncode == 0 and over.returncode != 0

    def _check_alive(self) -> None:
        if self._nspawn is None or self._nspawn.poll() is not None:
            code = None if self._nspawn is None else self._nspawn.returncode
            raise TestbedError(f"systemd-nspawn is not running (exit code {code})")

    def reboot(self) -> None:
        """Power the container off and boot it again on the same root, upper and state dirs."""
        self._check_alive()
        started = time.monotonic()
        self._stop()
        self._cgroups.remove()
        self._boot()
        self.boot_seconds = time.monotonic() - started
        self._note(f"rebooted in {self.boot_seconds:.1f} s")

    def _stop(self) -> None:
        """Shut the container down: cleanly if possible, by force otherwise."""
        for proc in self._spawned:
            _terminate(proc)
        self._spawned.clear()
        nspawn = self._nspawn
        if nspawn is not None and nspawn.poll() is None:
            if self.leader is not None:
                with contextlib.suppress(Exception):
                    self._nsenter_run(["systemctl", "poweroff", "--no-block"], timeout=10)
            if not _wait(nspawn, SHUTDOWN_TIMEOUT):
                self._note("no poweroff in time: SIGTERM to nspawn")
                nspawn.terminate()  # nspawn asks the container's systemd to power off
                if not _wait(nspawn, 10):
                    self._note("SIGKILL to nspawn")
                    nspawn.kill()
                    nspawn.wait()
        if nspawn is not None:
            self._note(f"systemd-nspawn exited with {nspawn.returncode}")
        # Whatever is left of the container (after a SIGKILL to nspawn, say) dies here.
        self._cgroups.kill_all()
        self._nspawn = None
        self.leader = None
        self._container_procs_files = []
        if self._nspawn_log is not None:
            self._nspawn_log.close()
            self._nspawn_log = None
        # nspawn leaves this behind when /run is not a tmpfs (it refuses to "remove a disk
        # file system"); the name is ours alone.
        with contextlib.suppress(OSError):
            Path("/run/systemd/nspawn/propagate", self.name).rmdir()

    def close(self) -> None:
        """Power off, unmount, remove the cgroups and the work dir. Safe to call again."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop()
        finally:
            self._cgroups.remove()
            if self.workdir is not None:
                self._keep_log()
                self._remove_workdir(self.workdir)
                self.workdir = None
        atexit.unregister(self.close)

    def _keep_log(self) -> None:
        """Copy the log to $PODUNIT_TESTBED_LOG_DIR, if set (the work dir is deleted)."""
        log_dir = os.environ.get(LOG_DIR_ENV)
        if log_dir and self.log_path.is_file():
            with contextlib.suppress(OSError):
                Path(log_dir).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.log_path, Path(log_dir, f"{self.name}.log"))

    @staticmethod
    def _remove_workdir(workdir: Path) -> None:
        _unmount_all_under(workdir)
        if left := _mounts_under(workdir):
            # Never recurse into a mount: root/ is an overlay of the host's root.
            log.error("not removing %s: still mounted: %s", workdir, left)
            return
        shutil.rmtree(workdir, ignore_errors=True)

    def _log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(Exception):
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
            return "--- testbed log (tail) ---\n" + "\n".join(text)
        return ""

    # ---- running commands ---------------------------------------------------------------

    def _nsenter_argv(self, argv: Sequence[str], env: Mapping[str, str] | None) -> list[str]:
        if self.leader is None:
            raise TestbedError("testbed not running")
        environment = {**BASE_ENV, **(env or {})}
        # Entering the mount namespace puts us at its root; "--wdns" (not "--wd", which opens
        # the directory before entering) keeps it explicit.
        return [
            "nsenter", "-t", str(self.leader), "-a", "--wdns=/",
            "env", "-i", *[f"{k}={v}" for k, v in environment.items()],
            *argv,
        ]  # fmt: skip

    def _popen_kwargs(self) -> dict[str, Any]:
        procs_files = list(self._container_procs_files)
        return {
            # A session of its own: a ^C at the terminal is for pytest, not for the container.
            "start_new_session": True,
            "preexec_fn": lambda: _join_cgroups(procs_files),
        }

    def _nsenter_run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        timeout: float = 120,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full = self._nsenter_argv(argv, env)
        with _NsenterPopen(
            full,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **self._popen_kwargs(),
        ) as proc:
            try:
                stdout, stderr = proc.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill(proc)
                raise
        return subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv as root inside the container (clean environment: PATH, HOME, LANG, env).

        Output is captured as text. check=True raises CommandFailed on a non-zero exit;
        a timeout kills the command and raises subprocess.TimeoutExpired.
        """
        self._check_alive()
        result = self._nsenter_run(argv, input=input, timeout=timeout, env=env)
        if check and result.returncode != 0:
            raise CommandFailed(argv, result.returncode, result.stdout, result.stderr)
        return result

    def shell(
        self,
        script: str,
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """run(["/bin/sh", "-c", script])."""
        argv = ["/bin/sh", "-c", script]
        return self.run(argv, check=check, input=input, timeout=timeout, env=env)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.PIPE,
        text: bool = True,
    ) -> subprocess.Popen[Any]:
        """Start argv inside the container in the background (e.g. journalctl -f).

        The caller may terminate() or kill() it (that signals the command, see _NsenterPopen);
        close() and reboot() terminate it anyway.
        """
        self._check_alive()
        proc = _NsenterPopen(
            self._nsenter_argv(argv, env),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            text=text,
            **self._popen_kwargs(),
        )
        self._spawned.append(proc)
        return proc

    def exec_interactive(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
        """Run argv inside with this process's stdio and terminal (for the script's shell/run).

        Not in a session of its own: an interactive shell needs the controlling terminal.
        """
        self._check_alive()
        procs_files = list(self._container_procs_files)
        proc = _NsenterPopen(
            self._nsenter_argv(argv, env), preexec_fn=lambda: _join_cgroups(procs_files)
        )
        try:
            return proc.wait()
        except BaseException:  # ^C, SIGTERM: stop the command, not just nsenter
            _terminate(proc)
            raise


class _NsenterPopen(subprocess.Popen[Any]):
    """An nsenter whose signals (terminate(), kill()) go to the command it runs.

    nsenter forks the command (entering a PID namespace only affects children) and waits for
    it, forwarding no signals. Killed first, nsenter would leave its child to the host's init,
    which reaps it late; the container's shutdown then waits 10 s for that zombie. Signalled
    instead, the command dies, nsenter reaps it and exits with its status.
    """

    def send_signal(self, sig: int) -> None:
        self.poll()
        if self.returncode is not None:
            return
        children = _children(self.pid)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, sig)
        if not children:  # nsenter has not forked yet, or its command is gone
            super().send_signal(sig)


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            children.extend(int(child) for child in task.read_text().split())
    return children


def _descendants(pid: int) -> Iterator[int]:
    """All descendants of pid, breadth first."""
    queue = [pid]
    while queue:
        for child in _children(queue.pop(0)):
            yield child
            queue.append(child)


def _wait(proc: subprocess.Popen[Any], timeout: float) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def _terminate(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, SIGKILL after 5 s; close its pipes."""
    proc.terminate()
    if not _wait(proc, 5):
        _kill(proc)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _kill(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL (to the command, for an _NsenterPopen), then to the process itself."""
    proc.kill()
    if not _wait(proc, 5):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def _parse_bind(text: str) -> tuple[str, str, bool]:
    parts = text.split(":")
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        return parts[0], parts[1], parts[2] == "ro"
    if len(parts) == 2:
        return parts[0], parts[1], False
    if len(parts) == 1:
        return parts[0], parts[0], False
    raise argparse.ArgumentTypeError(f"expected HOST[:CONTAINER[:ro|rw]], got {text!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-v", "--verbose", action="store_true", help="log the boot to stderr")
    parser.add_argument(
        "--bind", action="append", type=_parse_bind, default=[], metavar="HOST[:DEST[:ro]]",
        help="bind a host directory into the container (repeatable)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("shell", help="boot and open a bash inside (exit it to shut down)")
    run_parser = sub.add_parser("run", help="boot, run CMD inside, shut down; exit with its code")
    run_parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    args = parser.parse_args(argv)

    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(name)s: %(message)s", stream=sys.stderr)
    # SIGTERM/SIGHUP must unwind through close() like ^C does, not leave a container behind.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda n, _f: sys.exit(128 + n))

    if args.command == "run":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("run needs a command: run -- CMD [ARG...]")
    with Testbed(args.bind) as testbed:
        enforced = testbed.memory_limits_enforced
        log.info("booted in %.1f s; memory limits enforced: %s", testbed.boot_seconds, enforced)
        if args.command == "shell":
            # ^C is for the shell (it gets it too, being in our process group), not for us:
            # a no-op handler, not SIG_IGN, which bash would inherit.
            signal.signal(signal.SIGINT, lambda _n, _f: None)
            term = {"TERM": os.environ.get("TERM", "xterm")}
            return testbed.exec_interactive(["bash", "-l"], env=term)
        return testbed.exec_interactive(cmd)


if __name__ == "__main__":
    sys.exit(main())
