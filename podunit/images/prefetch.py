"""Read a stream ahead in a thread of its own.

A layer is read through a chain (download or file, sha256 of the blob,
gzip/zstd, sha256 of the tar) and consumed by the unpacker. Done in one
thread, the chain and the unpacker take turns; yet zlib, zstd and hashlib
release the GIL, so with the chain in a thread of its own a layer's
decompression and hashing run on one core while its files are written from
another. That matters most for the largest layer, which alone decides when
a pull ends. Nothing is skipped: every byte still passes through the same
chain, in order, in the producer thread.
"""

from __future__ import annotations

import queue
import threading

from podunit.images.digest import CHUNK, Readable

DEPTH = 8  # chunks queued ahead: bounds memory to DEPTH * chunk per stream
_POLL = 0.05  # seconds between checks of the stop flag while the queue is full


class Prefetcher:
    """A Readable over `src` that a background thread keeps filled.

    Errors raised by `src.read` reach the consumer on its next read. Call
    close() (or use contextlib.closing) before touching `src` again: it stops
    the thread and waits for it, so `src` is never read by two threads.
    """

    def __init__(self, src: Readable, chunk: int = CHUNK, depth: int = DEPTH) -> None:
        self._src = src
        self._chunk = chunk
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._stop = threading.Event()
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._thread = threading.Thread(target=self._produce, name="prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._src.read(self._chunk)
                self._put(data)
                if not data:
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def _next_chunk(self) -> bool:
        """Load the next queued chunk; False at the end of the stream."""
        if self._eof:
            return False
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        if not item:
            self._eof = True
            return False
        self._buf, self._pos = item, 0
        return True

    def read(self, size: int = -1, /) -> bytes:
        if self._pos >= len(self._buf) and not self._next_chunk():
            return b""
        left = len(self._buf) - self._pos
        if size < 0 or size >= left:
            # The rest of the chunk: no copy when it is the whole chunk.
            data = self._buf if self._pos == 0 else self._buf[self._pos :]
            self._pos = len(self._buf)
            return data
        data = self._buf[self._pos : self._pos + size]
        self._pos += size
        return data

    def finish(self) -> None:
        """Read to the end of the stream (so that the chain hashed all of it)."""
        while self.read(self._chunk):
            pass
        self._thread.join()

    def close(self) -> None:
        self._stop.set()
        # Unblock a producer waiting on a full queue, then wait for it.
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()
