"""Small builders of specs, images and plans for unit tests (no I/O beyond tmp_path)."""

from __future__ import annotations

from pathlib import Path

from podunit.images.store import Image, ImageConfig
from podunit.plan import PodPlan, make_pod_plan
from podunit.spec import Container, ObjectMeta, Pod, PodSpec, Resources


def make_image(tmp_path: Path, *, user: str = "", passwd: str = "") -> Image:
    layer = tmp_path / "layer0"
    (layer / "etc").mkdir(parents=True, exist_ok=True)
    if passwd:
        (layer / "etc" / "passwd").write_text(passwd)
    return Image(
        reference="oci:/images/busybox:latest",
        manifest_digest="sha256:" + "1" * 64,
        config_digest="sha256:" + "2" * 64,
        config=ImageConfig(
            entrypoint=None,
            cmd=("/bin/sh",),
            env=("PATH=/bin:/usr/bin", "FROM_IMAGE=1"),
            working_dir="",
            user=user,
        ),
        layers=(layer,),
    )


def make_pod(name: str = "web", **spec: object) -> Pod:
    containers = spec.pop("containers", None) or (
        Container(
            name="app",
            image="oci:/images/busybox:latest",
            command=("sleep",),
            args=("1000",),
            resources=Resources(limits_memory=64 << 20, limits_cpu_millis=500),
        ),
    )
    return Pod(
        metadata=ObjectMeta(name=name),
        spec=PodSpec(containers=containers, **spec),  # type: ignore[arg-type]
        source="pod.yaml",
        line=1,
    )


def make_plan(tmp_path: Path, pod: Pod | None = None, image: Image | None = None) -> PodPlan:
    pod = pod or make_pod()
    image = image or make_image(tmp_path)
    images = {c.image: image for c in pod.spec.init_containers + pod.spec.containers}
    return make_pod_plan(pod, images, runtime_dir=tmp_path / "run", state_dir=tmp_path / "state")
