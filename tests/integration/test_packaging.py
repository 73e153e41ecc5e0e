"""The .deb and the .rpm that `packaging/build` makes, installed the way users install them.

The packages are built from the working tree once per session (or taken from dist/ when
they are newer than every file of the tree), then the .deb is installed with `dpkg -i` into
a freshly booted testbed: its root is an overlay of the host's, so the Debian packages the
.deb depends on are already there, and nothing of the working tree is on the testbed's
Python path.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from images_build import build_busybox_layout
from testbed import Testbed

REPO = Path(__file__).resolve().parents[2]
DIST = REPO / "dist"
# Not part of what is packaged: a change in these does not make dist/ stale.
NOT_SOURCES = {
    ".git", ".venv", "dist", "build", "__pycache__", ".mypy_cache", ".ruff_cache",
    ".pytest_cache",
}  # fmt: skip

# What both packages must install (besides the rest of the Python package).
SITE = "/usr/lib/python3/dist-packages"
REQUIRED_FILES = {
    "/usr/bin/podunit",
    f"{SITE}/podunit/cli.py",
    f"{SITE}/podunit/stage1/__main__.py",
    "/usr/lib/systemd/system-generators/podunit-generator",
    "/usr/lib/systemd/system/pod@.service",
    "/usr/lib/systemd/system/podunit-gc.service",
    "/usr/lib/systemd/system/podunit-gc.timer",
    "/usr/lib/tmpfiles.d/podunit.conf",
    "/usr/share/man/man1/podunit.1.gz",
    "/usr/share/bash-completion/completions/podunit",
}


@dataclass(frozen=True)
class Packages:
    deb: Path
    rpm: Path


def newest_source_mtime() -> float:
    newest = 0.0
    for directory, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in NOT_SOURCES and not d.endswith(".egg-info")]
        for name in [*files, *dirs]:
            try:
                newest = max(newest, os.lstat(os.path.join(directory, name)).st_mtime)
            except FileNotFoundError:  # removed while we walk
                pass
    return newest


@pytest.fixture(scope="session")
def packages() -> Packages:
    with open(REPO / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    built = Packages(
        deb=DIST / f"podunit_{version}_all.deb", rpm=DIST / f"podunit-{version}-1.noarch.rpm"
    )
    sources = newest_source_mtime()
    if not all(p.is_file() and p.stat().st_mtime > sources for p in (built.deb, built.rpm)):
        result = subprocess.run(
            [str(REPO / "packaging/build"), "all"],
            capture_output=True,
            text=True,
            check=False,
            timeout=900,
        )
        assert result.returncode == 0, f"packaging/build all failed:\n{result.stderr[-6000:]}"
    assert built.deb.is_file() and built.rpm.is_file()
    return built


def deb_files(deb: Path) -> dict[str, str]:
    """Path -> mode string ("drwxr-xr-x"...) of everything in the .deb."""
    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    files = {}
    for line in listing.splitlines():
        fields = line.split(maxsplit=5)
        path = fields[5].split(" -> ")[0].removeprefix(".").rstrip("/") or "/"
        files[path] = fields[0]
    return files


def rpm_files(rpm: Path) -> dict[str, str]:
    """Path -> mode string of everything in the .rpm (what `rpm -qlp` lists, with modes)."""
    listing = subprocess.run(
        ["rpm", "-qp", "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]", str(rpm)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    files = {}
    for line in listing.splitlines():
        mode, path = line.split(" ", 1)
        files[path] = mode
    # rpm -qlp is the listing the task asks for: it must agree.
    plain = subprocess.run(
        ["rpm", "-qlp", str(rpm)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(plain) == sorted(files)
    return files


def regular_files(files: dict[str, str]) -> dict[str, str]:
    """Files and symlinks, except each format's own documents and metadata."""
    return {
        path: mode
        for path, mode in files.items()
        if not mode.startswith("d")
        and not path.startswith(("/usr/share/doc/", "/usr/share/lintian/"))
    }


# ---- the packages as files ------------------------------------------------------------------


