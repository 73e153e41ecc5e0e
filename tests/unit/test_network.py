"""The CNI runtime against fake plugins: the protocol, chaining, rollback, the cache."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from podunit.network import cache, chain
from podunit.network import pod as network
from podunit.network.conflist import (
    NetworkConfigError,
    NetworkList,
    find_network,
    parse_conflist,
)
from podunit.network.plugin import NetworkError, Parameters, PluginError, PluginNotFound
from tests.unit.podfixtures import make_plan

# A plugin that logs what it got and answers as its config says: "fail" names
# a command to fail with an error object; otherwise ADD adds one IP to prevResult.
FAKE_PLUGIN = """#!/usr/bin/python3
import json, os, sys
conf = json.load(sys.stdin)
command = os.environ["CNI_COMMAND"]
env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
call = {"plugin": conf["type"], "command": command, "env": env, "conf": conf}
with open(conf["log"], "a") as log:
    log.write(json.dumps(call) + "\\n")
if conf.get("fail") == command:
    error = {"cniVersion": "1.0.0", "code": 11, "msg": "it broke", "details": "deep down"}
    print(json.dumps(error))
    sys.exit(1)
if conf.get("garbage") == command:
    print("not json", file=sys.stderr)
    sys.exit(3)
if command == "ADD":
    result = conf.get("prevResult") or {"cniVersion": conf["cniVersion"], "ips": []}
    result["ips"].append({"address": conf["address"]})
    print(json.dumps(result))
