"""The integration harness itself: is what the other integration tests stand on really there?"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from images_build import OciImage
from testbed import REPO, CommandFailed, Testbed, read_mountinfo


def test_systemd_is_pid1(systemd: Testbed) -> None:
    assert systemd.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    exe = systemd.run(["readlink", "/proc/1/exe"]).stdout.strip()
    assert exe.endswith("/systemd")
    state = systemd.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    assert state in ("running", "degraded")
    version = systemd.run(["systemctl", "--version"]).stdout.split()
    assert version[:2] == ["systemd", "252"]


def test_dbus_answers(systemd: Testbed) -> None:
    ping = systemd.run(
        ["busctl", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
         "org.freedesktop.DBus.Peer", "Ping"]
    )  # fmt: skip
    assert ping.returncode == 0
    version = systemd.run(
        ["busctl", "get-property", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
         "org.freedesktop.systemd1.Manager", "Version"]
    )  # fmt: skip
    assert version.stdout.startswith('s "252')


def test_commands_run_as_root_of_the_machine(systemd: Testbed) -> None:
    # nsenter'd commands are in the container's root cgroups, at "/", with a clean environment.
    assert systemd.run(["pwd"]).stdout.strip() == "/"
    assert systemd.run(["id", "-u"]).stdout.strip() == "0"
    cgroups = systemd.run(["cat", "/proc/self/cgroup"]).stdout.splitlines()
    assert cgroups and all(line.endswith(":/") for line in cgroups), cgroups
    env = systemd.run(["env"], env={"FOO": "bar"}).stdout.splitlines()
    assert "FOO=bar" in env
    assert not any(line.startswith("PYTEST_") for line in env)
    assert systemd.run(["hostname"]).stdout.strip() == "podunit-testbed"
    host_id = Path("/etc/machine-id").read_text().strip()
    assert systemd.run(["cat", "/etc/machine-id"]).stdout.strip() != host_id


def test_failed_command_raises_with_its_output(systemd: Testbed) -> None:
    with pytest.raises(CommandFailed) as failure:
        systemd.shell("echo to-stdout; echo to-stderr >&2; exit 3")
    assert failure.value.returncode == 3
    message = str(failure.value)
    assert "exit code 3" in message and "to-stdout" in message and "to-stderr" in message
    assert systemd.shell("exit 4", check=False).returncode == 4
    assert systemd.run(["cat"], input="through stdin").stdout == "through stdin"


def test_spawn_runs_in_background(systemd: Testbed) -> None:
    proc = systemd.spawn(["sh", "-c", "echo started; exec sleep 600"])
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)


def test_repository_is_visible_read_only(systemd: Testbed) -> None:
    pyproject = REPO / "pyproject.toml"
    inside = systemd.run(["sha256sum", str(pyproject)]).stdout.split()[0]
    assert inside == hashlib.sha256(pyproject.read_bytes()).hexdigest()
    touch = systemd.run(["touch", str(REPO / ".testbed-write-probe")], check=False)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr


def test_state_dir_is_bound_at_var_lib_podunit(systemd: Testbed) -> None:
    systemd.shell("echo hello > /var/lib/podunit/.testbed-probe")
    probe = systemd.state_dir / ".testbed-probe"
    try:
        assert probe.read_text() == "hello\n"
    finally:
        probe.unlink()
    # A real file system, not the overlay: podunit puts overlay mounts on it.
    fstype = systemd.run(["stat", "-f", "-c", "%T", "/var/lib/podunit"]).stdout.strip()
    assert fstype not in ("overlayfs", "tmpfs"), fstype


def test_memory_limits_are_enforced(systemd: Testbed) -> None:
    assert systemd.memory_limits_enforced


def test_tasks_limits_are_enforced(systemd: Testbed) -> None:
    # Ten background sleeps cannot fork under TasksMax=4: the shell fails.
    result = systemd.run(
        ["systemd-run", "--wait", "--quiet", "--collect", "-p", "TasksMax=4",
         "/bin/sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & done; wait"],
        check=False,
    )  # fmt: skip
    assert result.returncode != 0


def test_container_has_no_network_but_loopback(fresh_testbed: Testbed) -> None:
    # A testbed of its own: pods of other tests add CNI bridges to the shared one.
    links = fresh_testbed.run(["ls", "/sys/class/net"]).stdout.split()
    assert links == ["lo"]
    assert fresh_testbed.run(["ip", "route", "show"]).stdout.strip() == ""
    assert "default" not in fresh_testbed.run(["ip", "-6", "route", "show"]).stdout


def test_nested_namespaces_work(systemd: Testbed) -> None:
    result = systemd.run(["unshare", "--fork", "--pid", "--mount", "--uts", "--ipc", "--net",
                          "--mount-proc", "sh", "-c", "echo $$"])  # fmt: skip
    assert result.stdout.strip() == "1"


def test_busybox_image_is_visible_inside(systemd: Testbed, busybox_image: OciImage) -> None:
    assert busybox_image.reference == f"oci:{busybox_image.layout}:busybox"
    tags = systemd.run(["umoci", "ls", "--layout", str(busybox_image.layout)]).stdout.split()
    assert tags == ["busybox"]
    bundle = "/var/lib/podunit/.testbed-busybox-bundle"
    try:
        systemd.run(["umoci", "unpack", "--image", f"{busybox_image.layout}:busybox", bundle])
        hello = systemd.run(
            ["chroot", f"{bundle}/rootfs", "/bin/sh", "-c", "echo hi from $(id -un)"]
        )
        assert hello.stdout.strip() == "hi from root"
    finally:
        systemd.run(["rm", "-rf", bundle])


def _testbed_cgroups() -> list[Path]:
    return [p for p in Path("/sys/fs/cgroup").glob("*/**/podunit-testbed-*") if p.is_dir()]


def test_reboot_keeps_state_and_close_leaves_nothing(fresh_testbed: Testbed) -> None:
    # A testbed of its own: rebooting the shared one would disturb the other tests.
    testbed = fresh_testbed
    workdir, name = testbed.workdir, testbed.name
    assert workdir is not None
    first_leader = testbed.leader
    testbed.shell("echo kept > /etc/podunit-reboot-probe; echo kept > /var/lib/podunit/probe")
    testbed.reboot()
    assert testbed.leader != first_leader
    assert testbed.run(["cat", "/etc/podunit-reboot-probe"]).stdout == "kept\n"
    assert testbed.run(["cat", "/var/lib/podunit/probe"]).stdout == "kept\n"
    assert testbed.memory_limits_enforced
    own_cgroups = [p for p in _testbed_cgroups() if p.name == name]
    assert own_cgroups
    sleeper = testbed.spawn(["sleep", "600"])
    testbed.close()
    testbed.close()  # a second close is harmless
    assert not workdir.exists()
    assert not any(m.mountpoint == workdir or workdir in m.mountpoint.parents
                   for m in read_mountinfo())  # fmt: skip
    assert not any(p.exists() for p in own_cgroups)
    assert sleeper.poll() is not None
    assert not Path("/run/systemd/nspawn/propagate", name).exists()
