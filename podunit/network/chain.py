"""ADD, DEL and CHECK over a network configuration list (CNI spec, section 4).

ADD runs the plugins in order, each getting the previous one's result as
`prevResult`; the last result is the attachment's. DEL runs them in reverse
with the cached result, CHECK in order with it. A failed ADD is rolled back
by a DEL of every plugin that was run, so that no veth, IP lease or
iptables rule outlives it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podunit.network.conflist import NetworkList
from podunit.network.plugin import NetworkError, Parameters, PluginNotFound, run_plugin

CHECK_SINCE = (0, 4, 0)  # CHECK and prevResult on DEL came with spec 0.4.0


def plugin_config(
    network: NetworkList,
    plugin: Mapping[str, Any],
    capability_args: Mapping[str, Any],
    prev_result: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The stdin of one plugin ("Deriving execution configuration"): its own
    fields, the list's name and version, `runtimeConfig` with only the
    capabilities it declares, and `prevResult`; `capabilities` is removed."""
    config = {k: v for k, v in plugin.items() if k != "capabilities"}
    config["cniVersion"] = network.cni_version
    config["name"] = network.name
    declared = plugin.get("capabilities") or {}
    runtime = {
        cap: capability_args[cap]
        for cap, enabled in declared.items()
        if enabled is True and cap in capability_args
    }
    if runtime:
        existing = config.get("runtimeConfig")
        config["runtimeConfig"] = {**(existing if isinstance(existing, dict) else {}), **runtime}
    if prev_result is not None:
        config["prevResult"] = dict(prev_result)
    return config


def add(
    network: NetworkList, params: Parameters, capability_args: Mapping[str, Any]
) -> dict[str, Any]:
    result: dict[str, Any] | None = None
    for index, plugin in enumerate(network.plugins):
        config = plugin_config(network, plugin, capability_args, result)
        try:
            result = run_plugin(network.name, "ADD", config, params) or result
        except NetworkError as error:
            _roll_back(network, index, params, capability_args, result, error)
            raise
    if result is None:
        raise NetworkError(f'network "{network.name}": ADD produced no result')
    return result


def _roll_back(
    network: NetworkList,
    failed: int,
    params: Parameters,
    capability_args: Mapping[str, Any],
    result: Mapping[str, Any] | None,
    error: NetworkError,
) -> None:
    """DEL every plugin run so far, the failed one included (it may have
    done half its work). A plugin that could not be found did nothing."""
    ran = network.plugins[: failed if isinstance(error, PluginNotFound) else failed + 1]
    partial = NetworkList(network.name, network.cni_version, ran, network.source)
    try:
        delete(partial, params, capability_args, result)
    except NetworkError as cleanup:
        error.add_note(f"cleaning up after it also failed: {cleanup}")


def delete(
    network: NetworkList,
    params: Parameters,
    capability_args: Mapping[str, Any],
    result: Mapping[str, Any] | None,
) -> None:
    """DEL in reverse order. Unlike ADD it goes on after a failure, so that
    one broken plugin does not keep the others' state alive; the first
    error is raised at the end (DEL is idempotent: retrying all is safe)."""
    prev = result if network.version >= CHECK_SINCE else None
    errors: list[NetworkError] = []
    for plugin in reversed(network.plugins):
        config = plugin_config(network, plugin, capability_args, prev)
        try:
            run_plugin(network.name, "DEL", config, params)
        except NetworkError as error:
            errors.append(error)
    if errors:
        for other in errors[1:]:
            errors[0].add_note(str(other))
        raise errors[0]


def check(
    network: NetworkList,
    params: Parameters,
    capability_args: Mapping[str, Any],
    result: Mapping[str, Any],
) -> bool:
    """CHECK every plugin; False when the network cannot be checked."""
    if network.disable_check or network.version < CHECK_SINCE:
        return False
    for plugin in network.plugins:
        config = plugin_config(network, plugin, capability_args, result)
        run_plugin(network.name, "CHECK", config, params)
    return True
