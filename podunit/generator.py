"""systemd generator: boot-time pods from /etc/podunit/pods/ and friends.

For each `NAME.yaml` on the search path (earlier directories override later
ones by file name, as systemd's unit paths do) it writes, into the generator
output directory:

    pod@NAME.service.d/50-podunit.conf   the pod's settings on top of the
                                         pod@.service template (so `systemctl
                                         enable pod@NAME` works)
    podunit-NAME_APP.service             one per container
    podunit-NAME.slice                   pod-level limits
    TARGET.wants/pod@NAME.service        for `podunit.io/wanted-by`

The generator contract (systemd.generator(7)): no D-Bus, no network, write
only the output directory, fast (it runs at every boot and daemon-reload),
and a bad manifest must not stop the others. Files are written to a unique
temporary name and renamed, so two runs at once cannot corrupt each other.
A bad manifest is reported to the kernel log (the journal picks it up) with
file, line and field, and still gets a drop-in: starting `pod@NAME` runs
`podunit prepare NAME`, which fails with the same message, so `systemctl
status pod@NAME` explains instead of "Unit not found".
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from podunit.paths import MANIFEST_DIRS, runtime_dir, state_dir

# Only the search runs at every boot; the compiler is imported once there is
# something to compile (a host without boot pods pays for Python's start only).
if TYPE_CHECKING:
    from podunit.images.store import Image
    from podunit.plan import PodPlan
    from podunit.spec import Pod
    from podunit.systemd.units import Stage1Command, Unit

WANTED_BY_ANNOTATION = "podunit.io/wanted-by"

UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system")
TEMPLATE = "pod@.service"
DROPIN_NAME = "50-podunit.conf"


def template_unit(pod: str) -> str:
    return f"pod@{pod}.service"


def find_manifests(dirs: Sequence[str] = MANIFEST_DIRS) -> dict[str, Path]:
    """Pod name -> manifest path, the first directory winning for a name."""
    found: dict[str, Path] = {}
    for directory in dirs:
        try:
            entries = sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.endswith(".yaml") and not entry.startswith("."):
                found.setdefault(entry[: -len(".yaml")], Path(directory) / entry)
    return found


def find_manifest(pod: str, dirs: Sequence[str] = MANIFEST_DIRS) -> Path:
    manifest = find_manifests(dirs).get(pod)
    if manifest is None:
        from podunit.errors import PodunitError

        where = ", ".join(dirs)
        raise PodunitError(f"no manifest {pod}.yaml in {where}")
    return manifest


def load_boot_pod(name: str, path: Path) -> Pod:
    """The one pod `path` defines; its metadata.name must be the file's name."""
    from podunit.errors import FieldError, ManifestError
    from podunit.manifest import load_pods

    pods = load_pods(path)
    problem = None
    if len(pods) != 1:
        problem = FieldError(
            str(path), 1, "", f"defines {len(pods)} pods; exactly one is allowed here"
        )
    elif pods[0].name != name:
        message = f'"{pods[0].name}" differs from the file name "{name}.yaml"'
        problem = FieldError(str(path), pods[0].line, "metadata.name", message)
    if problem is not None:
        raise ManifestError([problem])
    return pods[0]


def boot_pod_plan(name: str, pod: Pod, images: Mapping[str, Image] | None) -> PodPlan:
    """The plan of a boot pod (without images: only what its units need)."""
    from podunit.plan import make_pod_plan

    return make_pod_plan(
        pod,
        images,
        runtime_dir=runtime_dir(),
        state_dir=state_dir(),
        sandbox_unit=template_unit(name),
    )


def compile_boot_pod(
    name: str, path: Path, stage1: Stage1Command, pod: Pod | None = None
) -> tuple[list[Unit], list[str]]:
    """The pod's units and the targets that want it (podunit.io/wanted-by)."""
    from podunit.systemd.units import compile_pod

    pod = pod or load_boot_pod(name, path)
    plan = boot_pod_plan(name, pod, None)
    units = compile_pod(plan, stage1, boot=True, sockets=socket_units(name))
    text = pod.metadata.annotations.get(WANTED_BY_ANNOTATION, "")
    return units, [t.strip() for t in text.split(",") if t.strip()]


