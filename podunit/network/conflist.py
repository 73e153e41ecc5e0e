"""Network configuration lists: where they are found and what makes one valid.

Search order (first hit wins, files in lexical order within a directory, as
kubelet and containerd read them): `/etc/podunit/net.d/` (podunit's own),
then `/etc/cni/net.d/` (shared with other runtimes). With no conflist at
all, the built-in default network applies (podunit.network.default).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podunit.errors import PodunitError
from podunit.network import default
from podunit.paths import runtime_dir

CONF_DIRS = ("/etc/podunit/net.d", "/etc/cni/net.d")
PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
# Colon-separated overrides, for tests and unusual installs.
CONF_DIRS_ENV = "PODUNIT_CNI_CONF_DIRS"
PLUGIN_DIRS_ENV = "PODUNIT_CNI_PATH"
BUILTIN = "built-in"
MAX_CONFLIST_BYTES = 1 << 20

# libcni's rule for network names; plugin types are file names in CNI_PATH.
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
_TYPE_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")


class NetworkConfigError(PodunitError):
    """A conflist is unreadable or invalid, or the network asked for is not configured."""

    exit_code = 2


@dataclass(frozen=True)
class NetworkList:
    """One parsed `.conflist`: the plugins run in order for ADD."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    source: str  # the file, or "built-in"
    disable_check: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "plugins": list(self.plugins),
        }

    @property
    def version(self) -> tuple[int, ...]:
        return version_tuple(self.cni_version)


def version_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return (0,)


def conf_dirs() -> list[str]:
    return _dirs(CONF_DIRS_ENV, CONF_DIRS)


def plugin_dirs() -> list[str]:
    return _dirs(PLUGIN_DIRS_ENV, PLUGIN_DIRS)


def _dirs(variable: str, default_dirs: Sequence[str]) -> list[str]:
    value = os.environ.get(variable)
    return [d for d in value.split(":") if d] if value else list(default_dirs)


def lease_dir() -> str:
    """host-local's dataDir for the built-in network (tmpfs, like the netns)."""
    return str(runtime_dir() / "cni" / "networks")


def builtin_network() -> NetworkList:
    return parse_conflist(default.default_conflist(lease_dir()), BUILTIN)


def parse_conflist(data: object, source: str) -> NetworkList:
    """Validate the parts podunit relies on; plugins check their own fields."""
    if not isinstance(data, dict):
        raise NetworkConfigError(f"{source}: a conflist must be a JSON object")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise NetworkConfigError(
            f"{source}: name: {json.dumps(name)} is not a valid network name"
            " (letters, digits, '_', '.', '-', starting with a letter or digit)"
        )
    version = data.get("cniVersion")
    if not isinstance(version, str) or version_tuple(version) == (0,):
        raise NetworkConfigError(f'{source}: cniVersion: must be a version such as "1.0.0"')
    plugins = data.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise NetworkConfigError(f"{source}: plugins: must be a non-empty list")
    for index, plugin in enumerate(plugins):
        _check_plugin(plugin, f"{source}: plugins[{index}]")
    disable_check = data.get("disableCheck", False)
    return NetworkList(name, version, tuple(plugins), source, disable_check is True)


def _check_plugin(plugin: object, where: str) -> None:
    if not isinstance(plugin, dict):
        raise NetworkConfigError(f"{where}: must be a JSON object")
    kind = plugin.get("type")
    # The type names a file in the plugin directories: no paths.
    if not isinstance(kind, str) or not _TYPE_RE.fullmatch(kind):
        raise NetworkConfigError(f"{where}: type: {json.dumps(kind)} is not a plugin name")
    capabilities = plugin.get("capabilities", {})
    if not isinstance(capabilities, dict):
        raise NetworkConfigError(f"{where}: capabilities: must be a JSON object")


def load_conflist(path: Path) -> NetworkList:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFLIST_BYTES + 1)
    except OSError as exc:
        raise NetworkConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFLIST_BYTES:
        raise NetworkConfigError(f"{path}: larger than {MAX_CONFLIST_BYTES} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise NetworkConfigError(f"{path}: not valid JSON: {exc}") from exc
    return parse_conflist(data, str(path))


def conflist_files(dirs: Sequence[str]) -> Iterator[Path]:
    for directory in dirs:
        try:
            names = sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            if name.endswith(".conflist") and not name.startswith("."):
                yield Path(directory) / name


def find_network(name: str = "", dirs: Sequence[str] | None = None) -> NetworkList:
    """The network called `name`, or with "" the default one: the first
    conflist found, else the built-in network."""
    search = conf_dirs() if dirs is None else list(dirs)
    for path in conflist_files(search):
        network = load_conflist(path)
        if not name or network.name == name:
            return network
    if not name or name == default.NAME:
        return builtin_network()
    where = ", ".join(search)
    raise NetworkConfigError(f'no CNI network named "{name}": no conflist in {where} has it')
