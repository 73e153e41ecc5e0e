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