"""


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir()
    for name in ("one", "two", "three"):
        path = directory / name
        path.write_text(FAKE_PLUGIN)
        path.chmod(0o755)
    monkeypatch.setenv("PODUNIT_CNI_PATH", f"{tmp_path / 'nothing'}:{directory}")
    monkeypatch.setenv("PODUNIT_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("PODUNIT_CNI_CONF_DIRS", str(tmp_path / "net.d"))
    return directory


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "calls.log"


def calls(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def fake_network(log: Path, *plugins: dict[str, Any], version: str = "1.0.0") -> NetworkList:
    listed = [
        {"log": str(log), "address": f"10.0.0.{i + 1}/24", **p} for i, p in enumerate(plugins)
    ]
    return parse_conflist({"cniVersion": version, "name": "fake", "plugins": listed}, "test")


def params(plugins: Path) -> Parameters:
    return Parameters("cid", "/run/netns/x", "eth0", "IgnoreUnknown=1", (str(plugins),))


def test_plugin_config_follows_the_spec() -> None:
    net = parse_conflist(
        {"cniVersion": "1.0.0", "name": "n", "plugins": [
            {"type": "portmap", "capabilities": {"portMappings": True, "dns": False}, "x": 1}]},
        "test",
    )  # fmt: skip
    args = {"portMappings": [{"hostPort": 80}], "dns": {"servers": ["192.0.2.1"]}}
    config = chain.plugin_config(net, net.plugins[0], args, {"ips": []})
    assert config == {
        "type": "portmap",
        "x": 1,
        "cniVersion": "1.0.0",
        "name": "n",
        "runtimeConfig": {"portMappings": [{"hostPort": 80}]},
        "prevResult": {"ips": []},
    }
    assert "runtimeConfig" not in chain.plugin_config(net, {"type": "bridge"}, args, None)


def test_add_chains_prev_results_and_sets_the_cni_environment(plugins: Path, log: Path) -> None:
    net = fake_network(log, {"type": "one"}, {"type": "two"})
    result = chain.add(net, params(plugins), {})
    assert result["ips"] == [{"address": "10.0.0.1/24"}, {"address": "10.0.0.2/24"}]
    first, second = calls(log)
    assert "prevResult" not in first["conf"]
    assert second["conf"]["prevResult"]["ips"] == [{"address": "10.0.0.1/24"}]
    assert first["env"] == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "cid",
        "CNI_NETNS": "/run/netns/x",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1",
        "CNI_PATH": str(plugins),
    }


def test_failed_add_is_rolled_back_in_reverse_and_reports_the_plugins_message(
    plugins: Path, log: Path
) -> None:
    net = fake_network(log, {"type": "one"}, {"type": "two", "fail": "ADD"}, {"type": "three"})
    with pytest.raises(PluginError) as info:
        chain.add(net, params(plugins), {})
    assert str(info.value) == (
        'network "fake": CNI plugin "two" failed ADD: it broke (deep down) [CNI error 11]'
    )
    assert [(c["plugin"], c["command"]) for c in calls(log)] == [
        ("one", "ADD"), ("two", "ADD"), ("two", "DEL"), ("one", "DEL"),
    ]  # fmt: skip
    # DEL gets what ADD had produced so far.
    assert calls(log)[2]["conf"]["prevResult"]["ips"] == [{"address": "10.0.0.1/24"}]


def test_missing_plugin_is_named_and_not_deleted(plugins: Path, log: Path) -> None:
    net = fake_network(log, {"type": "one"}, {"type": "absent"})
    with pytest.raises(PluginNotFound, match='CNI plugin "absent" failed ADD: plugin not found in'):
        chain.add(net, params(plugins), {})
    assert [(c["plugin"], c["command"]) for c in calls(log)] == [("one", "ADD"), ("one", "DEL")]


def test_plugin_without_error_object_reports_its_stderr(plugins: Path, log: Path) -> None:
    net = fake_network(log, {"type": "one", "garbage": "ADD"})
    with pytest.raises(PluginError, match='"one" failed ADD: not json$'):
        chain.add(net, params(plugins), {})


def test_del_goes_on_after_a_failure_and_raises_the_first(plugins: Path, log: Path) -> None:
    net = fake_network(log, {"type": "one"}, {"type": "two", "fail": "DEL"})
    with pytest.raises(PluginError, match='"two" failed DEL'):
        chain.delete(net, params(plugins), {}, {"ips": []})
    assert [(c["plugin"], c["command"]) for c in calls(log)] == [("two", "DEL"), ("one", "DEL")]


def test_check_runs_in_order_unless_the_version_or_config_says_no(plugins: Path, log: Path) -> None:
    result = {"ips": [{"address": "10.0.0.1/24"}]}
    net = fake_network(log, {"type": "one"}, {"type": "two"})
    assert chain.check(net, params(plugins), {}, result) is True
    assert [(c["plugin"], c["command"]) for c in calls(log)] == [("one", "CHECK"), ("two", "CHECK")]
    assert calls(log)[0]["conf"]["prevResult"] == result
    old = fake_network(log, {"type": "one"}, version="0.3.1")
    assert chain.check(old, params(plugins), {}, result) is False
    assert len(calls(log)) == 2


def write_conflist(directory: Path, file: str, name: str, kind: str = "bridge") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    data = {"cniVersion": "1.0.0", "name": name, "plugins": [{"type": kind}]}
    (directory / file).write_text(json.dumps(data))


def test_conflists_are_found_in_order_then_the_builtin(tmp_path: Path) -> None:
    own, shared = tmp_path / "podunit", tmp_path / "cni"
    dirs = [str(own), str(shared)]
    assert find_network("", dirs).name == "podunit"  # nothing configured: built-in
    builtin = find_network("", dirs)
    assert builtin.source == "built-in" and builtin.plugins[0]["bridge"] == "podunit0"
    write_conflist(shared, "10-shared.conflist", "shared")
    assert find_network("", dirs).name == "shared"
    write_conflist(own, "20-b.conflist", "b")
    write_conflist(own, "10-a.conflist", "a")
    (own / "05-ignored.conf").write_text("{}")
    assert find_network("", dirs).name == "a"
    assert find_network("shared", dirs).source == str(shared / "10-shared.conflist")
    assert find_network("podunit", dirs).source == "built-in"
    with pytest.raises(NetworkConfigError, match='no CNI network named "other"'):
        find_network("other", dirs)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../../bin/sh"}]},
         'plugins\\[0\\]: type: "../../bin/sh" is not a plugin name'),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": []}, "plugins: must be a non-empty list"),
        ({"cniVersion": "x", "name": "n", "plugins": [{"type": "a"}]}, "cniVersion"),
        ({"cniVersion": "1.0.0", "name": "a b", "plugins": [{"type": "a"}]}, "not a valid network"),
    ],
)  # fmt: skip
def test_invalid_conflists_are_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(NetworkConfigError, match=message):
        parse_conflist(data, "x.conflist")


def test_unparsable_conflist_names_its_file(tmp_path: Path) -> None:
    (tmp_path / "a.conflist").write_text("{")
    with pytest.raises(NetworkConfigError, match=r"a\.conflist: not valid JSON"):
        find_network("", [str(tmp_path)])


def use_fake_network(tmp_path: Path, log: Path, plugins: list[dict[str, Any]]) -> None:
    listed = [{"log": str(log), "address": "10.0.0.5/24", **p} for p in plugins]
    (tmp_path / "net.d").mkdir(exist_ok=True)
    data = {"cniVersion": "1.0.0", "name": "fake", "plugins": listed}
    (tmp_path / "net.d" / "10-fake.conflist").write_text(json.dumps(data))


def test_attach_caches_so_detach_uses_what_add_used(
    tmp_path: Path, plugins: Path, log: Path
) -> None:
    use_fake_network(tmp_path, log, [{"type": "one", "capabilities": {"portMappings": True}}])
    plan = make_plan(tmp_path)
    plan["port_mappings"] = [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}
    ]
    result = network.attach(plan)
    assert network.result_ip(result) == "10.0.0.5"
    assert network.pod_ip("web") == "10.0.0.5"
    add = calls(log)[0]
    assert add["conf"]["runtimeConfig"]["portMappings"][0]["hostPort"] == 8080
    assert add["env"]["CNI_CONTAINERID"] == plan["uid"]
    assert add["env"]["CNI_NETNS"] == str(Path(plan["runtime_dir"]) / "ns" / "net")
    assert "K8S_POD_NAME=web" in add["env"]["CNI_ARGS"].split(";")
    # The conflist changes after ADD: DEL must still undo what ADD did.
    use_fake_network(tmp_path, log, [{"type": "two"}])
    assert network.detach("web") is True
    delete = calls(log)[1]
    assert (delete["plugin"], delete["command"]) == ("one", "DEL")
    assert delete["conf"]["prevResult"] == result
    assert delete["conf"]["runtimeConfig"]["portMappings"][0]["hostPort"] == 8080
    assert cache.read("web") is None and network.detach("web") is False


def test_failed_attach_leaves_no_record(tmp_path: Path, plugins: Path, log: Path) -> None:
    use_fake_network(tmp_path, log, [{"type": "one"}, {"type": "two", "fail": "ADD"}])
    with pytest.raises(NetworkError):
        network.attach(make_plan(tmp_path))
    assert cache.recorded_pods() == []


def test_failed_detach_keeps_the_record_for_gc(tmp_path: Path, plugins: Path, log: Path) -> None:
    use_fake_network(tmp_path, log, [{"type": "one", "fail": "DEL"}])
    network.attach(make_plan(tmp_path))
    with pytest.raises(PluginError):
        network.detach("web")
    assert cache.recorded_pods() == ["web"]
    assert network.detach_orphans(["web"]) == []
    record = cache.read("web")
    assert record is not None
    record.network["plugins"][0]["fail"] = ""
    cache.write(record)
    assert network.detach_orphans(["web"]) == ["web"]


def test_a_stale_attachment_is_deleted_before_the_pod_is_attached_again(
    tmp_path: Path, plugins: Path, log: Path
) -> None:
    use_fake_network(tmp_path, log, [{"type": "one"}])
    network.attach(make_plan(tmp_path))
    network.attach(make_plan(tmp_path))
    assert [c["command"] for c in calls(log)] == ["ADD", "DEL", "ADD"]


def test_result_ip_prefers_ipv4() -> None:
    result = {"ips": [{"address": "fd00::5/64"}, {"address": "10.1.0.5/16"}, {"address": "x"}]}
    assert network.result_ip(result) == "10.1.0.5"
    assert network.result_ip({"ips": []}) is None


def test_unreadable_cache_is_an_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PODUNIT_RUNTIME_DIR", str(tmp_path))
    cache.results_dir().mkdir(parents=True)
    cache.record_path("web").write_text("{")
    with pytest.raises(NetworkError, match="web.json: unreadable CNI cache"):
        cache.read("web")
    assert network.pod_ip("web") is None
    assert os.path.exists(cache.record_path("web"))
