"""The generator's output, without systemd: what it writes for good and bad manifests."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from podunit.generator import find_manifests, generate, write_files
from podunit.systemd.unitfile import quote_word, render_unit
from podunit.systemd.units import Property, Stage1Command, Unit

STAGE1 = Stage1Command(("/usr/bin/python3", "-m", "podunit.stage1"), (), cli=("/usr/bin/podunit",))


def manifest(directory: Path, name: str, body: str, annotations: str = "{}") -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        apiVersion: v1
        kind: Pod
        metadata:
          name: {name}
          annotations: {annotations}
        spec:
          containers:
        """)
        + textwrap.indent(textwrap.dedent(body), "  ")
    )
    return path


APP = """\
- name: web
  image: oci:/images/x:tag
  command: ["httpd", "-f"]
  resources: {limits: {memory: 64Mi, cpu: 500m}}
"""


def test_search_path_precedence(tmp_path: Path) -> None:
    etc, run, lib = (tmp_path / d for d in ("etc", "run", "lib"))
    for d in (etc, run, lib):
        d.mkdir()
    manifest(lib, "a", APP)
    manifest(run, "a", APP)
    manifest(lib, "b", APP)
    (etc / ".hidden.yaml").write_text("")
    (etc / "notes.txt").write_text("")
    found = find_manifests((str(etc), str(run), str(lib)))
    assert found == {"a": run / "a.yaml", "b": lib / "b.yaml"}


def test_good_manifest_gives_dropin_app_units_slice_and_wants(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        "web",
        APP,
        '{"podunit.io/wanted-by": "multi-user.target", "podunit.io/requires": "db, x.mount"}',
    )
    files, errors = generate(STAGE1, {"web": path})
    assert errors == []
    assert set(files) == {
        "pod@web.service.d/50-podunit.conf",
        "podunit-web_web.service",
        "podunit-web.slice",
        "multi-user.target.wants/pod@web.service",
    }
    dropin = files["pod@web.service.d/50-podunit.conf"]
    # The template's commands are replaced, not added to.
    assert "ExecStart=\nExecStart=/usr/bin/python3 -m podunit.stage1 pod-up web\n" in dropin
    assert "ExecStartPre=\nExecStartPre=/usr/bin/podunit prepare web\n" in dropin
    assert "Requires=pod@db.service x.mount\n" in dropin
    assert "Wants=podunit-web_web.service network-online.target\n" in dropin
    app = files["podunit-web_web.service"]
    assert "BindsTo=pod@web.service\n" in app and "After=pod@web.service\n" in app
    assert "MemoryMax=67108864\n" in app and "CPUQuota=50%\n" in app
    assert "TimeoutStopSec=30000000us\n" in app
    assert files["multi-user.target.wants/pod@web.service"].startswith("-> ")


def test_bad_manifest_still_gets_a_unit_that_explains(tmp_path: Path) -> None:
    good = manifest(tmp_path, "good", APP)
    bad = manifest(
        tmp_path,
        "bad",
        APP.replace("64Mi", "64Mx"),
        '{"podunit.io/wanted-by": "multi-user.target"}',
    )
    files, errors = generate(STAGE1, {"good": good, "bad": bad})
    assert "podunit-good_web.service" in files  # one bad file does not stop the others
    assert (
        len(errors) == 1
        and f'{bad}:11: spec.containers[0].resources.limits.memory: "64Mx"' in errors[0]
    )
    dropin = files["pod@bad.service.d/50-podunit.conf"]
    assert "(invalid manifest)" in dropin and "ExecStartPre=/usr/bin/podunit prepare bad" in dropin
    assert not any(name.startswith("podunit-bad_") for name in files)
    assert "multi-user.target.wants/pod@bad.service" in files  # fails visibly at boot


def test_file_name_must_match_pod_name(tmp_path: Path) -> None:
    path = manifest(tmp_path, "web", APP)
    renamed = path.rename(tmp_path / "other.yaml")
    _, errors = generate(STAGE1, {"other": renamed})
    assert 'metadata.name: "web" differs from the file name "other.yaml"' in errors[0]


def test_write_files_is_atomic_and_idempotent(tmp_path: Path) -> None:
    files = {"a.service": "x\n", "t.target.wants/a.service": "-> /lib/a.service"}
    out = tmp_path / "out"
    write_files(out, files)
    write_files(out, files)  # a second run over the first: no error, same result
    assert (out / "a.service").read_text() == "x\n"
    assert (out / "t.target.wants/a.service").readlink() == Path("/lib/a.service")
    assert sorted(p.name for p in out.rglob("*")) == ["a.service", "a.service", "t.target.wants"]


@pytest.mark.parametrize(
    ("word", "quoted"),
    [("plain", "plain"), ("100%", "100%%"), ("a b", '"a b"'), ('say "hi"', '"say \\"hi\\""'),
     ("$HOME", "$HOME"), ("back\\slash", '"back\\\\slash"')],
)  # fmt: skip
def test_words_survive_systemds_parser(word: str, quoted: str) -> None:
    assert quote_word(word) == quoted


def test_exec_with_argv0_differing_from_the_path_uses_at_prefix() -> None:
    unit = Unit(
        "x.service",
        (Property("ExecStart", "a(sasb)", [("/bin/busybox", ["sh", "-c", "true"], True)]),),
    )
    assert "ExecStart=-@/bin/busybox sh -c true\n" in render_unit(unit)
