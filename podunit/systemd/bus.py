"""The one place podunit talks to systemd over D-Bus.

A small typed facade over pystemd's low-level `DBus` (sd-bus underneath):
explicit functions instead of dynamic proxies, property signatures owned by
`units.Property` (pystemd's own table raises a bare KeyError for properties it
does not know, pystemd#119), D-Bus errors mapped to `SystemdError`, and job
completion observed through `JobRemoved` signals subscribed to *before* the
job is queued: never polling.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

from podunit.errors import SystemdError
from podunit.systemd.names import unit_object_path
from podunit.systemd.sdbus import dbuslib
from podunit.systemd.units import Property, Unit

DEST = b"org.freedesktop.systemd1"
PATH = b"/org/freedesktop/systemd1"
MANAGER = b"org.freedesktop.systemd1.Manager"
PROPERTIES = b"org.freedesktop.DBus.Properties"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"

Token = tuple[int, Any]


class JobTimeout(SystemdError):
    """A job did not finish within the time the caller allowed."""


def _bytes(value: Any) -> Any:
    """sd-bus wants bytes for D-Bus strings; convert nested values."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        return [_bytes(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_bytes(v) for v in value)
    return value


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_text(v) for v in value)
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    return value


def encode_properties(properties: Iterable[Property]) -> list[Token]:
    """Encode `a(sv)` as pystemd's token stream: (type code, value) pairs with
    (-1, None) closing each container. This is the wire layout sd-bus
    marshals, so tests can check it without a bus."""
    apply_signature = dbuslib().apply_signature

    tokens: list[Token] = [(ord("a"), b"(sv)")]
    for prop in properties:
        sig = prop.signature.encode()
        tokens += [(ord("r"), b"sv"), (ord("s"), prop.name.encode()), (ord("v"), sig)]
        tokens += apply_signature(sig, [_bytes(prop.value)])
        tokens += [(-1, None), (-1, None)]
    tokens.append((-1, None))
    return tokens


def encode_start_transient(unit: Unit, aux: Sequence[Unit], mode: str) -> list[Token]:
    """Arguments of Manager.StartTransientUnit(ssa(sv)a(sa(sv)))."""
    apply_signature = dbuslib().apply_signature

    tokens: list[Token] = apply_signature(b"ss", [unit.name.encode(), mode.encode()])
    tokens += encode_properties(unit.properties)
    tokens.append((ord("a"), b"(sa(sv))"))
    for extra in aux:
        tokens += [(ord("r"), b"sa(sv)"), (ord("s"), extra.name.encode())]
        tokens += encode_properties(extra.properties)
        tokens.append((-1, None))
    tokens.append((-1, None))
    return tokens


