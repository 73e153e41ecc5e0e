"""The network podunit brings along, used when no conflist is configured.

It lives in a Python module, not a data file, so that every way of
installing podunit (the .deb, `pip install`, a checkout) carries it.

- bridge `podunit0`, gateway for the pods, with masquerading for traffic
  leaving the host and hairpin mode (a pod may reach its own host port);
- host-local IPAM on 10.77.0.0/16: not podman's 10.88.0.0/16 (cni-podman0),
  nor the 10.89 ranges podman gives its extra networks, nor the defaults of
  Docker (172.17+), flannel (10.244), k3s (10.42/10.43), weave (10.32/12) or
  the Kubernetes service range (10.96/12). Leases go under the runtime dir:
  like the network namespaces they belong to, they must not survive a reboot;
- portmap for hostPort; firewall so that forwarded pod traffic is accepted
  even where the FORWARD policy is DROP (Docker sets that).
"""

from __future__ import annotations

from typing import Any

NAME = "podunit"
BRIDGE = "podunit0"
SUBNET = "10.77.0.0/16"
GATEWAY = "10.77.0.1"


def default_conflist(lease_dir: str) -> dict[str, Any]:
    """The built-in conflist; `lease_dir` is host-local's dataDir."""
    return {
        "cniVersion": "1.0.0",
        "name": NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": lease_dir,
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall"},
        ],
    }
