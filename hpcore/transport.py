"""Point-to-point transport of (buffer, datatype, count) on host or device buffers, method chosen per message."""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np

from . import perfmodel
from .arrays import as_bytes, is_device_array
from .boundary import as_comm
from .cuda_aware import detect_cuda_aware
from .datatype import CanonicalType, canonicalize
from .errors import HpcoreError, rank_prefix
from .lazy_mpi import mpi as _mpi
from .pack import _check_span, pack, plan, unpack
from .staging import BufferPool

__all__ = ["Comm", "Request", "Method"]

Method = Literal["mpi", "host_pack", "device_pack", "staged"]


class Request:
    """A pending send or receive. ``test()`` / ``wait()`` complete it; a receive that
    went through a packed buffer is unpacked into the user's buffer on completion."""

    def __init__(self, mpi_request, finish=None):
        self._req = mpi_request
        self._finish = finish
        self._done = False

    def _complete(self, status) -> None:
        self._done = True
        fin, self._finish = self._finish, None
        if fin is not None:
            fin(status)

    def test(self) -> bool:
        """Progress MPI and return True once the operation completed. Not collective."""
        if self._done:
            return True
        status = _mpi().Status()
        flag = self._req.Test(status)
        if flag:
            self._complete(status)
        return bool(flag)

    def wait(self, status=None) -> None:
        """Block until the operation completed (and is unpacked). Not collective."""
        if self._done:
            return
        st = status if status is not None else _mpi().Status()
        self._req.Wait(st)
        self._complete(st)

    @staticmethod
    def waitall(requests) -> None:
        """Wait for every request in ``requests``."""
        for r in requests:
            r.wait()


_PLAIN_DTYPES: dict = {}


def _plain_dtype(dtype) -> bool:
    """Whether ``dtype`` holds plain bytes (no object references, not NumPy's StringDType), cached."""
    ok = _PLAIN_DTYPES.get(dtype)
    if ok is None:
        ok = _PLAIN_DTYPES[dtype] = not dtype.hasobject and dtype.kind != "T"
    return ok


