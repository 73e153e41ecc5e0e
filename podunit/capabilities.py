"""Linux capability names and the default set given to containers.

The default set is the one OCI runtimes (runc, crun, containerd, CRI-O) give a
container that asks for nothing: enough to behave like root inside its own
root file system, nothing that reaches the host (no SYS_ADMIN, NET_ADMIN,
SYS_MODULE, SYS_PTRACE, ...).
"""

from __future__ import annotations

from collections.abc import Iterable

CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)  # fmt: skip
CAP_NUMBERS = {name: number for number, name in enumerate(CAPABILITIES)}

DEFAULT_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)  # fmt: skip


def normalize_capability(name: str) -> str:
    """`cap_net_admin` and `NET_ADMIN` both become `NET_ADMIN`."""
    upper = name.strip().upper()
    return upper[4:] if upper.startswith("CAP_") else upper


def effective_capabilities(
    add: Iterable[str], drop: Iterable[str], *, privileged: bool
) -> tuple[str, ...]:
    """The capability set of a container, Kubernetes/containerd rules:
    privileged gets all; otherwise the default set, minus `drop` (ALL empties
    it), plus `add` (ALL fills it)."""
    if privileged:
        return CAPABILITIES
    drops = {normalize_capability(c) for c in drop}
    adds = {normalize_capability(c) for c in add}
    chosen = set() if "ALL" in drops else set(DEFAULT_CAPABILITIES) - drops
    chosen |= set(CAPABILITIES) if "ALL" in adds else adds
    return tuple(c for c in CAPABILITIES if c in chosen)


def capability_mask(names: Iterable[str]) -> int:
    mask = 0
    for name in names:
        mask |= 1 << CAP_NUMBERS[name]
    return mask
