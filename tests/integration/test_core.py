"""The core issue, for real: manifests run as units of a booted systemd 252.

Each test runs `podunit` inside the testbed as a user would, then checks what
systemd, the kernel and the apps themselves report.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from images_build import OciImage
from podunit_cli import Podunit
from testbed import Testbed

DEFAULT_CAPS = "00000000a80425fb"  # the OCI runtimes' default set


@pytest.fixture(scope="module")
def podunit(systemd: Testbed, busybox_image: OciImage) -> Iterator[Podunit]:
    tool = Podunit(systemd, busybox_image.reference)
    yield tool
    tool("gc", check=False)


def test_run_wait_rm_runs_app_and_leaves_nothing(podunit: Podunit) -> None:
    path = podunit.manifest(
        "hello",
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: hello}
        spec:
          restartPolicy: Never
          containers:
          - name: main
            image: {image}
            command: ["/bin/sh", "-c", "echo hello-from-pod; exit 0"]
        """,
    )
    result = podunit("run", "--wait", "--rm", str(path))
    assert result.returncode == 0
    journal = podunit.testbed.run(
        ["journalctl", "--no-pager", "-o", "cat", "-u", "podunit-hello_main.service"]
    ).stdout
    assert "hello-from-pod" in journal
    assert "hello" not in podunit("list").stdout.split()
    assert podunit.units("hello") == []


def test_wait_exits_with_first_failing_app_code(podunit: Podunit) -> None:
    path = podunit.manifest(
        "fails",
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: fails}
        spec:
          restartPolicy: Never
          containers:
          - {name: good, image: "{image}", command: ["true"]}
          - {name: bad, image: "{image}", command: ["/bin/sh", "-c", "exit 42"]}
        """,
    )
    result = podunit("run", "--wait", str(path), check=False)
    try:
        assert result.returncode == 42
        status = podunit.status("fails")
        assert status["state"] == "failed"
        apps = {a["name"]: a for a in status["apps"]}
        assert apps["good"]["state"] == "exited" and apps["good"]["exit_code"] == 0
        assert apps["bad"]["state"] == "failed" and apps["bad"]["exit_code"] == 42
    finally:
        podunit.cleanup("fails")


@pytest.fixture(scope="module")
def sleeper(podunit: Podunit) -> Iterator[str]:
    """A running two-app pod for the isolation checks."""
    path = podunit.manifest(
        "iso",
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: iso}
        spec:
          hostname: isohost
          containers:
          - name: server
            image: {image}
            command: ["/bin/sh", "-c", "while true; do echo pong | nc -l -p 8080; done"]
          - name: other
            image: {image}
            command: ["sleep", "100000"]
            resources:
              limits: {memory: 48Mi, cpu: 250m}
        """,
    )
    podunit("run", str(path))
    yield "iso"
    podunit.cleanup("iso")


def test_apps_see_only_their_own_processes_and_the_pod_hostname(
    podunit: Podunit, sleeper: str
) -> None:
    out = podunit(
        "exec", sleeper, "other", "--", "/bin/sh", "-c", "ps -o pid,args; hostname"
    ).stdout
    lines = out.strip().splitlines()
    assert lines[-1] == "isohost"
    processes = [line for line in lines[1:-1] if line.strip()]
    assert processes[0].split()[0] == "1" and "sleep 100000" in processes[0]
    assert not any("nc -l" in line for line in processes), "the other app's processes are visible"
    assert not any("systemd" in line or "python" in line for line in processes)


def test_apps_see_none_of_the_hosts_files(podunit: Podunit, sleeper: str) -> None:
    script = "ls /; test -e /etc/debian_version && echo HOSTFILE; test -e /work && echo HOSTDIR; cat /etc/hostname"
    out = podunit("exec", sleeper, "other", "--", "/bin/sh", "-c", script).stdout
    assert "HOSTFILE" not in out and "HOSTDIR" not in out
    assert set(out.split()) >= {"bin", "dev", "etc", "proc", "sys", "tmp", "isohost"}


