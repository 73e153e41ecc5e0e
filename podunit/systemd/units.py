"""Compile a pod plan into systemd units: a pure function, no bus, no I/O.

The result is a list of `Unit`s, each a name plus typed properties (D-Bus
name, signature, value). The same list feeds `StartTransientUnit` (transient
pods of `podunit run`) and, rendered as unit-file text, the generator.

Why the units look as they do:
- the sandbox unit is a oneshot that stays active (RemainAfterExit): it
  creates the pod namespaces and leaves them held by bind mounts, so no
  process needs to stay resident for them; it `Wants=` every app so one start
  job starts the whole pod, and that reference keeps exited app units loaded
  so their exit status stays readable;
- apps are `Type=notify`: stage1 sets up the app, then hands the main PID over
  to the app with `MAINPID=` and exits, so the app is the unit's main process;
- init containers are oneshots ordered one after the other, so the apps'
  `After=` waits until every init container has finished;
- apps are `BindsTo=` and `After=` the sandbox, so stopping the pod stops
  every app first and the sandbox's ExecStopPost tears the namespaces down.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from podunit.plan import AppPlan, PodPlan

USEC = 1_000_000
USEC_INFINITY = 2**64 - 1  # over D-Bus, 0 means "zero", not "no timeout"
# A crash-looping app is restarted after this delay forever (Kubernetes never
# gives up either); systemd 252 has no exponential RestartSteps=.
RESTART_DELAY_USEC = 1 * USEC
RESTART_MAP = {"Always": "always", "OnFailure": "on-failure", "Never": "no"}


@dataclass(frozen=True)
class Property:
    name: str
    signature: str
    value: Any


@dataclass(frozen=True)
class Unit:
    name: str
    properties: tuple[Property, ...]

    def get(self, name: str) -> Any:
        for prop in self.properties:
            if prop.name == name:
                return prop.value
        raise KeyError(name)


@dataclass(frozen=True)
class Stage1Command:
    """How systemd should run stage1: interpreter argv and its environment."""

    argv: tuple[str, ...]  # e.g. ("/usr/bin/python3", "-m", "podunit.stage1")
    environment: tuple[str, ...] = ()  # "K=V" for stage1 only (apps get theirs from the plan)
    cli: tuple[str, ...] = ("/usr/bin/podunit",)  # the CLI, for `podunit prepare` at boot


def stage1_command() -> Stage1Command:
    """Run stage1 with this interpreter; point it at this copy of podunit
    when that copy is not installed where the interpreter looks anyway."""
    import os
    import sys
    from pathlib import Path

    import podunit

    package_parent = str(Path(podunit.__file__).resolve().parent.parent)
    env = []
    if not package_parent.endswith(("site-packages", "dist-packages")):
        env.append(f"PYTHONPATH={package_parent}")
    # Test and admin overrides that stage1 must see as the CLI did.
    for var in (
        "PODUNIT_RUNTIME_DIR",
        "PODUNIT_STATE_DIR",
        "PODUNIT_CNI_PATH",
        "PODUNIT_CNI_CONF_DIRS",
    ):
        if os.environ.get(var):
            env.append(f"{var}={os.environ[var]}")
    return Stage1Command(
        (sys.executable, "-m", "podunit.stage1"), tuple(env), cli=(sys.executable, "-m", "podunit")
    )


ANNOTATION_PREFIX = "podunit.io/"
NOTIFY_ANNOTATION = "podunit.io/notify"


def _exec(name: str, argv: Sequence[str], *, ignore_failure: bool = False) -> Property:
    return Property(name, "a(sasb)", [(argv[0], list(argv), ignore_failure)])


def compile_pod(
    plan: PodPlan, stage1: Stage1Command, *, boot: bool = False, sockets: Sequence[str] = ()
) -> list[Unit]:
    """All units of a pod; the sandbox unit comes first (it is the one to start).

    `boot`: the sandbox is the `pod@NAME.service` template instance, which
    prepares the pod (manifest, images, plan) itself when it starts.
    `sockets`: socket units whose listening fds the first container inherits."""
    notify = notify_app(plan)
    init_units = [a["unit"] for a in plan["init_apps"]]
    # A notify container is started by the sandbox itself (see make_sandbox_unit), so
    # that the sandbox becomes active only once that container said READY=1.
    app_units = [a["unit"] for a in plan["apps"] if a["name"] != notify]
    units = [
        make_sandbox_unit(plan, stage1, init_units + app_units, boot=boot),
        make_slice_unit(plan),
    ]
    previous: str | None = None
    for app in plan["init_apps"]:
        units.append(make_app_unit(plan, app, stage1, after_init=previous))
        previous = app["unit"]
    for index, app in enumerate(plan["apps"]):
        units.append(
            make_app_unit(
                plan, app, stage1, after_init=previous, sockets=sockets if index == 0 else ()
            )
        )
    return units


def notify_app(plan: PodPlan) -> str | None:
    """The container named by the `podunit.io/notify` annotation, if any."""
    name = plan["annotations"].get(NOTIFY_ANNOTATION)
    if name is None:
        return None
    if name not in [a["name"] for a in plan["apps"]]:
        from podunit.plan import PlanError

        raise PlanError(f'annotation {NOTIFY_ANNOTATION}: pod has no container "{name}"')
    return name


def annotation_units(plan: PodPlan, key: str) -> list[str]:
    """Comma-separated unit names of an annotation; a bare pod name (no unit
    suffix) means that pod's `pod@NAME.service`."""
    text = plan["annotations"].get(ANNOTATION_PREFIX + key, "")
    units = []
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        units.append(
            word
            if "." in word.rsplit("@", 1)[-1] and _has_unit_suffix(word)
            else f"pod@{word}.service"
        )
    return units


