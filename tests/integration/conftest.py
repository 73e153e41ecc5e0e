"""Integration tests: against a real systemd booted in a systemd-nspawn container.

Whether they can run is probed (root, systemd-nspawn, overlayfs, then an actual boot), not guessed
from the uid. Where they cannot, they are skipped, except as root or with
PODUNIT_REQUIRE_INTEGRATION=1 (CI), where a failed probe is an error: the suite must never pass
by skipping what it exists to check.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from images_build import OciImage, build_busybox_layout  # noqa: E402
from testbed import Testbed, TestbedError  # noqa: E402

HERE = Path(__file__).resolve().parent
REQUIRED_TOOLS = ("systemd-nspawn", "nsenter", "mount", "umount", "systemd-machine-id-setup")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items: mark only the ones in this directory.
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


def integration_required() -> bool:
    return os.geteuid() == 0 or os.environ.get("PODUNIT_REQUIRE_INTEGRATION") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip, or, where the integration tests must run, fail (an ERROR in the report)."""
    message = f"needs root and systemd-nspawn: {reason}"
    if integration_required():
        pytest.fail(message + " (required: running as root or PODUNIT_REQUIRE_INTEGRATION=1)",
                    pytrace=False)  # fmt: skip
    pytest.skip(message)


def missing_capability() -> str | None:
    """Why a testbed cannot be booted here, before trying; None if it may work."""
    if os.geteuid() != 0:
        return "not running as root"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (run tests/setup)"
    filesystems = Path("/proc/filesystems").read_text().split()
    if "overlay" not in filesystems:
        return "the kernel has no overlay file system"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no cgroup file system at /sys/fs/cgroup"
    return None


def boot_testbed() -> Testbed:
    """A started Testbed, or skip/fail (see unavailable) saying why there is none."""
    if reason := missing_capability():
        unavailable(reason)
    testbed = Testbed()
    try:
        testbed.start()
    except TestbedError as error:
        unavailable(f"the testbed did not boot: {error}")
    return testbed


@pytest.fixture(scope="session")
def systemd() -> Iterator[Testbed]:
    """A booted systemd 252 (the host's) in a container, shared by the whole session."""
    testbed = boot_testbed()
    try:
        yield testbed
    finally:
        testbed.close()


@pytest.fixture
def fresh_testbed() -> Iterator[Testbed]:
    """A testbed of the test's own (about a second to boot): for tests that reboot it or
    leave it in a state the others must not see."""
    testbed = boot_testbed()
    try:
        yield testbed
    finally:
        testbed.close()


@pytest.fixture(scope="session")
def busybox_image(systemd: Testbed) -> OciImage:
    """Debian's static busybox as an OCI image layout, visible in the testbed."""
    if shutil.which("umoci") is None:
        unavailable("umoci is missing (run tests/setup)")
    # shared_dir is bound at its own path in the container: the host path works inside.
    layout = build_busybox_layout(systemd.shared_dir / "images" / "busybox", "busybox")
    return OciImage(layout, "busybox")