def test_apps_share_network_and_ipc_but_not_pids(podunit: Podunit, sleeper: str) -> None:
    out = podunit(
        "exec", sleeper, "other", "--", "/bin/sh", "-c", "nc 127.0.0.1 8080 </dev/null"
    ).stdout
    assert out.strip() == "pong"

    def namespaces(app: str) -> dict[str, str]:
        script = "for n in net ipc uts pid mnt; do echo $n $(readlink /proc/1/ns/$n); done"
        text = podunit("exec", sleeper, app, "--", "/bin/sh", "-c", script).stdout
        return dict(line.split() for line in text.splitlines())

    server, other = namespaces("server"), namespaces("other")
    assert server["net"] == other["net"] and server["ipc"] == other["ipc"]
    assert server["uts"] == other["uts"]
    assert server["pid"] != other["pid"] and server["mnt"] != other["mnt"]
    host = podunit.testbed.run(["readlink", "/proc/1/ns/net"]).stdout.strip()
    assert server["net"] != host


def test_default_privileges_are_reduced(podunit: Podunit, sleeper: str) -> None:
    out = podunit(
        "exec",
        sleeper,
        "other",
        "--",
        "/bin/sh",
        "-c",
        "grep -E '^(Cap|NoNewPrivs)' /proc/self/status; touch /sys/x 2>&1; ls /dev",
    ).stdout
    fields = dict(line.split(":\t") for line in out.splitlines() if ":\t" in line)
    assert fields["CapEff"] == DEFAULT_CAPS and fields["CapBnd"] == DEFAULT_CAPS
    assert fields["CapInh"] == "0" * 16 and fields["CapAmb"] == "0" * 16
    assert fields["NoNewPrivs"] == "1"
    assert "Read-only file system" in out
    devices = set(out.split())
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue"} <= devices
    assert "sda" not in devices and "kmsg" not in devices


def test_limits_land_on_the_units(podunit: Podunit, sleeper: str) -> None:
    props = podunit.testbed.run(
        [
            "systemctl",
            "show",
            "-p",
            "MemoryMax,CPUQuotaPerSecUSec,TasksMax,Slice",
            "podunit-iso_other.service",
        ]
    ).stdout
    assert "MemoryMax=50331648" in props
    assert "CPUQuotaPerSecUSec=250ms" in props
    assert "Slice=podunit-iso.slice" in props


def test_no_podunit_process_stays_alive_beside_running_pods(podunit: Podunit, sleeper: str) -> None:
    out = podunit.testbed.run(["ps", "-eo", "pid,ppid,args"]).stdout
    assert "podunit" not in out, out
    status = podunit.status(sleeper)
    assert all(app["state"] == "running" for app in status["apps"])
    for app in status["apps"]:
        ppid = podunit.testbed.run(["ps", "-o", "ppid=", "-p", str(app["main_pid"])]).stdout.strip()
        assert ppid == "1", f"{app['name']} is not a direct child of systemd"


def test_memory_limit_oom_kills_only_that_app(podunit: Podunit) -> None:
    if not podunit.testbed.memory_limits_enforced:
        pytest.fail("the testbed does not enforce memory limits")
    path = podunit.manifest(
        "oom",
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: oom}
        spec:
          restartPolicy: Never
          containers:
          - name: hog
            image: {image}
            command: ["/bin/sh", "-c", "exec dd if=/dev/zero of=/dev/null bs=200M count=1"]
            resources: {limits: {memory: 32Mi}}
          - name: bystander
            image: {image}
            command: ["/bin/sh", "-c", "sleep 2; echo bystander-ok"]
        """,
    )
    try:
        result = podunit("run", "--wait", str(path), check=False)
        assert result.returncode == 137
        hog, bystander = podunit.app("oom", "hog"), podunit.app("oom", "bystander")
        assert hog["state"] == "failed" and hog["exit_code"] == 137
        assert bystander["state"] == "exited" and bystander["exit_code"] == 0
        assert "bystander-ok" in podunit.logs("oom", "bystander")
    finally:
        podunit.cleanup("oom")


def test_crashing_app_is_restarted_per_restart_policy(podunit: Podunit) -> None:
    path = podunit.manifest(
        "flaky",
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: flaky}
        spec:
          restartPolicy: OnFailure
          initContainers:
          - name: prep
            image: {image}
            command: ["/bin/sh", "-c", "echo prepared > /work/marker"]
            volumeMounts: [{name: work, mountPath: /work}]
          containers:
          - name: app
            image: {image}
            command: ["/bin/sh", "-c", "cat /work/marker; echo x >> /work/runs; [ $(wc -l < /work/runs) -ge 3 ]"]
            volumeMounts: [{name: work, mountPath: /work}]
          volumes: [{name: work, emptyDir: {}}]
        """,
    )
    try:
        assert podunit("run", "--wait", str(path), timeout=60).returncode == 0
        app = podunit.app("flaky", "app")
        assert app["state"] == "exited" and app["restarts"] == 2
        assert podunit.app("flaky", "prep")["state"] == "exited"
        assert podunit.logs("flaky", "app").count("prepared") == 3
    finally:
        podunit.cleanup("flaky")


