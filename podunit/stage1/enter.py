"""`podunit exec`: run a command inside a running app, as the app runs.

Joins the app's cgroups (so its limits apply), its namespaces (taken from
its main process), gets the same user, capabilities and no_new_privs, and
waits for the command, returning its exit code.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

from podunit.kernel import syscalls as sc
from podunit.stage1.app import drop_privileges, restore_signals

if TYPE_CHECKING:
    from podunit.plan import AppPlan

# Mount namespace last: after it, /proc/PID paths of the host are gone.
NAMESPACE_ORDER = (
    ("cgroup", sc.CLONE_NEWCGROUP),
    ("ipc", sc.CLONE_NEWIPC),
    ("uts", sc.CLONE_NEWUTS),
    ("net", sc.CLONE_NEWNET),
    ("pid", sc.CLONE_NEWPID),
    ("mnt", sc.CLONE_NEWNS),
)


def enter_app(app: AppPlan, main_pid: int, argv: list[str]) -> int:
    fds = [
        (os.open(f"/proc/{main_pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC), flag)
        for name, flag in NAMESPACE_ORDER
    ]
    join_cgroups(main_pid)
    for fd, flag in fds:
        sc.setns(fd, flag)
        os.close(fd)
    pid = os.fork()
    if pid == 0:
        _exec_child(app, argv)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda s, _f: os.kill(pid, s))
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _exec_child(app: AppPlan, argv: list[str]) -> None:
    try:
        os.chdir(app["cwd"])
        drop_privileges(app)
        restore_signals()
        env = dict(item.split("=", 1) for item in app["env"] if "=" in item)
        os.execvpe(argv[0], argv, env)
    except BaseException as exc:
        os.write(2, f"podunit exec: {argv[0]}: {exc}\n".encode())
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)


def join_cgroups(pid: int) -> None:
    """Move this process into every cgroup of `pid` (v1 hierarchies and v2)."""
    mounts = cgroup_mounts()
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            base = mounts.get(controllers)
            if base is None:
                continue
            try:
                with open(f"{base}{path}/cgroup.procs", "w") as procs:
                    procs.write(str(os.getpid()))
            except OSError:
                pass  # a hierarchy we may not write (e.g. read-only): limits still apply via others


def cgroup_mounts() -> dict[str, str]:
    """Controller list as /proc/PID/cgroup names it -> mount point."""
    result: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _source, options = (right.split() + ["", "", ""])[:3]
            mount_point = left.split()[4]
            if fstype == "cgroup2":
                result.setdefault("", mount_point)
            elif fstype == "cgroup":
                opts = options.split(",")
                names = [
                    o
                    for o in opts
                    if o not in ("rw", "ro") and "=" not in o or o.startswith("name=")
                ]
                known = [o for o in names if o in _V1_CONTROLLERS or o.startswith("name=")]
                result.setdefault(",".join(known), mount_point)
    return result


_V1_CONTROLLERS = {
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio",
    "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc",
}  # fmt: skip
