"""Packaging sources (packaging/, units/podunit-gc.*), checked without building anything.

The man page and the shell completion must describe the CLI that exists: the man page is
written by hand, so it is checked against podunit's parser here; the completion reads the
parser at run time, and is run here against a stand-in `podunit`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from podunit.cli import make_parser

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
MAN_PAGE = PACKAGING / "man" / "podunit.1"
COMPLETION = PACKAGING / "completion" / "podunit.bash"
SHELL_SCRIPTS = [
    PACKAGING / "build",
    COMPLETION,
    PACKAGING / "debian" / "podunit.postinst",
    PACKAGING / "debian" / "podunit.postrm",
]


def project_version() -> str:
    with open(REPO / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.fail(f"{tool} is not installed: run tests/setup")
    return found


# ---- the CLI as the parser defines it -------------------------------------------------------


@dataclass
class Command:
    path: str  # "run", "image prune"
    options: list[str] = field(default_factory=list)
    positionals: list[str] = field(default_factory=list)
    subcommands: list[str] = field(default_factory=list)


def cli_commands() -> list[Command]:
    """Every command and subcommand of `podunit` (not podunit itself)."""
    commands: list[Command] = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        command = Command(" ".join(path))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    command.subcommands.append(name)
                    walk(sub, [*path, name])
            elif action.option_strings:
                command.options += [o for o in action.option_strings if o not in ("-h", "--help")]
            else:
                command.positionals.append(action.dest)
        if path:
            commands.append(command)

    walk(make_parser(), [])
    return commands


# ---- versions -------------------------------------------------------------------------------


def test_versions_agree() -> None:
    version = project_version()
    changelog = (PACKAGING / "debian" / "changelog").read_text().splitlines()[0]
    assert re.match(rf"^podunit \({re.escape(version)}\) ", changelog), changelog
    spec = (PACKAGING / "podunit.spec").read_text()
    assert re.search(rf"^Version:\s+{re.escape(version)}$", spec, re.M)
    assert f'"podunit {version}"' in MAN_PAGE.read_text()


# ---- man page -------------------------------------------------------------------------------


def roff(text: str) -> str:
    """How text is written in roff source ("-" is "\\-")."""
    return text.replace("-", "\\-")


def man_entries() -> dict[str, str]:
    """COMMANDS section of podunit(1): command path -> the text of its entry."""
    source = MAN_PAGE.read_text()
    section = source.split(".SH COMMANDS\n", 1)[1].split("\n.SH ", 1)[0]
    # Entries are ".TP" followed by a tag line that starts with the bold command name.
    starts = list(re.finditer(r"^\.TP\n\\fB([a-z](?:[a-z ]|\\-)*)\\fR", section, re.M))
    entries = {}
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(section)
        entries[match.group(1).replace("\\-", "-")] = section[match.start() : end]
    return entries


def test_man_page_documents_every_command_and_option() -> None:
    entries = man_entries()
    missing = []
    for command in cli_commands():
        if command.path not in entries:
            missing.append(f'"podunit {command.path}"')
            continue
        missing += [
            f'{option} of "podunit {command.path}"'
            for option in command.options
            if roff(option) not in entries[command.path]
        ]
    assert not missing, (
        f"not documented in the COMMANDS section of {MAN_PAGE.relative_to(REPO)} "
        f"(an entry is .TP, then a line starting with \\fBCOMMAND\\fR): {', '.join(missing)}"
    )


def test_man_page_documents_no_command_that_does_not_exist() -> None:
    commands = {c.path for c in cli_commands()}
    assert set(man_entries()) <= commands


def test_man_page_global_options() -> None:
    source = MAN_PAGE.read_text()
    options = source.split(".SH OPTIONS\n", 1)[1].split("\n.SH ", 1)[0]
    for action in make_parser()._actions:
        for option in action.option_strings:
            assert roff(option) in options, f"podunit {option} is not in OPTIONS"


@pytest.mark.parametrize("page", sorted((PACKAGING / "man").glob("*.[1-8]")), ids=lambda p: p.name)
def test_man_page_renders_without_warnings(page: Path) -> None:
    result = subprocess.run(
        [need("groff"), "-man", "-ww", "-z", "-Tutf8", str(page)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and not result.stderr, result.stderr
    # The section in the file name is the one in .TH.
    title = re.search(r"^\.TH \S+ (\d)", page.read_text(), re.M)
    assert title and title.group(1) == page.suffix[1:]


# ---- shell ----------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shellcheck(script: Path) -> None:
    result = subprocess.run(
        [need("shellcheck"), str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


FAKE_PODUNIT = """\
#!{python}
import sys

sys.path.insert(0, {repo!r})
args = sys.argv[1:]
if args == ["list", "--json"]:
    print('[{{"name": "web", "apps": []}}, {{"name": "batch", "apps": []}}]')
elif args[:2] == ["status", "--json"] and args[2:] == ["web"]:
    print('{{"name": "web", "init_apps": [{{"name": "setup"}}], "apps": [{{"name": "nginx"}}]}}')
elif args == ["images", "--json"]:
    print('[{{"ref": "docker.io/library/busybox:latest"}}]')
else:
    sys.exit(1)
