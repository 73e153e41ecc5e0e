"""The planner: Kubernetes' command/args, env and user rules over image config."""

from __future__ import annotations

from pathlib import Path

import pytest

from podunit.plan import PlanError
from podunit.spec import Capabilities, Container, EnvVar, SecurityContext
from podunit.state import kubernetes_exit_code
from tests.unit.podfixtures import make_image, make_plan, make_pod

IMAGE = "oci:/images/busybox:latest"


def plan_app(tmp_path: Path, container: Container, **image: str) -> dict[str, object]:
    plan = make_plan(tmp_path, make_pod(containers=(container,)), make_image(tmp_path, **image))
    return dict(plan["apps"][0])


@pytest.mark.parametrize(
    ("command", "args", "argv"),
    [
        (None, None, ["/entry", "cmd-arg"]),
        (("/bin/x",), None, ["/bin/x"]),
        (None, ("a", "b"), ["/entry", "a", "b"]),
        (("/bin/x",), ("a",), ["/bin/x", "a"]),
    ],
)
def test_command_and_args_follow_kubernetes_rules(
    tmp_path: Path, command: tuple[str, ...] | None, args: tuple[str, ...] | None, argv: list[str]
) -> None:
    from dataclasses import replace

    image = make_image(tmp_path)
    image = replace(image, config=replace(image.config, entrypoint=("/entry",), cmd=("cmd-arg",)))
    pod = make_pod(containers=(Container(name="c", image=IMAGE, command=command, args=args),))
    assert make_plan(tmp_path, pod, image)["apps"][0]["argv"] == argv


def test_empty_command_is_an_error(tmp_path: Path) -> None:
    from dataclasses import replace

    image = make_image(tmp_path)
    image = replace(image, config=replace(image.config, cmd=None))
    pod = make_pod(containers=(Container(name="c", image=IMAGE),))
    with pytest.raises(PlanError, match="no command"):
        make_plan(tmp_path, pod, image)


def test_env_merges_image_then_manifest_with_expansion(tmp_path: Path) -> None:
    env = (EnvVar("GREETING", "hi $(FROM_IMAGE) $$(LITERAL) $(MISSING)"), EnvVar("PATH", "/x"))
    app = plan_app(tmp_path, Container(name="c", image=IMAGE, command=("sh",), env=env))
    values = dict(item.split("=", 1) for item in app["env"])  # type: ignore[attr-defined]
    assert values["GREETING"] == "hi 1 $(LITERAL) $(MISSING)"
    assert values["PATH"] == "/x" and values["FROM_IMAGE"] == "1"
    assert values["HOSTNAME"] == "web"


def test_image_user_is_resolved_in_the_images_passwd(tmp_path: Path) -> None:
    passwd = "root:x:0:0::/root:/bin/sh\nweb:x:1000:1001::/srv:/bin/sh\n"
    app = plan_app(
        tmp_path, Container(name="c", image=IMAGE, command=("sh",)), user="web", passwd=passwd
    )
    assert (app["uid"], app["gid"]) == (1000, 1001)
    assert "HOME=/srv" in app["env"]  # type: ignore[operator]


def test_unknown_image_user_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match='user "ghost"'):
        plan_app(tmp_path, Container(name="c", image=IMAGE, command=("sh",)), user="ghost")


def test_passwd_symlink_out_of_the_layer_is_not_followed(tmp_path: Path) -> None:
    image = make_image(tmp_path, user="web")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("web:x:4242:4242::/:/bin/sh\n")
    (image.layers[0] / "etc" / "passwd").symlink_to(outside / "passwd")
    pod = make_pod(containers=(Container(name="c", image=IMAGE, command=("sh",)),))
    with pytest.raises(PlanError, match='user "web"'):
        make_plan(tmp_path, pod, image)


def test_run_as_non_root_refuses_root(tmp_path: Path) -> None:
    sc = SecurityContext(run_as_non_root=True)
    with pytest.raises(PlanError, match="runAsNonRoot"):
        plan_app(tmp_path, Container(name="c", image=IMAGE, command=("sh",), security_context=sc))


def test_capabilities_and_privilege_escalation(tmp_path: Path) -> None:
    sc = SecurityContext(capabilities=Capabilities(add=("NET_ADMIN",), drop=("ALL",)))
    app = plan_app(tmp_path, Container(name="c", image=IMAGE, command=("sh",), security_context=sc))
    assert app["capabilities"] == ["NET_ADMIN"] and app["no_new_privs"] is True
    sc = SecurityContext(privileged=True)
    app = plan_app(tmp_path, Container(name="c", image=IMAGE, command=("sh",), security_context=sc))
    assert len(app["capabilities"]) == 41 and app["no_new_privs"] is False  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("exited", "0", 0), ("exited", "3", 3), ("killed", "KILL", 137), ("killed", "TERM", 143),
     ("dumped", "SEGV", 139), (1, 5, 5), (2, 9, 137), ("killed", "NOPE", None)],
)  # fmt: skip
def test_exit_codes_as_kubernetes_reports_them(
    kind: str | int, status: str | int, code: int | None
) -> None:
    assert kubernetes_exit_code(kind, status) == code
