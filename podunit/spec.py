"""Validated pod specification: the output of the manifest parser, frozen.

Every value here has been checked already (names are DNS-1123, quantities are
converted to integers, enums are one of their allowed values), so the planner
and the unit compiler never re-validate. Field names follow the Kubernetes API
in snake_case; defaults follow Kubernetes' defaulting rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

RESTART_POLICIES = ("Always", "OnFailure", "Never")
MOUNT_PROPAGATIONS = ("None", "HostToContainer", "Bidirectional")
PROTOCOLS = ("TCP", "UDP", "SCTP")
HOST_PATH_TYPES = (
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
)
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str


@dataclass(frozen=True)
class ContainerPort:
    container_port: int
    name: str | None = None
    host_port: int | None = None
    host_ip: str | None = None
    protocol: str = "TCP"


@dataclass(frozen=True)
class VolumeMount:
    name: str
    mount_path: str
    read_only: bool = False
    sub_path: str = ""
    mount_propagation: str = "None"


@dataclass(frozen=True)
class Resources:
    """CPU in millicores, memory in bytes; None where the manifest says nothing."""

    limits_cpu_millis: int | None = None
    limits_memory: int | None = None
    requests_cpu_millis: int | None = None
    requests_memory: int | None = None


@dataclass(frozen=True)
class Capabilities:
    """Capability names without the CAP_ prefix, upper case; "ALL" allowed."""

    add: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()


@dataclass(frozen=True)
class SecurityContext:
    """Container-level securityContext; None means "not set here"."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool | None = None
    privileged: bool = False
    capabilities: Capabilities = field(default_factory=Capabilities)
    read_only_root_filesystem: bool = False
    allow_privilege_escalation: bool | None = None


@dataclass(frozen=True)
class PodSecurityContext:
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool | None = None


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    working_dir: str | None = None
    env: tuple[EnvVar, ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    volume_mounts: tuple[VolumeMount, ...] = ()
    resources: Resources = field(default_factory=Resources)
    security_context: SecurityContext = field(default_factory=SecurityContext)
    image_pull_policy: str | None = None
    line: int = 0  # where the container starts in its manifest, for later errors


@dataclass(frozen=True)
class HostPathVolume:
    path: str
    type: str = ""


@dataclass(frozen=True)
class EmptyDirVolume:
    medium: str = ""  # "" (node disk) or "Memory" (tmpfs)
    size_limit: int | None = None  # bytes


@dataclass(frozen=True)
class Volume:
    """Exactly one of the sources is set."""

    name: str
    host_path: HostPathVolume | None = None
    empty_dir: EmptyDirVolume | None = None


@dataclass(frozen=True)
class ObjectMeta:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HostAlias:
    """One /etc/hosts line the pod gets beside its own names."""

    ip: str
    hostnames: tuple[str, ...]


@dataclass(frozen=True)
class DNSOption:
    name: str
    value: str | None = None


@dataclass(frozen=True)
class DNSConfig:
    """spec.dnsConfig: merged into the resolv.conf that dnsPolicy selects."""

    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[DNSOption, ...] = ()


@dataclass(frozen=True)
class PodSpec:
    containers: tuple[Container, ...]
    init_containers: tuple[Container, ...] = ()
    volumes: tuple[Volume, ...] = ()
    restart_policy: str = "Always"
    host_network: bool = False
    host_pid: bool = False
    host_ipc: bool = False
    share_process_namespace: bool = False
    hostname: str | None = None
    termination_grace_period_seconds: int = 30
    security_context: PodSecurityContext = field(default_factory=PodSecurityContext)
    host_aliases: tuple[HostAlias, ...] = ()
    dns_policy: str = "ClusterFirst"
    dns_config: DNSConfig | None = None


@dataclass(frozen=True)
class Pod:
    metadata: ObjectMeta
    spec: PodSpec
    source: str = ""  # manifest file the pod came from
    line: int = 0  # line of the document's first key

    @property
    def name(self) -> str:
        return self.metadata.name