def socket_units(pod: str, unit_dirs: Sequence[str] = UNIT_DIRS) -> list[str]:
    """`pod@NAME.socket` when the admin wrote one (or a pod@.socket template):
    its listening fds go to the pod's first container."""
    name = f"pod@{pod}.socket"
    for directory in unit_dirs:
        if os.path.exists(f"{directory}/{name}") or os.path.exists(f"{directory}/pod@.socket"):
            return [name]
    return []


def failing_dropin(name: str, stage1: Stage1Command) -> Unit:
    """For a manifest that does not compile: starting the pod re-runs the
    parser through `podunit prepare`, which fails with the same message."""
    from podunit.systemd.units import Property, Unit, _exec

    props = [
        Property("Description", "s", f"podunit pod {name} (invalid manifest)"),
        _exec("ExecStartPre", [*stage1.cli, "prepare", name]),
        _exec("ExecStart", [*stage1.argv, "pod-up", name]),
        _exec("ExecStopPost", [*stage1.argv, "pod-down", name]),
    ]
    if stage1.environment:
        props.append(Property("Environment", "as", list(stage1.environment)))
    return Unit(template_unit(name), tuple(props))


def generate(stage1: Stage1Command, manifests: dict[str, Path]) -> tuple[dict[str, str], list[str]]:
    """Relative path -> file text (symlinks as "-> target"), and the errors."""
    from podunit.errors import PodunitError
    from podunit.systemd.unitfile import render_unit

    files: dict[str, str] = {}
    errors: list[str] = []
    for name, path in manifests.items():
        targets: list[str] = []
        try:
            units, targets = compile_boot_pod(name, path, stage1)
        except PodunitError as exc:
            errors.append(f"{path}: pod {name} not generated:\n{exc}")
            units = [failing_dropin(name, stage1)]
            # Still start it where the admin asked for it, so it fails *visibly* at boot.
            targets = best_effort_wanted_by(path)
        for unit in units:
            if unit.name == template_unit(name):
                files[f"{unit.name}.d/{DROPIN_NAME}"] = render_unit(
                    unit, source=str(path), dropin=True
                )
            else:
                files[unit.name] = render_unit(unit, source=str(path))
        for target in targets:
            files[f"{target}.wants/{template_unit(name)}"] = f"-> {template_path()}"
    return files, errors


def best_effort_wanted_by(path: Path) -> list[str]:
    """podunit.io/wanted-by of a manifest that failed validation, if its YAML
    can be read at all."""
    try:
        import yaml

        with open(path, "rb") as f:
            doc = yaml.safe_load(f.read(1 << 20))
        text = doc["metadata"]["annotations"][WANTED_BY_ANNOTATION]
    except Exception:  # any shape of broken: no autostart, the error is reported anyway
        return []
    if not isinstance(text, str):
        return []
    return [t.strip() for t in text.split(",") if t.strip()]


def template_path() -> str:
    for directory in UNIT_DIRS:
        if os.path.exists(f"{directory}/{TEMPLATE}"):
            return f"{directory}/{TEMPLATE}"
    return f"/usr/lib/systemd/system/{TEMPLATE}"


def write_files(out: Path, files: dict[str, str]) -> None:
    """Write then rename each file: a concurrent run sees old or new, never half."""
    for relative, text in files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        if text.startswith("-> "):
            tmp.symlink_to(text[3:])
        else:
            tmp.write_text(text)
        os.replace(tmp, path)


def report(errors: Iterable[str]) -> None:
    """To the kernel log (read into the journal at boot), else stderr."""
    for error in errors:
        lines = [f"podunit-generator: {line}" for line in error.splitlines()]
        try:
            with open("/dev/kmsg", "w") as kmsg:
                for line in lines:
                    kmsg.write(f"<3>{line}\n")
        except OSError:
            print("\n".join(lines), file=sys.stderr)


def main(argv: Sequence[str]) -> int:
    """systemd calls: podunit-generator NORMAL_DIR [EARLY_DIR LATE_DIR]."""
    if len(argv) not in (1, 3):
        print("usage: podunit-generator NORMAL_DIR [EARLY_DIR LATE_DIR]", file=sys.stderr)
        return 2
    manifests = find_manifests()
    if not manifests:
        return 0
    from podunit.systemd.units import stage1_command

    files, errors = generate(stage1_command(), manifests)
    write_files(Path(argv[0]), files)
    report(errors)
    return 0
