"""pod-up / pod-down: the pod's shared namespaces, files and volumes.

pod-up runs as the sandbox unit's ExecStart, in the host's mount namespace.
It unshares the pod's UTS, IPC and network namespaces in its own process and
bind-mounts `/proc/self/ns/*` onto files under `RUNTIME/pods/NAME/ns/`: a
bind mount keeps a namespace alive with no process in it, so apps can be
restarted (or all be stopped) without losing the pod's network or IPC, and no
podunit process stays resident. A shared PID namespace is the exception: it
dies with its init, so `shareProcessNamespace` pods keep a tiny pause process
(catatonit, as podman uses) in the sandbox unit.

pod-down (ExecStopPost, so it also runs after a failed or killed start)
undoes all of it and is idempotent.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from podunit.kernel import syscalls as sc
from podunit.network import podfiles as pf
from podunit.paths import sandboxes_dir
from podunit.stage1.common import fail, load_plan, mkdirs, remove_tree, unmount_tree

if TYPE_CHECKING:
    from podunit.plan import PodPlan

NAMESPACES = {"uts": sc.CLONE_NEWUTS, "ipc": sc.CLONE_NEWIPC, "net": sc.CLONE_NEWNET}
PAUSE_BINARIES = ("/usr/bin/catatonit", "/usr/libexec/podman/catatonit")
SHM_OPTIONS = "mode=1777,size=65536k"
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def pod_up(pod: str) -> int:
    plan = load_plan(pod)
    pod_dir = Path(plan["runtime_dir"])
    for app in plan["init_apps"] + plan["apps"]:
        mkdirs(pod_dir / "apps" / app["name"] / "rootfs")
    if not plan["host_ipc"]:
        mount_tmpfs(pod_dir / "shm", SHM_OPTIONS)
    for volume in plan["volumes"]:
        if volume["kind"] == "memory":
            size = f",size={volume['size']}" if volume["size"] else ""
            mount_tmpfs(Path(volume["path"]), f"mode=0777{size}")
        elif volume["kind"] == "disk":
            mkdirs(volume["path"], 0o777)
            os.chmod(volume["path"], 0o777)  # emptyDir is world-writable in Kubernetes
    kinds = [k for k in NAMESPACES if not _uses_host(plan, k)]
    create_namespaces(pod_dir / "ns", kinds, plan["hostname"])
    # Before the pod files: /etc/hosts names the pod's IP.
    pod_ip = attach_network(plan) if plan["network"] == "cni" else None
    write_pod_files(plan, pod_dir / "etc", pod_ip)
    if plan["share_pid"]:
        start_pause_process(pod_dir / "ns")
    if machined_available():
        from podunit.stage1.machined import register_machine

        register_machine(plan["name"], plan["uid"])
    return 0


def machined_available() -> bool:
    """systemd-machined is installed (it is bus-activated on first use)."""
    return any(
        os.path.exists(f"{d}/systemd-machined.service")
        for d in ("/usr/lib/systemd/system", "/lib/systemd/system", "/etc/systemd/system")
    )


def _uses_host(plan: PodPlan, kind: str) -> bool:
    return plan["host_network"] if kind in ("uts", "net") else plan["host_ipc"]


def attach_network(plan: PodPlan) -> str | None:
    """CNI ADD for the pinned network namespace; the pod's IP. Imported
    here: only pods on a CNI network pay for it."""
    from podunit.errors import PodunitError
    from podunit.network.pod import attach, result_ip

    try:
        return result_ip(attach(plan))
    except PodunitError as exc:
        fail(str(exc))


def write_pod_files(plan: PodPlan, etc: Path, pod_ip: str | None) -> None:
    host_network = plan["host_network"]
    hostname = socket.gethostname() if host_network else plan["hostname"]
    # Plans written before pod networking have no aliases or DNS settings.
    aliases = plan.get("host_aliases") or []
    dns = plan.get("dns") or pf.DEFAULT_DNS
    host_hosts = _read("/etc/hosts") if host_network else None
    resolv = pf.resolv_conf(
        dns,
        _read("/etc/resolv.conf"),
        host_network=host_network,
        upstream=_read(pf.RESOLVED_UPSTREAM),
    )
    mkdirs(etc)
    _write_atomic(etc / "hostname", f"{hostname}\n")
    _write_atomic(etc / "hosts", pf.hosts_file(hostname, pod_ip, aliases, host_hosts=host_hosts))
    _write_atomic(etc / "resolv.conf", resolv)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def mount_tmpfs(path: Path, options: str) -> None:
    mkdirs(path)
    if os.path.ismount(path):
        return
    sc.mount("tmpfs", str(path), "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, options)


def create_namespaces(ns_dir: Path, kinds: list[str], hostname: str) -> None:
    """Unshare `kinds` in this process, configure them, pin them to files."""
    mkdirs(ns_dir)
    flags = 0
    for kind in kinds:
        flags |= NAMESPACES[kind]
    if not flags:
        return
    # CNI plugins run from this process must start in the host's network
    # namespace (they create the bridge and the host end of the veth there),
    # so we return to the original namespaces once the new ones are pinned.
    originals = {
        kind: os.open(f"/proc/self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC) for kind in kinds
    }
    try:
        sc.unshare(flags)
        if "uts" in kinds:
            socket.sethostname(hostname)
        if "net" in kinds:
            bring_up_loopback()
        for kind in kinds:
            pin_namespace(f"/proc/self/ns/{kind}", ns_dir / kind)
    finally:
        for kind, fd in originals.items():
            sc.setns(fd, NAMESPACES[kind])
            os.close(fd)


def pin_namespace(source: str, target: Path) -> None:
    if not target.exists():
        target.touch(mode=0o444)
    if os.path.ismount(target):
        return
    sc.mount(source, str(target), None, sc.MS_BIND)


def bring_up_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        import fcntl

        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def start_pause_process(ns_dir: Path) -> None:
    """Fork the init of the pod's shared PID namespace and pin that namespace."""
    binary = next((b for b in PAUSE_BINARIES if os.access(b, os.X_OK)), None)
    if binary is None:
        fail("shareProcessNamespace needs catatonit (Debian package catatonit)")
    sc.unshare(sc.CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            devnull = os.open("/dev/null", os.O_RDWR)
            os.dup2(devnull, 0)
            os.execv(binary, [binary, "-P"])
        finally:
            os._exit(127)
    pin_namespace(f"/proc/{pid}/ns/pid", ns_dir / "pid")


def pod_down(pod: str) -> int:
    pod_dir = sandboxes_dir() / pod
    # Before the netns goes: bridge's DEL needs it to find the pod's addresses.
    network_ok = detach_network(pod)
    # Everything pod-up and the apps' stage1 mounted in the host's namespace lives
    # below the pod's runtime dir: namespace pins, /dev/shm, memory volumes, and
    # the staged bidirectional volumes.
    unmount_tree(pod_dir)
    for path in (pod_dir / "ns", pod_dir / "shm", pod_dir / "volumes"):
        remove_tree(str(path))
    return 0 if network_ok else 1


def detach_network(pod: str) -> bool:
    """CNI DEL if the pod is attached (whatever its plan says now: the cache
    decides). False if DEL failed; the rest of pod-down goes on regardless."""
    from podunit.network.cache import record_path

    if not record_path(pod).exists():
        return True
    from podunit.errors import PodunitError
    from podunit.network.pod import detach

    try:
        detach(pod)
    except PodunitError as exc:
        print(f"podunit-stage1: pod {pod}: {exc} (podunit gc retries)", file=sys.stderr)
        return False
    return True
