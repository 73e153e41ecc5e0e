"""Images end to end: real registries (TLS, Basic and Bearer auth) in the testbed,
skopeo-made fixtures and archives, `podunit pull/load/images/rmi/run`.

Everything talks over 127.0.0.1 inside the testbed's private network namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from images_build import OciImage
from podunit_cli import REPO
from registry import PASSWORD, USER, Registries, start_registries, stop_registries
from testbed import Testbed

sys.path.insert(0, str(REPO))
from tests.fixtures.images import (  # noqa: E402
    OCI_INDEX,
    OciLayout,
    TarBuilder,
    host_arch,
    make_layer,
)


class Cli:
    """`podunit` in the testbed with the registries' CA and an auth file of its own."""

    def __init__(self, testbed: Testbed, regs: Registries) -> None:
        self.testbed = testbed
        self.regs = regs
        self.auth_file = regs.root / "auth.json"
        # These tests are about transport and storage: their unsigned test images are
        # accepted by a policy of their own (test_trust.py tests the policies).
        accept_all = regs.root / "policy-accept-all.json"
        accept_all.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
        self.env = {
            "PYTHONPATH": str(REPO),
            "PODUNIT_CERTS_DIR": str(regs.certs_dir),
            "REGISTRY_AUTH_FILE": str(self.auth_file),
            "PODUNIT_POLICY": str(accept_all),
        }

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "podunit", *args]

    def __call__(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return self.testbed.run(self.argv(*args), check=check, input=input, env=self.env,
                                timeout=timeout)  # fmt: skip

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return self.testbed.spawn(self.argv(*args), env=self.env)

    def login(self) -> None:
        self.auth_file.write_text(json.dumps({"auths": {
            self.regs.basic: {"auth": _b64(f"{USER}:{PASSWORD}")},
            self.regs.token: {"auth": _b64(f"{USER}:{PASSWORD}")},
        }}))  # fmt: skip

    def images(self) -> list[dict[str, object]]:
        return list(json.loads(self("images", "--json").stdout))


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def regs(systemd: Testbed, busybox_image: OciImage) -> Iterator[Registries]:
    root = systemd.shared_dir / "registries"
    shutil.rmtree(root, ignore_errors=True)
    registries = start_registries(systemd, root)
    for host in (registries.basic, registries.token):
        registries.skopeo_push(systemd, busybox_image.reference, f"{host}/busybox:v1")
    try:
        yield registries
    finally:
        stop_registries(systemd)


@pytest.fixture
def cli(systemd: Testbed, regs: Registries) -> Iterator[Cli]:
    tool = Cli(systemd, regs)
    tool.login()
    yield tool
    tool.auth_file.unlink(missing_ok=True)


def store_dir(testbed: Testbed) -> Path:
    return testbed.state_dir


def visible(testbed: Testbed) -> set[str]:
    """Names in the store's blobs and layers dirs (what pulls made visible)."""
    names = set()
    for sub in ("blobs/sha256", "layers/sha256"):
        d = store_dir(testbed) / sub
        names |= {f"{sub}/{n}" for n in (os.listdir(d) if d.is_dir() else [])}
    return names


def small_image(root: Path, marker: str, **kwargs: object) -> OciLayout:
    """A one-layer OCI layout tagged "t" whose only file is /marker."""
    layout = OciLayout(root)
    layer = make_layer(TarBuilder().file("marker", marker.encode() * 100).bytes())
    layout.tag(layout.image([layer], **kwargs), "t")  # type: ignore[arg-type]
    return layout


# ---- registry pulls ------------------------------------------------------------------------


def test_pull_tls_basic_auth_login_logout(cli: Cli, regs: Registries) -> None:
    ref = f"docker://{regs.basic}/busybox:v1"
    cli.auth_file.unlink()
    denied = cli("pull", ref, check=False)
    assert denied.returncode == 1
    assert "authentication required" in denied.stderr and "podunit login" in denied.stderr
    wrong = cli("login", "-u", USER, "--password-stdin", regs.basic, input="nope\n", check=False)
    assert wrong.returncode == 1 and "rejected" in wrong.stderr
    cli("login", "-u", USER, "--password-stdin", regs.basic, input=PASSWORD + "\n")
    assert regs.basic in json.loads(cli.auth_file.read_text())["auths"]
    out = json.loads(cli("pull", "--json", ref).stdout)
    assert out["ref"] == ref and out["digest"].startswith("sha256:")
    listed = {i["ref"]: i for i in cli.images()}
    assert listed[ref]["digest"] == out["digest"] and int(str(listed[ref]["size"])) > 0
    assert listed[ref]["created"]
    cli("logout", regs.basic)
    assert regs.basic not in json.loads(cli.auth_file.read_text())["auths"]
    assert cli("logout", regs.basic, check=False).returncode == 1


def test_pull_bearer_token_auth(cli: Cli, regs: Registries) -> None:
    ref = f"docker://{regs.token}/busybox:v1"
    quiet = cli("pull", "--quiet", ref)
    assert quiet.stdout.strip().startswith("sha256:") and quiet.stderr == ""
    cli.auth_file.unlink()
    # Anonymous tokens carry no access: the registry says insufficient_scope.
    denied = cli("pull", f"{regs.token}/busybox:v1", check=False)
    assert denied.returncode == 1 and "authentication required" in denied.stderr


def test_untrusted_ca_is_refused(cli: Cli, regs: Registries) -> None:
    env = dict(cli.env, PODUNIT_CERTS_DIR="/nonexistent")
    result = cli.testbed.run(cli.argv("pull", f"{regs.basic}/busybox:v1"), env=env, check=False)
    assert result.returncode == 1 and "certificate verification failed" in result.stderr


def test_platform_selection_from_multiarch_index(
    systemd: Testbed, cli: Cli, regs: Registries, busybox_image: OciImage
) -> None:
    layout = OciLayout(systemd.shared_dir / "multiarch")
    for blob in (busybox_image.layout / "blobs/sha256").iterdir():
        shutil.copy(blob, layout.path / "blobs/sha256" / blob.name)
    index = json.loads((busybox_image.layout / "index.json").read_text())
    mine = {k: index["manifests"][0][k] for k in ("mediaType", "digest", "size")}
    foreign = "s390x" if host_arch() != "s390x" else "arm64"
    other = layout.image([make_layer(TarBuilder().file("other").bytes())])
    attestation = dict(
        layout.image([]), annotations={"vnd.docker.reference.type": "attestation-manifest"}
    )
    multi = layout.platform_index([
        (other, {"os": "linux", "architecture": foreign}),
        (attestation, {"os": "unknown", "architecture": "unknown"}),
        (mine, {"os": "linux", "architecture": host_arch()}),
    ])  # fmt: skip
    assert multi["mediaType"] == OCI_INDEX
    layout.tag(multi, "multi")
    regs.skopeo_push(systemd, f"oci:{layout.path}:multi", f"{regs.basic}/multi:v1", "--all")
    out = json.loads(cli("pull", "--json", f"{regs.basic}/multi:v1").stdout)
    assert out["digest"] == mine["digest"]


def test_run_pulls_registry_image_on_demand(systemd: Testbed, cli: Cli, regs: Registries) -> None:
    image = f"{regs.basic}/busybox:ondemand"
    regs.skopeo_push(systemd, f"docker://{regs.basic}/busybox:v1", image,
                     "--src-creds", f"{USER}:{PASSWORD}", "--src-cert-dir",
                     str(regs.certs_dir / regs.basic))  # fmt: skip
    manifest = regs.root / "ondemand.yaml"
    never = manifest.with_name("never.yaml")
    text = f"""apiVersion: v1
kind: Pod
metadata: {{name: POD}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: docker://{image}
    imagePullPolicy: POLICY
    command: ["/bin/sh", "-c", "echo pulled-and-ran"]
"""
    never.write_text(text.replace("POD", "never").replace("POLICY", "Never"))
    manifest.write_text(text.replace("POD", "ondemand").replace("POLICY", "IfNotPresent"))
    refused = cli("run", "--wait", "--rm", str(never), check=False)
    assert refused.returncode == 1 and "imagePullPolicy is Never" in refused.stderr
    # The built-in trust policy refuses unsigned registry images until the admin opens them.
    accept_all = cli.env.pop("PODUNIT_POLICY")
    untrusted = cli("run", "--wait", "--rm", str(manifest), check=False)
    assert untrusted.returncode != 0 and "podunit trust set --type accept" in untrusted.stderr
    cli("trust", "set", "--type", "accept", f"{regs.basic}/busybox")
    try:
        cli("run", "--wait", "--rm", str(manifest))
        journal = systemd.run(["journalctl", "--no-pager", "-o", "cat", "-u",
                               "podunit-ondemand_main.service"]).stdout  # fmt: skip
        assert "pulled-and-ran" in journal
        assert f"docker://{image}" in {i["ref"] for i in cli.images()}
        # Now present: Never is satisfied.
        cli("run", "--wait", "--rm", str(never))
    finally:
        systemd.run(["rm", "-f", "/etc/podunit/policy.json"])
        cli.env["PODUNIT_POLICY"] = accept_all


# ---- archives --------------------------------------------------------------------------------


def test_load_docker_and_oci_archives(
    systemd: Testbed, cli: Cli, regs: Registries, busybox_image: OciImage
) -> None:
    archives = systemd.shared_dir / "archives"
    archives.mkdir(exist_ok=True)
    docker_tar, oci_tar = archives / "bb-docker.tar", archives / "bb-oci.tar"
    for path in (docker_tar, oci_tar):
        path.unlink(missing_ok=True)
    systemd.run(["skopeo", "copy", "--quiet", busybox_image.reference,
                 f"docker-archive:{docker_tar}:loaded/busybox:v2"])  # fmt: skip
    systemd.run(["skopeo", "copy", "--quiet", busybox_image.reference, f"oci-archive:{oci_tar}:v3"])
    out = cli("load", str(docker_tar)).stdout
    assert "docker://docker.io/loaded/busybox:v2" in out
    out = cli("load", str(oci_tar)).stdout
    assert f"oci-archive:{oci_tar}" in out
    refs = {i["ref"] for i in cli.images()}
    assert "docker://docker.io/loaded/busybox:v2" in refs
    # The loaded name runs without any registry (there is no docker.io here).
    pod = archives / "loaded.yaml"
    pod.write_text("""apiVersion: v1
kind: Pod
metadata: {name: loaded}
spec:
  restartPolicy: Never
  containers:
  - {name: main, image: "loaded/busybox:v2", imagePullPolicy: Never, command: ["true"]}
""")
    cli("run", "--wait", "--rm", str(pod))
    # The docker-archive: transport directly; a tampered archive is refused.
    cli("pull", f"docker-archive:{docker_tar}")
    layout = small_image(systemd.shared_dir / "archive-src", "archived")
    bad = archives / "bad.tar"
    bad.unlink(missing_ok=True)
    systemd.run(["skopeo", "copy", "--quiet", f"oci:{layout.path}:t", f"docker-archive:{bad}"])
    data = bytearray(bad.read_bytes())
    at = data.find(b"archived" * 4)
    data[at : at + 8] = b"tampered"
    bad.write_bytes(bytes(data))
    refused = cli("pull", f"docker-archive:{bad}", check=False)
    assert refused.returncode == 1 and "digest mismatch" in refused.stderr


# ---- integrity -------------------------------------------------------------------------------


def test_corrupted_registry_storage_is_refused(
    systemd: Testbed, cli: Cli, regs: Registries
) -> None:
    layout = small_image(systemd.shared_dir / "tamper-src", "tamper")
    layer_digest = json.loads((layout.blob_path(layout.index[0]["digest"])).read_text())["layers"][
        0
    ]["digest"]
    regs.skopeo_push(systemd, f"oci:{layout.path}:t", f"{regs.basic}/tampered:v1")
    hex_ = layer_digest[7:]
    data_path = regs.storage(5000) / f"docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}/data"
    blob = bytearray(data_path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data_path.write_bytes(bytes(blob))
    before = visible(systemd)
    result = cli("pull", f"{regs.basic}/tampered:v1", check=False)
    assert result.returncode == 1
    assert f"layer {layer_digest}: digest mismatch" in result.stderr
    assert visible(systemd) - before <= {
        f"blobs/sha256/{layout.index[0]['digest'][7:]}"
    } or not any(hex_ in n for n in visible(systemd) - before)
    assert f"docker://{regs.basic}/tampered:v1" not in {i["ref"] for i in cli.images()}


def test_wrong_diff_id_is_refused(systemd: Testbed, cli: Cli, regs: Registries) -> None:
    layout = small_image(systemd.shared_dir / "diffid-src", "diffid",
                         diff_ids=["sha256:" + "ab" * 32])  # fmt: skip
    regs.skopeo_push(systemd, f"oci:{layout.path}:t", f"{regs.basic}/diffid:v1")
    result = cli("pull", f"{regs.basic}/diffid:v1", check=False)
    assert result.returncode == 1 and "diff_id mismatch" in result.stderr


# ---- store robustness ------------------------------------------------------------------------


def test_concurrent_pulls_download_each_layer_once(
    systemd: Testbed, cli: Cli, regs: Registries
) -> None:
    layout = OciLayout(systemd.shared_dir / "concurrent-src")
    layers = [make_layer(TarBuilder().file(f"f{i}", os.urandom(1 << 20)).bytes()) for i in range(3)]
    layout.tag(layout.image(layers), "t")
    regs.skopeo_push(systemd, f"oci:{layout.path}:t", f"{regs.basic}/concurrent:v1")
    procs = [cli.spawn("--debug", "pull", f"{regs.basic}/concurrent:v1") for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    unpacked = sum(err.count("unpacked layer") for _, err in outputs)
    assert unpacked == 3, outputs


def test_kill9_mid_pull_leaves_consistent_store(
    systemd: Testbed, cli: Cli, regs: Registries
) -> None:
    layout = OciLayout(systemd.shared_dir / "big-src")
    big = TarBuilder().file("big", os.urandom(96 << 20)).bytes()
    layout.tag(layout.image([make_layer(big, "none")]), "t")
    regs.skopeo_push(systemd, f"oci:{layout.path}:t", f"{regs.basic}/big:v1")
    before = visible(systemd)
    tmp = store_dir(systemd) / "tmp"
    proc = cli.spawn("pull", f"{regs.basic}/big:v1")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        staged = [p for p in tmp.glob("*/*") if p.is_file() or p.is_dir()]
        if any(p.name.startswith("blob-") and p.stat().st_size > (8 << 20) for p in staged):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert visible(systemd) - before <= {
        n for n in visible(systemd) if n.startswith("blobs/")
    }  # at most complete small blobs, never a layer
    assert not any(n.startswith("layers/") for n in visible(systemd) - before)
    out = json.loads(cli("pull", "--json", f"{regs.basic}/big:v1").stdout)
    assert out["layers"]
    assert list(tmp.iterdir()) == []


def test_rmi_refuses_image_used_by_pod(systemd: Testbed, cli: Cli, regs: Registries) -> None:
    image = f"{regs.basic}/busybox:v1"
    pod = regs.root / "user.yaml"
    pod.write_text(f"""apiVersion: v1
kind: Pod
metadata: {{name: imguser}}
spec:
  restartPolicy: Never
  containers:
  - {{name: main, image: "{image}", command: ["true"]}}
""")
    cli("run", "--wait", str(pod))
    try:
        refused = cli("rmi", image, check=False)
        assert refused.returncode == 1 and "in use by pod(s) imguser" in refused.stderr
        cli("image", "prune", "--all")  # keeps what the (exited) pod uses
        plan = json.loads(systemd.run(["cat", "/run/podunit/sandboxes/imguser/plan.json"]).stdout)
        for layer in plan["apps"][0]["layers"]:
            systemd.run(["test", "-d", layer])
        assert f"docker://{image}" in {i["ref"] for i in cli.images()}
    finally:
        cli("rm", "--force", "imguser")
    cli("rmi", image)
    assert f"docker://{image}" not in {i["ref"] for i in cli.images()}
    verify = json.loads(cli("image", "verify", "--json").stdout)
    assert verify["corrupt"] == [] and verify["incomplete"] == []


# ---- registry configuration ------------------------------------------------------------------


def test_mirror_serves_primary_name_and_blocked_registry_is_refused(
    systemd: Testbed, cli: Cli, regs: Registries
) -> None:
    # The image exists only on the "mirror" (the Basic-auth registry, under a
    # path of its own); the primary (the Bearer one) has never seen it.
    layout = small_image(systemd.shared_dir / "mirror-src", "mirrored")
    regs.skopeo_push(systemd, f"oci:{layout.path}:t", f"{regs.basic}/mirror/app:v1")
    conf = regs.root / "registries-mirror.conf"
    conf.write_text(f"""
[[registry]]
location = "{regs.token}"
[[registry.mirror]]
location = "127.0.0.1:9/nothing-listens-here"
[[registry.mirror]]
location = "{regs.basic}/mirror"

[[registry]]
prefix = "{regs.basic}/forbidden"
blocked = true
""")
    # Trust is not what this test is about: a policy of its own accepts these images.
    policy = regs.root / "policy-accept.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    env = dict(cli.env, PODUNIT_REGISTRIES_CONF=str(conf), PODUNIT_POLICY=str(policy))
    primary = f"docker://{regs.token}/app:v1"
    result = cli.testbed.run(cli.argv("--debug", "pull", "--json", primary), env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ref"] == primary
    assert f"pulling from mirror {regs.basic}/mirror/app" in result.stderr
    assert primary in {i["ref"] for i in cli.images()}
    # Without the mirror the primary has no such image.
    no_mirror = dict(env, PODUNIT_REGISTRIES_CONF="/nonexistent")
    missing = cli.testbed.run(cli.argv("pull", primary), env=no_mirror, check=False)
    assert missing.returncode == 1 and "manifest unknown" in missing.stderr
    cli("rmi", primary)
    blocked = cli.testbed.run(cli.argv("pull", f"{regs.basic}/forbidden/app:v1"), env=env,
                              check=False)  # fmt: skip
    assert blocked.returncode == 1
    assert f"registry {regs.basic}/forbidden is blocked" in blocked.stderr
