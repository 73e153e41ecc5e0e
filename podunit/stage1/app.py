"""app: build one container and hand the unit over to it.

Order matters and each step says why:
1. join the pod's namespaces (UTS, IPC, network, and PID if shared), pinned
   by the sandbox unit;
2. unshare a mount namespace (rslave: host mounts still propagate in, ours
   never leak out), a cgroup namespace and, by default, a PID namespace;
3. mount the overlay root from the shared read-only layers plus this app's
   fresh upper dir, then /sys, /dev, the pod files and volumes inside it,
   every target resolved inside the root (kernel.mounts);
4. fork: only a child enters the new PID namespace. The child mounts /proc
   (a proc mount shows the PID namespace of its mounter), masks the kernel
   paths OCI runtimes mask, pivots into the root, drops privileges and execs;
5. the parent waits until the exec happened (a close-on-exec pipe closes),
   tells systemd `MAINPID=<child>` and `READY=1`, and exits: the app is the
   unit's main process, and no podunit process stays behind.
Init containers (Type=oneshot) instead wait for the child and exit with its
code, because the next unit must not start before they finish.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from podunit.capabilities import CAPABILITIES, capability_mask
from podunit.kernel import mounts as m
from podunit.kernel import syscalls as sc
from podunit.paths import runtime_dir
from podunit.stage1.common import (
    fail,
    load_plan,
    mkdirs,
    mount_points,
    remove_tree,
    sd_notify,
    sd_notify_barrier,
    unmount_tree,
)

if TYPE_CHECKING:
    from podunit.plan import AppPlan, MountPlan, PodPlan

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)  # fmt: skip
READONLY_PATHS = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)  # fmt: skip
NS_FLAGS = {"uts": sc.CLONE_NEWUTS, "ipc": sc.CLONE_NEWIPC, "net": sc.CLONE_NEWNET}
EXIT_SETUP_FAILED = 126


def start_app(pod: str, name: str, *, debug: bool = False) -> int:
    plan = load_plan(pod)
    app = next((a for a in plan["init_apps"] + plan["apps"] if a["name"] == name), None)
    if app is None:
        fail(f"pod {pod} has no container {name}")
    handover = systemd_handover(plan, app)
    try:
        staged = stage_bidirectional_volumes(plan, app)
        join_pod_namespaces(plan)
        sc.unshare(sc.CLONE_NEWNS | sc.CLONE_NEWCGROUP | (_pid_flag(plan)))
        make_slave_except(list(staged.values()))
        prepare_root(plan, app, handover.mounts, staged, debug=debug)
    except OSError as exc:
        fail(f"setting up container {name}: {exc}")
    return fork_app(plan, app, handover, debug=debug)


CONTAINER_NOTIFY_SOCKET = "/run/host/notify"


def stage_bidirectional_volumes(plan: PodPlan, app: AppPlan) -> dict[int, str]:
    """`mountPropagation: Bidirectional` needs the container's mount to be a
    *peer* of the host's. A bind made here, still in the host's mount
    namespace, joins the source's peer group; the namespace copy made by
    unshare keeps it a peer, as long as it is not turned into a slave with
    the rest (make_slave_except). Mount index -> staging path."""
    base = Path(plan["runtime_dir"]) / "apps" / app["name"] / "shared"
    unmount_tree(base)  # a previous run's
    staged: dict[int, str] = {}
    for index, mount in enumerate(app["mounts"]):
        if mount["propagation"] != "rshared":
            continue
        source = resolve_volume_source(mount)
        staging = base / str(index)
        if os.path.isdir(source):
            mkdirs(staging)
        else:
            mkdirs(base)
            staging.touch()
        sc.mount(source, str(staging), None, sc.MS_BIND | sc.MS_REC)
        sc.mount(None, str(staging), None, sc.MS_REC | sc.MS_SHARED)
        staged[index] = str(staging)
    return staged


def make_slave_except(keep: list[str]) -> None:
    """Host mounts keep propagating in, ours never out: every mount becomes a
    slave, except the staged bidirectional volumes (and what is below them)."""
    if not keep:
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)
        return
    for mount_point in mount_points():
        if any(mount_point == k or mount_point.startswith(k.rstrip("/") + "/") for k in keep):
            continue
        try:
            sc.mount(None, mount_point, None, sc.MS_SLAVE)
        except OSError:
            pass  # over-mounted or gone: nothing of ours is created below it


class Handover(NamedTuple):
    """What systemd gave stage1 that belongs to the app: the notification
    socket (for the pod's notify container) and socket-activation fds."""

    env: dict[str, str]
    mounts: list[m.MountOp]
    app_notifies: bool  # the app sends READY=1 itself
    listen_fds: int


def systemd_handover(plan: PodPlan, app: AppPlan) -> Handover:
    env: dict[str, str] = {}
    mounts: list[m.MountOp] = []
    notifies = plan["annotations"].get("podunit.io/notify") == app["name"]
    socket = os.environ.get("NOTIFY_SOCKET", "")
    if notifies and socket.startswith("/"):
        mounts.append(
            m.BindMount(
                CONTAINER_NOTIFY_SOCKET, source=socket, is_file=True, recursive=False, extra_flags=0
            )
        )
        env["NOTIFY_SOCKET"] = CONTAINER_NOTIFY_SOCKET
    # Socket activation: fds 3.. are ours only when LISTEN_PID names us.
    listen_fds = 0
    if os.environ.get("LISTEN_PID") == str(os.getpid()):
        listen_fds = int(os.environ.get("LISTEN_FDS", "0") or 0)
    if listen_fds:
        env["LISTEN_FDS"] = str(listen_fds)
        if os.environ.get("LISTEN_FDNAMES"):
            env["LISTEN_FDNAMES"] = os.environ["LISTEN_FDNAMES"]
    return Handover(env, mounts, notifies and bool(socket), listen_fds)


def _pid_flag(plan: PodPlan) -> int:
    return 0 if plan["host_pid"] or plan["share_pid"] else sc.CLONE_NEWPID


def join_pod_namespaces(plan: PodPlan) -> None:
    ns_dir = Path(plan["runtime_dir"]) / "ns"
    wanted = []
    if not plan["host_network"]:
        wanted += ["uts", "net"]
    if not plan["host_ipc"]:
        wanted.append("ipc")
    for kind in wanted:
        _setns_file(ns_dir / kind, NS_FLAGS[kind])
    if plan["share_pid"]:
        # Only children are moved; the fork below lands the app in the pod's
        # PID namespace next to the pause process.
        _setns_file(ns_dir / "pid", sc.CLONE_NEWPID)


def _setns_file(path: Path, nstype: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(fd, nstype)
    finally:
        os.close(fd)


def prepare_root(
    plan: PodPlan,
    app: AppPlan,
    extra: list[m.MountOp],
    staged: dict[int, str],
    *,
    debug: bool,
) -> None:
    reset_dir(app["upper"])
    reset_dir(app["work"])
    rootfs = app["rootfs"]
    mkdirs(rootfs)
    lower = ":".join(reversed(app["layers"])) or _empty_layer()
    options = f"lowerdir={lower},upperdir={app['upper']},workdir={app['work']}"
    sc.mount("overlay", rootfs, "overlay", 0, options)
    ops = make_root_ops(plan, app, staged) + extra
    m.execute_all(rootfs, ops, debug=debug)


def reset_dir(path: str) -> None:
    """Each start gets a fresh writable layer, as a new Kubernetes container does."""
    remove_tree(path)
    mkdirs(path)


def _empty_layer() -> str:
    path = runtime_dir() / "empty"
    mkdirs(path)
    return str(path)


def make_root_ops(plan: PodPlan, app: AppPlan, staged: dict[int, str]) -> list[m.MountOp]:
    """The mounts of a container root, parents before children."""
    privileged = app["privileged"]
    ops: list[m.MountOp] = [
        m.FsMount("/sys", fstype="sysfs", read_only=not privileged),
    ]
    if privileged:
        ops.append(m.BindMount("/dev", source="/dev", extra_flags=sc.MS_NOSUID))
    else:
        ops.append(
            m.FsMount(
                "/dev",
                fstype="tmpfs",
                flags=sc.MS_NOSUID | sc.MS_STRICTATIME,
                data="mode=755,size=65536k",
            )
        )
        ops += [
            m.BindMount(
                f"/dev/{d}",
                source=f"/dev/{d}",
                is_file=True,
                recursive=False,
                extra_flags=sc.MS_NOSUID,
            )
            for d in DEVICES
        ]
        ops.append(
            m.FsMount(
                "/dev/pts",
                fstype="devpts",
                flags=sc.MS_NOSUID | sc.MS_NOEXEC,
                data="newinstance,ptmxmode=0666,mode=0620,gid=5",
            )
        )
        ops.append(m.Symlink("/dev/ptmx", link_target="pts/ptmx"))
    if not (privileged and plan["host_ipc"]):
        # (A privileged container with the host's IPC has the host's /dev/mqueue already.)
        ops.append(m.FsMount("/dev/mqueue", fstype="mqueue"))
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        ops.append(m.Symlink(f"/dev/{name}", link_target=target))
    # Parents before children, whatever order the manifest lists them in.
    volumes = sorted(enumerate(app["mounts"]), key=lambda item: _depth(item[1]["target"]))
    ops += [volume_op(mount, staged.get(index)) for index, mount in volumes]
    return ops


def _depth(path: str) -> int:
    return len([part for part in path.split("/") if part])


def volume_op(mount: MountPlan, staged: str | None = None) -> m.MountOp:
    source = staged or resolve_volume_source(mount)
    return m.BindMount(
        mount["target"],
        source=source,
        read_only=mount["read_only"],
        is_file=mount["is_file"] or (os.path.exists(source) and not os.path.isdir(source)),
        propagation=mount["propagation"],
        extra_flags=0,
    )


def resolve_volume_source(mount: MountPlan) -> str:
    """Check hostPath types as the kubelet does, and resolve subPath inside
    the volume (a symlink in the volume must not lead out of it,
    CVE-2017-1002101), returning a /proc/self/fd path for the latter."""
    source = mount["source"]
    kind = mount["host_path_type"]
    if kind == "DirectoryOrCreate":
        mkdirs(source)
    elif kind == "FileOrCreate" and not os.path.exists(source):
        mkdirs(os.path.dirname(source))
        os.close(os.open(source, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
    _check_host_path_type(source, kind)
    if not mount["sub_path"]:
        return source
    root_fd = os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    with m.open_in_root(root_fd, mount["sub_path"], create="dir") as fd:
        # Keep the fd open until exec: the bind below uses its /proc path.
        kept = os.dup(fd)
    os.close(root_fd)
    return m.fd_path(kept)


def _check_host_path_type(path: str, kind: str) -> None:
    if not kind:
        return
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise OSError(2, f"hostPath of type {kind} does not exist", path) from None
    checks = {
        "Directory": stat.S_ISDIR, "DirectoryOrCreate": stat.S_ISDIR,
        "File": stat.S_ISREG, "FileOrCreate": stat.S_ISREG,
        "Socket": stat.S_ISSOCK, "CharDevice": stat.S_ISCHR, "BlockDevice": stat.S_ISBLK,
    }  # fmt: skip
    if not checks[kind](mode):
        raise OSError(22, f"hostPath is not of type {kind}", path)


def fork_app(plan: PodPlan, app: AppPlan, handover: Handover, *, debug: bool) -> int:
    """Fork the app and hand it the unit. The child reports on `status`:
    b"S" once it is set up and about to exec, or an error text. It then waits
    on `go` until systemd has *processed* MAINPID/READY (a notify barrier):
    an app that exits within a millisecond must already be the main process,
    or systemd would count that exit as a failed start."""
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(status_r)
        os.close(go_w)
        _child(plan, app, handover, status_w, go_r)  # never returns
    os.close(status_w)
    os.close(go_r)
    with os.fdopen(status_r, "rb") as status:
        first = status.read(1)
        if first == b"S" and not app["init"]:
            # A notify container says READY=1 itself, when it is ready.
            ready = "" if handover.app_notifies else "READY=1\n"
            sd_notify(f"MAINPID={pid}\n{ready}")
            sd_notify_barrier()
        os.close(go_w)  # EOF on `go`: exec now
        error = (
            status.read().decode(errors="replace")
            if first == b"S"
            else (first + status.read()).decode(errors="replace")
        )
    if error:
        print(f"podunit-stage1: container {app['name']}: {error}", file=sys.stderr, flush=True)
        if first != b"S":
            os.waitpid(pid, 0)
            return EXIT_SETUP_FAILED
    if app["init"]:
        return wait_forwarding_signals(pid)
    return 0


def wait_forwarding_signals(pid: int) -> int:
    """Init containers: stay until the child exits; pass on stop signals."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda s, _f: os.kill(pid, s))
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def restore_signals() -> None:
    """Python ignores SIGPIPE and SIGXFSZ; ignored signals survive exec."""
    for signum in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def _child(plan: PodPlan, app: AppPlan, handover: Handover, status_fd: int, go_fd: int) -> None:
    try:
        enter_root(plan, app)
        env = _env_dict(app["env"]) | handover.env
        if handover.listen_fds:
            env["LISTEN_PID"] = str(os.getpid())  # as the app sees itself (1 in its PID namespace)
        executable = find_executable(app["argv"][0], env.get("PATH", ""))
        drop_privileges(app)
        restore_signals()
        os.write(status_fd, b"S")
        os.read(go_fd, 1)  # blocks until the parent closed it
        os.execve(executable, app["argv"], env)
    except BaseException as exc:  # report anything, then die: never return to the parent's code
        try:
            os.write(status_fd, str(exc).encode()[:4000])
        finally:
            os._exit(127 if isinstance(exc, FileNotFoundError) else EXIT_SETUP_FAILED)


def find_executable(name: str, path: str) -> str:
    """Resolve argv[0] inside the container as execvp would, before READY,
    so a missing binary fails the start instead of crashing after it."""
    candidates = [name] if "/" in name else [os.path.join(d or ".", name) for d in path.split(":")]
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(2, f'executable "{name}" not found in the image (PATH={path})')


def _env_dict(env: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in env if "=" in item)


def enter_root(plan: PodPlan, app: AppPlan) -> None:
    # pivot_root moves every process of the mount namespace whose root is the
    # old root: a namespace of our own keeps the parent (still talking to
    # systemd through /run) where it is.
    sc.unshare(sc.CLONE_NEWNS)
    rootfs = app["rootfs"]
    ops: list[m.MountOp] = [m.FsMount("/proc", fstype="proc")]
    if not app["privileged"]:
        ops += [m.MaskPath(p, null_device=f"{rootfs}/dev/null") for p in MASKED_PATHS]
        ops += [m.ReadOnlyPath(p) for p in READONLY_PATHS]
    m.execute_all(rootfs, ops)
    os.chdir(rootfs)
    sc.pivot_root(".", ".")
    sc.umount(".", sc.MNT_DETACH)
    os.chdir("/")
    if app["read_only_root"]:
        sc.mount(None, "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
    mkdirs(app["cwd"])
    os.chdir(app["cwd"])


def permitted_capabilities() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapPrm:"):
                return int(line.split()[1], 16)
    return 0


def drop_privileges(app: AppPlan) -> None:
    """Bounding set first (needs CAP_SETPCAP), then ids (need SETUID/SETGID,
    still effective), then the remaining sets, then no_new_privs. Runs after
    pivot_root: everything it uses must be imported already."""
    keep = set(app["capabilities"])
    for number, name in enumerate(CAPABILITIES):
        if name not in keep:
            try:
                sc.prctl(sc.PR_CAPBSET_DROP, number)
            except OSError:
                pass  # capability unknown to this kernel
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    os.setgroups(app["groups"])
    os.setgid(app["gid"])
    os.setuid(app["uid"])
    # Only what we hold can be kept: a host (or container) may have withheld some.
    mask = capability_mask(keep) & permitted_capabilities() if app["uid"] == 0 else 0
    sc.capset(mask, mask, 0)
    if app["no_new_privs"]:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
