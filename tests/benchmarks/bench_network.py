"""Pod network benchmark: what a private CNI network adds to a pod's start.

    sudo .venv/bin/python tests/benchmarks/bench_network.py [--runs 15] [--pods 50]

Boots a testbed (systemd in nspawn, private network) and measures, in the
same run, wall time of the command that starts a pod and returns once it
runs (median of --runs, modes interleaved):

  * podunit run, pod on the built-in CNI network (bridge + host-local +
    portmap + firewall) vs the same pod with `podunit.io/network: none`;
  * podman run -d --network=bridge vs --network=none, same image, same app;

then --pods pods started at once (all commands in parallel) with private
networks, for both tools: the time until every start returned, and the rate.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path[:0] = [str(TESTS), str(REPO)]

from images_build import build_busybox_layout  # noqa: E402
from testbed import Testbed  # noqa: E402

PODUNIT = [sys.executable, "-m", "podunit"]
ENV = {"PYTHONPATH": str(REPO)}
# podman's storage must not sit on the testbed's overlay root.
PODMAN = ["podman", "--root", "/var/lib/podunit/podman-bench", "--runroot", "/run/podman-bench"]
APP = "trap 'exit 0' TERM; sleep 100000 & wait"


def manifest(tb: Testbed, image: str, name: str, network: str) -> str:
    path = tb.shared_dir / f"{name}.yaml"
    path.write_text(
        f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, annotations: {{podunit.io/network: {network}}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: app, image: "{image}", command: ["/bin/sh", "-c", "{APP}"]}}
"""
    )
    return str(path)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def podunit_start(tb: Testbed, image: str, name: str, network: str) -> float:
    path = manifest(tb, image, name, network)
    seconds = timed(lambda: tb.run([*PODUNIT, "run", path], env=ENV))
    tb.run([*PODUNIT, "rm", "--force", name], env=ENV)
    return seconds


def podman_start(tb: Testbed, name: str, network: str) -> float:
    argv = [*PODMAN, "run", "-d", "--name", name, f"--network={network}", "bench",
            "/bin/sh", "-c", APP]  # fmt: skip
    seconds = timed(lambda: tb.run(argv))
    tb.run([*PODMAN, "rm", "-f", "-t", "0", name])
    return seconds


def parallel(tb: Testbed, argvs: list[list[str]], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    procs = [tb.spawn(argv, env=env) for argv in argvs]
    failed = [p for p in procs if p.wait(timeout=600) != 0]
    seconds = time.perf_counter() - start
    if failed:
        raise SystemExit(f"{len(failed)} of {len(argvs)} starts failed: {failed[0].stderr.read()}")
    return seconds


def podman_works(tb: Testbed) -> str | None:
    """Why podman's bridge network cannot be measured here, or None."""
    try:
        tb.run([*PODMAN, "pull", "-q", "oci:" + str(tb.shared_dir / "busybox") + ":busybox"])
        tb.run([*PODMAN, "tag", "busybox", "bench"])
        backend = tb.run([*PODMAN, "info", "--format", "{{.Host.NetworkBackend}}"]).stdout.strip()
        podman_start(tb, "probe", "bridge")
    except AssertionError as exc:  # testbed.CommandFailed
        return str(exc).splitlines()[-1]
    print(f"podman network backend: {backend}")
    return None


def report(label: str, samples: list[float]) -> float:
    median = statistics.median(samples)
    print(f"  {label:<34} median {median * 1000:7.1f} ms  (min {min(samples) * 1000:.1f})")
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--pods", type=int, default=50)
    args = parser.parse_args()
    with Testbed() as tb:
        layout = build_busybox_layout(tb.shared_dir / "busybox", "busybox")
        image = f"oci:{layout}:busybox"
        why_not = podman_works(tb)
        samples: dict[str, list[float]] = {"cni": [], "none": [], "bridge": [], "pnone": []}
        podunit_start(tb, image, "warm", "podunit")  # bridge created, caches warm
        for i in range(args.runs):
            samples["cni"].append(podunit_start(tb, image, f"c{i}", "podunit"))
            samples["none"].append(podunit_start(tb, image, f"n{i}", "none"))
            if why_not is None:
                samples["bridge"].append(podman_start(tb, f"b{i}", "bridge"))
                samples["pnone"].append(podman_start(tb, f"p{i}", "none"))
        print(f"start latency, median of {args.runs}:")
        cni = report("podunit run, CNI network", samples["cni"])
        none = report("podunit run, network none", samples["none"])
        print(f"  => the private network adds {(cni - none) * 1000:.1f} ms")
        if why_not is None:
            bridge = report("podman run -d, --network=bridge", samples["bridge"])
            pnone = report("podman run -d, --network=none", samples["pnone"])
            print(f"  => podman's bridge network adds {(bridge - pnone) * 1000:.1f} ms")
        else:
            print(f"  podman not measured: {why_not}")

        names = [f"m{i}" for i in range(args.pods)]
        paths = [manifest(tb, image, name, "podunit") for name in names]
        seconds = parallel(tb, [[*PODUNIT, "run", p] for p in paths], ENV)
        listed = tb.run([*PODUNIT, "list", "--json"], env=ENV).stdout
        with_ip = listed.count('"ip": "10.77.')
        print(f"{args.pods} podunit pods at once: {seconds:.2f} s, "
              f"{args.pods / seconds:.1f} pods/s ({with_ip} with an address)")  # fmt: skip
        parallel(tb, [[*PODUNIT, "rm", "--force", n] for n in names], ENV)
        if why_not is None:
            argvs = [[*PODMAN, "run", "-d", "--name", n, "--network=bridge", "bench",
                      "/bin/sh", "-c", APP] for n in names]  # fmt: skip
            seconds = parallel(tb, argvs)
            print(f"{args.pods} podman containers at once: {seconds:.2f} s, "
                  f"{args.pods / seconds:.1f} containers/s")  # fmt: skip
            tb.run([*PODMAN, "rm", "-f", "-a", "-t", "0"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
