"""Where podunit keeps things. Tests override both roots through the environment."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_STATE_DIR = "/var/lib/podunit"
DEFAULT_RUNTIME_DIR = "/run/podunit"


def state_dir() -> Path:
    """Persistent state: image store (blobs, layers) and per-pod writable layers."""
    return Path(os.environ.get("PODUNIT_STATE_DIR") or DEFAULT_STATE_DIR)


def runtime_dir() -> Path:
    """Volatile state: pod records, plans, namespace bind mounts (gone at reboot)."""
    return Path(os.environ.get("PODUNIT_RUNTIME_DIR") or DEFAULT_RUNTIME_DIR)


# Pod records live in RUNTIME/sandboxes/NAME, not RUNTIME/pods: /run/podunit/pods/ is one
# of the directories admins drop manifests into (see MANIFEST_DIRS).
SANDBOXES = "sandboxes"

# Where boot-time pods come from, highest precedence first (like systemd's unit paths):
# NAME.yaml in an earlier directory overrides the same file name in a later one.
MANIFEST_DIRS = ("/etc/podunit/pods", "/run/podunit/pods", "/usr/lib/podunit/pods")


def sandboxes_dir() -> Path:
    return runtime_dir() / SANDBOXES
