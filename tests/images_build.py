"""Build small OCI images for tests and demos from what Debian ships, without a registry.

    python3 tests/images_build.py DEST_DIR [--tag busybox]

builds an OCI image layout in DEST_DIR holding one image, tagged "busybox" (so its reference is
"oci:DEST_DIR:busybox"), whose root file system is Debian's static /bin/busybox (package
busybox-static) with a symlink for each applet, a minimal /etc/passwd and /etc/group, /tmp and
/root, and "/bin/sh" as its command.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

BUSYBOX = Path("/bin/busybox")
IMAGE_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"


class OciImage(NamedTuple):
    """An image in an OCI image layout."""

    layout: Path  # in the testbed: at the same path on the host and in the container
    tag: str

    @property
    def reference(self) -> str:
        """The image reference podunit (and skopeo) take: "oci:LAYOUT:TAG"."""
        return f"oci:{self.layout}:{self.tag}"


def _umoci(*args: str) -> None:
    result = subprocess.run(["umoci", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"umoci {' '.join(args)} failed: {result.stderr.strip()}")


def _has_tag(layout: Path, tag: str) -> bool:
    if not (layout / "index.json").is_file():
        return False
    result = subprocess.run(
        ["umoci", "ls", "--layout", str(layout)], capture_output=True, text=True
    )
    return result.returncode == 0 and tag in result.stdout.split()


def _fill_busybox_rootfs(rootfs: Path) -> None:
    for directory, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("root", 0o700)):
        (rootfs / directory).mkdir(exist_ok=True)
        # chmod, not mkdir's mode: the umask would take the sticky and other bits away.
        os.chmod(rootfs / directory, mode)
    shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        link = rootfs / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (rootfs / "etc/passwd").write_text(PASSWD)
    (rootfs / "etc/group").write_text(GROUP)
    for name in ("passwd", "group"):
        os.chmod(rootfs / "etc" / name, 0o644)


def build_busybox_layout(dest: Path, tag: str = "busybox") -> Path:
    """Build (or reuse, when it already holds tag) an OCI image layout at dest; return dest.

    The reference to the image is f"oci:{dest}:{tag}".
    """
    dest = Path(dest).resolve()
    if _has_tag(dest, tag):
        return dest
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} exists and is not an OCI layout with tag {tag!r}")
    if not BUSYBOX.is_file():
        raise FileNotFoundError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Built beside dest and renamed into place, so that dest is never a half-built layout.
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}-", dir=dest.parent) as tmp:
        layout, bundle = Path(tmp, "layout"), Path(tmp, "bundle")
        image = f"{layout}:{tag}"
        # Unprivileged umoci cannot chown the unpacked files to their owners.
        rootless = ["--rootless"] if os.geteuid() != 0 else []
        _umoci("init", "--layout", str(layout))
        _umoci("new", "--image", image)
        _umoci("unpack", *rootless, "--image", image, str(bundle))
        _fill_busybox_rootfs(bundle / "rootfs")
        _umoci("repack", "--image", image, str(bundle))
        _umoci("config", "--image", image, "--config.cmd=/bin/sh", f"--config.env={IMAGE_PATH_ENV}")
        _umoci("gc", "--layout", str(layout))
        if dest.exists():
            dest.rmdir()
        layout.rename(dest)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a busybox OCI image layout.")
    parser.add_argument("dest", type=Path, help="directory for the OCI image layout")
    parser.add_argument("--tag", default="busybox", help="tag of the image (default: busybox)")
    args = parser.parse_args(argv)
    layout = build_busybox_layout(args.dest, args.tag)
    print(f"oci:{layout}:{args.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
