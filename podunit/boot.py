"""`podunit prepare NAME`: what pod@NAME.service runs before the pod starts.

The generator compiled the pod's units at boot without images (no network
there); this step, run under systemd as the template's ExecStartPre, pulls
the images, writes the pod's plan for stage1, and refuses to start units that
no longer match the manifest (edited since the last daemon-reload).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from podunit.errors import PodunitError
from podunit.generator import (
    DROPIN_NAME,
    boot_pod_plan,
    compile_boot_pod,
    find_manifest,
    load_boot_pod,
)
from podunit.paths import sandboxes_dir
from podunit.systemd.unitfile import render_unit
from podunit.systemd.units import stage1_command

if TYPE_CHECKING:
    from podunit.spec import Pod

GENERATOR_OUTPUT = Path("/run/systemd/generator")


def prepare_boot_pod(name: str, generator_output: Path = GENERATOR_OUTPUT) -> None:
    from podunit.lifecycle import pull_pod_images
    from podunit.state import write_plan

    path = find_manifest(name)
    pod = load_boot_pod(name, path)
    check_generated_units(name, path, pod, generator_output)
    plan = boot_pod_plan(name, pod, pull_pod_images(pod))
    # Exit logs and mount points of a previous run belong to that run.
    shutil.rmtree(sandboxes_dir() / name, ignore_errors=True)
    write_plan(plan)


def check_generated_units(name: str, path: Path, pod: Pod, output: Path) -> None:
    """The units systemd loaded must be what the manifest compiles to now:
    otherwise limits, containers or dependencies would silently be stale."""
    units, _ = compile_boot_pod(name, path, stage1_command(), pod)
    hint = "run `systemctl daemon-reload` so that podunit-generator compiles it"
    for index, unit in enumerate(units):
        sandbox = index == 0
        relative = f"{unit.name}.d/{DROPIN_NAME}" if sandbox else unit.name
        try:
            loaded = (output / relative).read_text()
        except FileNotFoundError:
            if sandbox:
                raise PodunitError(
                    f"{path} has no units yet (added after the last daemon-reload): {hint}"
                ) from None
            loaded = ""
        if loaded != render_unit(unit, source=str(path), dropin=sandbox):
            raise PodunitError(f"{path} changed since the last daemon-reload ({unit.name}): {hint}")