class Comm:
    """Point-to-point messages of (buffer, datatype, count) on host or device buffers.

    Not collective to construct; wraps an mpi4py communicator the caller owns. Each
    message picks a method: ``"mpi"`` (hand buffer and datatype to MPI),
    ``"host_pack"`` (pack to a host buffer, send bytes), ``"device_pack"`` (pack on
    the device, CUDA-aware send) or ``"staged"`` (pack on the device, copy to pinned
    host memory, send). The packed bytes are MPI's typemap order, sent as
    ``MPI.PACKED``, so sender and receiver choose independently.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm or Comm
    cuda_aware : bool, optional
        Force CUDA-aware MPI on/off; default: :func:`hpcore.cuda_aware.detect_cuda_aware`.
    model : PerfModel, optional
        Default: :func:`hpcore.perfmodel.load` (measured, else safe defaults).
    method : str, optional
        Force one method for every message.
    """

    def __init__(self, comm, *, cuda_aware: Optional[bool] = None, model=None, method: Optional[Method] = None):
        comm = as_comm(comm)
        _check_method(method)
        self.mpi = comm
        self.cuda_aware = bool(detect_cuda_aware()) if cuda_aware is None else bool(cuda_aware)
        self.model = model if model is not None else perfmodel.load()
        self.method = method
        self.pool = BufferPool()
        self.counts: dict = {m: 0 for m in perfmodel.METHODS}
        self._byte = _mpi().BYTE  # MPI is initialized: the communicator exists

    @property
    def rank(self) -> int:
        """This process's rank in the wrapped communicator. Not collective."""
        return self.mpi.Get_rank()

    @property
    def size(self) -> int:
        """Number of ranks of the wrapped communicator. Not collective."""
        return self.mpi.Get_size()

    # ----------------------------------------------------------------- choice
    def choose(self, buf, datatype=None, count: int = 1, method: Optional[Method] = None) -> str:
        """The method this rank uses for (buf, datatype, count). Not collective."""
        _check_method(method)
        method = method or self.method
        device = is_device_array(buf)
        if method is not None:
            if method == "mpi" and device and not self.cuda_aware:
                raise ValueError(f"{rank_prefix(self.mpi)}method='mpi' with a device buffer needs CUDA-aware MPI")
            if method == "host_pack" and device:
                raise ValueError(f"{rank_prefix(self.mpi)}method='host_pack' needs a host buffer")
            if method in ("device_pack", "staged") and not device:
                raise ValueError(f"{rank_prefix(self.mpi)}method={method!r} needs a device buffer")
            if method == "device_pack" and not self.cuda_aware:
                raise ValueError(f"{rank_prefix(self.mpi)}method='device_pack' needs CUDA-aware MPI")
            return method
        ctype = self._ctype(buf, datatype)
        # The choice depends only on these; the model's interpolation costs ~10 us, so
        # it is made once per key (ctype kept in the entry, so its id is not reused).
        key = (id(ctype), count, device, self.cuda_aware, id(self.model))
        hit = self._choices.get(key)
        if hit is not None and hit[0] is ctype and hit[1] is self.model:
            return hit[2]
        if len(self._choices) >= 1024:
            self._choices.clear()
        choice = self._choose_by_model(ctype, count, device)
        self._choices[key] = (ctype, self.model, choice)
        return choice

    @property
    def model(self):
        """The :class:`~hpcore.perfmodel.PerfModel` the choice of method follows. Choices
        are cached per model: assign a new model (not edit this one) to re-choose."""
        return self._model

    @model.setter
    def model(self, value) -> None:
        self._model = value
        self._choices = {}

    def _choose_by_model(self, ctype, count: int, device: bool) -> str:
        contiguous = ctype.is_contiguous and (count <= 1 or ctype.size == ctype.extent)
        n = ctype.size * count
        run = perfmodel.mean_run(ctype)
        if not device:
            if contiguous:
                return "mpi"
            t_mpi = self.model.predict("mpi", n, run)
            t_pack = self.model.predict("host_pack", n, run)
            return "host_pack" if t_pack < t_mpi else "mpi"
        if not self.cuda_aware:
            return "staged"
        if contiguous:
            return "mpi"
        t_dev = self.model.predict("device_pack", n, run)
        t_stg = self.model.predict("staged", n, run)
        return "staged" if t_stg < t_dev else "device_pack"

    def _ctype(self, buf, datatype) -> CanonicalType:
        if datatype is None:
            return canonicalize(_mpi().BYTE)
        return datatype if isinstance(datatype, CanonicalType) else canonicalize(datatype)

    def _spec(self, buf, datatype, count):
        """(datatype, count) with datatype=None meaning all of buf's bytes."""
        if datatype is None:
            from mpi4py import MPI

            if count != 1:
                raise ValueError(f"count: {count} given without a datatype (datatype=None sends all of buf)")
            return MPI.BYTE, as_bytes(buf, "buf").nbytes
        if isinstance(datatype, CanonicalType):
            raise TypeError("datatype: pass the MPI datatype to the transport (a CanonicalType has no MPI handle)")
        return datatype, count

    def _check_span(self, pl, nbytes: int, what: str) -> None:
        if pl.nbytes and (pl.lo < 0 or pl.hi > nbytes):  # the message is only built on error
            _check_span(pl, nbytes, f"{rank_prefix(self.mpi)}{what}")

    # ----------------------------------------------------------------- send side
    def _prepare_send(self, buf, datatype, count, method):
        datatype, count = self._spec(buf, datatype, count)
        m = self.choose(buf, datatype, count, method)
        pl = plan(datatype, count)
        self._check_span(pl, as_bytes(buf, "buf").nbytes, "send")
        self.counts[m] += 1
        MPI = _mpi()

        if m == "mpi":
            return [buf, count, datatype], None
        if m == "host_pack":
            tmp = self.pool.get(pl.nbytes, "host")
            pack(buf, datatype, count, out=tmp)
            return [tmp, pl.nbytes, MPI.PACKED], lambda: self.pool.put(tmp, "host")
        import cupy

        with buf.device:
            dtmp = self.pool.get(pl.nbytes, "device")
            pack(buf, datatype, count, out=dtmp)
            stream = cupy.cuda.get_current_stream()
            if m == "device_pack":
                stream.synchronize()
                return [dtmp, pl.nbytes, MPI.PACKED], lambda: self.pool.put(dtmp, "device")
            htmp = self.pool.get(pl.nbytes, "pinned")
            self.pool.copy_d2h(dtmp, htmp, stream)
            self.pool.put(dtmp, "device")
            return [htmp, pl.nbytes, MPI.PACKED], lambda: self.pool.put(htmp, "pinned")

    def _whole_host_array(self, buf, datatype, count, method, writable: bool):
        """``[buf, MPI.BYTE]`` when the message is all of a C-contiguous NumPy array and
        nothing forces a method: MPI's own path, chosen without the model or a pack
        plan (the common case costs ~0.3 us here instead of ~5). Else None."""
        if (datatype is None and count == 1 and method is None and self.method is None
                and type(buf) is np.ndarray):
            flags = buf.flags  # a new object per access: read it once
            if flags.c_contiguous and (not writable or flags.writeable) and _plain_dtype(buf.dtype):
                self.counts["mpi"] += 1
                return [buf, self._byte]
        return None

    def send(self, buf, dest: int, tag: int = 0, *, datatype=None, count: int = 1,
             method: Optional[Method] = None) -> None:
        """Blocking send of ``count`` instances of ``datatype`` from ``buf`` to ``dest``.

        Point-to-point (not collective). ``datatype=None`` sends all of ``buf``'s bytes.
        """
        spec = self._whole_host_array(buf, datatype, count, method, False)
        if spec is not None:
            self.mpi.Send(spec, dest, tag)
            return
        spec, release = self._prepare_send(buf, datatype, count, method)
        try:
            self.mpi.Send(spec, dest, tag)
        finally:
            if release:
                release()

    def isend(self, buf, dest: int, tag: int = 0, *, datatype=None, count: int = 1,
              method: Optional[Method] = None) -> Request:
        """Non-blocking send; the data is packed before this returns. Point-to-point."""
        spec = self._whole_host_array(buf, datatype, count, method, False)
        if spec is not None:
            return Request(self.mpi.Isend(spec, dest, tag))
        spec, release = self._prepare_send(buf, datatype, count, method)
        req = self.mpi.Isend(spec, dest, tag)
        return Request(req, (lambda status: release()) if release else None)

    # ----------------------------------------------------------------- receive side
    def _prepare_recv(self, buf, datatype, count, method):
        datatype, count = self._spec(buf, datatype, count)
        m = self.choose(buf, datatype, count, method)
        pl = plan(datatype, count)
        self._check_span(pl, as_bytes(buf, "buf", writable=True).nbytes, "recv")
        self.counts[m] += 1
        MPI = _mpi()

        if m == "mpi":
            return [buf, count, datatype], None
        size = pl.ctype.size

        def finish(tmp, status, to_user, release):
            got = status.Get_count(MPI.PACKED)
            try:
                if got != pl.nbytes:
                    if size == 0 or got % size:
                        raise HpcoreError(
                            f"{rank_prefix(self.mpi)}recv: received {got} bytes, not a whole number of "
                            f"{size}-byte instances (expected {pl.nbytes})"
                        )
                to_user(tmp, got // size if size else 0)
            finally:
                release()

        if m == "host_pack":
            tmp = self.pool.get(pl.nbytes, "host")
            return [tmp, pl.nbytes, MPI.PACKED], lambda st: finish(
                tmp, st, lambda t, c: unpack(t, buf, datatype, c), lambda: self.pool.put(tmp, "host"))
        with buf.device:
            dtmp = self.pool.get(pl.nbytes, "device")
        if m == "device_pack":
            return [dtmp, pl.nbytes, MPI.PACKED], lambda st: finish(
                dtmp, st, lambda t, c: _device_unpack(t, buf, datatype, c), lambda: self.pool.put(dtmp, "device"))
        htmp = self.pool.get(pl.nbytes, "pinned")

        def staged_unpack(t, c):
            import cupy

            with buf.device:
                stream = cupy.cuda.get_current_stream()
                self.pool.copy_h2d(t, dtmp, stream)
                _device_unpack(dtmp, buf, datatype, c)

        def release():
            self.pool.put(htmp, "pinned")
            self.pool.put(dtmp, "device")

        return [htmp, pl.nbytes, MPI.PACKED], lambda st: finish(htmp, st, staged_unpack, release)

    def recv(self, buf, source: Optional[int] = None, tag: Optional[int] = None, *, datatype=None, count: int = 1,
             status=None, method: Optional[Method] = None) -> None:
        """Blocking receive into ``buf`` as ``count`` instances of ``datatype``.

        Point-to-point. ``source``/``tag`` None mean ``MPI.ANY_SOURCE``/``MPI.ANY_TAG``
        (whose values differ between MPI libraries).
        Device buffers are complete (stream synchronized) when this returns.
        """
        spec = self._whole_host_array(buf, datatype, count, method, True)
        if spec is not None:
            MPI = _mpi()
            self.mpi.Recv(spec, MPI.ANY_SOURCE if source is None else source, MPI.ANY_TAG if tag is None else tag,
                          status)
            return
        req = self.irecv(buf, source, tag, datatype=datatype, count=count, method=method)
        req.wait(status)

    def irecv(self, buf, source: Optional[int] = None, tag: Optional[int] = None, *, datatype=None, count: int = 1,
              method: Optional[Method] = None) -> Request:
        """Non-blocking receive; ``buf`` holds the data after the request's ``wait()``."""
        MPI = _mpi()

        source = MPI.ANY_SOURCE if source is None else source
        tag = MPI.ANY_TAG if tag is None else tag
        spec = self._whole_host_array(buf, datatype, count, method, True)
        if spec is not None:
            return Request(self.mpi.Irecv(spec, source, tag))
        spec, finish = self._prepare_recv(buf, datatype, count, method)
        return Request(self.mpi.Irecv(spec, source, tag), finish)

    def sendrecv(self, sendbuf, dest: int, recvbuf, source: int, sendtag: int = 0, recvtag: Optional[int] = None, *,
                 senddatatype=None, sendcount: int = 1, recvdatatype=None, recvcount: int = 1,
                 status=None) -> None:
        """Send to ``dest`` and receive from ``source`` at once (no deadlock). Point-to-point."""
        r = self.irecv(recvbuf, source, recvtag, datatype=recvdatatype, count=recvcount)
        s = self.isend(sendbuf, dest, sendtag, datatype=senddatatype, count=sendcount)
        s.wait()
        r.wait(status)


def _device_unpack(packed, buf, datatype, count) -> None:
    import cupy

    unpack(packed, buf, datatype, count)
    cupy.cuda.get_current_stream().synchronize()


def _check_method(method) -> None:
    if method is not None and method not in perfmodel.METHODS:
        raise ValueError(f"method: expected one of {perfmodel.METHODS} or None, got {method!r}")

