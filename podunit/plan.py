"""Pod plan: everything stage1 needs, decided before any unit starts.

The planner joins the validated spec with the image configs and the host
paths. Its output is plain JSON-able dicts (TypedDicts) written to
`RUNTIME/pods/NAME/plan.json`: stage1 reads that file on every (re)start of a
unit without importing the manifest parser, the image store or dataclasses, so
pod start stays cheap, and a person can read or replay a plan by hand.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from podunit.capabilities import effective_capabilities
from podunit.errors import PodunitError
from podunit.paths import SANDBOXES
from podunit.spec import Container, Pod, Volume
from podunit.systemd import names

if TYPE_CHECKING:
    from podunit.images.store import Image

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STANDARD_POD_FILES = ("hostname", "hosts", "resolv.conf")


class PlanError(PodunitError):
    """The pod cannot be planned (e.g. no command, unknown user in the image)."""

    exit_code = 2


class MountPlan(TypedDict):
    source: str  # host path ("" for kernel file systems)
    target: str  # absolute path inside the container
    read_only: bool
    propagation: str  # "rprivate" | "rslave" | "rshared"
    sub_path: str  # resolved inside `source` at start time ("" = none)
    host_path_type: str  # Kubernetes hostPath type, checked at start time
    is_file: bool  # create a file, not a directory, as the mount point


class VolumePlan(TypedDict):
    name: str
    kind: str  # "host" | "disk" | "memory"
    path: str
    size: int | None
    host_path_type: str


class AppPlan(TypedDict):
    name: str
    unit: str
    init: bool
    image: str
    layers: list[str]  # lowest first
    upper: str
    work: str
    rootfs: str
    argv: list[str]
    env: list[str]
    cwd: str
    uid: int
    gid: int
    groups: list[int]
    capabilities: list[str]
    no_new_privs: bool
    privileged: bool
    read_only_root: bool
    mounts: list[MountPlan]
    memory_max: int | None
    cpu_millis: int | None
    cpu_request_millis: int | None


class PortMappingPlan(TypedDict):
    """One hostPort, in the shape of CNI's `portMappings` capability."""

    hostPort: int
    containerPort: int
    protocol: str  # "tcp" | "udp" | "sctp"
    hostIP: str  # "" = every address


class HostAliasPlan(TypedDict):
    ip: str
    hostnames: list[str]


class DnsPlan(TypedDict):
    policy: str  # Kubernetes dnsPolicy
    nameservers: list[str]  # from dnsConfig, merged at start time
    searches: list[str]
    options: list[str]  # resolv.conf words: "ndots:2", "edns0"


class PodPlan(TypedDict):
    name: str
    uid: str
    created: float
    source: str
    hostname: str
    host_network: bool
    network: str  # "host" | "none" (loopback only) | "cni" (a private network namespace)
    cni_network: str  # the CNI network's name; "" = the default network
    port_mappings: list[PortMappingPlan]
    host_aliases: list[HostAliasPlan]
    dns: DnsPlan
    host_pid: bool
    host_ipc: bool
    share_pid: bool
    restart_policy: str
    grace_seconds: int
    runtime_dir: str
    state_dir: str
    slice: str
    sandbox_unit: str
    volumes: list[VolumePlan]
    init_apps: list[AppPlan]
    apps: list[AppPlan]
    annotations: dict[str, str]


