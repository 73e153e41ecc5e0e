"""Unit compilation: properties as systemd receives them, checked at the wire level."""

from __future__ import annotations

from pathlib import Path

import pytest

from podunit.spec import Container, Resources
from podunit.systemd.bus import encode_properties, encode_start_transient
from podunit.systemd.names import app_unit, sandbox_unit, slice_unit, unit_object_path
from podunit.systemd.units import Property, Stage1Command, Unit, compile_pod
from tests.unit.podfixtures import make_plan, make_pod

STAGE1 = Stage1Command(("/usr/bin/python3", "-m", "podunit.stage1"), ("PYTHONPATH=/src",))


def by_name(units: list[Unit]) -> dict[str, Unit]:
    return {u.name: u for u in units}


def test_unit_names_cannot_collide() -> None:
    assert sandbox_unit("a-b") == "podunit-a-b.service"
    assert app_unit("a", "b") == "podunit-a_b.service"
    assert app_unit("a", "b") != sandbox_unit("a-b")
    assert slice_unit("my-web") == "podunit-my\\x2dweb.slice"
    assert unit_object_path("podunit-a_b.service") == (
        "/org/freedesktop/systemd1/unit/podunit_2da_5fb_2eservice"
    )


def test_app_unit_carries_limits_restart_and_grace(tmp_path: Path) -> None:
    pod = make_pod(restart_policy="OnFailure", termination_grace_period_seconds=7)
    units = by_name(compile_pod(make_plan(tmp_path, pod), STAGE1))
    app = units["podunit-web_app.service"]
    assert app.get("Type") == "notify"
    assert app.get("NotifyAccess") == "all"
    assert app.get("Restart") == "on-failure"
    assert app.get("MemoryMax") == 64 << 20
    assert app.get("MemorySwapMax") == 0
    assert app.get("CPUQuotaPerSecUSec") == 500_000
    assert app.get("TasksMax") == 4096
    assert app.get("TimeoutStopUSec") == 7_000_000
    assert app.get("BindsTo") == ["podunit-web.service"]
    assert app.get("Slice") == "podunit-web.slice"
    assert app.get("ExecStart") == [
        (
            "/usr/bin/python3",
            ["/usr/bin/python3", "-m", "podunit.stage1", "app", "web", "app"],
            False,
        )
    ]
    assert app.get("Environment") == ["PYTHONPATH=/src"]
    sandbox = units["podunit-web.service"]
    assert sandbox.get("Type") == "oneshot"
    assert sandbox.get("RemainAfterExit") is True
    # A pod with a network (the default CNI one) waits for the host's network.
    assert sandbox.get("Wants") == ["podunit-web_app.service", "network-online.target"]
    assert sandbox.get("After") == ["network-online.target"]
    pod_slice = units["podunit-web.slice"]
    assert pod_slice.get("MemoryMax") == 64 << 20


@pytest.mark.parametrize(
    ("policy", "restart"), [("Always", "always"), ("OnFailure", "on-failure"), ("Never", "no")]
)
def test_restart_policy_maps_to_restart(tmp_path: Path, policy: str, restart: str) -> None:
    units = by_name(compile_pod(make_plan(tmp_path, make_pod(restart_policy=policy)), STAGE1))
    assert units["podunit-web_app.service"].get("Restart") == restart


def test_init_containers_run_in_order_before_apps(tmp_path: Path) -> None:
    init = [
        Container(name=f"init{i}", image="oci:/images/busybox:latest", command=("true",))
        for i in (1, 2)
    ]
    pod = make_pod(init_containers=tuple(init))
    units = by_name(compile_pod(make_plan(tmp_path, pod), STAGE1))
    first, second = units[app_unit("web", "init1")], units[app_unit("web", "init2")]
    app = units[app_unit("web", "app")]
    assert first.get("Type") == "oneshot" and second.get("Type") == "oneshot"
    assert second.get("After") == ["podunit-web.service", app_unit("web", "init1")]
    assert second.get("Requires") == [app_unit("web", "init1")]
    assert app.get("After") == ["podunit-web.service", app_unit("web", "init2")]
    assert app.get("Requires") == [app_unit("web", "init2")]


def test_slice_has_no_limit_when_an_app_is_unbounded(tmp_path: Path) -> None:
    containers = (
        Container(
            name="a", image="oci:/i:t", command=("x",), resources=Resources(limits_memory=1 << 20)
        ),
        Container(name="b", image="oci:/i:t", command=("x",)),
    )
    units = by_name(compile_pod(make_plan(tmp_path, make_pod(containers=containers)), STAGE1))
    with pytest.raises(KeyError):
        units["podunit-web.slice"].get("MemoryMax")


def test_property_tokens_are_what_sd_bus_marshals() -> None:
    tokens = encode_properties(
        [Property("MemoryMax", "t", 5), Property("Wants", "as", ["x.service"])]
    )
    assert tokens == [
        (ord("a"), b"(sv)"),
        (ord("r"), b"sv"), (ord("s"), b"MemoryMax"), (ord("v"), b"t"), (ord("t"), 5),
        (-1, None), (-1, None),
        (ord("r"), b"sv"), (ord("s"), b"Wants"), (ord("v"), b"as"),
        (ord("a"), b"s"), (ord("s"), b"x.service"), (-1, None),
        (-1, None), (-1, None),
        (-1, None),
    ]  # fmt: skip


def test_every_property_value_matches_its_signature(tmp_path: Path) -> None:
    """Marshal the whole StartTransientUnit call with dbus-next, an
    independent D-Bus implementation that type-checks each variant."""
    dbus_next = pytest.importorskip("dbus_next")
    from dbus_next import Message, Variant
    from dbus_next._private.unmarshaller import Unmarshaller

    pod = make_pod(
        init_containers=(
            Container(name="setup", image="oci:/images/busybox:latest", command=("true",)),
        )
    )
    units = compile_pod(make_plan(tmp_path, pod), STAGE1)
    encode_start_transient(units[0], units[1:], "fail")  # pystemd's encoder accepts it too

    def listify(value: object) -> object:
        # dbus-next takes D-Bus structs as Python lists
        if isinstance(value, (list, tuple)):
            return [listify(v) for v in value]
        return value

    def props(unit: Unit) -> list[list[object]]:
        return [[p.name, Variant(p.signature, listify(p.value))] for p in unit.properties]

    body = ["podunit-web.service", "fail", props(units[0]), [[u.name, props(u)] for u in units[1:]]]
    message = Message(
        destination="org.freedesktop.systemd1",
        path="/org/freedesktop/systemd1",
        interface="org.freedesktop.systemd1.Manager",
        member="StartTransientUnit",
        signature="ssa(sv)a(sa(sv))",
        body=body,
    )
    import io

    wire = message._marshall() if hasattr(message, "_marshall") else message.marshall()
    decoded = Unmarshaller(io.BytesIO(wire))
    decoded.unmarshall()
    aux = decoded.message.body[3]
    assert [name for name, _ in aux] == [u.name for u in units[1:]]
    assert dbus_next is not None