"""


Complete = Callable[..., list[str]]


@pytest.fixture
def complete(tmp_path: Path) -> Complete:
    """complete("podunit", "logs", "") -> the words bash would offer."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "podunit"
    fake.write_text(FAKE_PODUNIT.format(python=sys.executable, repo=str(REPO)))
    fake.chmod(0o755)
    (tmp_path / "pods.yaml").write_text("")
    (tmp_path / "pods.txt").write_text("")

    def run(*words: str) -> list[str]:
        script = (
            f"source {COMPLETION}\n"
            'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=()\n'
            "_podunit\n"
            'printf "%s\\n" "${COMPREPLY[@]}"\n'
        )
        result = subprocess.run(
            ["bash", "--norc", "--noprofile", "-c", script, "bash", *words],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
            # The interpreter of `podunit` imports podunit (installed: from dist-packages).
            env={"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)},
        )
        return [line for line in result.stdout.splitlines() if line]

    return run


def test_completion_of_commands_and_options(complete: Complete) -> None:
    top = {c.path for c in cli_commands() if " " not in c.path}
    assert set(complete("podunit", "")) == top
    assert complete("podunit", "--de") == ["--debug"]
    assert set(complete("podunit", "run", "-")) == {"-h", "--help", "--name", "--wait", "--rm"}
    assert complete("podunit", "run", "--name", "") == []  # a value, not a known word
    assert complete("podunit", "--debug", "st") == ["status", "stop"]
    image = next(c for c in cli_commands() if c.path == "image")
    assert set(complete("podunit", "image", "")) == set(image.subcommands)


def test_completion_of_names(complete: Complete) -> None:
    assert complete("podunit", "status", "") == ["web", "batch"]
    assert complete("podunit", "stop", "--timeout", "5", "w") == ["web"]
    assert complete("podunit", "rm", "web", "") == ["web", "batch"]  # several pods
    assert complete("podunit", "logs", "web", "") == ["setup", "nginx"]
    assert complete("podunit", "exec", "web", "nginx", "") == ["--"]
    assert complete("podunit", "exec", "web", "nginx", "--", "") == []
    assert complete("podunit", "rmi", "") == ["docker.io/library/busybox:latest"]
    assert complete("podunit", "run", "pods.") == ["pods.txt", "pods.yaml"]


# ---- systemd files --------------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def test_gc_timer_and_service() -> None:
    timer = unit_settings(REPO / "units" / "podunit-gc.timer")
    assert timer["Timer.OnBootSec"] == ["10min"]
    assert timer["Timer.OnUnitActiveSec"] == ["1d"]
    assert timer["Install.WantedBy"] == ["timers.target"]
    service = unit_settings(REPO / "units" / "podunit-gc.service")
    assert service["Service.Type"] == ["oneshot"]
    (exec_start,) = service["Service.ExecStart"]
    argv = exec_start.split()
    assert argv[:2] == ["/usr/bin/podunit", "gc"]
    args = make_parser().parse_args(argv[1:])
    assert (args.command, args.grace_period) == ("gc", 1800)
    assert "Install.WantedBy" not in service  # started by the timer only


def test_tmpfiles_creates_the_directories(tmp_path: Path) -> None:
    subprocess.run(
        [
            need("systemd-tmpfiles"),
            f"--root={tmp_path}",
            "--create",
            str(PACKAGING / "tmpfiles.d" / "podunit.conf"),
        ],
        check=True,
        capture_output=True,
    )
    modes = {
        "run/podunit": 0o700,
        "var/lib/podunit": 0o700,
        "etc/podunit/pods": 0o755,
    }
    for path, mode in modes.items():
        assert (tmp_path / path).is_dir(), path
        assert (tmp_path / path).stat().st_mode & 0o7777 == mode, path


# ---- package metadata -----------------------------------------------------------------------


def control_field(name: str) -> list[str]:
    control = (PACKAGING / "debian" / "control").read_text()
    binary = control.split("\nPackage: podunit\n", 1)[1]
    match = re.search(rf"^{name}:((?:.*\n)(?: .*\n)*)", binary, re.M)
    assert match, name
    return [d.strip() for d in match.group(1).replace("\n", " ").split(",") if d.strip()]


def test_debian_dependencies() -> None:
    depends = control_field("Depends")
    for dependency in (
        "python3 (>= 3.11)",
        "python3-pystemd",
        "python3-yaml",
        "python3-cryptography",
        "systemd",
        "catatonit",
        "containernetworking-plugins",
        "iptables",
        "gpgv",
    ):
        assert dependency in depends
    assert set(control_field("Recommends")) == {"systemd-container", "python3-zstandard"}
    # dbus-next is for the tests only; jinja2 is not used (see the README).
    assert "python3-jinja2" not in depends
    assert not any("dbus-next" in d for d in depends)


def test_every_runtime_dependency_is_packaged() -> None:
    """Each dependency in pyproject.toml has its Debian package among the Depends."""
    with open(REPO / "pyproject.toml", "rb") as f:
        requirements = tomllib.load(f)["project"]["dependencies"]
    debian_names = {"pyyaml": "python3-yaml"}
    depends = {d.split()[0] for d in control_field("Depends")}
    for requirement in requirements:
        name = re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].lower()
        assert debian_names.get(name, f"python3-{name}") in depends, requirement