class Bus:
    """A connection to the system manager. Use as a context manager."""

    def __init__(self) -> None:
        self._bus = dbuslib().DBus()
        self._jobs_removed: dict[str, str] = {}  # job path -> result
        self._units_removed: dict[str, str] = {}  # unit -> result of its last job
        self._changed: set[str] = set()  # unit object paths with new properties
        self._subscribed = False
        self._callbacks: tuple[Callable[..., None], ...] = ()

    def __enter__(self) -> Bus:
        try:
            self._bus.open()
        except Exception as exc:  # pystemd raises its own classes
            raise SystemdError(f"cannot connect to the system bus: {exc}") from exc
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bus.close()

    # -- calls --------------------------------------------------------------

    def _call(
        self, method: bytes, args: list[Token], path: bytes = PATH, iface: bytes = MANAGER
    ) -> Any:
        try:
            reply = self._bus.call_method(DEST, path, iface, method, args)
        except Exception as exc:
            message = getattr(exc, "err_message", None)
            text = message.decode(errors="replace") if isinstance(message, bytes) else str(exc)
            raise SystemdError(f"{method.decode()}: {text}") from exc
        return reply.body

    def subscribe(self) -> None:
        """Receive JobRemoved and PropertiesChanged; must precede the jobs."""
        if self._subscribed:
            return

        # pystemd stores data on the callback object: give it plain functions.
        def on_job_removed(msg: Any, error: Any = None, userdata: Any = None) -> None:
            self._on_job_removed(msg)

        def on_changed(msg: Any, error: Any = None, userdata: Any = None) -> None:
            self._on_changed(msg)

        # sd-bus keeps only a borrowed pointer to the callbacks: hold them.
        self._callbacks = (on_job_removed, on_changed)
        self._bus.match_signal(DEST, PATH, MANAGER, b"JobRemoved", on_job_removed, None)
        self._bus.match_signal(DEST, None, PROPERTIES, b"PropertiesChanged", on_changed, None)
        self._call(b"Subscribe", [])
        self._subscribed = True

    def start_transient_unit(self, unit: Unit, aux: Sequence[Unit] = (), mode: str = "fail") -> str:
        return str(
            _text(self._call(b"StartTransientUnit", encode_start_transient(unit, aux, mode)))
        )

    def start_unit(self, name: str, mode: str = "replace") -> str:
        return str(_text(self._call(b"StartUnit", self._strings(name, mode))))

    def stop_unit(self, name: str, mode: str = "replace") -> str:
        return str(_text(self._call(b"StopUnit", self._strings(name, mode))))

    def kill_unit(self, name: str, signal: int, whom: str = "all") -> None:
        apply_signature = dbuslib().apply_signature

        args = apply_signature(b"ssi", [name.encode(), whom.encode(), signal])
        self._call(b"KillUnit", args)

    def reset_failed_unit(self, name: str) -> None:
        self._call(b"ResetFailedUnit", self._strings(name))

    def set_unit_properties(self, name: str, properties: Sequence[Property]) -> None:
        apply_signature = dbuslib().apply_signature

        args = apply_signature(b"sb", [name.encode(), True]) + encode_properties(properties)
        self._call(b"SetUnitProperties", args)

    def unit_properties(self, name: str, interface: str = UNIT_IFACE) -> dict[str, Any]:
        """All properties of one interface of a unit (loads it if needed)."""
        args = self._strings(interface)
        body = self._call(b"GetAll", args, path=unit_object_path(name).encode(), iface=PROPERTIES)
        return dict(_text(body))

    @staticmethod
    def _strings(*values: str) -> list[Token]:
        apply_signature = dbuslib().apply_signature

        return list(apply_signature(b"s" * len(values), [v.encode() for v in values]))

    # -- signals ------------------------------------------------------------

    def _on_job_removed(self, msg: Any) -> None:
        msg.process_reply(False)
        _id, job, unit, result = _text(msg.body)
        self._jobs_removed[job] = result
        self._units_removed[unit] = result

    def _on_changed(self, msg: Any) -> None:
        msg.process_reply(True)
        path = _text(msg.headers.get(b"Path", b"")) if isinstance(msg.headers, dict) else ""
        self._changed.add(str(path))

    def _pump(self, timeout: float) -> None:
        """Dispatch what has arrived; wait for the socket only when nothing
        had. sd-bus reads signals off the socket while it waits for a method
        reply and keeps them queued: select() alone would not see those and
        would sleep for the whole timeout with the awaited signal in hand."""
        if self._dispatch():
            return
        select.select([self._bus.get_fd()], [], [], max(0.0, timeout))
        self._dispatch()

    def _dispatch(self) -> bool:
        handled = False
        while not self._bus.process().is_empty():
            handled = True
        return handled

    def wait_for_jobs(self, jobs: Iterable[str], timeout: float | None = None) -> dict[str, str]:
        """Block until every job path in `jobs` is removed; job path -> result."""
        pending = set(jobs)
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending - self._jobs_removed.keys():
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise JobTimeout(f"timed out waiting for jobs {sorted(pending)}")
            self._pump(min(left, 1.0))
        return {job: self._jobs_removed[job] for job in pending}

    def wait_for_units_jobs(
        self, units: Iterable[str], timeout: float | None = None
    ) -> dict[str, str]:
        """Block until a job of every unit in `units` has been removed (the
        start jobs that one transaction queued for them); unit -> result."""
        pending = set(units)
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending - self._units_removed.keys():
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise SystemdError(
                    f"timed out waiting for {sorted(pending - self._units_removed.keys())}"
                )
            self._pump(min(left, 1.0))
        return {unit: self._units_removed[unit] for unit in pending}

    def wait_until(self, condition: Callable[[], bool], timeout: float | None = None) -> None:
        """Re-check `condition` whenever systemd reports a change (signals),
        until it holds. The check itself reads properties; signals only wake."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not condition():
            left = 5.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise SystemdError("timed out")
            self._changed.clear()
            self._pump(min(left, 5.0))
