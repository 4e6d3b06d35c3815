"""Host/device array helpers: the array module of some data and flat byte views of buffers."""

from __future__ import annotations

import numpy as np

__all__ = ["array_module", "is_device_array", "as_bytes", "cupy_or_none"]


def cupy_or_none():
    """Return the ``cupy`` module if it imports and sees a device, else None. Not collective."""
    try:
        import cupy
    except Exception:  # noqa: BLE001 - any import failure means "no GPU path"
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # noqa: BLE001
        return None
    return cupy


def is_device_array(a) -> bool:
    """True for arrays in device memory (anything exposing ``__cuda_array_interface__``)."""
    return hasattr(a, "__cuda_array_interface__") and not isinstance(a, np.ndarray)


def array_module(a):
    """``cupy`` for device arrays, ``numpy`` otherwise (never imports cupy for host data)."""
    if is_device_array(a):
        import cupy

        return cupy
    return np


def as_bytes(buf, name: str = "buf", writable: bool = False):
    """A flat uint8 view of ``buf``'s memory (no copy).

    ``buf``: a contiguous NumPy or CuPy array, or a bytes-like object. Raises
    ``TypeError`` for objects that expose no memory, ``ValueError`` for
    non-contiguous arrays or read-only memory when ``writable``.
    """
    if type(buf) is np.ndarray:  # hot path
        flags = buf.flags
        if flags.c_contiguous and (not writable or flags.writeable):
            if buf.dtype == np.uint8 and buf.ndim == 1:
                return buf
            return buf.reshape(-1).view(np.uint8)
    if is_device_array(buf):
        import cupy

        if not isinstance(buf, cupy.ndarray):
            buf = cupy.asarray(buf)
        if not (buf.flags.c_contiguous or buf.flags.f_contiguous):
            raise ValueError(f"{name}: device array must be contiguous (got strides {buf.strides})")
        return cupy.ndarray((buf.nbytes,), dtype=cupy.uint8, memptr=buf.data)
    if isinstance(buf, np.ndarray):
        if not (buf.flags.c_contiguous or buf.flags.f_contiguous):
            raise ValueError(
                f"{name}: array must be contiguous (got shape {buf.shape}, strides {buf.strides}); "
                "describe the view with a datatype over its base array instead"
            )
        if writable and not buf.flags.writeable:
            raise ValueError(f"{name}: array is read-only")
        flat = buf.ravel(order="K") if buf.ndim != 1 else buf
        return flat.view(np.uint8)
    try:
        mv = memoryview(buf)
    except TypeError:
        raise TypeError(f"{name}: expected a NumPy/CuPy array or a bytes-like object, "
                        f"got {type(buf).__name__}") from None
    if not mv.contiguous:
        raise ValueError(f"{name}: buffer must be contiguous")
    if writable and mv.readonly:
        raise ValueError(f"{name}: buffer is read-only")
    return np.frombuffer(mv.cast("B"), dtype=np.uint8) if mv.nbytes else np.zeros(0, np.uint8)
