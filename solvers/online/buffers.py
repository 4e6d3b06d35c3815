"""Bounded, seeded sample buffers of one trainer rank: FIFO, FIRO and reservoir.

All three hold at most ``capacity`` samples (pairs of input and target arrays with
their member and time step) and draw batches with their own
``numpy.random.Generator``, so that a run is reproducible from a seed and a
checkpoint (:meth:`Buffer.state_dict` / :meth:`Buffer.load_state_dict`, which
include the generator state) resumes it exactly.

- ``fifo``: batches are the oldest samples, each used once.
- ``firo`` (first in, random out, as Melissa's): no batch before ``watermark``
  samples are held (unless no more data will come); a batch is drawn at random
  without replacement; a sample leaves after ``reuse`` uses.
- ``reservoir``: random batches with reuse, nothing evicted until full; then a new
  sample replaces a random sample that has been used at least once (never an
  unseen one), so the buffer stays full of ever newer data.

``has_room()`` is what back-pressure asks: when False the trainer takes no new
sample from its receiver and members wait in ``send``.
"""

from __future__ import annotations

import json

import numpy as np

__all__ = ["POLICIES", "Buffer", "FIFOBuffer", "FIROBuffer", "ReservoirBuffer", "make_buffer"]

POLICIES = ("fifo", "firo", "reservoir")