def test_never_policy_does_not_restart(podunit: Podunit) -> None:
    path = podunit.manifest(
        "once",
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: once}
        spec:
          restartPolicy: Never
          containers: [{name: app, image: "{image}", command: ["false"]}]
        """,
    )
    try:
        assert podunit("run", "--wait", str(path), check=False).returncode == 1
        app = podunit.app("once", "app")
        assert app["state"] == "failed" and app["restarts"] == 0 and app["exit_code"] == 1
    finally:
        podunit.cleanup("once")


def test_always_policy_restarts_an_app_that_exits(podunit: Podunit) -> None:
    path = podunit.manifest(
        "always",
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: always}
        spec:
          containers: [{name: app, image: "{image}", command: ["/bin/sh", "-c", "sleep 0.2"]}]
        """,
    )
    try:
        podunit("run", str(path))
        deadline = time.monotonic() + 20
        while podunit.app("always", "app")["restarts"] < 2:
            assert time.monotonic() < deadline, "the app was not restarted"
            time.sleep(0.5)
        assert podunit.status("always")["state"] == "running"
    finally:
        podunit.cleanup("always")


def test_stop_sends_sigterm_then_sigkill_after_the_grace_period(podunit: Podunit) -> None:
    path = podunit.manifest(
        "grace",
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: grace}
        spec:
          terminationGracePeriodSeconds: 3
          containers:
          - name: polite
            image: {image}
            command: ["/bin/sh", "-c", "trap 'echo got-sigterm; exit 0' TERM; while true; do sleep 0.1; done"]
          - name: stubborn
            image: {image}
            command: ["/bin/sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]
        """,
    )
    try:
        podunit("run", str(path))
        started = time.monotonic()
        podunit("stop", "grace")
        elapsed = time.monotonic() - started
        assert 2.5 <= elapsed < 15, f"stop took {elapsed:.1f}s for a 3s grace period"
        polite, stubborn = podunit.app("grace", "polite"), podunit.app("grace", "stubborn")
        assert "got-sigterm" in podunit.logs("grace", "polite")
        assert polite["exit_code"] == 0
        assert stubborn["exit_code"] == 137, stubborn
        assert podunit.status("grace")["state"] in ("exited", "failed")
    finally:
        podunit.cleanup("grace")


def test_stop_timeout_overrides_the_grace_period(podunit: Podunit) -> None:
    path = podunit.manifest(
        "quick",
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: quick}
        spec:
          containers: [{name: app, image: "{image}", command: ["/bin/sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]}]
        """,
    )
    try:
        podunit("run", str(path))
        started = time.monotonic()
        podunit("stop", "--timeout", "1", "quick")
        assert time.monotonic() - started < 10
        assert podunit.app("quick", "app")["exit_code"] == 137
    finally:
        podunit.cleanup("quick")


def test_malformed_manifest_starts_nothing(podunit: Podunit) -> None:
    path = podunit.manifest(
        "broken",
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: broken}
        spec:
          containers:
          - name: ok
            image: {image}
          - name: bad
            image: {image}
            resources:
              limits: {memory: 64Mx}
        """,
    )
    result = podunit("run", str(path), check=False)
    assert result.returncode == 2
    assert (
        f'{path}:12: spec.containers[1].resources.limits.memory: "64Mx" is not a quantity'
        in result.stderr
    )
    assert podunit.units("broken") == []
    assert "broken" not in podunit("list").stdout


def test_failed_start_is_explained_and_leaves_no_units(podunit: Podunit) -> None:
    path = podunit.manifest(
        "nobinary",
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: nobinary}
        spec:
          containers:
          - {name: fine, image: "{image}", command: ["sleep", "1000"]}
          - {name: missing, image: "{image}", command: ["/no/such/binary"]}
        """,
    )
    result = podunit("run", str(path), check=False)
    assert result.returncode != 0
    assert "podunit-nobinary_missing.service" in result.stderr
    assert "/no/such/binary" in result.stderr and "not found" in result.stderr
    assert podunit.units("nobinary") == []
    assert "nobinary" not in podunit("list").stdout


