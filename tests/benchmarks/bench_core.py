"""Pod start benchmark: podunit vs the systemd-run floor, crun, ctr and podman (issue 2, item 8).

    sudo .venv/bin/python tests/benchmarks/bench_core.py [--runs 20]

Boots one testbed (systemd 252 in nspawn) and, after a first `podunit run` put the busybox
image in podunit's store, measures with hyperfine, in the same run and on the same rootfs
(the image's single unpacked layer, copied once for the peers that write mount points):

  * podunit run --wait --rm of a one-app /bin/true pod, `podunit.io/network: none`
    (and the same pod on the default private CNI network);
  * systemd-run --wait -p RootDirectory= -p MountAPIVFS= -p PrivateNetwork= -p PrivateIPC=
    /bin/true, the floor for a sandboxed unit;
  * crun run of an OCI bundle on that rootfs; ctr run --rm (containerd), if it works;
  * podman run --rm --network=none, podman's storage on a real file system.

then the ratios the issue names, the resident memory podunit holds while 10 pods run
(next to podman's conmon and containerd's shim per container), and where podunit's own
time goes (interpreter start, imports).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path[:0] = [str(TESTS), str(REPO)]

from images_build import build_busybox_layout  # noqa: E402
from testbed import CommandFailed, Testbed  # noqa: E402

# The system Python, as the package runs it (a pyenv shim would add ~50 ms per start).
PYTHON = "/usr/bin/python3"
PODUNIT = [PYTHON, "-m", "podunit"]
ENV = {"PYTHONPATH": str(REPO)}
STATE = Path("/var/lib/podunit")  # a real file system inside, unlike the overlay root
PODMAN = ["podman", "--root", f"{STATE}/podman-bench", "--runroot", "/run/podman-bench"]
CTR_IMAGE = "docker.io/library/busybox:bench"
CONTAINERD_ROOT = f"{STATE}/containerd"
SLEEPERS = 10  # pods (containers) kept running for the memory figures
# Names of the commands compared, and the ratios printed: (label, a, b, goal for a / b).
NONE = "podunit run --wait --rm (network none)"
CNI = "podunit run --wait --rm (CNI network)"
FLOOR = "systemd-run floor"
CRUN = "crun run"
PODMAN_RUN = "podman run --rm --network=none"
CTR = "ctr run --rm"
RATIOS = (
    ("podunit (network none) / systemd-run floor", NONE, FLOOR, 2.0),
    ("podunit (network none) / podman", NONE, PODMAN_RUN, 1 / 3),
    ("podunit (network none) / crun", NONE, CRUN, None),
    ("podunit (network none) / ctr", NONE, CTR, None),
    ("podunit (CNI network) / systemd-run floor", CNI, FLOOR, 2.0),
    ("podunit (CNI network) / podman", CNI, PODMAN_RUN, 1 / 3),
)

# ---------------------------------------------------------------------------------------
# hyperfine, shared with bench_generator.py
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    name: str
    mean: float  # seconds
    stddev: float
    median: float
    low: float

    def row(self) -> str:
        return (
            f"  {self.name:<44} {self.mean * 1000:8.1f} ± {self.stddev * 1000:5.1f} ms"
            f"  (median {self.median * 1000:.1f}, min {self.low * 1000:.1f})"
        )


def hyperfine(
    tb: Testbed,
    label: str,
    commands: Mapping[str, str],
    runs: int,
    *,
    warmup: int = 2,
    prepare: str | None = None,
) -> dict[str, Timing]:
    """Run commands (name -> command line) inside the testbed, return name -> Timing."""
    export = tb.shared_dir / f"hyperfine-{label}.json"
    argv = ["hyperfine", "-N", "--style", "none", "--runs", str(runs), "--warmup", str(warmup)]
    if prepare:
        argv += ["--prepare", prepare]
    for name, command in commands.items():
        argv += ["-n", name, command]
    tb.run([*argv, "--export-json", str(export)], env=ENV, timeout=3600)
    results = json.loads(export.read_text())["results"]
    return {
        r["command"]: Timing(r["command"], r["mean"], r["stddev"], r["median"], r["min"])
        for r in results
    }


def print_table(title: str, timings: Mapping[str, Timing]) -> None:
    print(f"{title}:")
    for timing in timings.values():
        print(timing.row())


def ratio_line(label: str, a: Timing, b: Timing, goal: float | None = None) -> str:
    """a / b by means (and by medians), with the verdict on means against goal, if any."""
    mean = a.mean / b.mean
    text = f"  {label:<44} {mean:6.2f}×  (medians {a.median / b.median:6.2f}×)"
    if goal is None:
        return text
    verdict = "met" if mean <= goal else f"MISSED by {mean / goal:.2f}×"
    return f"{text}  goal ≤ {goal:.2f}×: {verdict}"


def import_command(modules: str) -> str:
    return f"{PYTHON} -c {shlex.quote('import ' + modules)}"


def python_rows(modules: str, label: str = "") -> dict[str, str]:
    """hyperfine rows: a bare interpreter start, and the same plus importing `modules`."""
    return {
        "python3 -c pass (interpreter start)": f"{PYTHON} -c pass",
        label or f"python3 -c 'import {modules}'": import_command(modules),
    }


def _costliest(pairs: list[tuple[int, str]], top: int) -> str:
    return ", ".join(f"{name} {us / 1000:.1f}" for us, name in sorted(pairs, reverse=True)[:top])


def import_profile(tb: Testbed, argv: list[str], top: int = 8) -> None:
    """Print where the imports of `python3 argv` go (python3 -X importtime): the costliest
    modules imported at top level (cumulative) and the costliest modules on their own."""
    result = tb.run([PYTHON, "-X", "importtime", *argv], env=ENV, timeout=120)
    outer, alone = [], []
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            own, cumulative, name = line.removeprefix("import time:").split("|", 2)
            alone.append((int(own), name.strip()))
            if not name[1:].startswith(" "):  # nesting is shown as indentation
                outer.append((int(cumulative), name.strip()))
    total = sum(us for us, _ in alone)
    print(f"imports of `python3 -X importtime {' '.join(argv[:4])} ...`: {len(alone)} modules, "
          f"{total / 1000:.1f} ms in all (importtime itself inflates this); in ms:")  # fmt: skip
    print(f"  top-level imports, cumulative: {_costliest(outer, top)}")
    print(f"  modules on their own (self):    {_costliest(alone, top)}")


# ---------------------------------------------------------------------------------------
# the commands compared
# ---------------------------------------------------------------------------------------


def pod_manifest(tb: Testbed, image: str, name: str, command: str, network: str | None) -> str:
    path = tb.shared_dir / f"{name}.yaml"
    annotations = f"{{podunit.io/network: {network}}}" if network else "{}"
    path.write_text(
        f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, annotations: {annotations}}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: app, image: "{image}", command: {json.dumps(command.split())}}}
"""
    )
    return str(path)


