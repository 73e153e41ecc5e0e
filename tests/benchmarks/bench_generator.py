"""Generator benchmark: podunit-generator's wall time and its share of systemd's generator run.

    sudo .venv/bin/python tests/benchmarks/bench_generator.py [--runs 20] [--boots 5]

Issue 5, item 9. Boots a testbed (systemd 252 in nspawn) where /etc/podunit/pods is writable
(the generator's search path, podunit.paths.MANIFEST_DIRS, has no override) and measures:

  * with hyperfine, `generators/podunit-generator OUTDIR` for 1, 10 and 100 manifests
    (goal: 100 manifests under 100 ms, Python start included), run as the package runs it
    (#!/usr/bin/python3) and through the wrapper tests/integration/test_boot.py installs;
  * systemd's own GeneratorsStartTimestampMonotonic -> GeneratorsFinishTimestampMonotonic
    span (median of --boots: systemd 252 sets them at manager start only, not on
    daemon-reload), and the wall time of `systemctl daemon-reload` (which runs every
    generator too), without podunit's generator and with it for 0, 10 and 100 manifests;
  * where the time goes: interpreter start, the generator's imports, the cost per manifest.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from bench_core import (
    REPO,
    TESTS,
    Timing,
    hyperfine,
    import_profile,
    print_table,
    python_rows,
)
from testbed import Testbed

sys.path.insert(0, str(TESTS / "integration"))
from test_boot import install_tree  # noqa: E402

WALL_COUNTS = (1, 10, 100)
SPAN_COUNTS = (0, 10, 100)
GOAL = 0.100  # seconds, for 100 manifests
GENERATOR = REPO / "generators/podunit-generator"
INSTALLED = "/etc/systemd/system-generators/podunit-generator"
OUT = "/run/bench-generator"
PODS = Path("etc/podunit/pods")  # under the testbed's root
# A pod as an admin would drop it in: init container, two apps, a volume, limits, autostart.
MANIFEST = """apiVersion: v1
kind: Pod
metadata:
  name: NAME
  # A target nothing starts: the generator writes the .wants link, boots start no pods.
  annotations: {podunit.io/wanted-by: bench.target}
spec:
  terminationGracePeriodSeconds: 5
  initContainers:
  - name: init
    image: oci:/var/lib/bench/busybox:busybox
    command: ["/bin/sh", "-c", "echo ready > /data/index.html"]
    volumeMounts: [{name: data, mountPath: /data}]
  containers:
  - name: web
    image: oci:/var/lib/bench/busybox:busybox
    command: ["httpd", "-f", "-p", "8080", "-h", "/data"]
    env: [{name: MODE, value: bench}]
    volumeMounts: [{name: data, mountPath: /data, readOnly: true}]
    resources:
      limits: {memory: 32Mi, cpu: 250m}
  - name: sidecar
    image: oci:/var/lib/bench/busybox:busybox
    command: ["/bin/sh", "-c", "exec sleep 100000"]
    securityContext: {runAsUser: 65534, readOnlyRootFilesystem: true}
  volumes:
  - name: data
    emptyDir: {}
