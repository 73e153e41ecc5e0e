"""Host ("fly") mode: the shipped kubelet example, run with a kubelet-like probe.

The pod is units/examples/kubelet.yaml as shipped (its volumes, propagation and
security settings untouched); only the image and the command are replaced by
a busybox probe that checks, from inside, each property a kubelet relies on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import boot_testbed
from images_build import build_busybox_layout
from testbed import Testbed

REPO = Path(__file__).resolve().parents[2]
RESULTS = "/var/lib/kubelet/probe-results"

PROBE = r"""
set -u
R=/var/lib/kubelet/probe-results
: > $R.tmp
check() { if eval "$2"; then echo "ok $1" >> $R.tmp; else echo "FAIL $1" >> $R.tmp; fi; }
wait_for() { i=0; while [ ! -e "$1" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; }
check host-network '[ "$(readlink /proc/self/ns/net)" = "$(readlink /proc/1/ns/net)" ]'
check host-pid '[ "$(cat /proc/1/comm)" = systemd ]'
check host-ipc '[ "$(readlink /proc/self/ns/ipc)" = "$(readlink /proc/1/ns/ipc)" ]'
check all-capabilities '[ "$(grep CapEff /proc/self/status)" = "$(grep CapEff /proc/1/status)" ]'
check no-new-privs-off 'grep -q "^NoNewPrivs:.*0$" /proc/self/status'
check etc-kubernetes '[ "$(cat /etc/kubernetes/from-host)" = hello ]'
check var-log-shared '[ -f /var/log/podunit-probe-host ]'
check lib-modules-read-only '! touch /lib/modules/x 2>/dev/null'
check machine-id '[ "$(cat /etc/machine-id)" = "$(cat /etc/kubernetes/expected-machine-id)" ]'
check machine-id-read-only '! sh -c "echo x > /etc/machine-id" 2>/dev/null'
check ca-certs-read-only '[ -d /etc/ssl/certs ] && ! touch /etc/ssl/certs/x 2>/dev/null'
check sysfs '[ -d /sys/class/net/lo ]'
check cgroupfs '[ -d /sys/fs/cgroup/memory ] || [ -f /sys/fs/cgroup/cgroup.controllers ]'
check host-dev '[ -e /dev/podunit-probe-marker ]'
check cni-dirs '[ -d /opt/cni/bin ] && [ -d /etc/cni/net.d ]'
check resolv-conf '[ "$(cat /etc/resolv.conf)" = "$(cat /etc/kubernetes/expected-resolv)" ]'
mkdir -p /var/lib/kubelet/pods/c
check mount-inside 'mount -t tmpfs kubelet-made /var/lib/kubelet/pods/c && touch /var/lib/kubelet/pods/c/inside'
cp $R.tmp $R.phase1
wait_for /var/lib/kubelet/host-made/marker
check bidirectional-host-to-container '[ -f /var/lib/kubelet/host-made/marker ]'
wait_for /run/podunit-h2c/marker
check host-to-container '[ -f /run/podunit-h2c/marker ]'
mkdir -p /run/podunit-c2h
check mount-under-run 'mount -t tmpfs c2h /run/podunit-c2h && touch /run/podunit-c2h/inside'
mv $R.tmp $R
exec sleep 100000
"""


@pytest.fixture(scope="module")
def host() -> Iterator[Testbed]:
    testbed = boot_testbed()
    try:
        yield testbed
    finally:
        testbed.close()


def probe_manifest(image: str) -> str:
    pod = yaml.safe_load((REPO / "units/examples/kubelet.yaml").read_text())
    pod["metadata"]["annotations"] = {}  # no boot-time start here: `podunit run` runs it
    container = pod["spec"]["containers"][0]
    container["image"] = image
    container["command"] = ["/bin/sh", "-c", PROBE]
    pod["spec"]["terminationGracePeriodSeconds"] = 2
    return yaml.safe_dump(pod)


def podunit(host: Testbed, *args: str) -> str:
    argv = [sys.executable, "-m", "podunit", *args]
    return host.run(argv, env={"PYTHONPATH": str(REPO)}).stdout


def wait_for_file(host: Testbed, path: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        result = host.run(["cat", path], check=False)
        if result.returncode == 0:
            return result.stdout
        assert time.monotonic() < deadline, f"{path} did not appear; logs:\n" + podunit(
            host, "logs", "kubelet"
        )
        time.sleep(0.2)


def test_kubelet_example_in_host_mode(host: Testbed) -> None:
    layout = build_busybox_layout(host.shared_dir / "images" / "busybox", "busybox")
    manifest = host.shared_dir / "kubelet-probe.yaml"
    manifest.write_text(probe_manifest(f"oci:{layout}:busybox"))
    host.shell(
        "mkdir -p /etc/kubernetes /var/lib/kubelet && echo hello > /etc/kubernetes/from-host"
        " && cp /etc/machine-id /etc/kubernetes/expected-machine-id"
        " && cp /etc/resolv.conf /etc/kubernetes/expected-resolv"
        " && touch /var/log/podunit-probe-host /dev/podunit-probe-marker"
    )
    podunit(host, "run", str(manifest))
    try:
        wait_for_file(host, RESULTS + ".phase1")
        # Bidirectional: the mount the kubelet made inside is on the host...
        assert host.run(["findmnt", "-n", "/var/lib/kubelet/pods/c"], check=False).returncode == 0
        assert (
            host.run(["test", "-f", "/var/lib/kubelet/pods/c/inside"], check=False).returncode == 0
        )
        # ...and mounts the host makes afterwards reach the container (both volumes).
        host.shell(
            "mkdir -p /var/lib/kubelet/host-made /run/podunit-h2c"
            " && mount -t tmpfs host-made /var/lib/kubelet/host-made && touch /var/lib/kubelet/host-made/marker"
            " && mount -t tmpfs h2c /run/podunit-h2c && touch /run/podunit-h2c/marker"
        )
        results = wait_for_file(host, RESULTS).split("\n")
        failed = [line for line in results if line.startswith("FAIL")]
        assert not failed, results
        assert len([line for line in results if line.startswith("ok")]) == PROBE.count("\ncheck ")
        # HostToContainer is one-way: the container's mount under /run stays inside.
        assert host.run(["findmnt", "-n", "/run/podunit-c2h"], check=False).returncode != 0
        assert podunit(host, "list").split().count("kubelet") == 1
    finally:
        podunit(host, "rm", "--force", "kubelet")
        host.shell(
            "umount /var/lib/kubelet/pods/c /var/lib/kubelet/host-made /run/podunit-h2c 2>/dev/null; true"
        )
    # The staged peer mounts are gone with the pod.
    mounts = host.run(["findmnt", "-rn", "-o", "TARGET"]).stdout
    assert "/run/podunit/sandboxes/kubelet" not in mounts