def store_rootfs(tb: Testbed) -> str:
    """The busybox image's one unpacked layer in podunit's store."""
    layers = list((tb.state_dir / "layers/sha256").iterdir())
    assert len(layers) == 1, f"expected the busybox layer alone in the store: {layers}"
    return f"{STATE}/layers/sha256/{layers[0].name}/rootfs"


def crun_bundle(tb: Testbed, rootfs: str) -> str:
    bundle = tb.shared_dir / "bundle"
    bundle.mkdir()
    tb.run(["crun", "spec", "--bundle", str(bundle)])
    spec = json.loads((bundle / "config.json").read_text())
    spec["root"] = {"path": rootfs, "readonly": True}
    spec["process"].update(args=["/bin/true"], terminal=False)
    (bundle / "config.json").write_text(json.dumps(spec, indent=1))
    return str(bundle)


def podman_ready(tb: Testbed, layout: Path) -> None:
    # podman names an oci: image after its path, which must then be a valid reference
    # (the testbed's random directory name may not be): pull it through a fixed link.
    tb.run(["ln", "-sfn", str(layout), "/run/bench-busybox"])
    image_id = tb.run([*PODMAN, "pull", "-q", "oci:/run/bench-busybox:busybox"], timeout=300)
    tb.run([*PODMAN, "tag", image_id.stdout.strip(), "bench"])


def containerd_ready(tb: Testbed, layout: Path) -> str | None:
    """Start containerd (its root on a real file system) and import the image; why not, or None."""
    config = tb.root / "etc/containerd/config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    old = config.read_text() if config.exists() else "version = 2\n"
    config.write_text(f'root = "{CONTAINERD_ROOT}"\n{old}')  # overlayfs cannot nest
    archive = tb.shared_dir / "busybox.tar"
    try:
        tb.run(
            ["skopeo", "copy", "-q", f"oci:{layout}:busybox", f"oci-archive:{archive}:{CTR_IMAGE}"]
        )
        tb.run(["systemctl", "start", "containerd"])
        tb.run(["ctr", "images", "import", str(archive)], timeout=300)
        tb.run(["ctr", "run", "--rm", CTR_IMAGE, "probe", "/bin/true"])
    except CommandFailed as exc:
        return f"{shlex.join(exc.argv)}: {exc.stderr.strip() or exc.stdout.strip()}"
    return None


