"""Unit names of a pod. This naming is a contract (documented in the README).

    podunit-NAME.slice          the pod's slice: pod-level resource limits
    podunit-NAME.service        the pod sandbox: creates the pod namespaces
                                (oneshot, stays active while the pod exists)
    podunit-NAME_APP.service    one per container and init container

NAME is a DNS-1123 subdomain and APP a DNS-1123 label, so neither contains
"_": the app units of pod "a" can never collide with the sandbox of another
pod. In slice names "-" means nesting, so it is escaped as systemd-escape
does; all pods then sit side by side under podunit.slice.
"""

from __future__ import annotations

PREFIX = "podunit-"


def escape_slice_component(name: str) -> str:
    return name.replace("-", "\\x2d")


def slice_unit(pod: str) -> str:
    return f"{PREFIX}{escape_slice_component(pod)}.slice"


def sandbox_unit(pod: str) -> str:
    return f"{PREFIX}{pod}.service"


def app_unit(pod: str, app: str) -> str:
    return f"{PREFIX}{pod}_{app}.service"


def unit_object_path(unit: str) -> str:
    """D-Bus object path of a unit, escaped as sd_bus_path_encode does."""
    out = []
    for char in unit:
        if char.isascii() and char.isalnum():
            out.append(char)
        else:
            out.extend(f"_{byte:02x}" for byte in char.encode())
    return "/org/freedesktop/systemd1/unit/" + "".join(out)
