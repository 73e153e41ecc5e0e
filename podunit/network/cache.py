"""What ADD did, kept per pod under RUNTIME/cni/results/POD.json.

DEL must get the configuration and result of the ADD it undoes, even if the
conflist was edited or removed since (CNI spec: "the runtime must cache").
The record is written *before* ADD runs, without a result, so that a stage1
killed in the middle of ADD still leaves enough behind for pod-down or gc
to DEL. It lives in the runtime dir because the namespaces, leases and
iptables rules it describes are all gone after a reboot too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podunit.network.plugin import NetworkError
from podunit.paths import runtime_dir


@dataclass(frozen=True)
class Record:
    pod: str
    network: dict[str, Any]  # the conflist as used by ADD
    source: str  # where the conflist came from
    container_id: str
    netns: str
    ifname: str
    cni_args: str
    capability_args: dict[str, Any]
    result: dict[str, Any] | None  # None while ADD runs

    def to_json(self) -> dict[str, Any]:
        return {
            "pod": self.pod,
            "network": self.network,
            "source": self.source,
            "containerId": self.container_id,
            "netns": self.netns,
            "ifName": self.ifname,
            "cniArgs": self.cni_args,
            "capabilityArgs": self.capability_args,
            "result": self.result,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        return cls(
            pod=str(data["pod"]),
            network=dict(data["network"]),
            source=str(data.get("source", "")),
            container_id=str(data["containerId"]),
            netns=str(data["netns"]),
            ifname=str(data["ifName"]),
            cni_args=str(data.get("cniArgs", "")),
            capability_args=dict(data.get("capabilityArgs") or {}),
            result=data.get("result"),
        )


def results_dir() -> Path:
    return runtime_dir() / "cni" / "results"


def record_path(pod: str) -> Path:
    return results_dir() / f"{pod}.json"


def write(record: Record) -> None:
    path = record_path(record.pod)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=1, sort_keys=True))
    os.replace(tmp, path)


def read(pod: str) -> Record | None:
    path = record_path(pod)
    try:
        return Record.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise NetworkError(f"{path}: unreadable CNI cache ({exc}): DEL by hand") from exc


def remove(pod: str) -> None:
    record_path(pod).unlink(missing_ok=True)


def recorded_pods() -> list[str]:
    try:
        names = os.listdir(results_dir())
    except FileNotFoundError:
        return []
    return sorted(n[: -len(".json")] for n in names if n.endswith(".json") and n[0] != ".")
