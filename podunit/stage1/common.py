"""Helpers shared by the stage1 commands: plan loading, sd_notify, errors."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, cast

if TYPE_CHECKING:
    from podunit.plan import PodPlan


def runtime_dir() -> Path:
    return Path(os.environ.get("PODUNIT_RUNTIME_DIR") or "/run/podunit")


def plan_path(pod: str) -> Path:
    return runtime_dir() / "pods" / pod / "plan.json"


def load_plan(pod: str) -> PodPlan:
    with open(plan_path(pod), "rb") as f:
        return cast("PodPlan", json.load(f))


def sd_notify(message: str) -> None:
    """Send `message` to systemd's notification socket, if there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"podunit-stage1: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def mkdirs(path: str | Path, mode: int = 0o755) -> None:
    os.makedirs(path, mode=mode, exist_ok=True)
