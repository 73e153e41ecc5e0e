"""`podunit` command line: argument parsing and wiring only.

Library code raises typed errors (podunit.errors); this module alone turns
them into messages and exit codes. Heavy modules are imported per command.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from podunit.errors import PodunitError

if TYPE_CHECKING:
    from podunit.state import PodStatus


def make_parser(*, extensions: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podunit", description="Run Kubernetes Pod manifests as systemd units, no daemon."
    )
    parser.add_argument("--debug", action="store_true", help="log what is done")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="start the pods of a manifest")
    run.add_argument("--name", help="pod name (overrides metadata.name; one pod only)")
    run.add_argument("--wait", action="store_true", help="wait until the pod finishes")
    run.add_argument(
        "--rm", action="store_true", help="remove the pod once it finished (with --wait)"
    )
    run.add_argument("file", help="manifest (YAML, one or more v1 Pod documents)")

    lst = sub.add_parser("list", help="list pods")
    lst.add_argument("--json", action="store_true")

    status = sub.add_parser("status", help="show a pod and its apps")
    status.add_argument("pod")
    status.add_argument("--json", action="store_true")

    stop = sub.add_parser("stop", help="stop a pod (SIGTERM, then SIGKILL after the grace period)")
    stop.add_argument("pod")
    stop.add_argument(
        "--timeout", type=float, help="seconds before SIGKILL (default: the pod's grace period)"
    )

    rm = sub.add_parser("rm", help="remove a pod")
    rm.add_argument("pod", nargs="+")
    rm.add_argument("--force", "-f", action="store_true", help="stop it first if running")

    logs = sub.add_parser("logs", help="show a pod's logs (journald)")
    logs.add_argument("pod")
    logs.add_argument("app", nargs="?")
    logs.add_argument("-f", "--follow", action="store_true")

    exe = sub.add_parser("exec", help="run a command inside a running app")
    exe.add_argument("pod")
    exe.add_argument("app")
    exe.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")

    prepare = sub.add_parser(
        "prepare", help="(used by pod@.service) pull images and plan a boot pod before it starts"
    )
    prepare.add_argument("pod")

    generate = sub.add_parser("generate", help="show the units podunit-generator writes")
    generate.add_argument(
        "--dry-run", action="store_true", required=True, help="print, write nothing"
    )
    generate.add_argument("files", nargs="*", help="manifests (default: the pod directories)")

    for extension in extension_modules() if extensions else []:
        extension.add_parsers(sub)

    gc = sub.add_parser("gc", help="remove finished pods and leftovers")
    gc.add_argument(
        "--grace-period", type=float, default=0, metavar="SECONDS",
        help="keep pods that finished less than this long ago (default 0)",
    )  # fmt: skip
    return parser


EXTENSIONS = ("podunit.cli_images", "podunit.cli_trust")


def extension_modules() -> list[ModuleType]:
    """Command groups that live in modules of their own (images, trust). Each
    has `add_parsers(subparsers)` and `COMMANDS`, and must import lazily."""
    import importlib

    modules = []
    for name in EXTENSIONS:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return modules


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The pod commands need none of the image/trust command modules: skip importing them.
    command = next((a for a in argv if not a.startswith("-")), None)
    core = command in COMMANDS
    args = make_parser(extensions=not core).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(message)s"
    )
    commands = dict(COMMANDS)
    for extension in extension_modules() if not core else []:
        commands.update(extension.COMMANDS)
    try:
        handler = commands[args.command]
        return handler(args)
    except PodunitError as exc:
        print(f"podunit: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from podunit.lifecycle import (
        first_failure_code,
        pull_pod_images,
        remove_pod,
        start_pod,
        stop_pod,
        wait_for_pod,
    )
    from podunit.manifest import load_pods
    from podunit.paths import runtime_dir, state_dir
    from podunit.plan import make_pod_plan
    from podunit.systemd.bus import Bus

    pods = load_pods(args.file)
    if args.name:
        if len(pods) != 1:
            raise PodunitError(f"--name needs a manifest with one pod; {args.file} has {len(pods)}")
        pods = [replace(pods[0], metadata=replace(pods[0].metadata, name=args.name))]
    plans = [
        make_pod_plan(pod, pull_pod_images(pod), runtime_dir=runtime_dir(), state_dir=state_dir())
        for pod in pods
    ]
    code = 0
    with Bus() as bus:
        for plan in plans:
            start_pod(bus, plan)
            if not args.wait:
                print(plan["name"])
        if not args.wait:
            return 0
        for plan in plans:
            try:
                status = wait_for_pod(bus, plan["name"])
            except KeyboardInterrupt:
                stop_pod(bus, plan["name"])
                status = wait_for_pod(bus, plan["name"])
            code = code or first_failure_code(status)
            if args.rm:
                remove_pod(bus, plan, force=True)
    return code


def cmd_list(args: argparse.Namespace) -> int:
    from podunit.lifecycle import list_pods
    from podunit.systemd.bus import Bus

    with Bus() as bus:
        pods = list_pods(bus)
    if args.json:
        print(json.dumps([p.to_json() for p in pods], indent=2))
        return 0
    print(f"{'NAME':24} {'STATE':8} {'APPS':>5}  {'RESTARTS':>8}")
    for pod in pods:
        running = sum(a.state == "running" for a in pod.apps)
        restarts = sum(a.restarts for a in pod.apps)
        print(f"{pod.name:24} {pod.state:8} {running:>2}/{len(pod.apps):<2}  {restarts:>8}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from podunit.lifecycle import pod_status
    from podunit.systemd.bus import Bus

    with Bus() as bus:
        status = pod_status(bus, args.pod)
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        print_status(status)
    return 0


def print_status(status: PodStatus) -> None:
    print(f"pod {status.name}: {status.state}  (unit {status.sandbox_unit}, slice {status.slice})")
    for app in status.init_apps + status.apps:
        kind = "init " if app.init else ""
        extra = f" exit {app.exit_code}" if app.exit_code is not None else ""
        pid = f" pid {app.main_pid}" if app.main_pid else ""
        print(f"  {kind}{app.name}: {app.state}{pid}{extra} restarts {app.restarts}  ({app.unit})")


def cmd_stop(args: argparse.Namespace) -> int:
    from podunit.lifecycle import stop_pod
    from podunit.systemd.bus import Bus

    with Bus() as bus:
        stop_pod(bus, args.pod, timeout=args.timeout)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from podunit.lifecycle import remove_pod
    from podunit.state import read_plan
    from podunit.systemd.bus import Bus

    with Bus() as bus:
        for name in args.pod:
            remove_pod(bus, read_plan(name), force=args.force)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from podunit.lifecycle import pod_units
    from podunit.run import exec_command
    from podunit.state import read_plan

    plan = read_plan(args.pod)
    if args.app:
        units = [a["unit"] for a in plan["init_apps"] + plan["apps"] if a["name"] == args.app]
        if not units:
            raise PodunitError(f'pod "{args.pod}" has no container "{args.app}"')
    else:
        units = pod_units(plan)
    argv = ["journalctl", "--no-pager", "-o", "short-iso"]
    for unit in units:
        argv += ["-u", unit]
    if args.follow:
        argv.append("-f")
    exec_command(argv)
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    from podunit.lifecycle import pod_status
    from podunit.stage1.enter import enter_app
    from podunit.state import read_plan
    from podunit.systemd.bus import Bus

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise PodunitError("exec needs a command: podunit exec POD APP -- CMD [ARG...]")
    plan = read_plan(args.pod)
    with Bus() as bus:
        status = pod_status(bus, args.pod, check_network=False)
    app_status = next((a for a in status.apps + status.init_apps if a.name == args.app), None)
    if app_status is None or app_status.state != "running" or not app_status.main_pid:
        raise PodunitError(f'container "{args.app}" of pod "{args.pod}" is not running')
    app = next(a for a in plan["apps"] + plan["init_apps"] if a["name"] == args.app)
    return enter_app(app, app_status.main_pid, cmd)


def cmd_prepare(args: argparse.Namespace) -> int:
    from podunit.boot import prepare_boot_pod

    prepare_boot_pod(args.pod)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from podunit.generator import find_manifests, generate
    from podunit.systemd.units import stage1_command

    if args.files:
        manifests = {Path(f).name.removesuffix(".yaml"): Path(f) for f in args.files}
    else:
        manifests = find_manifests()
    files, errors = generate(stage1_command(), manifests)
    for relative, text in sorted(files.items()):
        print(f"==> {relative} <==")
        print(text if not text.startswith("-> ") else f"symlink {text}\n")
    for error in errors:
        print(f"podunit: {error}", file=sys.stderr)
    return 1 if errors else 0


def cmd_gc(args: argparse.Namespace) -> int:
    from podunit.lifecycle import garbage_collect
    from podunit.systemd.bus import Bus

    with Bus() as bus:
        for item in garbage_collect(bus, args.grace_period):
            print(f"removed {item}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "list": cmd_list,
    "status": cmd_status,
    "stop": cmd_stop,
    "rm": cmd_rm,
    "logs": cmd_logs,
    "exec": cmd_exec,
    "gc": cmd_gc,
    "prepare": cmd_prepare,
    "generate": cmd_generate,
}
