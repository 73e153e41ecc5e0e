"""Pod lifecycle operations: run, status, stop, rm, gc. The CLI wires these.

Everything here is a short-lived client: it compiles, asks systemd, reads the
runtime dir, and exits. systemd owns the pod in between.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from podunit.errors import PodStateError, PodunitError, SystemdError
from podunit.paths import sandboxes_dir, state_dir
from podunit.plan import PodPlan
from podunit.spec import Pod
from podunit.state import (
    PodStatus,
    app_status,
    list_pod_names,
    plan_file,
    pod_state,
    read_plan,
    write_plan,
)
from podunit.systemd.bus import SERVICE_IFACE, Bus, JobTimeout
from podunit.systemd.units import Unit, compile_pod, stage1_command

if TYPE_CHECKING:
    from podunit.images.reference import ImageReference
    from podunit.images.signatures import SignatureSource, Verifier
    from podunit.images.store import Image

TERMINAL = ("exited", "failed")


def pull_pod_images(pod: Pod) -> dict[str, Image]:
    """Each distinct image of the pod, from the store or its source, per
    imagePullPolicy (Kubernetes' default: Always for :latest, else IfNotPresent)."""
    from podunit.errors import ImageError
    from podunit.images.reference import parse_reference
    from podunit.images.store import ImageStore
    from podunit.paths import state_dir

    # Every image passes the trust policy before any of its layers is fetched.
    # The policy code is imported only when an image is really pulled.
    store = ImageStore(state_dir(), verifier=lazy_verifier())
    images: dict[str, Image] = {}
    for container in pod.spec.init_containers + pod.spec.containers:
        if container.image in images:
            continue
        ref = parse_reference(container.image)
        policy = container.image_pull_policy or (
            "Always"
            if ref.transport == "docker" and ref.tag == "latest" and not ref.digest
            else "IfNotPresent"
        )
        image = None if policy == "Always" else store.lookup(ref)
        if image is None:
            if policy == "Never":
                raise ImageError(
                    f"{container.image}: not in the store and imagePullPolicy is Never"
                )
            image = store.pull(ref)
        images[container.image] = image
    return images


def lazy_verifier() -> Verifier:
    """The trust policy's verifier, built on first use and then reused."""
    built: list[Verifier] = []

    def verify(
        ref: ImageReference, digest: str, manifest: bytes, source: SignatureSource | None
    ) -> None:
        if not built:
            from podunit.trust.verifier import make_verifier

            built.append(make_verifier())
        built[0](ref, digest, manifest, source)

    return verify


def pod_units(plan: PodPlan) -> list[str]:
    return [plan["sandbox_unit"]] + [a["unit"] for a in plan["init_apps"] + plan["apps"]]


def start_pod(bus: Bus, plan: PodPlan) -> None:
    """Record the plan, start all units in one transaction, wait for every
    start job; on any failure, explain it and leave nothing behind."""
    if plan_file(plan["name"]).exists():
        raise PodStateError(f'a pod named "{plan["name"]}" exists already (podunit rm it first)')
    write_plan(plan)
    units = compile_pod(plan, stage1_command())
    bus.subscribe()
    try:
        bus.start_transient_unit(units[0], aux=units[1:], mode="fail")
        results = bus.wait_for_units_jobs(pod_units(plan))
    except BaseException:
        remove_pod(bus, plan, force=True)
        raise
    failed = {u: r for u, r in results.items() if r != "done"}
    if failed:
        message = explain_failure(bus, plan, failed)
        remove_pod(bus, plan, force=True)
        raise SystemdError(message)


def explain_failure(bus: Bus, plan: PodPlan, failed: dict[str, str]) -> str:
    lines = [f'pod "{plan["name"]}" failed to start:']
    for unit, job_result in sorted(failed.items()):
        try:
            result = bus.unit_properties(unit, SERVICE_IFACE).get("Result", "")
        except SystemdError:
            result = ""
        if job_result == "dependency":
            lines.append(f"  {unit}: not started, a unit it needs failed")
            continue
        lines.append(f"  {unit}: job {job_result}, result {result or 'unknown'}")
        lines += [f"    | {line}" for line in journal_excerpt(unit)]
    return "\n".join(lines)


def journal_excerpt(unit: str, lines: int = 15) -> list[str]:
    from podunit.run import CommandError, run

    try:
        out = run(
            ["journalctl", "--no-pager", "-q", "-o", "cat", "-n", str(lines), "-u", unit],
            capture=True,
            timeout=10,
        )
    except CommandError:
        return []
    return out.stdout.decode(errors="replace").splitlines()


def pod_status(bus: Bus, name: str, *, check_network: bool = True) -> PodStatus:
    """`check_network`: run CNI CHECK on a running pod's attachment (it
    spawns the plugins: internal callers that poll pass False)."""
    plan = read_plan(name)
    try:
        sandbox = bus.unit_properties(plan["sandbox_unit"]).get("ActiveState", "inactive")
    except SystemdError:
        sandbox = "inactive"
    statuses = {}
    for app in plan["init_apps"] + plan["apps"]:
        unit = _props_or_none(bus, app["unit"], "org.freedesktop.systemd1.Unit")
        service = _props_or_none(bus, app["unit"], SERVICE_IFACE) if unit else None
        statuses[app["name"]] = app_status(plan, app, unit, service)
    apps = [statuses[a["name"]] for a in plan["apps"]]
    inits = [statuses[a["name"]] for a in plan["init_apps"]]
    state = pod_state(sandbox, apps, inits)
    ip, checked = _network_status(plan, check_network and sandbox == "active")
    return PodStatus(
        name=name,
        state=state,
        uid=plan["uid"],
        created=plan["created"],
        source=plan["source"],
        sandbox_unit=plan["sandbox_unit"],
        slice=plan["slice"],
        apps=apps,
        init_apps=inits,
        network=plan.get("network", ""),
        ip=ip,
        network_check=checked,
    )


def _network_status(plan: PodPlan, check: bool) -> tuple[str | None, str | None]:
    """(pod IP, CHECK outcome) from the pod's CNI cache; nothing for
    host/none pods, and no plugin run unless `check`."""
    if plan.get("network") != "cni":
        return None, None
    from podunit.network import pod as network

    ip = network.pod_ip(plan["name"])
    if not check or ip is None:
        return ip, None
    try:
        return ip, "ok" if network.check(plan["name"]) else None
    except PodunitError as exc:
        return ip, str(exc)


def _props_or_none(bus: Bus, unit: str, interface: str) -> dict[str, object] | None:
    try:
        props = bus.unit_properties(unit, interface)
    except SystemdError:
        return None
    return props


def list_pods(bus: Bus) -> list[PodStatus]:
    return [pod_status(bus, name, check_network=False) for name in list_pod_names()]


def wait_for_pod(bus: Bus, name: str) -> PodStatus:
    """Block until every app has finished for good (no restart pending)."""
    bus.subscribe()
    result: list[PodStatus] = []

    def finished() -> bool:
        status = pod_status(bus, name, check_network=False)
        result[:] = [status]
        return all(a.state in TERMINAL for a in status.apps) or status.state == "failed"

    bus.wait_until(finished)
    return result[0]


def first_failure_code(status: PodStatus) -> int:
    """Exit code of `run --wait`: the first failing app's (init containers
    first, then apps in manifest order), 0 when all succeeded."""
    for app in status.init_apps + status.apps:
        if app.state == "failed":
            return app.exit_code if app.exit_code not in (None, 0) else 1
    return 0


def stop_pod(bus: Bus, name: str, timeout: float | None = None) -> None:
    """Stop every app (SIGTERM, then SIGKILL after the grace period, which
    `timeout` overrides), then the sandbox. systemd cannot change a running
    unit's stop timeout, so a shorter `timeout` is enforced here by SIGKILL."""
    plan = read_plan(name)
    bus.subscribe()
    job = bus.stop_unit(plan["sandbox_unit"])
    if timeout is None:
        bus.wait_for_jobs([job])
        return
    try:
        bus.wait_for_jobs([job], timeout=timeout)
    except JobTimeout:
        for app in plan["init_apps"] + plan["apps"]:
            try:
                bus.kill_unit(app["unit"], signal.SIGKILL)
            except SystemdError:
                pass  # already gone
        bus.wait_for_jobs([job])


def remove_pod(bus: Bus, plan: PodPlan, *, force: bool) -> None:
    """Stop (with force), forget failed units, unmount and delete every file."""
    name = plan["name"]
    if not force:
        status = pod_status(bus, name, check_network=False)
        if status.state == "running":
            raise PodStateError(f'pod "{name}" is running: stop it first or use --force')
    try:
        stop_pod(bus, name)
    except SystemdError:
        pass
    try:
        # A transient slice stays active after its last unit: stop it too.
        bus.wait_for_jobs([bus.stop_unit(plan["slice"])])
    except SystemdError:
        pass
    reset_failed(bus, pod_units(plan) + [plan["slice"]])
    from podunit.stage1.sandbox import pod_down

    pod_down(name)
    shutil.rmtree(plan["runtime_dir"], ignore_errors=True)
    shutil.rmtree(plan["state_dir"], ignore_errors=True)


def reset_failed(bus: Bus, units: Iterable[str]) -> None:
    for unit in units:
        try:
            bus.reset_failed_unit(unit)
        except SystemdError:
            pass  # not loaded or not failed: nothing to forget


def garbage_collect(bus: Bus, grace_seconds: float = 0) -> list[str]:
    """Remove pods that finished more than `grace_seconds` ago (or never
    started, e.g. after a reboot), and leftovers of pods that have no record
    (a crash between steps). Returns what was removed."""
    removed = []
    for name in list_pod_names():
        status = pod_status(bus, name, check_network=False)
        if status.state not in ("exited", "failed", "created"):
            continue
        if time.time() - finished_at(read_plan(name)) < grace_seconds:
            continue
        remove_pod(bus, read_plan(name), force=True)
        removed.append(name)
    known = set(list_pod_names())
    for base in (state_dir() / "pods", sandboxes_dir()):
        for orphan in sorted(base.glob("*")) if base.exists() else []:
            if orphan.name not in known and _no_units_active(bus, orphan.name):
                from podunit.stage1.sandbox import pod_down

                pod_down(orphan.name)
                shutil.rmtree(orphan, ignore_errors=True)
                removed.append(f"{orphan} (orphan)")
    removed += _collect_network_garbage(bus, known)
    return removed


def _collect_network_garbage(bus: Bus, known: set[str]) -> list[str]:
    """DEL CNI attachments (veth, lease, iptables rules) cached for pods
    that have no record any more, e.g. when pod-down's DEL failed."""
    from podunit.network import cache

    orphans = [p for p in cache.recorded_pods() if p not in known and _no_units_active(bus, p)]
    if not orphans:
        return []
    from podunit.network.pod import detach_orphans

    return [f"CNI attachment of {pod} (orphan)" for pod in detach_orphans(orphans)]


def finished_at(plan: PodPlan) -> float:
    """When the pod's last app exit was recorded (its creation if none)."""
    times = [plan["created"]]
    for app in plan["init_apps"] + plan["apps"]:
        try:
            times.append(
                (Path(plan["runtime_dir"]) / "apps" / app["name"] / "exits").stat().st_mtime
            )
        except FileNotFoundError:
            pass
    return max(times)


def _no_units_active(bus: Bus, name: str) -> bool:
    from podunit.systemd.names import sandbox_unit

    try:
        state = bus.unit_properties(sandbox_unit(name)).get("ActiveState", "inactive")
    except SystemdError:
        return True
    return state in ("inactive", "failed")


def compile_units(plan: PodPlan) -> list[Unit]:
    return compile_pod(plan, stage1_command())
