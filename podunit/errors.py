"""Typed errors raised by library code; only the CLI turns them into exit codes."""

from __future__ import annotations

from dataclasses import dataclass


class PodunitError(Exception):
    """Base class of every error podunit reports to a user."""

    exit_code = 1


@dataclass(frozen=True)
class FieldError:
    """One problem in a manifest, located by file, line and field path."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ManifestError(PodunitError):
    """A manifest is invalid; carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class ImageError(PodunitError):
    """An image could not be found, fetched, verified or unpacked."""


class IntegrityError(ImageError):
    """Content did not match its digest, size or declared media type."""


class SystemdError(PodunitError):
    """systemd refused or failed an operation; message says which unit and why."""


class PodNotFound(PodunitError):
    """No pod of that name is known."""


class PodStateError(PodunitError):
    """The pod is in a state that does not allow the operation."""