def make_pod_plan(
    pod: Pod,
    images: Mapping[str, Image] | None,
    *,
    runtime_dir: Path,
    state_dir: Path,
    sandbox_unit: str | None = None,
) -> PodPlan:
    """Plan `pod`; `images` maps each container's image string to its Image.

    With `images=None` the plan holds only what the units need (the
    generator compiles units at boot, before any image is pulled): fields
    that come from images stay empty, and `podunit prepare` fills them in
    when the pod starts."""
    name = pod.name
    pod_runtime = runtime_dir / SANDBOXES / name
    pod_state = state_dir / "pods" / name
    volumes = [_plan_volume(v, pod_runtime, pod_state) for v in pod.spec.volumes]
    network, cni_network = _network_mode(pod)
    plan = PodPlan(
        name=name,
        uid=_random_uuid(),
        created=time.time(),
        source=pod.source,
        hostname=pod.spec.hostname or name.split(".", 1)[0],
        host_network=pod.spec.host_network,
        network=network,
        cni_network=cni_network,
        port_mappings=_port_mappings(pod) if network == "cni" else [],
        host_aliases=[
            HostAliasPlan(ip=a.ip, hostnames=list(a.hostnames)) for a in pod.spec.host_aliases
        ],
        dns=_dns_plan(pod),
        host_pid=pod.spec.host_pid,
        host_ipc=pod.spec.host_ipc,
        share_pid=pod.spec.share_process_namespace,
        restart_policy=pod.spec.restart_policy,
        grace_seconds=pod.spec.termination_grace_period_seconds,
        runtime_dir=str(pod_runtime),
        state_dir=str(pod_state),
        slice=names.slice_unit(name),
        sandbox_unit=sandbox_unit or names.sandbox_unit(name),
        volumes=volumes,
        init_apps=[],
        apps=[],
        annotations=dict(pod.metadata.annotations),
    )
    by_name = {v["name"]: v for v in volumes}
    for init, containers in ((True, pod.spec.init_containers), (False, pod.spec.containers)):
        for container in containers:
            image = images[container.image] if images is not None else None
            app = _plan_app(pod, container, image, by_name, pod_runtime, pod_state, init=init)
            (plan["init_apps"] if init else plan["apps"]).append(app)
    return plan


NETWORK_ANNOTATION = "podunit.io/network"


def _network_mode(pod: Pod) -> tuple[str, str]:
    """(mode, CNI network name): hostNetwork is "host"; the annotation
    `podunit.io/network` says "none" (loopback only) or names a CNI network;
    otherwise the default CNI network."""
    choice = pod.metadata.annotations.get(NETWORK_ANNOTATION, "")
    where = f"{pod.source}:{pod.line}: annotation {NETWORK_ANNOTATION}"
    if pod.spec.host_network:
        if choice not in ("", "host"):
            raise PlanError(f'{where}: "{choice}" contradicts hostNetwork: true')
        return "host", ""
    if choice == "none":
        for container in pod.spec.containers:
            if any(port.host_port is not None for port in container.ports):
                raise PlanError(f"{where}: none: container {container.name} has a hostPort")
        return "none", ""
    if choice == "host":
        raise PlanError(f'{where}: use hostNetwork: true for the host\'s network, not "host"')
    if choice and not _CNI_NAME.fullmatch(choice):
        raise PlanError(f'{where}: "{choice}" is neither "none" nor a CNI network name')
    return "cni", choice


_CNI_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")


def _port_mappings(pod: Pod) -> list[PortMappingPlan]:
    return [
        PortMappingPlan(
            hostPort=port.host_port,
            containerPort=port.container_port,
            protocol=port.protocol.lower(),
            hostIP=port.host_ip or "",
        )
        for container in pod.spec.containers
        for port in container.ports
        if port.host_port is not None
    ]


def _dns_plan(pod: Pod) -> DnsPlan:
    config = pod.spec.dns_config
    options = (
        [o.name if o.value is None else f"{o.name}:{o.value}" for o in config.options]
        if config
        else []
    )
    return DnsPlan(
        policy=pod.spec.dns_policy,
        nameservers=list(config.nameservers) if config else [],
        searches=list(config.searches) if config else [],
        options=options,
    )


