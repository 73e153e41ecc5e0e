"""Pull + unpack benchmark: podunit vs `podman pull` vs `skopeo copy` + `umoci unpack`.

    sudo .venv/bin/python tests/benchmarks/bench_pull.py [--runs 3] [--mb 150]

Boots a testbed (systemd in nspawn, private network), builds a multi-layer
image of about --mb MB uncompressed from this machine's /usr/lib/python3*
and /usr/share, pushes it to a `docker-registry` on the testbed's
127.0.0.1, then measures side by side, in the same run, with a cold store
each time (median of --runs, tools interleaved):

  * podunit pull (download, verify, unpack)
  * podman pull (overlay storage on a real file system)
  * skopeo copy to an OCI layout + umoci unpack

and for podunit alone a warm pull (everything present) and the bytes a
second pod from the same image writes (its layers are shared, not copied).
Plain HTTP on loopback for all tools, so TLS costs do not differ.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path[:0] = [str(TESTS), str(REPO)]

from testbed import Testbed  # noqa: E402

from tests.fixtures.images import OciLayout, make_layer  # noqa: E402

PORT = 5055
REGISTRY = f"127.0.0.1:{PORT}"
IMAGE = f"{REGISTRY}/bench:v1"
SOURCES = ("/usr/lib/python3", "/usr/lib/python3.11", "/usr/share/doc", "/usr/share/man",
           "/usr/share/locale", "/usr/share/vim", "/usr/share/icons")  # fmt: skip


def collect(budget: int) -> list[list[Path]]:
    """Files from SOURCES up to `budget` bytes, one layer per source dir."""
    layers: list[list[Path]] = []
    total = 0
    for top in SOURCES:
        files = []
        for dirpath, _, names in os.walk(top):
            for name in sorted(names):
                path = Path(dirpath, name)
                if path.is_symlink() or not path.is_file():
                    continue
                size = path.stat().st_size
                if total + size > budget:
                    break
                files.append(path)
                total += size
        if files:
            layers.append(files)
        if total >= budget * 0.98:
            break
    return layers


def build_image(dest: Path, budget: int) -> tuple[int, int]:
    layout = OciLayout(dest)
    layers = []
    nfiles = size = 0
    for files in collect(budget):
        with tempfile.TemporaryFile() as buf:
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for path in files:
                    tar.add(path, arcname=str(path).lstrip("/"), recursive=False)
            buf.seek(0)
            data = buf.read()
        nfiles += len(files)
        size += len(data)
        layer = make_layer(b"", "none")
        layer.blob = gzip.compress(data, compresslevel=6, mtime=0)
        layer.media_type = "application/vnd.oci.image.layer.v1.tar+gzip"
        layer.diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
        layers.append(layer)
    layout.tag(layout.image(layers, config={"Cmd": ["/bin/true"]}), "v1")
    return nfiles, size


def timed(fn: Callable[[], object]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mb", type=int, default=150)
    args = parser.parse_args()
    with Testbed() as tb:
        run = tb.run
        layout = tb.shared_dir / "bench-layout"
        nfiles, size = build_image(layout, args.mb << 20)
        print(f"image: {len(os.listdir(layout / 'blobs/sha256')) - 2} layers, {nfiles} files, "
              f"{size / 1e6:.0f} MB uncompressed")  # fmt: skip
        conf = tb.shared_dir / "registry.yml"
        conf.write_text(
            f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: "
            f"{{rootdirectory: {tb.shared_dir}/regstore}}}}\nhttp: {{addr: {REGISTRY}}}\n"
        )
        run(["systemd-run", "--unit=bench-registry", "docker-registry", "serve", str(conf)])
        time.sleep(1)
        run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:v1",
             f"docker://{IMAGE}"], timeout=600)  # fmt: skip
        # Accept the unsigned bench image, as podman's default policy.json does.
        policy = tb.shared_dir / "bench-policy.json"
        policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
        env = {"PYTHONPATH": str(REPO), "PODUNIT_INSECURE_REGISTRIES": REGISTRY,
               "PODUNIT_POLICY": str(policy)}  # fmt: skip
        base = Path("/var/lib/podunit/bench")

        def podunit(n: int) -> None:
            state = {**env, "PODUNIT_STATE_DIR": f"{base}/podunit-{n}"}
            run([sys.executable, "-m", "podunit", "pull", "-q", IMAGE], env=state, timeout=600)

        def podman(n: int) -> None:
            run(["podman", "--root", f"{base}/podman-{n}", "--runroot", f"/run/bench-podman-{n}",
                 "--storage-driver", "overlay", "pull", "-q", "--tls-verify=false", IMAGE],
                timeout=600)  # fmt: skip

        def skopeo_umoci(n: int) -> None:
            oci = f"{base}/oci-{n}"
            run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{IMAGE}",
                 f"oci:{oci}:v1"], timeout=600)  # fmt: skip
            run(["umoci", "unpack", "--image", f"{oci}:v1", f"{base}/bundle-{n}"], timeout=600)

        results: dict[str, list[float]] = {"podunit": [], "podman": [], "skopeo+umoci": []}
        tools = {"podunit": podunit, "podman": podman, "skopeo+umoci": skopeo_umoci}
        for n in range(args.runs):
            for name, fn in tools.items():
                run(["sync"])
                results[name].append(timed(lambda fn=fn, n=n: fn(n)))  # type: ignore[misc]
        med = {k: statistics.median(v) for k, v in results.items()}
        for name, times in results.items():
            print(f"{name:14} cold pull+unpack: median {med[name]:.2f} s  "
                  f"({', '.join(f'{t:.2f}' for t in times)})")  # fmt: skip
        print(f"ratio podman / podunit:        {med['podman'] / med['podunit']:.2f}x")
        print(f"ratio skopeo+umoci / podunit:  {med['skopeo+umoci'] / med['podunit']:.2f}x")
        warm = [timed(lambda: podunit(0)) for _ in range(args.runs)]
        print(f"podunit warm pull (all present): median {statistics.median(warm):.2f} s")
        second_pod_bytes(tb, env, base)
        run(["systemctl", "stop", "bench-registry"], check=False)
    return 0


def second_pod_bytes(tb: Testbed, env: dict[str, str], base: Path) -> None:
    state = {**env, "PODUNIT_STATE_DIR": f"{base}/podunit-0"}
    manifest = tb.shared_dir / "bench-pod.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: NAME}\nspec:\n  restartPolicy: Never\n"
        f"  containers:\n  - {{name: main, image: 'docker://{IMAGE}', "
        "imagePullPolicy: IfNotPresent, command: ['/usr/bin/true']}\n"
    )

    def used() -> int:
        out = tb.run(["du", "-sxb", f"{base}/podunit-0"]).stdout
        return int(out.split()[0])

    for name in ("first", "second"):
        before = used()
        path = manifest.with_name(f"bench-{name}.yaml")
        path.write_text(manifest.read_text().replace("NAME", f"bench-{name}"))
        elapsed = timed(
            lambda p=path: tb.run(  # type: ignore[misc]
                [sys.executable, "-m", "podunit", "run", "--wait", str(p)], env=state, check=False
            )
        )
        print(f"pod {name} from the same image: {used() - before} bytes written to the store "
              f"dir, run took {elapsed:.2f} s")  # fmt: skip
    for name in ("first", "second"):
        tb.run([sys.executable, "-m", "podunit", "rm", "-f", f"bench-{name}"], env=state,
               check=False)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
