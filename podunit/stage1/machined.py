"""Register a running pod with systemd-machined, when it is there.

`machinectl list` then shows the pod; `machinectl status` and `terminate`
work because machined tracks the machine by the unit of its leader: the
leader is pod-up itself, running inside the pod's sandbox unit, and that
unit stays active for the pod's life (terminate stops it, which stops every
app). machined is bus-activated; on a host without it the call fails with
"service unknown" and the pod simply is not registered.
"""

from __future__ import annotations

import os
import sys

MACHINED = b"org.freedesktop.machine1"
MACHINED_PATH = b"/org/freedesktop/machine1"
MACHINED_IFACE = b"org.freedesktop.machine1.Manager"


def register_machine(name: str, uid: str, root_directory: str = "") -> bool:
    """True when machined accepted the pod; False (and a note) otherwise."""
    from podunit.systemd.sdbus import dbuslib

    try:
        sdbus = dbuslib()
    except ImportError:
        return False
    DBus, apply_signature = sdbus.DBus, sdbus.apply_signature
    machine_id = bytes.fromhex(uid.replace("-", ""))
    args = apply_signature(
        b"sayssus",
        [
            name.encode(),
            list(machine_id),
            b"podunit",
            b"container",
            os.getpid(),
            root_directory.encode(),
        ],
    )
    try:
        with DBus() as bus:
            bus.call_method(MACHINED, MACHINED_PATH, MACHINED_IFACE, b"RegisterMachine", args)
    except Exception as exc:  # pystemd raises its own classes; any failure means "not registered"
        print(f"podunit-stage1: not registered with systemd-machined: {exc}", file=sys.stderr)
        return False
    return True
