"""Ring attention: exact attention over a sequence split across ranks (blockwise online softmax, forward, backward)."""

from __future__ import annotations

import math
from typing import Literal, Optional

import numpy as np

from hpcore.arrays import array_module, is_device_array
from hpcore.boundary import agree

from .ring_engine import RingMismatchError, make_link, ring_context, split_comm

__all__ = [
    "RingAttention",
    "zigzag_split",
    "zigzag_merge",
    "sequence_positions",
    "attention_reference",
]

Layout = Literal["zigzag", "contiguous"]
DEFAULT_BLOCK_SIZE = 1024
"""Tile length [tokens] of the score blocks: a tile pair holds ``(*batch, block, block)`` scores."""


# --------------------------------------------------------------------------- layouts


def _check_layout(layout) -> None:
    if layout not in ("zigzag", "contiguous"):
        raise ValueError(f"layout: expected 'zigzag' or 'contiguous', got {layout!r}")


def _segments(rank: int, size: int, local_len: int, layout: str) -> list:
    """``[(local_start, global_start, length)]`` of the sequence pieces this rank holds."""
    if layout == "zigzag" and size > 1:
        c = local_len // 2
        return [(0, rank * c, c), (c, (2 * size - 1 - rank) * c, c)]
    return [(0, rank * local_len, local_len)]


def sequence_positions(local_len: int, size: int, rank: int, layout: Layout = "zigzag") -> np.ndarray:
    """Global token positions of the ``local_len`` tokens rank ``rank`` holds. Not collective.

    ``zigzag`` (for ``size > 1``): the global sequence of ``L = size * local_len`` tokens is
    cut into ``2 * size`` chunks of ``local_len / 2``; rank ``r`` holds chunks ``r`` and
    ``2 * size - 1 - r``, so under a causal mask every rank does the same work.
    ``contiguous``: rank ``r`` holds ``[r * local_len, (r + 1) * local_len)``.
    """
    _check_layout(layout)
    if layout == "zigzag" and size > 1 and local_len % 2:
        raise ValueError(f"local_len: the zigzag layout needs an even local length, got {local_len}")
    return np.concatenate([np.arange(g, g + n) for _, g, n in _segments(rank, size, local_len, layout)]
                          or [np.zeros(0, dtype=np.int64)])


def zigzag_split(x, size: int, rank: Optional[int] = None, axis: int = -2):
    """This rank's part of a global sequence in the zigzag layout. Not collective.

    Parameters
    ----------
    x : array ``(..., L, ...)`` with the sequence along ``axis`` (default -2, as in
        ``(*batch, L, d)``); ``L`` must be a multiple of ``2 * size``.
    rank : int, optional
        The part to return; None returns the list of all ``size`` parts.

    Returns
    -------
    array ``(..., L / size, ...)`` (a copy): chunks ``rank`` and ``2 * size - 1 - rank`` of
    the ``2 * size`` equal chunks, concatenated; or the list of every rank's part.
    """
    xp = array_module(x)
    size = int(size)
    length = x.shape[axis]
    if size < 1 or length % (2 * size):
        raise ValueError(f"x: sequence length {length} along axis {axis} is not a multiple of 2 * size = {2 * size}")
    chunks = xp.split(x, 2 * size, axis=axis)

    def part(r):
        return xp.concatenate([chunks[r], chunks[2 * size - 1 - r]], axis=axis)

    if rank is None:
        return [part(r) for r in range(size)]
    if not 0 <= int(rank) < size:
        raise ValueError(f"rank: expected 0 <= rank < {size}, got {rank}")
    return part(int(rank))


