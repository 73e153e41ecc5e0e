"""The pod's /etc/hosts and resolv.conf, and how the planner picks the network mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from podunit.network.podfiles import hosts_file, resolv_conf
from podunit.plan import DnsPlan, PlanError
from podunit.spec import Container, ContainerPort, ObjectMeta
from tests.unit.podfixtures import make_plan, make_pod

HOST = "nameserver 127.0.0.53\nnameserver 192.0.2.1\nsearch corp.example\noptions ndots:3 rotate\n"
UPSTREAM = "nameserver 198.51.100.1\nnameserver 127.0.0.1\n"


def dns(policy: str = "ClusterFirst", **fields: list[str]) -> DnsPlan:
    return DnsPlan(
        policy=policy,
        nameservers=fields.get("nameservers", []),
        searches=fields.get("searches", []),
        options=fields.get("options", []),
    )


def test_hosts_names_the_pod_ip_and_the_aliases() -> None:
    text = hosts_file("web", "10.77.0.9", [{"ip": "10.1.2.3", "hostnames": ["db", "db.example"]}])
    lines = text.splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert "10.77.0.9\tweb" in lines
    assert lines[-2:] == ["# Entries added by HostAliases.", "10.1.2.3\tdb\tdb.example"]


def test_hosts_without_an_address_and_with_host_network() -> None:
    assert "127.0.1.1\tweb" in hosts_file("web", None, []).splitlines()
    host = hosts_file("h", None, [{"ip": "10.0.0.1", "hostnames": ["a"]}], host_hosts="1.2.3.4 x")
    assert host == "1.2.3.4 x\n# Entries added by HostAliases.\n10.0.0.1\ta\n"


def test_default_policy_drops_loopback_servers_and_merges_dns_config() -> None:
    plan = dns(nameservers=["192.0.2.53"], searches=["x.example"], options=["ndots:2", "edns0"])
    assert resolv_conf(plan, HOST, host_network=False) == (
        "nameserver 192.0.2.1\nnameserver 192.0.2.53\n"
        "search corp.example x.example\noptions ndots:2 rotate edns0\n"
    )


def test_host_network_keeps_loopback_servers() -> None:
    text = resolv_conf(dns("ClusterFirstWithHostNet"), HOST, host_network=True)
    assert text.startswith("nameserver 127.0.0.53\nnameserver 192.0.2.1\n")


def test_only_a_stub_resolver_falls_back_to_its_upstream_servers() -> None:
    text = resolv_conf(dns("Default"), "nameserver 127.0.0.53\n", host_network=False,
                       upstream=UPSTREAM)  # fmt: skip
    assert text == "nameserver 198.51.100.1\n"


def test_policy_none_uses_only_dns_config_and_caps_servers() -> None:
    plan = dns("None", nameservers=["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"])
    text = resolv_conf(plan, HOST, host_network=False)
    assert text == "nameserver 192.0.2.1\nnameserver 192.0.2.2\nnameserver 192.0.2.3\n"


def annotated(name: str = "web", **annotations: str) -> ObjectMeta:
    return ObjectMeta(name=name, annotations={f"podunit.io/{k}": v for k, v in annotations.items()})


def plan_for(tmp_path: Path, meta: ObjectMeta | None = None, **spec: object) -> dict[str, object]:
    pod = make_pod(**spec)
    if meta is not None:
        from dataclasses import replace

        pod = replace(pod, metadata=meta)
    return dict(make_plan(tmp_path, pod))


def test_network_modes(tmp_path: Path) -> None:
    assert plan_for(tmp_path)["network"] == "cni"
    assert plan_for(tmp_path)["cni_network"] == ""
    assert plan_for(tmp_path, host_network=True)["network"] == "host"
    assert plan_for(tmp_path, annotated(network="none"))["network"] == "none"
    named = plan_for(tmp_path, annotated(network="lab-net"))
    assert (named["network"], named["cni_network"]) == ("cni", "lab-net")


@pytest.mark.parametrize(
    ("meta", "spec", "message"),
    [
        (annotated(network="none"), {"host_network": True}, "contradicts hostNetwork"),
        (annotated(network="host"), {}, "use hostNetwork: true"),
        (annotated(network="a b"), {}, "neither"),
    ],
)
def test_network_mode_errors(
    tmp_path: Path, meta: ObjectMeta, spec: dict[str, object], message: str
) -> None:
    with pytest.raises(PlanError, match=message):
        plan_for(tmp_path, meta, **spec)


def container_with_ports(*ports: ContainerPort) -> tuple[Container, ...]:
    image = "oci:/images/busybox:latest"
    return (Container(name="c", image=image, command=("sleep",), ports=ports),)


def test_host_ports_become_port_mappings(tmp_path: Path) -> None:
    ports = (
        ContainerPort(80, host_port=8080),
        ContainerPort(53, host_port=5353, protocol="UDP", host_ip="192.0.2.1"),
        ContainerPort(9000),  # informational only, as in Kubernetes
    )
    plan = plan_for(tmp_path, containers=container_with_ports(*ports))
    assert plan["port_mappings"] == [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "192.0.2.1"},
    ]
    with pytest.raises(PlanError, match="has a hostPort"):
        plan_for(
            tmp_path,
            annotated(network="none"),
            containers=container_with_ports(ContainerPort(80, host_port=8080)),
        )