class Buffer:
    """Common storage: lists of ``x``, ``y``, use counts and (member, time step) keys. Not collective."""

    policy = ""

    def __init__(self, capacity: int, seed: int = 0, watermark: int = 1, reuse: int = 1):
        if int(capacity) < 1:
            raise ValueError(f"capacity: expected >= 1 sample, got {capacity}")
        if not 1 <= int(watermark) <= int(capacity):
            raise ValueError(f"watermark: expected 1 <= watermark <= capacity={capacity}, got {watermark}")
        if int(reuse) < 1:
            raise ValueError(f"reuse: expected >= 1 use per sample, got {reuse}")
        self.capacity = int(capacity)
        self.watermark = int(watermark)
        self.reuse = int(reuse)
        self.rng = np.random.default_rng(seed)
        self.x: list = []
        self.y: list = []
        self.uses: list = []
        self.keys: list = []
        self.added = 0
        self.evicted = 0

    def __len__(self):
        return len(self.x)

    def has_room(self) -> bool:
        """Whether a new sample can be added now (back-pressure asks this)."""
        return len(self.x) < self.capacity

    def add(self, x, y, key) -> None:
        """Add one sample ``(x, y)`` with its ``(member, time_step)`` key."""
        if not self.has_room():
            raise RuntimeError(f"{self.policy} buffer is full ({self.capacity} samples)")
        self.x.append(x)
        self.y.append(y)
        self.uses.append(0)
        self.keys.append(tuple(key))
        self.added += 1

    def can_batch(self, final: bool) -> bool:
        """Whether a batch can be drawn now (``final``: no more data will arrive)."""
        return len(self.x) > 0

    def _gather(self, idx):
        for i in idx:
            self.uses[i] += 1
        return np.stack([self.x[i] for i in idx]), np.stack([self.y[i] for i in idx])

    def _remove(self, idx) -> None:
        for i in sorted(set(idx), reverse=True):
            del self.x[i], self.y[i], self.uses[i], self.keys[i]

    def remove_member(self, member: int) -> int:
        """Drop the unused samples of ``member`` (a failed member under the 'drop' policy)."""
        idx = [i for i, k in enumerate(self.keys) if k[0] == member and self.uses[i] == 0]
        self._remove(idx)
        return len(idx)

    def batch(self, n: int):
        """Draw up to ``n`` samples as stacked ``(x, y)`` arrays, per the policy."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Arrays and a JSON string that :meth:`load_state_dict` restores exactly (generator included)."""
        shape_x = self.x[0].shape if self.x else (0,)
        shape_y = self.y[0].shape if self.y else (0,)
        return {
            "x": np.stack(self.x) if self.x else np.zeros((0, *shape_x)),
            "y": np.stack(self.y) if self.y else np.zeros((0, *shape_y)),
            "uses": np.asarray(self.uses, dtype=np.int64),
            "keys": np.asarray(self.keys, dtype=np.int64).reshape(-1, 2),
            "meta": json.dumps({"policy": self.policy, "capacity": self.capacity, "watermark": self.watermark,
                                "reuse": self.reuse, "added": self.added, "evicted": self.evicted,
                                "rng": self.rng.bit_generator.state}),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (policy and capacity must match)."""
        meta = json.loads(state["meta"])
        if meta["policy"] != self.policy or meta["capacity"] != self.capacity:
            raise ValueError(f"buffer checkpoint is {meta['policy']}/{meta['capacity']}, this buffer is "
                             f"{self.policy}/{self.capacity}")
        self.x = [np.array(a) for a in state["x"]]
        self.y = [np.array(a) for a in state["y"]]
        self.uses = [int(u) for u in state["uses"]]
        self.keys = [tuple(int(v) for v in k) for k in state["keys"]]
        self.added, self.evicted = meta["added"], meta["evicted"]
        self.rng.bit_generator.state = meta["rng"]


class FIFOBuffer(Buffer):
    """Oldest first, each sample used once."""

    policy = "fifo"

    def batch(self, n: int):
        """Draw up to ``n`` samples as stacked ``(x, y)`` arrays, per the policy."""
        idx = list(range(min(n, len(self.x))))
        out = self._gather(idx)
        self._remove(idx)
        return out


class FIROBuffer(Buffer):
    """First in, random out: watermark before the first batch, each sample used up to ``reuse`` times."""

    policy = "firo"

    def can_batch(self, final: bool) -> bool:
        """Whether a batch can be drawn now (``final``: no more data will arrive)."""
        return len(self.x) >= (1 if final else self.watermark)

    def batch(self, n: int):
        """Draw up to ``n`` samples as stacked ``(x, y)`` arrays, per the policy."""
        k = min(n, len(self.x))
        idx = sorted(self.rng.choice(len(self.x), size=k, replace=False).tolist())
        out = self._gather(idx)
        self._remove([i for i in idx if self.uses[i] >= self.reuse])
        return out


class ReservoirBuffer(Buffer):
    """Random reuse; when full, a new sample replaces a random already-used one."""

    policy = "reservoir"

    def has_room(self) -> bool:
        """Whether a new sample can be added now (back-pressure asks this)."""
        return len(self.x) < self.capacity or any(u > 0 for u in self.uses)

    def add(self, x, y, key) -> None:
        """Add one sample ``(x, y)`` with its ``(member, time_step)`` key."""
        if len(self.x) < self.capacity:
            return super().add(x, y, key)
        used = [i for i, u in enumerate(self.uses) if u > 0]
        if not used:
            raise RuntimeError(f"reservoir buffer is full of unused samples ({self.capacity})")
        i = used[int(self.rng.integers(len(used)))]
        self.x[i], self.y[i], self.uses[i], self.keys[i] = x, y, 0, tuple(key)
        self.added += 1
        self.evicted += 1

    def can_batch(self, final: bool) -> bool:
        """Whether a batch can be drawn now (``final``: no more data will arrive)."""
        return len(self.x) >= (1 if final else self.watermark)

    def batch(self, n: int):
        """Draw up to ``n`` samples as stacked ``(x, y)`` arrays, per the policy."""
        k = min(n, len(self.x))
        idx = sorted(self.rng.choice(len(self.x), size=k, replace=False).tolist())
        return self._gather(idx)


def make_buffer(policy: str, capacity: int, seed: int = 0, watermark: int = 1, reuse: int = 1) -> Buffer:
    """A buffer of ``policy`` (one of :data:`POLICIES`). Not collective."""
    classes = {"fifo": FIFOBuffer, "firo": FIROBuffer, "reservoir": ReservoirBuffer}
    if policy not in classes:
        raise ValueError(f"buffer policy: expected one of {POLICIES}, got {policy!r}")
    return classes[policy](capacity, seed=seed, watermark=watermark, reuse=reuse)
