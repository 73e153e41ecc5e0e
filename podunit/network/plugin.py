"""Running one CNI plugin: the protocol of the CNI spec, section 3.

The plugin gets its parameters in CNI_* variables, its configuration on
stdin, and answers on stdout: a result on success, or an error object
(code, msg, details) with a non-zero exit status.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from podunit.errors import PodunitError

PLUGIN_TIMEOUT = 60.0  # seconds; the sandbox unit's start times out after 90


class NetworkError(PodunitError):
    """Pod networking failed; the message names the network and the plugin."""


class PluginError(NetworkError):
    """A plugin failed or could not be run; carries its own msg and details.

    `ipam` names the IPAM plugin the failed plugin delegates to: an error of
    the latter (an exhausted range) reaches us through the former."""

    def __init__(
        self,
        network: str,
        plugin: str,
        command: str,
        msg: str,
        *,
        details: str = "",
        code: int | None = None,
        ipam: str = "",
    ) -> None:
        self.network = network
        self.plugin = plugin
        self.command = command
        self.msg = msg
        self.details = details
        self.code = code
        delegate = f' (IPAM "{ipam}")' if ipam else ""
        text = f'network "{network}": CNI plugin "{plugin}"{delegate} failed {command}: {msg}'
        if details and details != msg:
            text += f" ({details})"
        if code is not None:
            text += f" [CNI error {code}]"
        super().__init__(text)


class PluginNotFound(PluginError):
    """The plugin binary is not in any plugin directory: it did nothing."""


@dataclass(frozen=True)
class Parameters:
    """The CNI_* environment every plugin of one attachment gets."""

    container_id: str
    netns: str
    ifname: str
    args: str  # CNI_ARGS: "K=V;K=V"
    path: tuple[str, ...]  # CNI_PATH: where plugins (and their delegates) are

    def environment(self, command: str) -> dict[str, str]:
        return {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": self.container_id,
            "CNI_NETNS": self.netns,
            "CNI_IFNAME": self.ifname,
            "CNI_ARGS": self.args,
            "CNI_PATH": ":".join(self.path),
        }


def find_plugin(kind: str, dirs: Sequence[str]) -> str | None:
    for directory in dirs:
        candidate = os.path.join(directory, kind)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def run_plugin(
    network: str, command: str, config: dict[str, Any], params: Parameters
) -> dict[str, Any] | None:
    """Run the plugin `config["type"]`; its result for ADD, else None."""
    # podunit.run is the one place that spawns programs; imported here so
    # that importing this module stays cheap.
    from podunit.run import CommandError, describe_returncode, run

    kind = str(config["type"])
    ipam = config.get("ipam")
    ipam_type = str(ipam.get("type", "")) if isinstance(ipam, dict) else ""
    binary = find_plugin(kind, params.path)
    if binary is None:
        where = ":".join(params.path)
        raise PluginNotFound(network, kind, command, f"plugin not found in {where}")
    try:
        proc = run(
            [binary],
            check=False,
            capture=True,
            input=json.dumps(config).encode(),
            env=params.environment(command),
            timeout=PLUGIN_TIMEOUT,
        )
    except CommandError as exc:
        raise PluginError(network, kind, command, exc.reason, ipam=ipam_type) from exc
    if proc.returncode != 0:
        error = _error_object(proc.stdout)
        if error is None:
            # Not an error object: whatever it printed is the best explanation.
            text = (proc.stderr or proc.stdout).decode(errors="replace").strip()
            error = {"msg": text or describe_returncode(proc.returncode)}
        raise PluginError(network, kind, command, ipam=ipam_type, **error)
    if command != "ADD":
        return None
    return _result(network, kind, proc.stdout)


def _error_object(stdout: bytes) -> dict[str, Any] | None:
    """msg, details and code of a CNI error object, or None if it is not one."""
    try:
        data = json.loads(stdout)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("msg"), str):
        return None
    details, code = data.get("details"), data.get("code")
    return {
        "msg": data["msg"],
        "details": details if isinstance(details, str) else "",
        "code": code if isinstance(code, int) else None,
    }


def _result(network: str, kind: str, stdout: bytes) -> dict[str, Any]:
    try:
        data = json.loads(stdout)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        shown = stdout[:200].decode(errors="replace")
        raise PluginError(network, kind, "ADD", f"printed no result object: {shown!r}")
    return data