def _random_uuid() -> str:
    """A version 4 UUID without importing uuid (slow to import at boot)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _plan_volume(volume: Volume, pod_runtime: Path, pod_state: Path) -> VolumePlan:
    if volume.host_path is not None:
        return VolumePlan(
            name=volume.name,
            kind="host",
            path=volume.host_path.path,
            size=None,
            host_path_type=volume.host_path.type,
        )
    assert volume.empty_dir is not None
    if volume.empty_dir.medium == "Memory":
        path, kind = pod_runtime / "volumes" / volume.name, "memory"
    else:
        path, kind = pod_state / "volumes" / volume.name, "disk"
    return VolumePlan(
        name=volume.name,
        kind=kind,
        path=str(path),
        size=volume.empty_dir.size_limit,
        host_path_type="",
    )


def _plan_app(
    pod: Pod,
    container: Container,
    image: Image | None,
    volumes: Mapping[str, VolumePlan],
    pod_runtime: Path,
    pod_state: Path,
    *,
    init: bool,
) -> AppPlan:
    where = f"{pod.source}:{container.line}: container {container.name}"
    app_state = pod_state / "apps" / container.name
    sc = container.security_context
    if image is None:  # units only: no image yet, see make_pod_plan
        uid, gid, home = 0, 0, "/"
    else:
        uid, gid, home = _resolve_user(pod, container, image, where)
    run_as_non_root = sc.run_as_non_root
    if run_as_non_root is None:
        run_as_non_root = pod.spec.security_context.run_as_non_root
    if run_as_non_root and uid == 0:
        raise PlanError(f"{where}: runAsNonRoot is set but the container would run as root")
    privileged = sc.privileged
    return AppPlan(
        name=container.name,
        unit=names.app_unit(pod.name, container.name),
        init=init,
        image=container.image,
        layers=[str(layer) for layer in image.layers] if image else [],
        upper=str(app_state / "upper"),
        work=str(app_state / "work"),
        rootfs=str(pod_runtime / "apps" / container.name / "rootfs"),
        argv=_make_argv(container, image, where) if image else [],
        env=_make_env(pod, container, image.config.env if image else (), home),
        cwd=container.working_dir or (image.config.working_dir if image else "") or "/",
        uid=uid,
        gid=gid,
        groups=[gid],
        capabilities=list(
            effective_capabilities(sc.capabilities.add, sc.capabilities.drop, privileged=privileged)
        ),
        no_new_privs=not privileged and sc.allow_privilege_escalation is not True,
        privileged=privileged,
        read_only_root=sc.read_only_root_filesystem,
        mounts=_make_mounts(pod, container, volumes, str(pod_runtime)),
        memory_max=container.resources.limits_memory,
        cpu_millis=container.resources.limits_cpu_millis,
        cpu_request_millis=container.resources.requests_cpu_millis,
    )


def _make_argv(container: Container, image: Image, where: str) -> list[str]:
    """Kubernetes rules: `command` replaces ENTRYPOINT (and drops CMD);
    `args` replaces CMD."""
    entrypoint = list(image.config.entrypoint or ())
    cmd = list(image.config.cmd or ())
    if container.command is not None:
        argv = list(container.command) + list(container.args or ())
    elif container.args is not None:
        argv = entrypoint + list(container.args)
    else:
        argv = entrypoint + cmd
    if not argv:
        raise PlanError(f"{where}: no command: the manifest and the image both leave it empty")
    return argv


def _make_env(pod: Pod, container: Container, image_env: Sequence[str], home: str) -> list[str]:
    env: dict[str, str] = {"PATH": DEFAULT_PATH}
    for item in image_env:
        key, _, value = item.partition("=")
        if key:
            env[key] = value
    env["HOSTNAME"] = pod.spec.hostname or pod.name.split(".", 1)[0]
    env.setdefault("HOME", home)
    for var in container.env:
        env[var.name] = _expand(var.value, env)
    return [f"{k}={v}" for k, v in env.items()]


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined vars are replaced, $$ escapes,
    unknown references stay as written."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("$(", i) and (end := value.find(")", i + 2)) != -1:
            key = value[i + 2 : end]
            out.append(env[key] if key in env else value[i : end + 1])
            i = end + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _make_mounts(
    pod: Pod, container: Container, volumes: Mapping[str, VolumePlan], pod_runtime: str
) -> list[MountPlan]:
    mounts: list[MountPlan] = []
    for name in STANDARD_POD_FILES:
        target = f"/etc/{name}"
        if any(vm.mount_path == target for vm in container.volume_mounts):
            continue
        mounts.append(_bind(f"{pod_runtime}/etc/{name}", target, is_file=True))
    shm = "/dev/shm" if pod.spec.host_ipc else f"{pod_runtime}/shm"
    mounts.append(_bind(shm, "/dev/shm"))
    propagation = {"None": "rprivate", "HostToContainer": "rslave", "Bidirectional": "rshared"}
    for vm in container.volume_mounts:
        volume = volumes[vm.name]
        host_type = volume["host_path_type"]
        mounts.append(
            MountPlan(
                source=volume["path"],
                target=vm.mount_path,
                read_only=vm.read_only,
                propagation=propagation[vm.mount_propagation],
                sub_path=vm.sub_path,
                host_path_type=host_type,
                is_file=host_type
                in ("File", "FileOrCreate", "Socket", "CharDevice", "BlockDevice"),
            )
        )
    return mounts


def _bind(source: str, target: str, *, is_file: bool = False) -> MountPlan:
    return MountPlan(
        source=source,
        target=target,
        read_only=False,
        propagation="rprivate",
        sub_path="",
        host_path_type="",
        is_file=is_file,
    )


def _resolve_user(pod: Pod, container: Container, image: Image, where: str) -> tuple[int, int, str]:
    """uid, gid and home: runAsUser/runAsGroup (container, then pod) win over
    the image's USER, which may name a user of the image's /etc/passwd."""
    sc, psc = container.security_context, pod.spec.security_context
    uid = sc.run_as_user if sc.run_as_user is not None else psc.run_as_user
    gid = sc.run_as_group if sc.run_as_group is not None else psc.run_as_group
    user, _, group = image.config.user.partition(":")
    passwd = _read_image_table(image, "etc/passwd")
    home = "/"
    if uid is None:
        uid, user_gid, home = _lookup_user(user or "0", passwd, where)
        if gid is None and not group:
            gid = user_gid
    else:
        home = next((e[5] for e in passwd if e[2] == str(uid) and len(e) > 5), "/")
    if gid is None:
        if group:
            gid = _lookup_group(group, _read_image_table(image, "etc/group"), where)
        else:
            gid = next((int(e[3]) for e in passwd if e[2] == str(uid) and e[3].isdigit()), 0)
    return uid, gid, home or "/"


def _lookup_user(user: str, passwd: list[list[str]], where: str) -> tuple[int, int, str]:
    for entry in passwd:
        if len(entry) >= 4 and (entry[0] == user or entry[2] == user):
            gid = int(entry[3]) if entry[3].isdigit() else 0
            return int(entry[2]), gid, entry[5] if len(entry) > 5 else "/"
    if user.isdigit():
        return int(user), 0, "/"
    raise PlanError(f'{where}: user "{user}" of the image is not in its /etc/passwd')


def _lookup_group(group: str, table: list[list[str]], where: str) -> int:
    if group.isdigit():
        return int(group)
    for entry in table:
        if len(entry) >= 3 and entry[0] == group and entry[2].isdigit():
            return int(entry[2])
    raise PlanError(f'{where}: group "{group}" of the image is not in its /etc/group')


def _read_image_table(image: Image, relpath: str) -> list[list[str]]:
    """Read a colon table (/etc/passwd, /etc/group) from the topmost layer
    that has it. Layers are hostile: the path is resolved inside the layer
    (a symlinked /etc must not lead to the host's files)."""
    from podunit.kernel.openat2 import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2

    for layer in reversed(image.layers):
        try:
            root = os.open(layer, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            flags = os.O_RDONLY | os.O_NONBLOCK  # a FIFO planted there must not hang us
            fd = openat2(root, relpath, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        except OSError:
            continue
        finally:
            os.close(root)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            text = f.read(1 << 20).decode(errors="replace")
        return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]
    return []