def start_commands(tb: Testbed, image: str, layout: Path, containerd_ok: bool) -> dict[str, str]:
    """Name -> command line of each way to run /bin/true in a sandbox."""
    podunit = shlex.join([*PODUNIT, "run", "--wait", "--rm"])
    none = pod_manifest(tb, image, "bench-none", "/bin/true", "none")
    cni = pod_manifest(tb, image, "bench-cni", "/bin/true", None)
    tb.run([*PODUNIT, "run", "--wait", "--rm", none], env=ENV, timeout=300)  # pulls the image
    tb.run(["cp", "-a", store_rootfs(tb), f"{STATE}/bench-rootfs"])
    rootfs = f"{STATE}/bench-rootfs"
    podman_ready(tb, layout)
    floor = ["systemd-run", "--wait", "-q", "-p", f"RootDirectory={rootfs}",
             "-p", "MountAPIVFS=yes", "-p", "PrivateNetwork=yes", "-p", "PrivateIPC=yes",
             "/bin/true"]  # fmt: skip
    commands = {
        NONE: f"{podunit} {none}",
        CNI: f"{podunit} {cni}",
        FLOOR: shlex.join(floor),
        CRUN: f"crun run --bundle {crun_bundle(tb, rootfs)} bench-crun",
        PODMAN_RUN: shlex.join([*PODMAN, "run", "--rm", "--network=none", "bench", "/bin/true"]),
    }
    if containerd_ok:
        commands[CTR] = f"ctr run --rm {CTR_IMAGE} bench-ctr /bin/true"
    return commands


def print_ratios(t: Mapping[str, Timing]) -> None:
    print("ratios of means:")
    for label, a, b, goal in RATIOS:
        if a in t and b in t:
            print(ratio_line(label, t[a], t[b], goal))


# ---------------------------------------------------------------------------------------
# resident memory while containers run
# ---------------------------------------------------------------------------------------


def rss_kib(tb: Testbed, match: Callable[[str], bool]) -> tuple[int, int]:
    """(total RSS in KiB, number) of the testbed's processes whose command line matches."""
    listing = tb.run(["ps", "-e", "--no-headers", "-o", "rss=,args="]).stdout
    found = [int(rss) for rss, args in (line.split(None, 1) for line in listing.splitlines())
             if match(args)]  # fmt: skip
    return sum(found), len(found)


def memory_line(label: str, kib: int, count: int, per: int) -> str:
    mib = kib / 1024
    return f"  {label:<44} {mib:7.1f} MiB in {count} processes, {mib / per:5.2f} MiB per container"


def podunit_memory(tb: Testbed, image: str) -> None:
    names = [f"sleeper{i}" for i in range(SLEEPERS)]
    for name in names:
        tb.run([*PODUNIT, "run", pod_manifest(tb, image, name, "sleep 100000", None)], env=ENV)
    running = tb.run(["pgrep", "-c", "-x", "sleep"], check=False).stdout.strip()
    kib, count = rss_kib(tb, lambda args: "podunit" in args)
    print(f"  podunit, {SLEEPERS} pods running ({running} sleep processes seen):")
    print(memory_line("processes mentioning podunit", kib, count, SLEEPERS) + "  (goal 0)")
    tb.run([*PODUNIT, "rm", "--force", *names], env=ENV, timeout=300, check=False)


def podman_memory(tb: Testbed) -> None:
    for i in range(SLEEPERS):
        tb.run(
            [
                *PODMAN,
                "run",
                "-d",
                "--network=none",
                "--name",
                f"sleeper{i}",
                "bench",
                "sleep",
                "100000",
            ]
        )
    kib, count = rss_kib(tb, lambda args: args.split()[0] == "/usr/bin/conmon")
    print(memory_line(f"podman: conmon, {SLEEPERS} containers", kib, count, SLEEPERS))
    tb.run([*PODMAN, "rm", "-f", "-a", "-t", "0"], timeout=300, check=False)


