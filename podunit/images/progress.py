"""Pull progress: what the store reports, and how the CLI shows it.

The store calls a `Progress` from several download threads at once; the
implementations here serialise with a lock and redraw a terminal at most
ten times a second (a redraw per 1 MiB chunk would cost more than the
download on a fast registry).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import Protocol, TextIO


class Progress(Protocol):
    def layer_start(self, digest: str, size: int) -> None: ...

    def layer_advance(self, digest: str, nbytes: int) -> None: ...

    def layer_done(self, digest: str, status: str) -> None:
        """status: "pulled" (downloaded and unpacked), "present" (already stored)."""


class NullProgress:
    def layer_start(self, digest: str, size: int) -> None:
        pass

    def layer_advance(self, digest: str, nbytes: int) -> None:
        pass

    def layer_done(self, digest: str, status: str) -> None:
        pass


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass
class _Layer:
    size: int
    done: int = 0
    status: str = "downloading"


class _Tracker:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.layers: dict[str, _Layer] = {}
        self.started = time.monotonic()

    def totals(self) -> tuple[int, int, float]:
        size = sum(x.size for x in self.layers.values())
        done = sum(x.done for x in self.layers.values())
        elapsed = max(1e-3, time.monotonic() - self.started)
        return size, done, done / elapsed


class LineProgress(_Tracker):
    """One line per finished layer: for logs and pipes."""

    def __init__(self, out: TextIO | None = None) -> None:
        super().__init__()
        self.out = out or sys.stderr

    def layer_start(self, digest: str, size: int) -> None:
        with self.lock:
            self.layers[digest] = _Layer(size)

    def layer_advance(self, digest: str, nbytes: int) -> None:
        with self.lock:
            self.layers[digest].done += nbytes

    def layer_done(self, digest: str, status: str) -> None:
        with self.lock:
            layer = self.layers.setdefault(digest, _Layer(0))
            layer.status = status
            print(f"{digest[7:19]}: {status} ({human_bytes(layer.size)})", file=self.out)


class JsonProgress(LineProgress):
    """One JSON object per finished layer (machine-readable, one per line)."""

    def layer_done(self, digest: str, status: str) -> None:
        with self.lock:
            layer = self.layers.setdefault(digest, _Layer(0))
            event = {"layer": digest, "status": status, "size": layer.size}
            print(json.dumps(event), file=self.out, flush=True)


class TerminalProgress(_Tracker):
    """Per-layer bars and a total with rate and ETA, redrawn in place."""

    INTERVAL = 0.1

    def __init__(self, out: TextIO | None = None) -> None:
        super().__init__()
        self.out = out or sys.stderr
        self._drawn_lines = 0
        self._last = 0.0

    def layer_start(self, digest: str, size: int) -> None:
        with self.lock:
            self.layers[digest] = _Layer(size)
            self._draw(force=True)

    def layer_advance(self, digest: str, nbytes: int) -> None:
        with self.lock:
            self.layers[digest].done += nbytes
            self._draw()

    def layer_done(self, digest: str, status: str) -> None:
        with self.lock:
            layer = self.layers.setdefault(digest, _Layer(0))
            layer.status = status
            if status == "present":
                layer.done = layer.size
            self._draw(force=True)

    def finish(self) -> None:
        with self.lock:
            self._draw(force=True)

    @staticmethod
    def _bar(done: int, size: int, width: int = 24) -> str:
        filled = width if size <= 0 else min(width, width * done // size)
        return "[" + "#" * filled + "." * (width - filled) + "]"

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.INTERVAL:
            return
        self._last = now
        lines = []
        for digest, layer in self.layers.items():
            amount = f"{human_bytes(layer.done)}/{human_bytes(layer.size)}"
            lines.append(
                f"{digest[7:19]} {self._bar(layer.done, layer.size)} {amount:>22} {layer.status}"
            )
        size, done, rate = self.totals()
        eta = (size - done) / rate if rate > 0 and done < size else 0.0
        lines.append(
            f"total        {self._bar(done, size)} {human_bytes(done)}/{human_bytes(size)} "
            f"{human_bytes(rate)}/s ETA {eta:.0f} s"
        )
        # Move up over what we drew last time and overwrite it line by line.
        up = f"\x1b[{self._drawn_lines}F" if self._drawn_lines else ""
        self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.out.flush()
        self._drawn_lines = len(lines)
