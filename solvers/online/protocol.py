"""The wire format between ensemble members and trainer ranks: a fixed header, tags and credits.

Every message from a client rank to a trainer rank is one MPI message of bytes on
the intercommunicator made by ``MPI_Comm_connect``/``MPI_Comm_accept``: a fixed
224-byte header followed by the rank's ``local_size`` float64 values (none for
``BYE`` and ``HELLO``). The C client (``solvers/online/c/hpcore_online.c``) writes the same bytes::

    int64  magic, kind, member, attempt, time_step, rank, size, local_size,
           nparams, spare[7]                      (16 x 8 bytes)
    double params[8]                              (8 x 8 bytes)
    char   field[32]                              (NUL-padded name)

Connecting: after ``MPI_Comm_connect`` and a barrier on the new intercommunicator,
the member's rank 0 sends one ``HELLO`` header (its member and attempt; tag
:data:`TAG_HELLO`) to trainer rank 0, which so knows who connected: the member it
accepted, or a stand-in (member :data:`STAND_IN_MEMBER`) that the trainer started to
release an accept whose member died before connecting.

Flow control is credit based: on accept, every trainer rank sends every member rank
``window`` credits (tag :data:`TAG_CREDIT`, one int64); each data message costs one
credit; the trainer returns credits as it receives (or, when its staging queue is
full, as it takes) samples. A client with no credit waits in ``send``:
back-pressure instead of unbounded memory. ``finalize`` sends ``BYE`` to every
trainer rank and drains credits until each answers -1 (its last message), then
disconnects.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = [
    "FIELD_CHARS",
    "HEADER_NBYTES",
    "KIND_BYE",
    "KIND_DATA",
    "KIND_HELLO",
    "MAGIC",
    "MAX_PARAMS",
    "STAND_IN_MEMBER",
    "TAG_CREDIT",
    "TAG_DATA",
    "TAG_HELLO",
    "Header",
    "pack_message",
    "read_ports",
    "trainer_of",
    "unpack_message",
]

MAGIC = 0x48504F4E  # "HPON"
KIND_DATA = 1
KIND_BYE = 2
KIND_HELLO = 3
TAG_DATA = 7401
TAG_CREDIT = 7402
TAG_HELLO = 7403
STAND_IN_MEMBER = -1  # member id in the hello of a stand-in connection (see solvers/online/stand_in.py)
MAX_PARAMS = 8
FIELD_CHARS = 32
HEADER_NBYTES = 16 * 8 + MAX_PARAMS * 8 + FIELD_CHARS

_INTS = np.dtype(("<i8", 16))


class Header:
    """A decoded message header (plain attributes; see the module docstring for the layout)."""

    __slots__ = ("attempt", "field", "kind", "local_size", "member", "params", "rank", "size", "time_step")

    def __init__(self, kind, member, attempt, time_step, rank, size, local_size, params, field):
        self.kind = int(kind)
        self.member = int(member)
        self.attempt = int(attempt)
        self.time_step = int(time_step)
        self.rank = int(rank)
        self.size = int(size)
        self.local_size = int(local_size)
        self.params = tuple(float(p) for p in params)
        self.field = str(field)

    def __repr__(self):
        return (f"Header(kind={self.kind}, member={self.member}, attempt={self.attempt}, t={self.time_step}, "
                f"rank={self.rank}/{self.size}, field={self.field!r}, local_size={self.local_size})")


def pack_message(header: Header, data=None) -> np.ndarray:
    """Header and float64 payload as one uint8 array (what goes on the wire). Not collective."""
    if len(header.params) > MAX_PARAMS:
        raise ValueError(f"params: at most {MAX_PARAMS} parameters fit the header, got {len(header.params)}")
    name = header.field.encode()
    if not name or len(name) >= FIELD_CHARS:
        raise ValueError(f"field_name: 1 to {FIELD_CHARS - 1} bytes expected, got {header.field!r}")
    n = 0 if data is None else int(data.size)
    out = np.zeros(HEADER_NBYTES + 8 * n, dtype=np.uint8)
    ints = out[:128].view("<i8")
    ints[:9] = (MAGIC, header.kind, header.member, header.attempt, header.time_step, header.rank, header.size,
                header.local_size, len(header.params))
    out[128:192].view("<f8")[:len(header.params)] = header.params
    out[192:192 + len(name)] = np.frombuffer(name, dtype=np.uint8)
    if n:
        out[HEADER_NBYTES:].view("<f8")[:] = np.ravel(data)
    return out


def unpack_message(buf: np.ndarray) -> tuple[Header, np.ndarray]:
    """Split a received uint8 message into its :class:`Header` and a float64 payload view. Not collective."""
    if buf.size < HEADER_NBYTES:
        raise ValueError(f"message of {buf.size} bytes is shorter than the {HEADER_NBYTES}-byte header")
    ints = buf[:128].view("<i8")
    if int(ints[0]) != MAGIC:
        raise ValueError(f"message magic {int(ints[0]):#x} is not {MAGIC:#x}: not an hpcore.online client")
    nparams = int(ints[8])
    params = buf[128:192].view("<f8")[:nparams]
    raw = bytes(buf[192:HEADER_NBYTES])
    field = raw.split(b"\0", 1)[0].decode()
    header = Header(ints[1], ints[2], ints[3], ints[4], ints[5], ints[6], ints[7], params, field)
    data = buf[HEADER_NBYTES:].view("<f8")
    if header.kind == KIND_DATA and data.size != header.local_size:
        raise ValueError(f"{header}: payload has {data.size} values, header says {header.local_size}")
    return header, data


def trainer_of(member: int, time_step: int, n_trainers: int, routing: str = "round_robin") -> int:
    """Trainer rank that receives ``time_step`` of ``member``: round-robin over time steps or all to 0."""
    if routing == "one":
        return 0
    return (member + time_step) % n_trainers


def read_ports(path: str, timeout_s: float) -> list[str]:
    """Port names from the trainer's port file (one ``<rank> <port>`` line per port, then ``# end``),
    waiting up to ``timeout_s`` for it to be complete. Not collective."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with open(path) as f:
                text = f.read()
            if text.endswith("\n# end\n"):
                return [line.split(" ", 1)[1] for line in text.splitlines() if line and not line.startswith("#")]
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"HPCORE_ONLINE_SERVER: no complete port file {path!r} after {timeout_s} s")
        time.sleep(0.05)
