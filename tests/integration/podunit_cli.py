"""Drive the podunit CLI inside a testbed, as a user would type it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from testbed import Testbed

REPO = Path(__file__).resolve().parents[2]


class Podunit:
    """`podunit ...` inside the testbed's systemd; manifests go to a shared dir."""

    def __init__(self, testbed: Testbed, image: str) -> None:
        self.testbed = testbed
        self.image = image
        self.manifests = testbed.shared_dir / "manifests"
        self.manifests.mkdir(parents=True, exist_ok=True)

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "podunit", *args]
        return self.testbed.run(argv, check=check, timeout=timeout, env={"PYTHONPATH": str(REPO)})

    def manifest(self, name: str, text: str) -> Path:
        """Write a manifest; `{image}` in the text becomes the test image."""
        path = self.manifests / f"{name}.yaml"
        path.write_text(textwrap.dedent(text).replace("{image}", self.image))
        return path

    def status(self, pod: str) -> dict[str, Any]:
        return dict(json.loads(self("status", "--json", pod).stdout))

    def app(self, pod: str, name: str) -> dict[str, Any]:
        status = self.status(pod)
        return next(a for a in status["apps"] + status["init_apps"] if a["name"] == name)

    def logs(self, pod: str, app: str | None = None) -> str:
        args = ["logs", pod] + ([app] if app else [])
        return self(*args).stdout

    def units(self, pod: str) -> list[str]:
        """Every unit of `pod` that systemd knows, in any state."""
        pattern = f"podunit-{pod.replace('-', chr(92) + 'x2d')}.slice"
        out = self.testbed.run(
            ["systemctl", "list-units", "--all", "--plain", "--no-legend",
             f"podunit-{pod}.service", f"podunit-{pod}_*", pattern]
        ).stdout  # fmt: skip
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def cleanup(self, *pods: str) -> None:
        for pod in pods:
            self("rm", "--force", pod, check=False)
