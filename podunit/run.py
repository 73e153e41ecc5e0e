"""The one place podunit spawns other programs.

Every subprocess goes through `run()`: it logs the argv at debug level, builds
the environment from an allowlist (never the caller's whole environ), always
reaps the child, and turns failures into a `CommandError` whose message says
"not found", "killed by signal N" or "exited with N" and carries a
copy-pasteable command line.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence

from podunit.errors import PodunitError

log = logging.getLogger(__name__)

# Variables a child may inherit; anything else must be passed explicitly.
ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "TERM", "TZ", "HOME", "SYSTEMD_PAGER", "SYSTEMD_COLORS")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class CommandError(PodunitError):
    """A spawned command failed; `stderr` holds what it printed, if captured."""

    def __init__(self, argv: Sequence[str], reason: str, stderr: str = "") -> None:
        self.argv = list(argv)
        self.reason = reason
        self.stderr = stderr
        detail = f": {stderr.strip()}" if stderr.strip() else ""
        super().__init__(f"{shlex.join(self.argv)} {reason}{detail}")


def make_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in ENV_ALLOWLIST if k in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(extra or {})
    return env


def describe_returncode(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with {returncode}"


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    capture: bool = False,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv to completion. With `capture`, stdout and stderr are returned."""
    log.debug("run: %s", shlex.join(argv))
    pipe = subprocess.PIPE if capture else None
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            stdout=pipe,
            stderr=pipe,
            env=make_env(env),
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(argv, "failed: command not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, f"timed out after {timeout} s") from exc
    if check and proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace") if proc.stderr else ""
        raise CommandError(argv, describe_returncode(proc.returncode), stderr)
    return proc


def exec_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """Replace this process with argv (for `logs -f` and friends)."""
    log.debug("exec: %s", shlex.join(argv))
    try:
        os.execvpe(argv[0], list(argv), make_env(env))
    except FileNotFoundError as exc:
        raise CommandError(argv, "failed: command not found") from exc
