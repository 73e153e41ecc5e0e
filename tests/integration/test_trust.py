"""Trust end to end in the testbed: GPG interop with Debian's skopeo both ways, cosign
signatures made by `podunit sign` on a real registry, and refusals before any layer.

Most pulls run podunit's ImageStore with `make_verifier()` inside the testbed (PULL below),
through the real registry client, with a policy file per case. The admin test at the end
drives only the CLI, as an admin would: `podunit trust` edits /etc/podunit/policy.json,
then `podunit run` and `podunit pull` enforce it.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from images_build import OciImage
from podunit_cli import REPO
from registry import PASSWORD, USER, Registries, start_registries, stop_registries
from testbed import Testbed

sys.path.insert(0, str(REPO))
from tests.fixtures.images import Layer, OciLayout, TarBuilder, make_layer  # noqa: E402

VECTORS = REPO.parent / "shared/fixtures/containers-image-signatures"
GNUPGHOME = "/root/podunit-trust-gnupg"  # short path: gpg-agent puts its socket there
PULL = """
import sys
from pathlib import Path
from podunit.images.reference import parse_reference
from podunit.images.signatures import TrustError
from podunit.images.store import ImageStore
from podunit.trust.verifier import make_verifier

store = ImageStore(Path(sys.argv[1]), verifier=make_verifier(Path(sys.argv[2])))
try:
    image = store.pull(parse_reference(sys.argv[3]))
except TrustError as exc:
    print(exc)
    sys.exit(3)
