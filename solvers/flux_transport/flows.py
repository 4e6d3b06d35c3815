"""Surface flows: AFT differential rotation and meridional flow, rigid rotation, constant vt, attenuation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from hpcore.arrays import array_module

from .grid import KM_S_TO_RS_H, M_S_TO_RS_H

__all__ = ["FlowModel", "attenuation"]


def attenuation(abs_br, inv_b):
    """``1 - tanh(|Br| / B_att)`` (``inv_b = 1 / B_att`` [1/G], 0 switches it off)."""
    xp = array_module(abs_br)
    return 1.0 - xp.tanh(abs_br * inv_b)


@dataclass
class FlowModel:
    """Analytic flows of every realization [R_sun/h].

    Per-realization arrays have shape ``(nr,)``; ``None`` switches a part off.

    * differential rotation (AFT): ``vp = sin(t) (p0 + p2 cos^2 t + p4 cos^4 t)`` [m/s]
    * meridional flow (AFT): ``vt = -sin(t) (p1 cos t + p3 cos^3 t + p5 cos^5 t)`` [m/s]
    * rigid rotation: ``vp += omega sin(t)`` [km/s], constant ``vt += vt_const`` [km/s]
    * attenuation: both components times ``1 - tanh(|Br| / B_att)`` (per realization)
    """

    nr: int
    dr: Optional[np.ndarray] = None  # (3, nr): p0, p2, p4 [m/s]
    mf: Optional[np.ndarray] = None  # (3, nr): p1, p3, p5 [m/s]
    rigid_omega: float = 0.0  # [km/s]
    vt_const: float = 0.0  # [km/s]
    attenuate_gauss: Optional[np.ndarray] = None  # (nr,) [G]

    @property
    def active(self) -> bool:
        """Whether any flow component is on."""
        return (self.dr is not None or self.mf is not None or self.rigid_omega != 0.0 or self.vt_const != 0.0)

    def vt(self, theta: np.ndarray) -> np.ndarray:
        """Theta velocity at colatitudes ``theta`` (any shape ``s``), shape ``s + (nr,)`` [R_sun/h]."""
        t = np.asarray(theta, dtype=np.float64)[..., None]
        out = np.zeros(t.shape[:-1] + (self.nr,))
        if self.mf is not None:
            c = np.cos(t)
            p1, p3, p5 = (np.asarray(x, dtype=np.float64) for x in self.mf)
            out -= M_S_TO_RS_H * np.sin(t) * (p1 * c + p3 * c ** 3 + p5 * c ** 5)
        if self.vt_const:
            out += self.vt_const * KM_S_TO_RS_H
        return out

    def vp(self, theta: np.ndarray) -> np.ndarray:
        """Phi velocity at colatitudes ``theta``, shape ``s + (nr,)`` [R_sun/h]."""
        t = np.asarray(theta, dtype=np.float64)[..., None]
        out = np.zeros(t.shape[:-1] + (self.nr,))
        s = np.sin(t)
        if self.dr is not None:
            c2 = np.cos(t) ** 2
            p0, p2, p4 = (np.asarray(x, dtype=np.float64) for x in self.dr)
            out += M_S_TO_RS_H * s * (p0 + p2 * c2 + p4 * c2 * c2)
        if self.rigid_omega:
            out += self.rigid_omega * KM_S_TO_RS_H * s
        return out

    def face_velocities(self, grid) -> tuple:
        """HipFT's unattenuated flows on its staggered mesh: ``(vt0, vp0)``.

        ``vt0 (ntheta + 1, nr)``: theta velocity at every theta face (face ``j`` north
        of row ``j``; faces 0 and ``ntheta`` are the ghost faces beyond the poles,
        evaluated at ``|theta|`` as HipFT's ``sth = sin(|th|)``). ``vp0 (ntheta, nr)``:
        phi velocity of each row (the same on every phi face of the row), zero on
        the pole rows (HipFT's ``st = 0`` there) [R_sun/h].
        """
        vt0 = self.vt(np.abs(grid.h_th))
        vp0 = self.vp(grid.h_t)
        vp0[0] = 0.0
        vp0[-1] = 0.0
        return vt0, vp0

    def inverse_attenuation(self) -> Optional[np.ndarray]:
        """``1 / B_att`` per realization, or None when attenuation is off."""
        if self.attenuate_gauss is None:
            return None
        return 1.0 / np.asarray(self.attenuate_gauss, dtype=np.float64)

    def take(self, r0: int, r1: int) -> "FlowModel":
        """The same flows for realizations ``[r0, r1)``."""
        return FlowModel(r1 - r0,
                         None if self.dr is None else np.asarray(self.dr)[:, r0:r1],
                         None if self.mf is None else np.asarray(self.mf)[:, r0:r1],
                         self.rigid_omega, self.vt_const,
                         None if self.attenuate_gauss is None else np.asarray(self.attenuate_gauss)[r0:r1])