"""


def fill(tb: Testbed, count: int) -> None:
    """Exactly `count` manifests in /etc/podunit/pods."""
    pods = tb.root / PODS
    pods.mkdir(parents=True, exist_ok=True)
    for old in pods.glob("*.yaml"):
        old.unlink()
    for i in range(count):
        (pods / f"bench{i:03}.yaml").write_text(MANIFEST.replace("NAME", f"bench{i:03}"))


def wall_times(tb: Testbed, runs: int) -> dict[int, dict[str, Timing]]:
    """Manifest count -> hyperfine timings of the generator, bare and as installed."""
    timings = {}
    for count in WALL_COUNTS:
        fill(tb, count)
        commands = {
            f"podunit-generator, {count} manifests": f"{GENERATOR} {OUT}",
            f"  as installed (sh wrapper, {Path(sys.executable).name})": f"{INSTALLED} {OUT}",
        }
        timings[count] = hyperfine(
            tb, f"generator-{count}", commands, runs, prepare=f"rm -rf {OUT}"
        )
    return timings


def generators_span(tb: Testbed) -> float:
    """Seconds systemd 252 spent running all generators at its last start.

    It stamps GeneratorsStart/Finish at manager start only, not on daemon-reload or
    daemon-reexec, so this reboots the testbed (same root, manifests kept)."""
    tb.reboot()
    props = ["GeneratorsStartTimestampMonotonic", "GeneratorsFinishTimestampMonotonic"]
    out = tb.run(["systemctl", "show", *[f"--property={p}" for p in props]]).stdout
    values = dict(line.split("=", 1) for line in out.split())
    return (int(values[props[1]]) - int(values[props[0]])) / 1e6


@dataclass(frozen=True)
class Manager:
    """systemd's figures in one setting: generators at boot, and a daemon-reload."""

    label: str
    span: float  # median generators span at boot, seconds
    reload: Timing

    def row(self, baseline: Manager | None) -> str:
        extra = f"  (+{(self.span - baseline.span) * 1000:.1f} ms)" if baseline else ""
        reload = f"{self.reload.mean * 1000:6.1f} ± {self.reload.stddev * 1000:4.1f}"
        return f"  {self.label:<44} {self.span * 1000:8.1f} ms   {reload} ms{extra}"


def manager_figures(tb: Testbed, label: str, boots: int, runs: int) -> Manager:
    span = statistics.median(generators_span(tb) for _ in range(boots))
    reload = hyperfine(tb, "reload", {label: "systemctl daemon-reload"}, runs, warmup=1)[label]
    return Manager(label, span, reload)


def print_wall_times(timings: dict[int, dict[str, Timing]]) -> None:
    for count, rows in timings.items():
        print_table(f"generator wall time, {count} manifest(s)", rows)
    bare = {count: next(iter(rows.values())) for count, rows in timings.items()}
    top = max(WALL_COUNTS)
    per_manifest = (bare[top].mean - bare[min(WALL_COUNTS)].mean) / (top - min(WALL_COUNTS))
    mean = bare[top].mean
    missed = f"MISSED by {(mean - GOAL) * 1000:.1f} ms ({mean / GOAL:.2f}×)"
    verdict = "met" if mean < GOAL else missed
    print(f"  => {top} manifests: {mean * 1000:.1f} ms (goal < {GOAL * 1000:.0f} ms: {verdict});"
          f" {per_manifest * 1000:.2f} ms per manifest")  # fmt: skip


def print_managers(without: Manager, with_counts: list[Manager], boots: int) -> None:
    print("systemd, all generators: Generators{Start,Finish}TimestampMonotonic span at boot")
    print(f"(median of {boots} boots), and `systemctl daemon-reload` (hyperfine mean):")
    print(f"  {'':<44} {'span':>8}      {'daemon-reload':>15}")
    print(without.row(None))
    for figures in with_counts:
        print(figures.row(without))


def print_breakdown(tb: Testbed, runs: int) -> None:
    imports = "podunit.generator, podunit.manifest, podunit.plan, podunit.systemd.units"
    print_table(
        "where the time goes",
        hyperfine(tb, "imports", python_rows(imports, "python3 + the generator's imports"), runs),
    )
    import_profile(tb, [str(GENERATOR), OUT])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="hyperfine runs per command")
    parser.add_argument("--boots", type=int, default=5, help="boots per generators span figure")
    args = parser.parse_args()
    with Testbed() as tb:
        without = manager_figures(tb, "without podunit-generator", args.boots, args.runs)
        install_tree(tb)
        timings = wall_times(tb, args.runs)
        with_counts = []
        for count in SPAN_COUNTS:
            fill(tb, count)
            label = f"with podunit-generator, {count} manifests"
            with_counts.append(manager_figures(tb, label, args.boots, args.runs))
        print_wall_times(timings)
        print_managers(without, with_counts, args.boots)
        print_breakdown(tb, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