print("PULLED", image.manifest_digest)
"""


@dataclass
class Env:
    testbed: Testbed
    regs: Registries
    root: Path
    fingerprint: str
    pubkey: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            "PYTHONPATH": str(REPO), "GNUPGHOME": GNUPGHOME,
            "PODUNIT_CERTS_DIR": str(self.regs.certs_dir),
            "REGISTRY_AUTH_FILE": str(self.root / "auth.json"),
            "PODUNIT_REGISTRIES_D": str(self.root / "registries.d"),
        }  # fmt: skip

    def podunit(self, *args: str, check: bool = True) -> str:
        argv = [sys.executable, "-m", "podunit", *args]
        result = self.testbed.run(argv, env=self.env, check=check, timeout=300)
        return result.stdout + result.stderr

    def skopeo(self, *args: str, check: bool = True) -> tuple[int, str]:
        argv = ["skopeo", "--registries.d", str(self.root / "registries.d"), *args]
        result = self.testbed.run(argv, env=self.env, check=check, timeout=300)
        return result.returncode, result.stdout + result.stderr

    def policy(self, name: str, scope: str, requirement: dict[str, object]) -> Path:
        path = self.root / f"{name}.json"
        doc = {"default": [{"type": "reject"}], "transports": {"docker": {scope: [requirement]}}}
        path.write_text(json.dumps(doc))
        return path

    def pull(self, policy: Path, ref: str) -> tuple[int, str, Path]:
        store = self.root / "stores" / f"store-{len(list((self.root / 'stores').iterdir()))}"
        argv = [sys.executable, "-c", PULL, str(store), str(policy), ref]
        result = self.testbed.run(argv, env=self.env, check=False, timeout=300)
        return result.returncode, result.stdout + result.stderr, store

    def push(self, src: str, dest: str, *extra: str) -> None:
        self.skopeo("copy", "--quiet", *extra, "--dest-creds", f"{USER}:{PASSWORD}",
                    "--dest-cert-dir", str(self.regs.certs_dir / self.regs.basic),
                    src, f"docker://{dest}")  # fmt: skip


def gpg_key(testbed: Testbed, pubkey: Path) -> str:
    env = {"GNUPGHOME": GNUPGHOME}
    testbed.run(["rm", "-rf", GNUPGHOME])
    testbed.run(["install", "-d", "-m", "700", GNUPGHOME])
    testbed.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key",
                 "podunit trust test <trust@podunit.invalid>", "default", "default", "never"],
                env=env)  # fmt: skip
    listing = testbed.run(["gpg", "--with-colons", "--list-keys"], env=env).stdout
    fingerprint = next(
        line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")
    )
    exported = testbed.run(["gpg", "--armor", "--export", fingerprint], env=env).stdout
    pubkey.write_text(exported)
    return fingerprint


@pytest.fixture(scope="module")
def trust(systemd: Testbed, busybox_image: OciImage) -> Iterator[Env]:
    root = systemd.shared_dir / "trust"
    shutil.rmtree(root, ignore_errors=True)
    (root / "stores").mkdir(parents=True)
    (root / "registries.d").mkdir()
    # skopeo writes lookaside signatures here, and podunit reads them from here.
    (root / "registries.d" / "test.yaml").write_text(
        f"default-docker:\n  lookaside: file://{root}/sigstore\n"
    )
    regs = start_registries(systemd, root / "registries")
    (root / "auth.json").write_text(json.dumps({"auths": {regs.basic: {
        "auth": __import__("base64").b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))  # fmt: skip
    env = Env(systemd, regs, root, gpg_key(systemd, root / "pub.asc"), root / "pub.asc")
    try:
        yield env
    finally:
        systemd.run(["gpgconf", "--kill", "gpg-agent"], env={"GNUPGHOME": GNUPGHOME}, check=False)
        stop_registries(systemd)


def layers_unpacked(store: Path) -> list[str]:
    layers = store / "layers" / "sha256"
    return sorted(p.name for p in layers.iterdir()) if layers.is_dir() else []


def test_skopeo_gpg_signature_verified_by_podunit(trust: Env, busybox_image: OciImage) -> None:
    repo = f"{trust.regs.basic}/signed/busybox"
    trust.push(busybox_image.reference, f"{repo}:skopeo", "--sign-by", trust.fingerprint)
    assert list((trust.root / "sigstore" / "signed").glob("busybox@sha256=*/signature-1"))
    ours = trust.policy(
        "ours", repo, {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(trust.pubkey)}
    )
    code, out, store = trust.pull(ours, f"docker://{repo}:skopeo")
    assert code == 0, out
    assert layers_unpacked(store)
    # the same signature, but the policy trusts another key: refused before any layer
    theirs = trust.policy(
        "theirs",
        repo,
        {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(VECTORS / "public-key.gpg")},
    )
    code, out, store = trust.pull(theirs, f"docker://{repo}:skopeo")
    assert code == 3, out
    assert f"signed by key {trust.fingerprint}, which is not one of the trusted keys" in out
    assert layers_unpacked(store) == []
    # the signature names :skopeo; the same manifest pulled as another tag is refused
    trust.push(f"docker://{repo}:skopeo", f"{repo}:retagged", "--src-cert-dir",
               str(trust.regs.certs_dir / trust.regs.basic), "--src-creds", f"{USER}:{PASSWORD}")  # fmt: skip
    code, out, store = trust.pull(ours, f"docker://{repo}:retagged")
    assert (
        code == 3
        and f"the signature is for {repo}:skopeo, which does not match {repo}:retagged" in out
    )
    assert layers_unpacked(store) == []


def test_podunit_gpg_signature_verified_by_skopeo(trust: Env, busybox_image: OciImage) -> None:
    repo = f"{trust.regs.basic}/podunit-signed/busybox"
    trust.push(busybox_image.reference, f"{repo}:v1")
    out = trust.podunit(
        "sign",
        "--gpg",
        trust.fingerprint,
        "--lookaside",
        str(trust.root / "sigstore"),
        f"docker://{repo}:v1",
    )
    assert "/podunit-signed/busybox@sha256=" in out and out.strip().endswith("/signature-1")
    creds = [
        "--src-creds",
        f"{USER}:{PASSWORD}",
        "--src-cert-dir",
        str(trust.regs.certs_dir / trust.regs.basic),
    ]
    ours = trust.policy(
        "skopeo-ours",
        repo,
        {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(trust.pubkey)},
    )
    code, out = trust.skopeo(
        "copy", "--policy", str(ours), *creds, f"docker://{repo}:v1", f"dir:{trust.root}/copied"
    )
    assert code == 0, out
    theirs = trust.policy(
        "skopeo-theirs",
        repo,
        {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(VECTORS / "public-key.gpg")},
    )
    code, out = trust.skopeo(
        "copy",
        "--policy",
        str(theirs),
        *creds,
        f"docker://{repo}:v1",
        f"dir:{trust.root}/refused",
        check=False,
    )
    assert code != 0 and "rejected" in out.lower(), out
    # and podunit accepts its own signature on pull
    code, out, _ = trust.pull(
        trust.policy(
            "pull-ours",
            repo,
            {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(trust.pubkey)},
        ),
        f"docker://{repo}:v1",
    )
    assert code == 0, out


def test_cosign_signature_pushed_and_verified_on_pull(trust: Env, busybox_image: OciImage) -> None:
    repo = f"{trust.regs.basic}/cosigned/busybox"
    trust.push(busybox_image.reference, f"{repo}:v1")
    trust.push(busybox_image.reference, f"{repo}:unsigned", "--format", "v2s2")  # another digest
    trust.podunit("key", "generate", "--no-password", "--output", str(trust.root / "cosign"))
    trust.podunit("key", "generate", "--no-password", "--output", str(trust.root / "other"))
    out = trust.podunit("sign", "--key", str(trust.root / "cosign.key"), f"docker://{repo}:v1")
    assert "signature manifest sha256:" in out
    policy = trust.policy(
        "cosign", repo, {"type": "sigstoreSigned", "keyPath": str(trust.root / "cosign.pub")}
    )
    code, out, store = trust.pull(policy, f"docker://{repo}:v1")
    assert code == 0, out
    code, out, store = trust.pull(policy, f"docker://{repo}:unsigned")
    assert code == 3 and "no cosign signatures" in out, out
    assert layers_unpacked(store) == []
    wrong = trust.policy(
        "cosign-wrong", repo, {"type": "sigstoreSigned", "keyPath": str(trust.root / "other.pub")}
    )
    code, out, store = trust.pull(wrong, f"docker://{repo}:v1")
    assert code == 3 and "not signed by any of the trusted keys" in out, out
    assert layers_unpacked(store) == []


def test_builtin_policy_refuses_registry_and_names_the_command(trust: Env) -> None:
    repo = f"{trust.regs.basic}/cosigned/busybox"
    code, out, store = trust.pull(trust.root / "no-such-policy.json", f"docker://{repo}:v1")
    assert code == 3, out
    assert f"podunit trust set --type accept {repo}" in out
    assert layers_unpacked(store) == []


# ---- the admin's policy, through the CLI -------------------------------------------------

ADMIN_POLICY = Path("/etc/podunit/policy.json")  # podunit's default: no PODUNIT_POLICY here
POD = """apiVersion: v1
kind: Pod
metadata: {name: trusted}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: docker://IMAGE
    imagePullPolicy: Always
    command: ["/bin/sh", "-c", "cat /marker"]
