"""Pod records and their state, read from systemd and the runtime dir.

There is no daemon and no database: a pod exists while
`RUNTIME/pods/NAME/plan.json` exists; whether it runs is systemd's answer;
what its apps did is systemd's answer while their units are loaded and the
per-app `exits` log (written by each unit's ExecStopPost) afterwards.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from podunit.errors import PodNotFound
from podunit.paths import sandboxes_dir
from podunit.plan import AppPlan, PodPlan

# ExecMainCode values (siginfo si_code): exited, killed, dumped core.
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3


@dataclass(frozen=True)
class AppStatus:
    name: str
    unit: str
    init: bool
    state: str  # waiting | running | exited | failed
    main_pid: int
    exit_code: int | None
    restarts: int
    result: str


@dataclass(frozen=True)
class PodStatus:
    name: str
    state: str  # created | running | exited | failed
    uid: str
    created: float
    source: str
    sandbox_unit: str
    slice: str
    apps: list[AppStatus] = field(default_factory=list)
    init_apps: list[AppStatus] = field(default_factory=list)
    network: str = ""  # "host" | "none" | "cni"
    ip: str | None = None  # the pod's address on its CNI network
    network_check: str | None = None  # CNI CHECK: "ok" or what failed; None = not checked

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def pods_dir() -> Path:
    return sandboxes_dir()


def plan_file(pod: str) -> Path:
    return pods_dir() / pod / "plan.json"


def write_plan(plan: PodPlan) -> None:
    path = plan_file(plan["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("plan.json.tmp")
    tmp.write_text(json.dumps(plan, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_plan(pod: str) -> PodPlan:
    try:
        return cast(PodPlan, json.loads(plan_file(pod).read_text()))
    except FileNotFoundError:
        raise PodNotFound(f'no pod named "{pod}" (see podunit list)') from None


def list_pod_names() -> list[str]:
    try:
        return sorted(p.name for p in pods_dir().iterdir() if (p / "plan.json").exists())
    except FileNotFoundError:
        return []


def read_exits(plan: PodPlan, app: AppPlan) -> list[tuple[str, str, str]]:
    """(service result, exit code kind, exit status) of each past run."""
    path = Path(plan["runtime_dir"]) / "apps" / app["name"] / "exits"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        words = line.split()
        if len(words) == 3:
            out.append((words[0], words[1], words[2]))
    return out


def kubernetes_exit_code(code_kind: str | int, status: str | int) -> int | None:
    """Exit code as Kubernetes reports it: the status, or 128+N for signal N."""
    kinds = {"exited": CLD_EXITED, "killed": CLD_KILLED, "dumped": CLD_DUMPED}
    kind = kinds.get(code_kind, 0) if isinstance(code_kind, str) else code_kind
    number = _signal_number(status) if isinstance(status, str) else status
    if number is None:
        return None
    if kind == CLD_EXITED:
        return number
    if kind in (CLD_KILLED, CLD_DUMPED):
        return 128 + number
    return None


def _signal_number(text: str) -> int | None:
    if text.isdigit():
        return int(text)
    import signal

    try:
        return int(signal.Signals["SIG" + text if not text.startswith("SIG") else text])
    except KeyError:
        return None


def app_status(
    plan: PodPlan, app: AppPlan, unit: dict[str, Any] | None, service: dict[str, Any] | None
) -> AppStatus:
    """Combine systemd's view (None when the unit is gone) with the exit log,
    which ExecStopPost appends to after every run of the app."""
    exits = read_exits(plan, app)
    loaded = bool(unit) and unit is not None and unit.get("LoadState") == "loaded"
    active = unit.get("ActiveState", "inactive") if unit and loaded else "inactive"
    sub = unit.get("SubState", "") if unit and loaded else ""
    svc = service if service and loaded else {}
    main_pid = int(svc.get("MainPID", 0))
    last = exits[-1] if exits else None
    exit_code = kubernetes_exit_code(last[1], last[2]) if last else None
    if active in ("active", "reloading", "deactivating"):
        state = "running" if main_pid or app["init"] else "waiting"
    elif active == "activating":
        state = "running" if app["init"] and sub == "start" else "waiting"
    elif last is None or _has_pending_job(unit):
        # Between two runs of a restarting app systemd shows it "inactive"
        # for a moment, with the next start job already queued.
        state = "waiting"
        state = "waiting"
    else:
        state = "exited" if exit_code == 0 and last[0] == "success" else "failed"
    restarts = int(svc.get("NRestarts", 0)) if svc else max(0, len(exits) - 1)
    return AppStatus(
        name=app["name"],
        unit=app["unit"],
        init=app["init"],
        state=state,
        main_pid=main_pid if state == "running" else 0,
        exit_code=exit_code if state in ("exited", "failed") else None,
        restarts=restarts,
        result=str(svc.get("Result", "") or (last[0] if last else "")),
    )


def _has_pending_job(unit: dict[str, Any] | None) -> bool:
    job = unit.get("Job") if unit else None
    return isinstance(job, (list, tuple)) and bool(job) and job[0] != 0


def pod_state(sandbox_active: str, apps: list[AppStatus], init_apps: list[AppStatus]) -> str:
    """created: nothing started (or the sandbox is down with nothing run);
    running: the sandbox is up and some app runs or waits (restarts included);
    exited/failed: every app has finished, failed if any finished badly."""
    everything = init_apps + apps
    if any(a.state == "failed" for a in init_apps) and plan_gave_up(init_apps):
        return "failed"
    if sandbox_active in ("active", "activating", "reloading"):
        if any(a.state in ("running", "waiting") for a in apps) or not everything:
            return "running"
    if not any(a.state in ("exited", "failed") for a in everything):
        return "created"
    return "failed" if any(a.state == "failed" for a in apps + init_apps) else "exited"


def plan_gave_up(init_apps: list[AppStatus]) -> bool:
    """A failed init container ends the pod only when it will not be retried."""
    return all(a.state != "waiting" for a in init_apps)
