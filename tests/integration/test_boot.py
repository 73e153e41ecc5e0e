"""Boot pods: manifests in /etc/podunit/pods/, the generator, pod@.service,
enable + reboot, machined, sd_notify readiness and socket activation.

The testbed gets the working tree "installed" the way the package installs
it (generator in a generator dir, the template in a unit dir, `podunit` on
PATH), then is driven with plain systemctl as an admin would.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import boot_testbed
from images_build import build_busybox_layout
from testbed import Testbed

REPO = Path(__file__).resolve().parents[2]


def install_tree(testbed: Testbed) -> None:
    """What the .deb installs, pointing at the working tree."""
    root = testbed.root
    wrapper = f'#!/bin/sh\nexport PYTHONPATH={REPO}\nexec {sys.executable} {{}} "$@"\n'
    generator = root / "etc/systemd/system-generators/podunit-generator"
    generator.parent.mkdir(parents=True, exist_ok=True)
    generator.write_text(wrapper.format(REPO / "generators/podunit-generator"))
    generator.chmod(0o755)
    cli = root / "usr/bin/podunit"
    cli.write_text(wrapper.format("-m podunit"))
    cli.chmod(0o755)
    shutil.copy(REPO / "units/pod@.service", root / "etc/systemd/system/pod@.service")
    (root / "etc/podunit/pods").mkdir(parents=True, exist_ok=True)


def build_probe(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / "probe"
    source = Path(__file__).resolve().parent / "probe" / "probe.c"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(source)], check=True)
    return dest


class Boot:
    def __init__(self, testbed: Testbed) -> None:
        self.testbed = testbed
        layout = build_busybox_layout(testbed.shared_dir / "images" / "busybox", "busybox")
        self.image = f"oci:{layout}:busybox"
        self.probe_dir = build_probe(testbed.shared_dir / "probe")

    def manifest(self, name: str, text: str) -> None:
        text = (
            textwrap.dedent(text)
            .replace("{image}", self.image)
            .replace("{probe}", str(self.probe_dir))
        )
        (self.testbed.root / "etc/podunit/pods" / f"{name}.yaml").write_text(text)

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.testbed.run(["systemctl", *args], check=check, timeout=120)

    def podunit(self, *args: str) -> str:
        return self.testbed.run(["podunit", *args]).stdout

    def active(self, unit: str) -> str:
        return self.systemctl("is-active", unit, check=False).stdout.strip()

    def wait_active(self, *units: str, timeout: float = 30) -> None:
        """`systemctl start pod@X` returns once the sandbox is up; its apps'
        start jobs (same transaction) may still be finishing."""
        deadline = time.monotonic() + timeout
        while any(self.active(u) != "active" for u in units):
            if time.monotonic() > deadline:
                states = {u: self.active(u) for u in units}
                argv = ["journalctl", "--no-pager", "-n", "80", "-o", "short-monotonic"]
                journal = self.testbed.run(argv, check=False).stdout
                raise AssertionError(f"not active in time: {states}\n{journal}")
            time.sleep(0.2)


def pod_yaml(name: str, command: str, annotations: str = "", extra: str = "") -> str:
    return f"""
    apiVersion: v1
    kind: Pod
    metadata:
      name: {name}
      annotations: {{{annotations}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: main
        image: "{{image}}"
        command: ["/bin/sh", "-c", "{command}"]
        volumeMounts: [{{name: probe, mountPath: /probe, readOnly: true}}]
        {extra}
      volumes: [{{name: probe, hostPath: {{path: "{{probe}}"}}}}]
    """


@pytest.fixture(scope="module")
def boot() -> Iterator[Boot]:
    testbed = boot_testbed()
    try:
        install_tree(testbed)
        tool = Boot(testbed)
        tool.manifest(
            "web",
            pod_yaml(
                "web", "echo web-up; exec sleep 100000", '"podunit.io/wanted-by": multi-user.target'
            ),
        )
        tool.manifest("later", pod_yaml("later", "echo later-up; exec sleep 100000"))
        tool.manifest(
            "bad",
            pod_yaml(
                "bad",
                "true",
                '"podunit.io/wanted-by": multi-user.target',
                "resources: {limits: {memory: 12Qi}}",
            ),
        )
        tool.systemctl("daemon-reload")
        yield tool
    finally:
        testbed.close()


def test_generator_output_and_systemctl_start(boot: Boot) -> None:
    generated = boot.testbed.run(["ls", "/run/systemd/generator"]).stdout.split()
    assert "pod@later.service.d" in generated and "podunit-later_main.service" in generated
    boot.systemctl("start", "pod@later.service")
    assert boot.active("pod@later.service") == "active"
    boot.wait_active("podunit-later_main.service")
    status = boot.podunit("status", "later")
    assert "later: running" in status.replace("pod later", "later") or "running" in status
    logs = boot.testbed.run(
        ["journalctl", "--no-pager", "-o", "cat", "-u", "podunit-later_main.service"]
    ).stdout
    assert "later-up" in logs


def test_stop_and_restart_like_any_service(boot: Boot) -> None:
    boot.systemctl("stop", "pod@later.service")
    assert boot.active("podunit-later_main.service") in ("inactive", "failed")
    boot.systemctl("restart", "pod@later.service")
    boot.wait_active("podunit-later_main.service")


def test_bad_manifest_explains_itself(boot: Boot) -> None:
    result = boot.systemctl("start", "pod@bad.service", check=False)
    assert result.returncode != 0
    status = boot.systemctl(
        "status", "--no-pager", "-n", "20", "pod@bad.service", check=False
    ).stdout
    assert "/etc/podunit/pods/bad.yaml:" in status
    assert "spec.containers[0].resources.limits.memory" in status
    assert (
        "podunit-bad_main.service" not in boot.testbed.run(["ls", "/run/systemd/generator"]).stdout
    )


def test_edited_manifest_asks_for_daemon_reload(boot: Boot) -> None:
    # A new limit changes the app's unit: systemd must load it before the pod starts.
    boot.manifest(
        "later", pod_yaml("later", "exec sleep 100000", extra="resources: {limits: {memory: 64Mi}}")
    )
    boot.systemctl("stop", "pod@later.service")
    result = boot.systemctl("start", "pod@later.service", check=False)
    assert result.returncode != 0
    status = boot.systemctl(
        "status", "--no-pager", "-n", "20", "pod@later.service", check=False
    ).stdout
    assert "daemon-reload" in status
    boot.systemctl("daemon-reload")
    boot.systemctl("start", "pod@later.service")
    boot.wait_active("podunit-later_main.service")


def test_machined_lists_running_pods(boot: Boot) -> None:
    machines = boot.testbed.run(["machinectl", "list", "--no-legend"]).stdout
    assert "later" in machines.split()
    status = boot.testbed.run(["machinectl", "status", "later"]).stdout
    assert "pod@later.service" in status
    boot.testbed.run(["machinectl", "terminate", "later"])
    deadline = time.monotonic() + 30
    while boot.active("podunit-later_main.service") == "active":
        assert time.monotonic() < deadline, "machinectl terminate did not stop the pod"
        time.sleep(0.2)


def test_enabled_and_wanted_pods_start_at_boot(boot: Boot) -> None:
    boot.systemctl("enable", "pod@later.service")
    boot.testbed.reboot()
    boot.wait_active("pod@web.service", "podunit-web_main.service", "pod@later.service", timeout=60)
    assert boot.active("pod@bad.service") == "failed"
    status = boot.systemctl(
        "status", "--no-pager", "-n", "20", "pod@bad.service", check=False
    ).stdout
    assert "is not a quantity" in status


def test_notify_container_gates_the_pod_readiness(boot: Boot) -> None:
    boot.manifest(
        "ready",
        pod_yaml(
            "ready",
            "sleep 2; /probe/probe notify READY=1; exec sleep 100000",
            '"podunit.io/notify": main',
        ),
    )
    boot.systemctl("daemon-reload")
    started = time.monotonic()
    boot.systemctl("start", "--no-block", "pod@ready.service")
    time.sleep(1)
    # The container runs but has not said READY=1 yet: neither it nor the pod is active.
    assert boot.active("pod@ready.service") == "activating"
    assert boot.active("podunit-ready_main.service") == "activating"
    boot.wait_active("pod@ready.service", "podunit-ready_main.service")
    assert time.monotonic() - started >= 2


def test_socket_activation_hands_fds_to_the_first_container(boot: Boot) -> None:
    (boot.testbed.root / "etc/systemd/system/pod@sock.socket").write_text(
        "[Socket]\nListenStream=127.0.0.1:9999\n\n[Install]\nWantedBy=sockets.target\n"
    )
    boot.manifest("sock", pod_yaml("sock", "exec /probe/probe serve hello-from-pod"))
    boot.systemctl("daemon-reload")
    boot.systemctl("start", "pod@sock.socket")
    assert boot.active("pod@sock.service") == "inactive"
    reply = boot.testbed.run(["busybox", "nc", "127.0.0.1", "9999"], input="", timeout=60).stdout
    assert reply.strip() == "hello-from-pod LISTEN_FDS=1 LISTEN_PID=1 pid=1"
    assert boot.active("pod@sock.service") == "active"