"""


def marked_image(layout: Path, busybox: OciImage, marker: str) -> str:
    """busybox plus a layer of its own holding /marker: an image whose top layer no other
    test has, so that "no layer was unpacked" can be told from "it was there already".
    Returns its oci: reference."""
    base = busybox.layout
    index = json.loads((base / "index.json").read_text())
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == busybox.tag)  # fmt: skip
    manifest = json.loads((base / "blobs/sha256" / desc["digest"][7:]).read_text())
    config = json.loads((base / "blobs/sha256" / manifest["config"]["digest"][7:]).read_text())
    layers = [
        Layer((base / "blobs/sha256" / d["digest"][7:]).read_bytes(), d["mediaType"], diff_id)
        for d, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True)
    ]
    layers.append(make_layer(TarBuilder().file("marker", f"{marker}\n".encode()).bytes()))
    out = OciLayout(layout)
    out.tag(out.image(layers, config=config["config"]), "t")
    return f"oci:{layout}:t"


def store_layers(testbed: Testbed) -> set[str]:
    layers = testbed.state_dir / "layers" / "sha256"
    return {p.name for p in layers.iterdir()} if layers.is_dir() else set()


def pod_units(testbed: Testbed) -> str:
    return testbed.run(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                        "podunit-trusted*"]).stdout.strip()  # fmt: skip


@pytest.fixture
def admin_policy(trust: Env) -> Iterator[None]:
    """The session testbed's /etc/podunit/policy.json, removed afterwards: every other
    test relies on the built-in default."""
    trust.testbed.run(["rm", "-f", str(ADMIN_POLICY)])
    try:
        yield
    finally:
        trust.testbed.run(["rm", "-f", str(ADMIN_POLICY)])
        cli(trust, "rm", "--force", "trusted")  # if a failed assertion left it behind


def test_admin_policy_enforced_by_run_and_pull(
    trust: Env, busybox_image: OciImage, admin_policy: None
) -> None:
    repo = f"{trust.regs.basic}/trusted/app"
    for name in ("admin", "ops", "rogue"):
        trust.podunit("key", "generate", "--no-password", "--output", str(trust.root / name))
    # "Reject everything except images signed by our keys", with podunit's own commands.
    trust.podunit("trust", "set", "--type", "reject", "default")
    trust.podunit("trust", "set", "--type", "sigstoreSigned", "--pubkeysfile",
                  str(trust.root / "admin.pub"), f"{trust.regs.basic}/trusted")  # fmt: skip
    trust.podunit("trust", "add-key", f"{trust.regs.basic}/trusted", str(trust.root / "ops.pub"))
    shown = trust.podunit("trust", "show")
    assert f"policy: {ADMIN_POLICY}" in shown and "sigstoreSigned" in shown, shown
    pod = trust.root / "trusted.yaml"
    pod.write_text(POD.replace("IMAGE", f"{repo}:v1"))
    markers = {case: secrets.token_hex(8) for case in ("unsigned", "rogue", "signed")}

    def publish(case: str, key: str | None) -> None:
        """Push this case's own image to repo:v1 (replacing the last), signed with `key`."""
        trust.push(marked_image(trust.root / f"img-{case}", busybox_image, markers[case]),
                   f"{repo}:v1")  # fmt: skip
        if key:
            trust.podunit("sign", "--key", str(trust.root / f"{key}.key"), f"docker://{repo}:v1")

    def refused(why: str) -> None:
        before = store_layers(trust.testbed)
        for args in (("run", "--wait", "--rm", str(pod)), ("pull", f"docker://{repo}:v1")):
            result = cli(trust, *args)
            out = result.stdout + result.stderr
            assert result.returncode != 0, out
            assert f'scope "{trust.regs.basic}/trusted"' in out and "(sigstoreSigned" in out
            assert why in out, out
            assert pod_units(trust.testbed) == ""
        assert store_layers(trust.testbed) == before

    publish("unsigned", None)
    refused("no cosign signatures")
    publish("rogue", "rogue")
    refused("not signed by any of the trusted keys")
    publish("signed", "admin")
    before = store_layers(trust.testbed)
    cli(trust, "run", "--wait", "--rm", str(pod), check=True)
    journal = trust.testbed.run(["journalctl", "--no-pager", "-o", "cat", "-u",
                                 "podunit-trusted_main.service"]).stdout  # fmt: skip
    assert markers["signed"] in journal
    assert markers["rogue"] not in journal and markers["unsigned"] not in journal
    assert store_layers(trust.testbed) - before  # the signed image's own layer, unpacked
    assert cli(trust, "pull", f"docker://{repo}:v1", check=True).returncode == 0


def cli(trust: Env, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """`podunit ARGS` in the testbed, with the registry's CA and credentials only: the
    policy is the one at its default path."""
    argv = [sys.executable, "-m", "podunit", *args]
    return trust.testbed.run(argv, env=trust.env, check=check, timeout=300)