def test_deb_contents(packages: Packages) -> None:
    files = deb_files(packages.deb)
    assert REQUIRED_FILES <= set(files), sorted(REQUIRED_FILES - set(files))
    assert files["/usr/bin/podunit"].startswith("-rwxr-xr-x")
    assert files["/usr/lib/systemd/system-generators/podunit-generator"].startswith("-rwxr-xr-x")
    # Every unit and generator of the tree is shipped.
    for unit in (REPO / "units").glob("*.*"):
        if unit.suffix in (".service", ".socket", ".timer", ".path", ".target"):
            assert f"/usr/lib/systemd/system/{unit.name}" in files
    for generator in (REPO / "generators").iterdir():
        if generator.is_file() and os.access(generator, os.X_OK):
            assert f"/usr/lib/systemd/system-generators/{generator.name}" in files
    for page in (REPO / "packaging/man").glob("*.[1-8]"):
        assert f"/usr/share/man/man{page.suffix[1:]}/{page.name}.gz" in files
    # Byte code is compiled at install time, not shipped; no trace of the build tree.
    assert not [p for p in files if "__pycache__" in p or p.endswith(".pyc")]
    assert not [p for p in files if p.startswith(("/usr/local", "/lib/"))]

    fields = subprocess.run(
        ["dpkg-deb", "--field", str(packages.deb), "Architecture", "Depends", "Recommends"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Architecture: all" in fields
    for dependency in ("python3-pystemd", "catatonit", "containernetworking-plugins", "gpgv"):
        assert dependency in fields


def test_rpm_lists_the_same_payload(packages: Packages) -> None:
    deb, rpm = regular_files(deb_files(packages.deb)), regular_files(rpm_files(packages.rpm))
    assert REQUIRED_FILES <= set(rpm), sorted(REQUIRED_FILES - set(rpm))
    assert set(rpm) == set(deb), {
        "only in the rpm": sorted(set(rpm) - set(deb)),
        "only in the deb": sorted(set(deb) - set(rpm)),
    }
    assert {p: m for p, m in rpm.items() if m != deb[p]} == {}
    info = subprocess.run(
        ["rpm", "-qp", "--qf", "%{ARCH} %{VERSION}\n", "--requires", str(packages.rpm)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert info.startswith("noarch ")
    assert "python3-pystemd" in info and "catatonit" in info


def test_lintian_reports_no_errors(packages: Packages) -> None:
    result = subprocess.run(
        ["lintian", "--fail-on", "error", "--display-info", str(packages.deb)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert result.returncode == 0 and not errors, result.stdout + result.stderr


# ---- the .deb in a booted systemd -----------------------------------------------------------


def install_deb(testbed: Testbed, deb: Path) -> None:
    # The host may forbid maintainer scripts to start services (a Docker-style policy-rc.d
    # that exits 101, seen on these machines); a booted machine has none. Removed in the
    # testbed's overlay only.
    testbed.run(["rm", "-f", "/usr/sbin/policy-rc.d"])
    # shared_dir is bound at its own path in the container.
    copy = testbed.shared_dir / deb.name
    copy.write_bytes(deb.read_bytes())
    testbed.run(["dpkg", "-i", str(copy)], timeout=300)


def test_deb_installs_into_a_booted_systemd(fresh_testbed: Testbed, packages: Packages) -> None:
    tb = fresh_testbed
    install_deb(tb, packages.deb)
    assert tb.run(["dpkg-query", "-W", "-f=${Status}", "podunit"]).stdout == (
        "install ok installed"
    )

    # The CLI, from /usr/bin with the system's Python and the installed package.
    assert tb.run(["head", "-n1", "/usr/bin/podunit"]).stdout.strip() == "#!/usr/bin/python3"
    assert "usage: podunit" in tb.run(["podunit", "--help"]).stdout
    location = tb.run(["/usr/bin/python3", "-c", "import podunit; print(podunit.__file__)"])
    assert location.stdout.strip() == f"{SITE}/podunit/__init__.py"
    # What the units run: `python3 -m podunit.stage1`.
    stage1 = tb.run(
        [
            "/usr/bin/python3",
            "-c",
            "import importlib.util as u; print(u.find_spec('podunit.stage1.__main__').origin)",
        ]
    )
    assert stage1.stdout.strip() == f"{SITE}/podunit/stage1/__main__.py"

    # The template, the generator, the timer.
    template = tb.run(["systemctl", "cat", "pod@.service"]).stdout
    # systemd 252 names it by /lib, the same directory as /usr/lib on a merged-/usr system.
    assert re.search(r"^# (/usr)?/lib/systemd/system/pod@\.service$", template, re.M), template
    tb.run(["test", "-x", "/usr/lib/systemd/system-generators/podunit-generator"])
    timers = tb.run(["systemctl", "list-timers", "--all", "--no-pager"]).stdout
    assert "podunit-gc.timer" in timers
    assert tb.run(["systemctl", "is-enabled", "podunit-gc.timer"]).stdout.strip() == "enabled"
    assert tb.run(["systemctl", "is-active", "podunit-gc.timer"]).stdout.strip() == "active"
    gc = tb.run(["systemctl", "show", "-p", "ExecStart", "podunit-gc.service"]).stdout
    assert "/usr/bin/podunit gc --grace-period=1800" in gc.replace(" ; ", " ")

    # No pod was started.
    pods = tb.run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "pod@*"]).stdout
    assert pods.strip() == ""

    # tmpfiles ran; man page and completion are where man and bash look.
    modes = tb.run(["stat", "-c", "%a %n", "/run/podunit", "/var/lib/podunit", "/etc/podunit/pods"])
    assert modes.stdout.split("\n")[:3] == [
        "700 /run/podunit",
        "700 /var/lib/podunit",
        "755 /etc/podunit/pods",
    ]
    assert tb.run(["man", "-w", "podunit"]).stdout.strip() == "/usr/share/man/man1/podunit.1.gz"
    completion = tb.run(
        ["bash", "-c", ". /usr/share/bash-completion/completions/podunit; complete -p podunit"]
    )
    assert completion.stdout.strip() == "complete -F _podunit podunit"

    # Removed, and purged: no unit, timer or generator is left behind.
    tb.run(["dpkg", "--purge", "podunit"], timeout=300)
    assert tb.run(["systemctl", "cat", "pod@.service"], check=False).returncode != 0
    assert "podunit-gc" not in tb.run(["systemctl", "list-timers", "--all"]).stdout
    leftovers = tb.run(["ls", "/usr/lib/systemd/system-generators"]).stdout
    assert "podunit" not in leftovers


BOOT_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: hello
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: "{image}"
    command: ["/bin/sh", "-c", "echo hello-from-the-package; exec sleep 100000"]
"""


def wait_active(testbed: Testbed, *units: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {
            unit: testbed.run(["systemctl", "is-active", unit], check=False).stdout.strip()
            for unit in units
        }
        if all(state == "active" for state in states.values()):
            return
        assert time.monotonic() < deadline, f"not active in time: {states}"
        time.sleep(0.2)


def test_installed_package_runs_a_boot_pod(fresh_testbed: Testbed, packages: Packages) -> None:
    """Issue 5's "done when": with only the .deb installed, a manifest in /etc/podunit/pods,
    `systemctl start`, `systemctl enable`, reboot, and the pod is running."""
    tb = fresh_testbed
    install_deb(tb, packages.deb)
    layout = build_busybox_layout(tb.shared_dir / "images" / "busybox", "busybox")
    manifest = textwrap.dedent(BOOT_POD).replace("{image}", f"oci:{layout}:busybox")
    tb.run(["sh", "-c", "cat > /etc/podunit/pods/hello.yaml"], input=manifest)

    tb.run(["systemctl", "daemon-reload"])
    tb.run(["systemctl", "start", "pod@hello.service"], timeout=180)
    wait_active(tb, "pod@hello.service", "podunit-hello_main.service")
    # The units run the installed podunit, not the working tree's.
    unit = tb.run(["systemctl", "cat", "pod@hello.service"]).stdout
    assert str(REPO) not in unit
    logs = tb.run(["journalctl", "--no-pager", "-o", "cat", "-u", "podunit-hello_main.service"])
    assert "hello-from-the-package" in logs.stdout
    assert re.search(r"\bhello\b", tb.run(["podunit", "list"]).stdout)

    tb.run(["systemctl", "enable", "pod@hello.service"])
    tb.reboot()
    wait_active(tb, "pod@hello.service", "podunit-hello_main.service")
