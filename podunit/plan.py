"""Pod plan: everything stage1 needs, decided before any unit starts.

The planner joins the validated spec with the image configs and the host
paths. Its output is plain JSON-able dicts (TypedDicts) written to
`RUNTIME/pods/NAME/plan.json`: stage1 reads that file on every (re)start of a
unit without importing the manifest parser, the image store or dataclasses, so
pod start stays cheap, and a person can read or replay a plan by hand.
"""

from __future__ import annotations

import stat
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TypedDict

from podunit.capabilities import effective_capabilities
from podunit.errors import PodunitError
from podunit.images.store import Image
from podunit.paths import SANDBOXES
from podunit.spec import Container, Pod, Volume
from podunit.systemd import names

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


class PodPlan(TypedDict):
    name: str
    uid: str
    created: float
    source: str
    hostname: str
    host_network: bool
    network: str  # "host" | "none" (loopback only); CNI modes come with pod networking
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
    pod: Pod, images: Mapping[str, Image], *, runtime_dir: Path, state_dir: Path
) -> PodPlan:
    """Plan `pod`; `images` maps each container's image string to its Image."""
    name = pod.name
    pod_runtime = runtime_dir / SANDBOXES / name
    pod_state = state_dir / "pods" / name
    volumes = [_plan_volume(v, pod_runtime, pod_state) for v in pod.spec.volumes]
    plan = PodPlan(
        name=name,
        uid=str(uuid.uuid4()),
        created=time.time(),
        source=pod.source,
        hostname=pod.spec.hostname or name.split(".", 1)[0],
        host_network=pod.spec.host_network,
        network="host" if pod.spec.host_network else "none",
        host_pid=pod.spec.host_pid,
        host_ipc=pod.spec.host_ipc,
        share_pid=pod.spec.share_process_namespace,
        restart_policy=pod.spec.restart_policy,
        grace_seconds=pod.spec.termination_grace_period_seconds,
        runtime_dir=str(pod_runtime),
        state_dir=str(pod_state),
        slice=names.slice_unit(name),
        sandbox_unit=names.sandbox_unit(name),
        volumes=volumes,
        init_apps=[],
        apps=[],
        annotations=dict(pod.metadata.annotations),
    )
    by_name = {v["name"]: v for v in volumes}
    for init, containers in ((True, pod.spec.init_containers), (False, pod.spec.containers)):
        for container in containers:
            app = _plan_app(
                pod, container, images[container.image], by_name, pod_runtime, pod_state, init=init
            )
            (plan["init_apps"] if init else plan["apps"]).append(app)
    return plan


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
    image: Image,
    volumes: Mapping[str, VolumePlan],
    pod_runtime: Path,
    pod_state: Path,
    *,
    init: bool,
) -> AppPlan:
    where = f"{pod.source}:{container.line}: container {container.name}"
    app_state = pod_state / "apps" / container.name
    sc = container.security_context
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
        layers=[str(layer) for layer in image.layers],
        upper=str(app_state / "upper"),
        work=str(app_state / "work"),
        rootfs=str(pod_runtime / "apps" / container.name / "rootfs"),
        argv=_make_argv(container, image, where),
        env=_make_env(pod, container, image, home),
        cwd=container.working_dir or image.config.working_dir or "/",
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


def _make_env(pod: Pod, container: Container, image: Image, home: str) -> list[str]:
    env: dict[str, str] = {"PATH": DEFAULT_PATH}
    for item in image.config.env:
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
    import os

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