def zigzag_merge(parts, axis: int = -2):
    """Inverse of :func:`zigzag_split`: the global sequence from every rank's part. Not collective.

    ``parts``: the ``size`` local parts in rank order (e.g. from ``comm.allgather``), each
    ``(..., 2c, ...)`` along ``axis``. Returns ``(..., 2c * size, ...)``.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("parts: expected at least one part")
    xp = array_module(parts[0])
    size = len(parts)
    halves = [xp.split(p, 2, axis=axis) for p in parts]
    order = [halves[r][0] for r in range(size)] + [halves[r][1] for r in reversed(range(size))]
    return xp.concatenate(order, axis=axis)


# --------------------------------------------------------------------------- serial reference


def attention_reference(q, k, v, causal: bool = False, scale: Optional[float] = None, dout=None):
    """Full softmax attention on one process (the ``L x L`` score matrix). Not collective.

    ``q, k``: ``(*batch, L, d)``, ``v``: ``(*batch, L, dv)``, positions ``0..L-1`` (causal:
    query ``i`` sees keys ``j <= i``). Returns ``out`` ``(*batch, L, dv)``, or with ``dout``
    the tuple ``(out, dq, dk, dv)`` of the exact gradients. For tests and small problems.
    """
    xp = array_module(q)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    s = xp.matmul(q, xp.swapaxes(k, -1, -2)) * scale
    if causal:
        n = q.shape[-2]
        s = xp.where(xp.tril(xp.ones((n, k.shape[-2]), dtype=bool)), s, -xp.inf)
    s = s - s.max(axis=-1, keepdims=True)
    p = xp.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    out = xp.matmul(p, v)
    if dout is None:
        return out
    dv = xp.matmul(xp.swapaxes(p, -1, -2), dout)
    dp = xp.matmul(dout, xp.swapaxes(v, -1, -2))
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    dq = xp.matmul(ds, k) * scale
    dk = xp.matmul(xp.swapaxes(ds, -1, -2), q) * scale
    return out, dq, dk, dv


# --------------------------------------------------------------------------- the ring


def _tiles(segments, block: Optional[int]) -> list:
    """``[(local_lo, local_hi, global_lo)]``: each segment cut into tiles of at most ``block``."""
    out = []
    for lo, g, n in segments:
        step = n if block is None else max(1, int(block))
        for a in range(0, n, max(1, step)):
            b = min(n, a + step)
            out.append((lo + a, lo + b, g + a))
    return out


class RingAttention:
    """Exact multi-rank attention: each rank holds ``L_local`` tokens of the sequence.

    Collective on ``comm`` to construct, and so are :meth:`forward` and :meth:`backward`:
    every rank calls them in the same order with arrays of the same shape and dtype.
    Keys and values travel around the ring (``size`` steps); the next block's transfer
    is posted before the current block is computed and progressed between tiles. The
    softmax is computed blockwise online (running max and denominator), so no rank
    holds more than one ``(*batch, block_size, block_size)`` tile of scores at a time
    (two in the backward pass): memory per rank is ``O(L_local * d + block_size**2)``,
    never ``O(L * L_local)``. The backward pass is the FlashAttention-2 recurrence:
    the ``dK, dV`` accumulators travel around the ring with ``K, V`` and reach their
    owner after ``size`` steps; no full-length gradient is all-reduced.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm or hpcore.Comm
    causal : bool
        Query at global position ``i`` sees keys at positions ``<= i``.
    scale : float, optional
        Multiplies the scores; default ``1 / sqrt(d)``.
    layout : "zigzag" or "contiguous"
        Which global positions each rank holds (see :func:`sequence_positions`); only
        matters with ``causal``. Use :func:`zigzag_split` / :func:`zigzag_merge` to go
        between a global sequence and the zigzag parts (balanced causal work).
    block_size : int or None
        Tile length [tokens]; None tiles by whole local segments (``O(L_local**2)`` scores).

    Examples
    --------
    ``mpiexec -n 2``, the same global ``(heads, L, d)`` arrays ``Q, K, V, dO`` on every rank::

        attn = RingAttention(MPI.COMM_WORLD, causal=True)
        part = lambda a: zigzag_split(a, comm.size, comm.rank)   # (heads, L / size, d)
        out = attn.forward(part(Q), part(K), part(V))
        dq, dk, dv = attn.backward(part(dO))
        full_out = zigzag_merge(comm.allgather(out))             # (heads, L, d)

    Attributes
    ----------
    stats : dict
        ``score_tile_shape`` (largest ``(tq, tk)`` used), ``score_tile_elements`` (largest
        ``batch * tq * tk``), ``tile_pairs`` computed and ``skipped`` (fully masked) in the
        last call, ``sent_nbytes`` by this rank in the last call.
    """

    def __init__(self, comm, causal: bool = False, *, scale: Optional[float] = None, layout: Layout = "zigzag",
                 block_size: Optional[int] = DEFAULT_BLOCK_SIZE):
        self._mpi, self._hc = split_comm(comm)
        self._ctx = ring_context(self._mpi)  # collective on first use of comm (a private duplicate)
        error = None
        try:
            _check_layout(layout)
            if block_size is not None and int(block_size) < 1:
                raise ValueError(f"block_size: expected None or >= 1, got {block_size}")
            if scale is not None and not math.isfinite(float(scale)):
                raise ValueError(f"scale: expected a finite number, got {scale}")
        except Exception as exc:  # noqa: BLE001 - raised on every rank by agree()
            error = exc
        # causal, scale and layout decide which scores each rank computes: they must match
        agree(self._ctx.comm, error, what="RingAttention", mismatch=RingMismatchError, causal=bool(causal),
              scale=None if error is not None or scale is None else float(scale), layout=layout)
        self.causal = bool(causal)
        self.scale = None if scale is None else float(scale)
        self.layout = layout
        # without a mask positions do not matter: one segment per rank gives the largest tiles
        self._layout_used = layout if self.causal else "contiguous"
        self.block_size = None if block_size is None else int(block_size)
        self.rank, self.size = self._mpi.Get_rank(), self._mpi.Get_size()
        self.stats: dict = {"score_tile_shape": (0, 0), "score_tile_elements": 0}
        self._saved = None
        self._buffers: dict = {}

    # ------------------------------------------------------------------ checks
    def _check_qkv(self, q, k, v):
        for name, a in (("q", q), ("k", k), ("v", v)):
            if not (isinstance(a, np.ndarray) or is_device_array(a)):
                raise TypeError(f"{name}: expected a NumPy or CuPy array, got {type(a).__name__}")
            if a.dtype not in (np.float32, np.float64):
                raise TypeError(f"{name}: expected float32 or float64, got {a.dtype}")
            if a.ndim < 2:
                raise ValueError(f"{name}: expected shape (*batch, L_local, d), got {a.shape}")
        if not (is_device_array(q) == is_device_array(k) == is_device_array(v)):
            raise TypeError("q, k, v: must all be host or all be device arrays")
        if not (q.dtype == k.dtype == v.dtype):
            raise TypeError(f"q, k, v: dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
        if q.shape != k.shape:
            raise ValueError(f"k: expected q's shape {q.shape}, got {k.shape}")
        if v.shape[:-1] != k.shape[:-1]:
            raise ValueError(f"v: expected shape {k.shape[:-1] + ('dv',)}, got {v.shape}")
        if q.shape[-2] < 1 or q.shape[-1] < 1:
            raise ValueError(f"q: L_local and d must be >= 1, got {q.shape}")
        if self.causal and self.layout == "zigzag" and self.size > 1 and q.shape[-2] % 2:
            raise ValueError(f"q: the zigzag layout needs an even L_local, got {q.shape[-2]}")

    # ------------------------------------------------------------------ helpers
    def _links(self, device: bool, n: int):
        return [make_link(self._ctx, self._hc, device, self._ctx.next_tag()) for _ in range(n)]

    def _record(self, batch: int, tq: int, tk: int) -> None:
        if batch * tq * tk > self.stats["score_tile_elements"]:
            self.stats["score_tile_elements"] = batch * tq * tk
            self.stats["score_tile_shape"] = (tq, tk)

    def _mask(self, xp, qg: int, tq: int, kg: int, tk: int):
        """None (all visible), False (all masked) or a boolean ``(tq, tk)`` mask, True where masked."""
        if not self.causal:
            return None
        if kg > qg + tq - 1:
            return False
        if kg + tk - 1 <= qg:
            return None
        return xp.arange(kg, kg + tk)[None, :] > xp.arange(qg, qg + tq)[:, None]

    def _scratch(self, xp, name: str, shape: tuple, dtype):
        """A reused score-tile buffer (one per name; reallocated only when the tile shape changes)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype or array_module(buf) is not xp:
            self._buffers.pop(name, None)
            buf = None  # release the old tile before allocating the new one
            buf = self._buffers[name] = xp.empty(shape, dtype=dtype)
        return buf

    @staticmethod
    def _sync(xp) -> None:
        if xp is not np:
            xp.cuda.get_current_stream().synchronize()

    @staticmethod
    def _poke(reqs) -> None:
        """Let MPI progress the transfers in flight (MPICH has no background progress)."""
        for r in reqs:
            if r is not None:
                r.Test()

    # ------------------------------------------------------------------ forward
    def forward(self, q, k, v):
        """Attention output for this rank's queries against the whole sequence.

        Collective on ``comm``. ``q, k``: ``(*batch, L_local, d)``; ``v``: ``(*batch,
        L_local, dv)``; float32 or float64, NumPy or CuPy, the same shapes on every rank
        (agreed before any transfer). Token positions follow ``layout`` (causal only).
        Returns ``out`` ``(*batch, L_local, dv)``; keeps ``q, k, v, out`` and the
        log-sum-exp ``(*batch, L_local)`` for :meth:`backward`.
        """
        error = None
        try:
            self._check_qkv(q, k, v)
        except Exception as exc:  # noqa: BLE001 - raised on every rank by agree()
            error = exc
        fields = {} if error is not None else {
            "L_local": q.shape[-2], "d": q.shape[-1], "dv": v.shape[-1], "batch_shape": tuple(q.shape[:-2]),
            "dtype": q.dtype, "device": bool(is_device_array(q))}
        agree(self._ctx.comm, error, what="RingAttention.forward", mismatch=RingMismatchError, **fields)

        xp = array_module(q)
        rank, size = self.rank, self.size
        L, d, dv = q.shape[-2], q.shape[-1], v.shape[-1]
        batch_shape = q.shape[:-2]
        batch = int(np.prod(batch_shape)) if batch_shape else 1
        scale = 1.0 / math.sqrt(d) if self.scale is None else self.scale
        dtype = q.dtype
        qs = q * dtype.type(scale)  # scaled queries (a copy)
        nk, nv = k.size, v.size

        cur = xp.empty(nk + nv, dtype=dtype)
        cur[:nk] = k.reshape(-1)
        cur[nk:] = v.reshape(-1)
        nxt = xp.empty_like(cur) if size > 1 else None
        m = xp.full(batch_shape + (L,), -xp.inf, dtype=dtype)
        lsum = xp.zeros(batch_shape + (L,), dtype=dtype)
        acc = xp.zeros(batch_shape + (L, dv), dtype=dtype)
        q_tiles = _tiles(_segments(rank, size, L, self._layout_used), self.block_size)
        link, = self._links(is_device_array(q), 1)
        pairs = skipped = 0
        sent = 0
        for j in range(size):
            s = (rank - j) % size
            reqs = []
            if j < size - 1:
                self._sync(xp)
                reqs = [link.irecv(nxt), link.isend(cur)]
                sent += cur.nbytes
            kb = cur[:nk].reshape(k.shape)
            vb = cur[nk:].reshape(v.shape)
            k_tiles = _tiles(_segments(s, size, L, self._layout_used), self.block_size)
            for qlo, qhi, qg in q_tiles:
                for klo, khi, kg in k_tiles:
                    mask = self._mask(xp, qg, qhi - qlo, kg, khi - klo)
                    if mask is False:
                        skipped += 1
                        continue
                    pairs += 1
                    self._record(batch, qhi - qlo, khi - klo)
                    sbuf = self._scratch(xp, "s", batch_shape + (qhi - qlo, khi - klo), dtype)
                    self._forward_tile(xp, qs[..., qlo:qhi, :], kb[..., klo:khi, :], vb[..., klo:khi, :], mask,
                                       m[..., qlo:qhi], lsum[..., qlo:qhi], acc[..., qlo:qhi, :], sbuf)
                    self._poke(reqs)
            for r in reqs:
                r.Wait()
            if reqs:
                cur, nxt = nxt, cur
        out = acc / lsum[..., None]
        lse = m + xp.log(lsum)
        self._saved = (q, k, v, qs, out, lse, scale)
        self._buffers.clear()
        self.stats.update(tile_pairs=pairs, skipped=skipped, sent_nbytes=sent)
        return out

    @staticmethod
    def _forward_tile(xp, qt, kt, vt, mask, m, lsum, acc, s) -> None:
        """Fold one key tile into the running max ``m``, denominator ``lsum`` and ``acc`` (in place).

        ``s``: scratch ``(*batch, tq, tk)`` for the scores, then the probabilities.
        """
        xp.matmul(qt, xp.swapaxes(kt, -1, -2), out=s)
        if mask is not None:
            xp.copyto(s, -xp.inf, where=mask)
        m_new = xp.maximum(m, s.max(axis=-1))
        m_safe = xp.where(m_new == -xp.inf, 0.0, m_new).astype(s.dtype, copy=False)
        s -= m_safe[..., None]
        xp.exp(s, out=s)  # p
        alpha = xp.exp(m - m_safe)
        lsum *= alpha
        lsum += s.sum(axis=-1)
        acc *= alpha[..., None]
        acc += xp.matmul(s, vt)
        m[...] = m_new

    # ------------------------------------------------------------------ backward
    def backward(self, dout):
        """Gradients of ``sum(out * dout)`` with respect to this rank's ``q, k, v``.

        Collective on ``comm``; call after :meth:`forward`, with ``dout`` shaped like its
        ``out`` ``(*batch, L_local, dv)``. Returns ``(dq, dk, dv)`` shaped like ``q, k, v``.
        K and V travel the ring again, each followed by its ``dK, dV`` accumulator, which
        reaches the rank owning that block after ``size`` steps.
        """
        error = None
        try:
            if self._saved is None:
                raise ValueError("backward: call forward() first")
            out = self._saved[4]
            if not (isinstance(dout, np.ndarray) or is_device_array(dout)):
                raise TypeError(f"dout: expected a NumPy or CuPy array, got {type(dout).__name__}")
            if dout.shape != out.shape or dout.dtype != out.dtype or is_device_array(dout) != is_device_array(out):
                raise ValueError(f"dout: expected shape {out.shape} and dtype {out.dtype} where out lives, "
                                 f"got {dout.shape} {dout.dtype}")
        except Exception as exc:  # noqa: BLE001 - raised on every rank by agree()
            error = exc
        agree(self._ctx.comm, error, what="RingAttention.backward", mismatch=RingMismatchError,
              dout_size=None if error is not None else int(dout.size))

        q, k, v, qs, out, lse, scale = self._saved
        xp = array_module(q)
        rank, size = self.rank, self.size
        L = q.shape[-2]
        batch = int(np.prod(q.shape[:-2])) if q.ndim > 2 else 1
        dtype = q.dtype
        nk, nv = k.size, v.size
        delta = (dout * out).sum(axis=-1)  # D = rowsum(dO * O), (*batch, L)
        dq = xp.zeros_like(q)

        cur = xp.empty(nk + nv, dtype=dtype)
        cur[:nk] = k.reshape(-1)
        cur[nk:] = v.reshape(-1)
        nxt = xp.empty_like(cur) if size > 1 else None
        grads = [xp.empty(nk + nv, dtype=dtype) for _ in range(3 if size > 1 else 1)]  # part, incoming, in flight
        q_tiles = _tiles(_segments(rank, size, L, self._layout_used), self.block_size)
        kv_link, dkv_link = self._links(is_device_array(q), 2)
        pairs = skipped = sent = 0
        grad_send = None
        for j in range(size):
            s = (rank - j) % size
            reqs = []
            if j < size - 1:
                self._sync(xp)
                reqs = [kv_link.irecv(nxt), kv_link.isend(cur)]
                sent += cur.nbytes
            part = grads[0]
            incoming = None
            if j > 0:
                incoming = dkv_link.irecv(grads[1])
                reqs.append(incoming)
            part[...] = 0
            kb = cur[:nk].reshape(k.shape)
            vb = cur[nk:].reshape(v.shape)
            dkb = part[:nk].reshape(k.shape)
            dvb = part[nk:].reshape(v.shape)
            k_tiles = _tiles(_segments(s, size, L, self._layout_used), self.block_size)
            for qlo, qhi, qg in q_tiles:
                for klo, khi, kg in k_tiles:
                    mask = self._mask(xp, qg, qhi - qlo, kg, khi - klo)
                    if mask is False:
                        skipped += 1
                        continue
                    pairs += 1
                    self._record(batch, qhi - qlo, khi - klo)
                    shape = q.shape[:-2] + (qhi - qlo, khi - klo)
                    self._backward_tile(xp, qs[..., qlo:qhi, :], kb[..., klo:khi, :], vb[..., klo:khi, :],
                                        dout[..., qlo:qhi, :], lse[..., qlo:qhi], delta[..., qlo:qhi], mask, scale,
                                        dq[..., qlo:qhi, :], dkb[..., klo:khi, :], dvb[..., klo:khi, :],
                                        self._scratch(xp, "s", shape, dtype), self._scratch(xp, "ds", shape, dtype))
                    self._poke(reqs + [grad_send])
            if incoming is not None:
                incoming.Wait()
                part += grads[1]  # this rank's contribution joins the accumulator of block s
            for r in reqs:
                r.Wait()
            if j < size - 1:
                cur, nxt = nxt, cur
            if size > 1:
                if grad_send is not None:
                    grad_send.Wait()  # frees grads[2]
                self._sync(xp)
                grad_send = dkv_link.isend(part)
                sent += part.nbytes
                # rotate: the accumulator just sent stays untouched until that send completes
                grads = [grads[2], grads[1], part]
        if size > 1:
            final = grads[1]
            dkv_link.irecv(final).Wait()  # this rank's own block, after all size contributions
            grad_send.Wait()
        else:
            final = grads[0]
        self._buffers.clear()
        self.stats.update(tile_pairs=pairs, skipped=skipped, sent_nbytes=sent)
        dk = final[:nk].reshape(k.shape).copy()
        dv_ = final[nk:].reshape(v.shape).copy()
        return dq, dk, dv_

    @staticmethod
    def _backward_tile(xp, qt, kt, vt, dot, lse, delta, mask, scale, dq, dk, dv, p, ds) -> None:
        """FlashAttention-2 backward on one tile pair, accumulating into ``dq, dk, dv`` (in place).

        ``p``, ``ds``: scratch ``(*batch, tq, tk)`` tiles.
        """
        xp.matmul(qt, xp.swapaxes(kt, -1, -2), out=p)
        p -= lse[..., None]
        if mask is not None:
            xp.copyto(p, -xp.inf, where=mask)
        xp.exp(p, out=p)
        dv += xp.matmul(xp.swapaxes(p, -1, -2), dot)
        xp.matmul(dot, xp.swapaxes(vt, -1, -2), out=ds)
        ds -= delta[..., None]
        ds *= p
        dq += xp.matmul(ds, kt) * scale
        dk += xp.matmul(xp.swapaxes(ds, -1, -2), qt)
