"""The pod's /etc/hosts and /etc/resolv.conf, as the kubelet writes them.

Pure functions of the plan and the host's files, so they are cheap to
import in stage1 (every pod start) and easy to test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from podunit.plan import DnsPlan, HostAliasPlan

# glibc reads at most 3 name servers; Kubernetes allows 32 search domains.
MAX_NAMESERVERS = 3
MAX_SEARCHES = 32
# systemd-resolved's stub is 127.0.0.53; its upstream servers are here.
RESOLVED_UPSTREAM = "/run/systemd/resolve/resolv.conf"
# For plans written before pod networking: Kubernetes' defaults.
DEFAULT_DNS: DnsPlan = {"policy": "ClusterFirst", "nameservers": [], "searches": [], "options": []}


def hosts_file(
    hostname: str,
    pod_ip: str | None,
    aliases: Sequence[HostAliasPlan],
    *,
    host_hosts: str | None = None,
) -> str:
    """`host_hosts` (the host's /etc/hosts) is the base for hostNetwork pods."""
    if host_hosts is not None:
        text = host_hosts if host_hosts.endswith("\n") or not host_hosts else host_hosts + "\n"
    else:
        text = (
            "127.0.0.1\tlocalhost\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
            "fe00::0\tip6-localnet\n"
            "fe00::1\tip6-allnodes\n"
            "fe00::2\tip6-allrouters\n"
            # Without an address of its own, the name still has to resolve.
            f"{pod_ip or '127.0.1.1'}\t{hostname}\n"
        )
    if aliases:
        text += "# Entries added by HostAliases.\n"
        text += "".join(f"{a['ip']}\t{chr(9).join(a['hostnames'])}\n" for a in aliases)
    return text


def resolv_conf(dns: DnsPlan, host: str, *, host_network: bool, upstream: str = "") -> str:
    """dnsPolicy over the host's resolv.conf, then dnsConfig merged in.

    podunit has no cluster DNS, so ClusterFirst acts as Default, as the
    kubelet does when it has no cluster DNS configured. In a private
    network namespace the host's loopback name servers are unreachable and
    dropped; `upstream` (systemd-resolved's real servers) stands in when
    nothing else is left."""
    if dns["policy"] == "None":
        servers: list[str] = []
        searches: list[str] = []
        options: list[str] = []
    else:
        servers, searches, options = parse_resolv_conf(host)
        if not host_network:
            reachable = [s for s in servers if not is_loopback(s)]
            if not reachable and servers and upstream:
                reachable = [s for s in parse_resolv_conf(upstream)[0] if not is_loopback(s)]
            servers = reachable
    servers = _unique(servers + dns["nameservers"])[:MAX_NAMESERVERS]
    searches = _unique(searches + dns["searches"])[:MAX_SEARCHES]
    options = _merge_options(options, dns["options"])
    lines = [f"nameserver {s}" for s in servers]
    if searches:
        lines.append("search " + " ".join(searches))
    if options:
        lines.append("options " + " ".join(options))
    return "".join(line + "\n" for line in lines)


def parse_resolv_conf(text: str) -> tuple[list[str], list[str], list[str]]:
    """(name servers, search domains, options); the last search/domain line wins."""
    servers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2:
            continue
        if words[0] == "nameserver":
            servers.append(words[1])
        elif words[0] in ("search", "domain"):
            searches = words[1:]
        elif words[0] == "options":
            options += words[1:]
    return servers, searches, options


def is_loopback(server: str) -> bool:
    return server.startswith("127.") or server == "::1"


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _merge_options(base: Sequence[str], extra: Sequence[str]) -> list[str]:
    """dnsConfig options replace host options of the same name."""
    merged = {option.split(":", 1)[0]: option for option in base}
    for option in extra:
        merged[option.split(":", 1)[0]] = option
    return list(merged.values())
