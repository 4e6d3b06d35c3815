"""Pooled, counted staging buffers: host, pinned host and device byte arrays for the transport."""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np

__all__ = ["BufferPool"]


def _size_class(nbytes: int) -> int:
    """Round up to a power of two (at least 256 bytes) so buffers are reused across sizes."""
    return max(256, 1 << max(0, int(nbytes) - 1).bit_length())


class BufferPool:
    """Reusable flat uint8 buffers of three kinds: ``"host"``, ``"pinned"``, ``"device"``.

    Not collective; thread-safe. ``get`` returns a view of exactly ``nbytes`` bytes;
    ``put`` gives it back. ``stats`` counts allocations, reuses and staging copies
    (``copies_h2d``/``copies_d2h`` and their bytes), so tests and users can see every
    copy the transport made.
    """

    def __init__(self, max_cached_per_class: int = 4):
        self._free: dict = {}
        self._lock = threading.Lock()
        self._max = max_cached_per_class
        self.stats: Counter = Counter()

    def _allocate(self, kind: str, nbytes: int):
        if kind == "host":
            return np.empty(nbytes, dtype=np.uint8)
        import cupy

        if kind == "pinned":
            mem = cupy.cuda.alloc_pinned_memory(nbytes)
            return np.frombuffer(mem, dtype=np.uint8, count=nbytes)
        if kind == "device":
            return cupy.empty(nbytes, dtype=cupy.uint8)
        raise ValueError(f"kind: expected 'host', 'pinned' or 'device', got {kind!r}")

    def _key(self, kind: str, cls: int):
        if kind == "device":
            import cupy

            return kind, cupy.cuda.Device().id, cls
        return kind, -1, cls

    def get(self, nbytes: int, kind: str = "host"):
        """A buffer of ``nbytes`` bytes of ``kind`` (on the current device for ``"device"``)."""
        cls = _size_class(nbytes)
        key = self._key(kind, cls)
        with self._lock:
            stack = self._free.get(key)
            base = stack.pop() if stack else None
        if base is None:
            base = self._allocate(kind, cls)
            self.stats[f"alloc_{kind}"] += 1
            self.stats[f"alloc_{kind}_bytes"] += cls
        else:
            self.stats[f"reuse_{kind}"] += 1
        return base[:nbytes]

    def put(self, buf, kind: str = "host") -> None:
        """Return a buffer obtained from :meth:`get` (a view is traced back to its base)."""
        base = getattr(buf, "base", None)
        if base is None or type(base) is not type(buf):
            base = buf
        cls = int(base.nbytes)
        if cls != _size_class(cls):
            return  # not one of ours (or a pinned frombuffer whose base is the memory object)
        key = self._key(kind, cls)
        with self._lock:
            stack = self._free.setdefault(key, [])
            if len(stack) < self._max:
                stack.append(base)

    def copy_d2h(self, src, dst, stream=None) -> None:
        """Copy device ``src`` into host ``dst`` (same nbytes), counted; synchronizes ``stream``."""
        src.get(out=dst, stream=stream)
        if stream is not None:
            stream.synchronize()
        self.stats["copies_d2h"] += 1
        self.stats["copies_d2h_bytes"] += int(src.nbytes)

    def copy_h2d(self, src, dst, stream=None) -> None:
        """Copy host ``src`` into device ``dst`` (same nbytes), counted; queued on ``stream``."""
        dst.set(src, stream=stream)
        self.stats["copies_h2d"] += 1
        self.stats["copies_h2d_bytes"] += int(src.nbytes)

    def clear(self) -> None:
        """Drop every cached buffer."""
        with self._lock:
            self._free.clear()
