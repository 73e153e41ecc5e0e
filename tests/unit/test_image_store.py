"""ImageStore: pulling OCI layouts and archives, integrity, concurrency, crashes."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from podunit.errors import ImageError, IntegrityError  # noqa: E402
from podunit.images.reference import ImageReference, parse_reference  # noqa: E402
from podunit.images.store import ImageStore  # noqa: E402
from tests.fixtures.images import (  # noqa: E402
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    OciLayout,
    TarBuilder,
    host_arch,
    make_archive,
    make_layer,
    sha256,
    simple_layers,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (whiteouts, chown)")


def oci(path: Path, tag: str | None = None) -> ImageReference:
    return parse_reference(f"oci:{path}" + (f":{tag}" if tag else ""))


def assert_nothing_visible(store: ImageStore) -> None:
    for sub in (store.blobs, store.layers, store.images):
        assert not sub.exists() or list(sub.iterdir()) == [], f"{sub} is not empty"


@pytest.fixture
def layout(tmp_path: Path) -> OciLayout:
    return OciLayout(tmp_path / "layout")


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "state")


@needs_root
def test_pull_tagged_multilayer(layout: OciLayout, store: ImageStore) -> None:
    layers = simple_layers()
    layout.tag(layout.image(layers), "v1").tag(layout.image(layers[:1]), "base")
    image = store.pull(oci(layout.path, "v1"))
    assert image.reference == f"oci:{layout.path}:v1"
    assert image.config.cmd == ("/bin/sh",) and image.config.env == ("A=1",)
    assert image.config.entrypoint is None and image.config.user == ""
    assert [p.parent.name for p in image.layers] == [x.diff_id[7:] for x in layers]
    assert all(p == store.root / "layers/sha256" / p.parent.name / "rootfs" for p in image.layers)
    assert (image.layers[0] / "bin/sh").read_bytes() == b"#!fake shell\n"
    assert os.readlink(image.layers[1] / "app/sh") == "/bin/sh"
    whiteout = (image.layers[2] / "etc/old").lstat()
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    for layer in layers:
        blob = store.blobs / layer.digest[7:]
        assert stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert store.lookup(oci(layout.path, "v1")) == image
    assert store.lookup(oci(layout.path, "base")) is None
    assert list((store.root / "tmp").iterdir()) == []
    # Pulling again is cheap and unpacks nothing.
    again = ImageStore(store.root)
    assert again.pull(oci(layout.path, "v1")) == image and again.unpacked == []


def test_pull_oci_archive(layout: OciLayout, store: ImageStore, tmp_path: Path) -> None:
    layout.tag(layout.image([make_layer(TarBuilder().file("hello", b"hi").bytes())]), "t")
    archive = make_archive(layout.path, tmp_path / "image.tar")
    ref = parse_reference(f"oci-archive:{archive}:t")
    image = store.pull(ref)
    assert (image.layers[0] / "hello").read_bytes() == b"hi"
    assert store.lookup(ref) == image


def test_single_untagged_and_tag_errors(layout: OciLayout, store: ImageStore) -> None:
    layout.tag(layout.image([make_layer(TarBuilder().file("a").bytes(), "none")]), None)
    assert store.pull(oci(layout.path)).layers
    layout.tag(layout.image([make_layer(TarBuilder().file("b").bytes())]), "other")
    with pytest.raises(ImageError, match="name one with :TAG"):
        store.pull(oci(layout.path))
    with pytest.raises(ImageError, match='no image tagged "nope"'):
        store.pull(oci(layout.path, "nope"))


def test_nested_index_picks_host_platform(layout: OciLayout, store: ImageStore) -> None:
    mine = layout.image([make_layer(TarBuilder().file("mine").bytes())])
    other = layout.image([make_layer(TarBuilder().file("other").bytes())])
    attestation = dict(layout.image([]), annotations={"vnd.docker.reference.type": "x"})
    foreign = "s390x" if host_arch() != "s390x" else "amd64"
    index = layout.platform_index(
        [
            (other, {"os": "linux", "architecture": foreign}),
            (attestation, {"os": "unknown", "architecture": "unknown"}),
            (mine, {"os": "linux", "architecture": host_arch()}),
        ]
    )
    layout.tag(index, "multi")
    image = store.pull(oci(layout.path, "multi"))
    assert image.manifest_digest == mine["digest"]
    assert (image.layers[0] / "mine").exists()


def test_docker_schema2_and_zstd(layout: OciLayout, store: ImageStore) -> None:
    layers = [
        make_layer(TarBuilder().file("gz").bytes(), "gzip", DOCKER_LAYER),
        make_layer(TarBuilder().file("zst", b"z" * 10000).bytes(), "zstd"),
    ]
    desc = layout.image(layers, manifest_type=DOCKER_MANIFEST, config_type=DOCKER_CONFIG)
    layout.tag(desc, "d")
    image = store.pull(oci(layout.path, "d"))
    assert (image.layers[0] / "gz").exists()
    assert (image.layers[1] / "zst").read_bytes() == b"z" * 10000


def test_unsupported_transport_and_layer_types(layout: OciLayout, store: ImageStore) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        store.pull(parse_reference("docker-archive:/nonexistent/image.tar"))
    tar = TarBuilder().file("x").bytes()
    for media_type, msg in [
        ("application/vnd.oci.image.layer.v1.tar+gzip+encrypted", "encrypted"),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "non-distributable"),
        ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "non-distributable"),
        ("application/x-unknown", "unsupported layer media type"),
    ]:
        lay = OciLayout(layout.path.parent / f"l{len(msg)}{media_type[-5:]}")
        lay.tag(lay.image([make_layer(tar, "gzip", media_type)]), "t")
        with pytest.raises(ImageError, match=msg):
            store.pull(oci(lay.path, "t"))
    assert_nothing_visible(store)


def test_tampered_layer_blob(layout: OciLayout, store: ImageStore) -> None:
    layers = simple_layers()
    layout.tag(layout.image(layers), "t")
    blob = layout.blob_path(layers[2].digest)
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=f"expected {layers[2].digest}"):
        store.pull(oci(layout.path, "t"))
    assert_nothing_visible(store)


def _rewrite_manifest(layout: OciLayout, edit: Any, tag: str = "t") -> None:
    """Rewrite the tagged manifest through `edit(manifest)` and re-point index.json."""
    entry = layout.index[-1]
    manifest = json.loads(layout.blob_path(entry["digest"]).read_bytes())
    edit(manifest)
    layout.index[-1] = dict(
        layout.json_blob(manifest, entry["mediaType"]), annotations=entry.get("annotations", {})
    )
    layout.write_index()


def test_wrong_size(layout: OciLayout, store: ImageStore) -> None:
    layout.tag(layout.image(simple_layers()), "t")
    _rewrite_manifest(layout, lambda m: m["layers"][0].update(size=m["layers"][0]["size"] - 1))
    with pytest.raises(IntegrityError, match="size mismatch|larger than its declared size"):
        store.pull(oci(layout.path, "t"))
    _rewrite_manifest(layout, lambda m: m["layers"][0].update(size=m["layers"][0]["size"] + 2))
    with pytest.raises(IntegrityError, match="size mismatch"):
        store.pull(oci(layout.path, "t"))
    assert_nothing_visible(store)


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_wrong_diff_id(layout: OciLayout, store: ImageStore, compression: str) -> None:
    layer = make_layer(TarBuilder().file("f").bytes(), compression)
    wrong = sha256(b"something else")
    layout.tag(layout.image([layer], diff_ids=[wrong]), "t")
    with pytest.raises(IntegrityError, match=f"expected {wrong}, got {layer.diff_id}"):
        store.pull(oci(layout.path, "t"))
    assert_nothing_visible(store)


def test_layer_count_mismatch(layout: OciLayout, store: ImageStore) -> None:
    layers = simple_layers()
    layout.tag(layout.image(layers, diff_ids=[x.diff_id for x in layers[:2]]), "t")
    with pytest.raises(IntegrityError, match="3 layers but config"):
        store.pull(oci(layout.path, "t"))
    assert_nothing_visible(store)


def test_manifest_index_confusion(layout: OciLayout, store: ImageStore) -> None:
    manifest = layout.image(simple_layers())
    index = layout.platform_index([(manifest, {"os": "linux", "architecture": host_arch()})])
    layout.tag(dict(index, mediaType=OCI_MANIFEST), "index-as-manifest")
    layout.tag(dict(manifest, mediaType=OCI_INDEX), "manifest-as-index")
    for tag in ("index-as-manifest", "manifest-as-index"):
        with pytest.raises(IntegrityError, match="referenced as"):
            store.pull(oci(layout.path, tag))
    assert_nothing_visible(store)


@pytest.mark.parametrize("where", ["index", "layer", "diff_id"])
def test_bad_digest_string(layout: OciLayout, store: ImageStore, where: str) -> None:
    bad = "sha256:../../etc"
    layers = simple_layers()
    if where == "diff_id":
        layout.tag(layout.image(layers, diff_ids=[bad] * 3), "t")
    else:
        layout.tag(layout.image(layers), "t")
    if where == "index":
        layout.index[-1]["digest"] = bad
        layout.write_index()
    elif where == "layer":
        _rewrite_manifest(layout, lambda m: m["layers"][1].update(digest=bad))
    with pytest.raises(IntegrityError, match="is not sha256"):
        store.pull(oci(layout.path, "t"))
    assert_nothing_visible(store)
    assert not (store.root / "etc").exists()


def test_decompression_bomb_refused(layout: OciLayout, tmp_path: Path) -> None:
    bomb = make_layer(TarBuilder().file("zeros", bytes(8 << 20)).bytes(), "gzip")
    layout.tag(layout.image([bomb]), "t")
    store = ImageStore(tmp_path / "state", bomb_min=1 << 20, bomb_ratio=10)
    with pytest.raises(ImageError, match="decompression bomb"):
        store.pull(oci(layout.path, "t"))
    assert_nothing_visible(store)
    assert ImageStore(tmp_path / "state2").pull(oci(layout.path, "t")).layers


def test_lookup_misses(layout: OciLayout, store: ImageStore) -> None:
    layout.tag(layout.image(simple_layers()[:1]), "t")
    assert store.lookup(oci(layout.path, "t")) is None
    image = store.pull(oci(layout.path, "t"))
    shutil.rmtree(image.layers[0].parent)
    assert store.lookup(oci(layout.path, "t")) is None
    assert store.pull(oci(layout.path, "t")) == image  # repaired


def test_stale_tmp_removed(layout: OciLayout, store: ImageStore) -> None:
    layout.tag(layout.image(simple_layers()[:1]), "t")
    store.pull(oci(layout.path, "t"))
    (store.tmp / "123-dead" / "layer-x").mkdir(parents=True)
    (store.locks / "tmp-123-dead.lock").touch()
    (store.locks / "tmp-456-orphan.lock").touch()
    store.pull(oci(layout.path, "t"))
    assert list(store.tmp.iterdir()) == []
    assert not list(store.locks.glob("tmp-*"))


def _big_layers() -> list[Any]:
    files = TarBuilder()
    for i in range(4000):
        files.file(f"many/{i // 100}/f{i}", b"%d" % i)
    big = TarBuilder().file("big", os.urandom(1 << 20) * 48)
    return [make_layer(files.bytes(), "gzip"), make_layer(big.bytes(), "none")]


def _pull_child(root: Path, ref: ImageReference, barrier: Any, queue: Any) -> None:
    store = ImageStore(root)
    barrier.wait()
    image = store.pull(ref)
    queue.put((len(store.unpacked), [str(p) for p in image.layers]))


def test_concurrent_pulls_unpack_each_layer_once(layout: OciLayout, store: ImageStore) -> None:
    layers = _big_layers() + simple_layers()[:1]
    layout.tag(layout.image(layers), "t")
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_pull_child, args=(store.root, oci(layout.path, "t"), barrier, queue))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sum(n for n, _ in results) == len(layers)
    assert results[0][1] == results[1][1]
    assert len(list(store.layers.iterdir())) == len(layers)


def _pull_forever(root: Path, ref: ImageReference) -> None:
    ImageStore(root).pull(ref)


def test_sigkill_mid_pull_leaves_consistent_store(layout: OciLayout, store: ImageStore) -> None:
    layers = _big_layers()
    layout.tag(layout.image(layers), "t")
    ref = oci(layout.path, "t")
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_pull_forever, args=(store.root, ref))
    child.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if store.tmp.is_dir() and any(store.tmp.glob("*/layer-*")):
            break
        time.sleep(0.002)
    time.sleep(0.05)
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL, "pull finished before it could be killed"
    assert not list(store.images.iterdir())
    for layer in store.layers.iterdir():  # only complete layers may be visible
        assert layer.name in {x.diff_id[7:] for x in layers}
    image = ImageStore(store.root).pull(ref)
    assert len(list((image.layers[0] / "many").rglob("f*"))) == 4000
    assert (image.layers[1] / "big").stat().st_size == 48 << 20
    assert list(store.tmp.iterdir()) == []


@pytest.mark.skipif(
    not (os.path.exists("/usr/bin/umoci") and os.path.exists("/bin/busybox")),
    reason="needs umoci and busybox-static",
)
def test_umoci_built_busybox(tmp_path: Path, store: ImageStore) -> None:
    image_dir, bundle = tmp_path / "oci", tmp_path / "bundle"

    def umoci(*args: str) -> None:
        subprocess.run(["umoci", *args], check=True, capture_output=True)

    umoci("init", "--layout", str(image_dir))
    umoci("new", "--image", f"{image_dir}:t")
    umoci("unpack", "--image", f"{image_dir}:t", str(bundle))
    bin_dir = bundle / "rootfs" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", bin_dir / "busybox")
    for applet in ("sh", "ls", "cat", "echo"):
        (bin_dir / applet).symlink_to("busybox")
    umoci("repack", "--image", f"{image_dir}:t", str(bundle))
    umoci("config", "--image", f"{image_dir}:t", "--config.cmd=/bin/sh")
    image = store.pull(oci(image_dir, "t"))
    assert image.config.cmd == ("/bin/sh",)
    top = image.layers[-1]
    assert (top / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    assert os.readlink(top / "bin/sh") == "busybox"
    assert stat.S_IMODE((top / "bin/busybox").stat().st_mode) & 0o111
