"""Pod networking as stage1 and the lifecycle see it: attach a pod's pinned
network namespace to its CNI network, detach it, check it, and clean up
after pods that are gone."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podunit.network import cache, chain
from podunit.network.conflist import find_network, parse_conflist, plugin_dirs
from podunit.network.plugin import NetworkError, Parameters

if TYPE_CHECKING:
    from podunit.plan import PodPlan

log = logging.getLogger(__name__)

IFNAME = "eth0"
NAMESPACE = "default"  # podunit has no namespaces; plugins expect one in CNI_ARGS


def attach(plan: PodPlan) -> dict[str, Any]:
    """ADD the pod to its network; returns the CNI result. On failure
    nothing is left behind (chain.add rolls back) and the error says which
    plugin failed and what it said."""
    pod = plan["name"]
    stale = cache.read(pod)
    if stale is not None:
        # A previous incarnation of this pod was not cleaned up (DEL failed,
        # or the machine lost power mid-stop): undo it before its IP is reused.
        _delete(stale)
    network = find_network(plan.get("cni_network", ""))
    record = cache.Record(
        pod=pod,
        network=network.to_json(),
        source=network.source,
        container_id=plan["uid"],
        netns=str(Path(plan["runtime_dir"]) / "ns" / "net"),
        ifname=IFNAME,
        cni_args=cni_args(plan),
        capability_args=capability_args(plan),
        result=None,
    )
    cache.write(record)
    try:
        result = chain.add(network, _parameters(record), record.capability_args)
    except BaseException:
        cache.remove(pod)  # rolled back: nothing left to DEL
        raise
    cache.write(_with_result(record, result))
    return result


def detach(pod: str) -> bool:
    """DEL the pod from its network, if it is attached; True if it was.
    On failure the record stays, so that `podunit gc` can try again."""
    record = cache.read(pod)
    if record is None:
        return False
    _delete(record)
    return True


def _delete(record: cache.Record) -> None:
    network = parse_conflist(record.network, f"cached config of pod {record.pod}")
    chain.delete(network, _parameters(record), record.capability_args, record.result)
    cache.remove(record.pod)


def check(pod: str) -> bool:
    """CHECK the pod's attachment; raises NetworkError naming the plugin
    that found a problem. False when there is nothing to check."""
    record = cache.read(pod)
    if record is None or record.result is None:
        return False
    network = parse_conflist(record.network, f"cached config of pod {record.pod}")
    return chain.check(network, _parameters(record), record.capability_args, record.result)


def pod_ip(pod: str) -> str | None:
    """The pod's first IPv4 address (else its first address), from the cache."""
    try:
        record = cache.read(pod)
    except NetworkError:
        return None
    return result_ip(record.result) if record and record.result else None


def result_ip(result: Mapping[str, Any]) -> str | None:
    addresses = []
    for entry in result.get("ips") or []:
        text = entry.get("address") if isinstance(entry, dict) else None
        if isinstance(text, str):
            try:
                addresses.append(ipaddress.ip_interface(text).ip)
            except ValueError:
                continue
    addresses.sort(key=lambda a: a.version)  # IPv4 first
    return str(addresses[0]) if addresses else None


def detach_orphans(pods: Iterable[str]) -> list[str]:
    """DEL the cached attachments of pods that are gone; the ones done.
    A failure is logged and the record kept for the next try."""
    done = []
    for pod in pods:
        try:
            if detach(pod):
                done.append(pod)
        except NetworkError as exc:
            log.warning("pod %s: %s", pod, exc)
    return done


def cni_args(plan: PodPlan) -> str:
    """CNI_ARGS as Kubernetes runtimes pass them; IgnoreUnknown lets plugins
    that do not know a key (most) accept the rest."""
    pairs = [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", NAMESPACE),
        ("K8S_POD_NAME", plan["name"]),
        ("K8S_POD_INFRA_CONTAINER_ID", plan["uid"]),
        ("K8S_POD_UID", plan["uid"]),
    ]
    return ";".join(f"{k}={v}" for k, v in pairs)


def capability_args(plan: PodPlan) -> dict[str, Any]:
    """runtimeConfig data by capability (CNI CONVENTIONS.md); only plugins
    that declare a capability get its part."""
    args: dict[str, Any] = {}
    mappings = plan.get("port_mappings") or []
    if mappings:
        args["portMappings"] = [dict(m) for m in mappings]
    dns = plan.get("dns")
    if dns and (dns["nameservers"] or dns["searches"] or dns["options"]):
        args["dns"] = {
            "servers": list(dns["nameservers"]),
            "searches": list(dns["searches"]),
            "options": list(dns["options"]),
        }
    return args


def _parameters(record: cache.Record) -> Parameters:
    return Parameters(
        container_id=record.container_id,
        netns=record.netns,
        ifname=record.ifname,
        args=record.cni_args,
        path=tuple(plugin_dirs()),
    )


def _with_result(record: cache.Record, result: dict[str, Any]) -> cache.Record:
    from dataclasses import replace

    return replace(record, result=result)