def _has_unit_suffix(name: str) -> bool:
    suffixes = (
        ".service",
        ".socket",
        ".target",
        ".mount",
        ".path",
        ".timer",
        ".slice",
        ".device",
        ".scope",
        ".swap",
        ".automount",
    )
    return name.endswith(suffixes)


def make_slice_unit(plan: PodPlan) -> Unit:
    props = [Property("Description", "s", f"podunit pod {plan['name']}")]
    apps = plan["apps"]
    # Pod-level limits as the kubelet computes them: the sum of the apps'
    # limits, only when every app has one (otherwise the pod is unbounded).
    memory = [a["memory_max"] for a in apps]
    if memory and all(m is not None for m in memory):
        props.append(Property("MemoryMax", "t", sum(m for m in memory if m is not None)))
    cpu = [a["cpu_millis"] for a in apps]
    if cpu and all(c is not None for c in cpu):
        props.append(
            Property("CPUQuotaPerSecUSec", "t", sum(c for c in cpu if c is not None) * 1000)
        )
    return Unit(plan["slice"], tuple(props))


def make_sandbox_unit(
    plan: PodPlan, stage1: Stage1Command, apps: Sequence[str], *, boot: bool = False
) -> Unit:
    name = plan["name"]
    wants, after = list(apps), []
    if plan["network"] != "none":
        wants.append("network-online.target")
        after.append("network-online.target")
    wants += annotation_units(plan, "wants")
    after += annotation_units(plan, "after") + annotation_units(plan, "requires")
    props = [
        Property("Description", "s", f"podunit pod {name}"),
        Property("Slice", "s", plan["slice"]),
        Property("Type", "s", "oneshot"),
        Property("RemainAfterExit", "b", True),
    ]
    if boot:
        # Images may have to be pulled: no start timeout for a boot pod.
        props.append(_exec("ExecStartPre", [*stage1.cli, "prepare", name]))
        props.append(Property("TimeoutStartUSec", "t", USEC_INFINITY))
    else:
        props.append(Property("TimeoutStartUSec", "t", 90 * USEC))
    props += [
        _exec("ExecStart", [*stage1.argv, "pod-up", name]),
        _exec("ExecStopPost", [*stage1.argv, "pod-down", name]),
        Property("Wants", "as", wants),
        *([Property("After", "as", after)] if after else []),
        *(
            [Property("Requires", "as", annotation_units(plan, "requires"))]
            if annotation_units(plan, "requires")
            else []
        ),
        Property("SyslogIdentifier", "s", f"podunit/{name}"),
    ]
    if not boot:
        props.append(Property("CollectMode", "s", "inactive-or-failed"))
    notify = notify_app(plan)
    if notify:
        # Blocks until the container's READY=1: only then is the pod active.
        unit = next(a["unit"] for a in plan["apps"] if a["name"] == notify)
        props.append(_exec("ExecStartPost", ["/bin/systemctl", "start", unit]))
    if stage1.environment:
        props.append(Property("Environment", "as", list(stage1.environment)))
    return Unit(plan["sandbox_unit"], tuple(props))