def test_tampered_image_is_refused_before_anything_runs(podunit: Podunit) -> None:
    import os
    import shutil

    from tests.fixtures.images import OciLayout, TarBuilder, make_layer

    bad = podunit.testbed.shared_dir / "images" / "tampered"
    shutil.rmtree(bad, ignore_errors=True)
    # A layer no earlier test pulled, so the store must read it from the layout.
    layer = make_layer(TarBuilder().file("unique", os.urandom(4096)).bytes())
    layout = OciLayout(bad)
    layout.tag(layout.image([layer]), "busybox")
    blob = layout.blob_path(layer.digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    path = podunit.manifest(
        "tampered",
        f"""
        apiVersion: v1
        kind: Pod
        metadata: {{name: tampered}}
        spec:
          containers: [{{name: app, image: "oci:{bad}:busybox", command: ["/bin/sh"]}}]
        """,
    )
    result = podunit("run", str(path), check=False)
    assert result.returncode != 0
    assert layer.digest in result.stderr and "digest" in result.stderr.lower()
    assert podunit.units("tampered") == []
    assert "tampered" not in podunit("list").stdout
    assert not (podunit.testbed.state_dir / "layers" / "sha256" / layer.diff_id[7:]).exists()


def test_volumes_and_security_context(podunit: Podunit) -> None:
    host_dir = podunit.testbed.shared_dir / "hostvol"
    host_dir.mkdir(exist_ok=True)
    (host_dir / "from-host").write_text("host-data\n")
    (host_dir / "subdir").mkdir(exist_ok=True)
    (host_dir / "subdir").chmod(0o777)  # the app runs as nobody
    path = podunit.manifest(
        "vols",
        f"""
        apiVersion: v1
        kind: Pod
        metadata: {{name: vols}}
        spec:
          restartPolicy: Never
          containers:
          - name: app
            image: "{{image}}"
            command: ["/bin/sh", "-c", "cat /host/from-host; touch /host/x 2>&1; df -k /mem | tail -1; id -u; grep CapEff /proc/self/status; touch /rootfile 2>&1; echo sub > /sub/f"]
            securityContext:
              runAsUser: 65534
              readOnlyRootFilesystem: true
              capabilities: {{drop: [ALL]}}
            volumeMounts:
            - {{name: host, mountPath: /host, readOnly: true}}
            - {{name: mem, mountPath: /mem}}
            - {{name: host, mountPath: /sub, subPath: subdir}}
          volumes:
          - {{name: host, hostPath: {{path: "{host_dir}"}}}}
          - {{name: mem, emptyDir: {{medium: Memory, sizeLimit: 8Mi}}}}
        """,
    )
    try:
        podunit("run", "--wait", str(path), check=False)
        out = podunit.logs("vols", "app")
        assert "host-data" in out
        assert "touch: /host/x: Read-only file system" in out
        assert " 8192 " in out  # the tmpfs has the size limit
        lines = [line.split("]: ", 1)[-1] for line in out.splitlines()]
        assert "65534" in lines
        assert ["CapEff:", "0" * 16] in [line.split() for line in lines]
        assert "touch: /rootfile: Read-only file system" in out
        assert (host_dir / "subdir" / "f").read_text() == "sub\n"
    finally:
        podunit.cleanup("vols")


def test_list_and_status_json_fields(podunit: Podunit, sleeper: str) -> None:
    import json

    pods = json.loads(podunit("list", "--json").stdout)
    pod = next(p for p in pods if p["name"] == sleeper)
    assert pod["state"] == "running"
    for app in pod["apps"]:
        assert set(app) >= {"name", "unit", "state", "main_pid", "exit_code", "restarts"}
        assert app["state"] == "running" and app["main_pid"] > 0 and app["exit_code"] is None


def test_gc_removes_finished_pods(podunit: Podunit) -> None:
    path = podunit.manifest(
        "done",
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: done}
        spec:
          restartPolicy: Never
          containers: [{name: app, image: "{image}", command: ["true"]}]
        """,
    )
    podunit("run", "--wait", str(path))
    assert podunit.status("done")["state"] == "exited"
    assert "done" in podunit("gc").stdout
    assert "done" not in podunit("list").stdout
    assert podunit.units("done") == []