def containerd_memory(tb: Testbed, why_not: str | None) -> None:
    if why_not is not None:
        print(f"  containerd: not measured: {why_not}")
        return
    for i in range(SLEEPERS):
        tb.run(["ctr", "run", "-d", CTR_IMAGE, f"sleeper{i}", "sleep", "100000"])
    kib, count = rss_kib(tb, lambda args: "containerd-shim" in args)
    print(memory_line(f"containerd: shims, {SLEEPERS} containers", kib, count, SLEEPERS))
    kib, count = rss_kib(tb, lambda args: args.split()[0] == "/usr/bin/containerd")
    print(f"  {'  + containerd itself':<44} {kib / 1024:7.1f} MiB")


# ---------------------------------------------------------------------------------------


# The command, between two readings of CLOCK_MONOTONIC, the clock the journal stamps with.
TIMER = (
    "import subprocess, sys, time; t = time.monotonic(); "
    "subprocess.run(sys.argv[1:], check=True); print(t, time.monotonic())"
)


def journal_since(tb: Testbed, cursor: str) -> list[tuple[float, str]]:
    """(CLOCK_MONOTONIC seconds, message) of the journal entries after cursor."""
    tb.run(["journalctl", "--sync"])
    out = tb.run(["journalctl", "--no-pager", "-o", "json", f"--after-cursor={cursor}"]).stdout
    entries = [json.loads(line) for line in out.splitlines()]
    return [(int(e["__MONOTONIC_TIMESTAMP"]) / 1e6, f"{e.get('SYSLOG_IDENTIFIER', '?')}: "
             f"{e['MESSAGE']}") for e in entries if isinstance(e.get("MESSAGE"), str)]  # fmt: skip


def timeline(tb: Testbed, manifest: str) -> None:
    """One podunit run with what systemd logged meanwhile, in ms from the command's start."""
    cursor = tb.run(["journalctl", "-n0", "--show-cursor"]).stdout.split("cursor: ")[-1].strip()
    run = [*PODUNIT, "run", "--wait", "--rm", manifest]
    start, end = map(float, tb.run([PYTHON, "-c", TIMER, *run], env=ENV).stdout.split())
    entries = [(t, m) for t, m in journal_since(tb, cursor) if start <= t <= end]
    print("timeline of one `podunit run --wait --rm` (network none), ms from its start:")
    for t, message in entries:
        print(f"  {(t - start) * 1000:7.1f}  {message[:100]}")
    print(f"  {(end - start) * 1000:7.1f}  podunit exits")
    if entries:
        first, last = entries[0][0], entries[-1][0]
        print(f"  => before systemd's first message (CLI start, imports, plan, D-Bus): "
              f"{(first - start) * 1000:.1f} ms; systemd's units: {(last - first) * 1000:.1f} ms; "
              f"after its last message (wait, --rm): {(end - last) * 1000:.1f} ms")  # fmt: skip


def breakdown(tb: Testbed, runs: int, manifest: str) -> None:
    rows = {
        **python_rows("podunit.cli"),
        "python3 -m podunit --help": shlex.join([*PODUNIT, "--help"]),
        "stage1 pod-up imports": import_command("podunit.stage1.sandbox"),
        "stage1 app imports": import_command("podunit.stage1.app"),
    }
    title = "where podunit's time goes (each row a process of its own)"
    print_table(title, hyperfine(tb, "breakdown", rows, runs))
    import_profile(tb, ["-m", "podunit", "run", "--wait", "--rm", manifest])
    timeline(tb, manifest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="hyperfine runs per command")
    args = parser.parse_args()
    with Testbed() as tb:
        layout = build_busybox_layout(tb.shared_dir / "busybox", "busybox")
        image = f"oci:{layout}:busybox"
        why_not_containerd = containerd_ready(tb, layout)
        commands = start_commands(tb, image, layout, why_not_containerd is None)
        timings = hyperfine(tb, "start", commands, args.runs)
        print_table(f"start of a /bin/true sandbox, hyperfine, {args.runs} runs", timings)
        if why_not_containerd is not None:
            print(f"  ctr run: not measured: {why_not_containerd}")
        print_ratios(timings)
        print("resident memory while containers run:")
        podunit_memory(tb, image)
        podman_memory(tb)
        containerd_memory(tb, why_not_containerd)
        breakdown(tb, args.runs, str(tb.shared_dir / "bench-none.yaml"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