def make_app_unit(
    plan: PodPlan,
    app: AppPlan,
    stage1: Stage1Command,
    *,
    after_init: str | None,
    sockets: Sequence[str] = (),
) -> Unit:
    pod, sandbox = plan["name"], plan["sandbox_unit"]
    # The notify container starts from the sandbox's ExecStartPost, while the
    # sandbox is still starting: ordering it after the sandbox would deadlock.
    is_notify = app["name"] == plan["annotations"].get(NOTIFY_ANNOTATION)
    after = ([] if is_notify else [sandbox]) + ([after_init] if after_init else [])
    requires = [after_init] if after_init else []
    kind = "init container" if app["init"] else "container"
    props = [
        Property("Description", "s", f"podunit pod {pod} {kind} {app['name']}"),
        Property("Slice", "s", plan["slice"]),
        Property("BindsTo", "as", [sandbox]),
        *([Property("After", "as", after)] if after else []),
        *([Property("Sockets", "as", list(sockets))] if sockets else []),
        *([Property("Requires", "as", requires)] if requires else []),
        _exec("ExecStart", [*stage1.argv, "app", pod, app["name"]]),
        _exec("ExecStopPost", record_exit_command(plan, app)),
        Property("SyslogIdentifier", "s", f"{pod}/{app['name']}"),
        Property("TimeoutStopUSec", "t", plan["grace_seconds"] * USEC),
        Property("KillMode", "s", "control-group"),
        Property("SendSIGKILL", "b", True),
        Property("StartLimitIntervalUSec", "t", 0),
        Property("RestartUSec", "t", RESTART_DELAY_USEC),
    ]
    if app["init"]:
        # The init container must have finished before the next unit starts:
        # a oneshot's start job lasts until its process exits. Kubernetes
        # retries a failed init container unless restartPolicy is Never.
        restart = "no" if plan["restart_policy"] == "Never" else "on-failure"
        props += [
            Property("Type", "s", "oneshot"),
            Property("TimeoutStartUSec", "t", USEC_INFINITY),
        ]
    else:
        restart = RESTART_MAP[plan["restart_policy"]]
        props += [Property("Type", "s", "notify"), Property("NotifyAccess", "s", "all")]
    props.append(Property("Restart", "s", restart))
    props += resource_properties(app)
    if stage1.environment:
        props.append(Property("Environment", "as", list(stage1.environment)))
    return Unit(app["unit"], tuple(props))


def resource_properties(app: AppPlan) -> list[Property]:
    props = []
    if app["memory_max"] is not None:
        props.append(Property("MemoryMax", "t", app["memory_max"]))
        # Kubernetes runs without swap; a limit that swap can dodge is no limit.
        props.append(Property("MemorySwapMax", "t", 0))
    if app["cpu_millis"] is not None:
        props.append(Property("CPUQuotaPerSecUSec", "t", app["cpu_millis"] * 1000))
    if app["cpu_request_millis"] is not None:
        # kubelet: shares = millis * 1024 / 1000; systemd weight 100 == 1024 shares.
        weight = max(1, min(10000, app["cpu_request_millis"] // 10))
        props.append(Property("CPUWeight", "t", weight))
    props.append(Property("TasksMax", "t", app_tasks_max(app)))
    return props


def app_tasks_max(app: AppPlan) -> int:
    # Kubernetes has only a node-wide pod PID limit; a fork bomb in one app
    # must not exhaust the host's PIDs, so each app gets a generous cap.
    return 4096


def record_exit_command(plan: PodPlan, app: AppPlan) -> list[str]:
    """ExecStopPost that appends each exit of the app to a log in the pod's
    runtime dir, so exit codes and restart counts survive the unit being
    garbage-collected. systemd passes $SERVICE_RESULT, $EXIT_CODE and
    $EXIT_STATUS to ExecStopPost; one short O_APPEND write per line."""
    path = f"{plan['runtime_dir']}/apps/{app['name']}/exits"
    script = 'printf "%s %s %s\\n" "$SERVICE_RESULT" "$EXIT_CODE" "$EXIT_STATUS" >> ' + shlex.quote(
        path
    )
    return ["/bin/sh", "-c", script]


def properties_by_name(unit: Unit) -> Mapping[str, Property]:
    return {p.name: p for p in unit.properties}
