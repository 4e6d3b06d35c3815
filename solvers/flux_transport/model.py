"""The flux-transport run: set up (collective, all checks first), step, output, checkpoint and restart."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time as _time
import warnings
from typing import Callable, Optional

import numpy as np

from hpcore import MismatchError, agree

from .config import ConfigError, FluxTransportConfig
from .flows import FlowModel
from .grid import KM2_S_TO_RS2_H, KM_S_TO_RS_H, SphereGrid
from .history import Diagnostics, HistoryWriter
from .initial import DEFAULT_REGIONS, balance_flux, bipolar_map, dipole_map, real_harmonic, soccer_ball
from .operators import AdvectionOperator, DiffusionOperator
from .parallel import GHOST, Domain
from .timestepping import SAFETY, sts_coefficients, sts_stages

__all__ = ["FluxTransport", "MAX_SUBCYCLES"]

log = logging.getLogger(__name__)
_TAG_BLOCK = 7311
MAX_SUBCYCLES = 60
"""HipFT's ``diffusion_subcycles_max``: the automatic sub-cycling takes the rest of the step at cycle 59."""
_HUGE = float(np.finfo(np.float64).max)


class FluxTransport:
    """Surface flux transport of Br on the sphere, for many realizations, decomposed over ranks.

    Collective on ``comm`` (every rank passes an equal ``config``). The
    constructor does every check first (configuration, input maps, grid, rank
    layout, a fixed step against the advection limit) and raises the same error
    on every rank before any step. Then :meth:`run` (or :meth:`step`) advances all
    realizations; the ranks are split into ``config.parallel.realization_groups``
    groups of realizations, each decomposing the sphere over its ranks
    (:class:`~solvers.flux_transport.parallel.Domain`).

    Results do not depend on the rank count or the realization split: the
    evolved fields have the same bits (the pole sums are taken in one fixed order,
    steps are global minima, every other operation is local). Only quantities
    made of sums over ranks differ in their last bits: history integrals (fluxes,
    dipoles, validation error) and, when flux balancing of assimilated
    increments is on, the field itself through the balance factor.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
    config : FluxTransportConfig
    initial : ndarray, optional
        On rank 0 only: ``(ntheta, nphi)`` or ``(n_realizations, ntheta, nphi)`` [G],
        overriding ``config.initial`` (the grid comes from its shape).
    restart : str, optional
        A checkpoint written by :meth:`checkpoint`; the run continues from it.
    output : bool
        Write maps, history, checkpoints and plots under ``config.output.directory``.
    """

    def __init__(self, comm, config: FluxTransportConfig, initial=None, restart: Optional[str] = None,
                 output: bool = True):
        self.config = config
        self.comm_in = comm
        rank = comm.Get_rank()
        self.rank = rank
        self.output_enabled = output
        error = None
        xp = np
        try:
            if not isinstance(config, FluxTransportConfig):
                raise TypeError(f"config: expected a FluxTransportConfig, got {type(config).__name__}")
            config.validate()
            if config.parallel.device == "gpu":
                from hpcore.arrays import cupy_or_none

                xp = cupy_or_none()
                if xp is None:
                    raise ConfigError("parallel.device = 'gpu' but CuPy finds no CUDA device on this rank")
        except (TypeError, ValueError) as exc:
            error = exc
        # One agreement: a local error, or a configuration that differs between ranks (compared by
        # digest, so the message stays short), raises the same error on every rank.
        digest = hashlib.blake2b(repr(config.to_dict()).encode(), digest_size=8).hexdigest() if error is None else ""
        try:
            agree(comm, error, what="FluxTransport", config_digest=digest)
        except MismatchError as exc:
            raise ConfigError(f"config: ranks were given different configurations ({exc})") from None
        self.xp = xp

        # ---------------------------------------------------------------- initial state (rank 0 reads)
        state = None
        field0 = None
        shape = None
        scales = None
        error = None
        if rank == 0:
            try:
                if restart is not None:
                    from .io import read_checkpoint

                    field0, grid, state, saved = read_checkpoint(restart)
                    if field0.shape[0] != config.n_realizations:
                        raise ConfigError(f"restart: {restart!r} holds {field0.shape[0]} realizations, the config "
                                          f"asks for {config.n_realizations}")
                else:
                    field0, scales = self._initial_on_root(config, initial)
                if not np.all(np.isfinite(field0)):
                    raise ConfigError("initial map: holds NaN or Inf values")
                shape = field0.shape
            except (TypeError, ValueError, OSError) as exc:
                error = exc
        agree(comm, error)
        shape, state, scales = comm.bcast((shape, state, scales), root=0)
        grid = (SphereGrid(shape[-2], shape[-1]) if scales is None
                else SphereGrid(shape[-2], shape[-1], theta=scales[0], phi=scales[1]))
        self.grid = grid
        nreal = config.n_realizations
        if len(shape) == 3 and shape[0] not in (1, nreal):
            raise ConfigError(f"initial map: holds {shape[0]} realizations, config.n_realizations = {nreal}")

        # ---------------------------------------------------------------- domain and operators
        p = config.parallel
        self.domain = Domain(comm, grid, nreal, groups=p.realization_groups,
                             dims=[int(x) for x in p.dims], halo_method=p.halo_method)
        try:
            self._build(config, field0, shape, state, rank, output)
        except BaseException:
            self.free()
            raise

    def _build(self, config, field0, shape, state, rank, output) -> None:
        """The part of the set-up after the domain exists (freed on any error)."""
        xp = self.xp
        grid = self.grid
        d = self.domain
        self.comm = d.comm
        R, C, nr = d.padded_shape
        self.f = xp.zeros(R * C * nr)
        self._distribute(field0, shape)
        field0 = None
        r0, r1 = d.r0, d.r1
        eta_km = config.per_realization("diffusion", "eta_km2_s")[r0:r1]
        self.eta = eta_km * KM2_S_TO_RS2_H
        self.diffusion = None
        self.advection = None
        if config.diffusion_on:
            self.diffusion = DiffusionOperator(d, grid, self.eta, xp)
        self.flows = self._flow_model(config).take(r0, r1)
        if config.advection:
            self.advection = AdvectionOperator(d, grid, self.flows, xp)
        self.work = [xp.zeros_like(self.f) for _ in range(5)]
        self.f1 = xp.zeros_like(self.f) if self.advection is not None else None
        self.f2 = xp.zeros_like(self.f) if self.advection is not None else None
        self.tmp = xp.zeros_like(self.f)
        self._coeff_cache: dict = {}
        self.dt_flow = math.inf
        self.dt_ptl = 0.0

        # ---------------------------------------------------------------- global limits, checks
        from mpi4py import MPI

        self.dt_exp = math.inf
        if self.diffusion is not None:
            rate = self.comm.allreduce(self.diffusion.local_rate, op=MPI.MAX)
            self.dt_exp = SAFETY * 2.0 / rate if rate > 0 else math.inf  # HipFT's get_dtime_diffusion_euler
        self.implicit = None
        error = None
        try:
            if config.diffusion.method == "implicit" and self.diffusion is not None:
                from .implicit import ImplicitDiffusion

                self.implicit = ImplicitDiffusion(d, grid, self.diffusion, xp, rtol=config.diffusion.implicit_rtol)
        except (ImportError, ValueError) as exc:
            error = ConfigError(f"diffusion.method = 'implicit': {exc}")
        agree(self.comm, error)
        self.dt_adv_limit0 = math.inf
        if self.advection is not None:
            rate0 = self.comm.allreduce(self.advection.unattenuated_rate(), op=MPI.MAX)
            self.dt_adv_limit0 = SAFETY * 0.5 * 2.0 / rate0 if rate0 > 0 else math.inf
            if config.time.dt_h > 0 and config.time.dt_h > self.dt_adv_limit0 * (2.0 if config.time.strang else 1.0):
                raise ConfigError(f"time.dt_h: the fixed step {config.time.dt_h} h exceeds the advection limit "
                                  f"{self.dt_adv_limit0 * (2.0 if config.time.strang else 1.0):.6g} h "
                                  "(CFL of SSPRK(4,3) with WENO3); lower it or set dt_h = 0 for automatic steps")

        # ---------------------------------------------------------------- assimilation
        self.assimilation = None
        if config.assimilation.enabled:
            from .assimilation import Assimilator

            self.assimilation = Assimilator(self, config)

        # ---------------------------------------------------------------- time and output state
        t = config.time
        self.time = float(t.start_h)
        self.steps = 0
        self.n_map = 0
        self.n_hist = 0
        self.n_ckpt = 0
        self.last_dt = 0.0
        self.last_stages = 0
        self.last_subcycles = 0
        if state is not None:
            self.time = float(state["time"])
            self.steps = int(state["steps"])
            self.n_map = int(state["n_map"])
            self.n_hist = int(state["n_hist"])
            self.n_ckpt = int(state["n_ckpt"])
            if self.assimilation is not None:
                self.assimilation.index = int(state.get("assim_index", 0))
        self.diagnostics = Diagnostics(d, grid, config.output.polar_latitude_deg)
        self.history = None
        self.history_rows: list = []
        self.butterfly: tuple = ([], [])
        self.wall_s = {"advection": 0.0, "flows": 0.0, "diffusion": 0.0, "assimilation": 0.0, "output": 0.0}
        o = config.output
        self.history_stem = getattr(o, "history_prefix", "") or f"{o.prefix.split('_')[0]}_history"
        if output:
            if rank == 0:
                os.makedirs(o.directory, exist_ok=True)
            self.comm.Barrier()
            if d.group_root:
                self.history = HistoryWriter(o.directory, range(r0, r1), stem=self.history_stem,
                                             restart_step=self.steps if state is not None else None)
        self._restarted = state is not None
        if self.assimilation is not None and not self._restarted:
            self.assimilation.apply_due(self.time)  # a map at the start time is used before the first step

    # ------------------------------------------------------------------ set-up helpers
    @staticmethod
    def _initial_on_root(config, initial):
        """``(map, scales)``: the initial map on rank 0 and, for a map file, its ``(theta, phi)`` scales."""
        i = config.initial
        if initial is not None:
            a = np.asarray(initial, dtype=np.float64)
            if a.ndim not in (2, 3):
                raise ValueError(f"initial: expected (ntheta, nphi) or (n, ntheta, nphi), got shape {a.shape}")
            return a, None
        if config.validation.kind == "soccer" or i.kind == "soccer":
            grid = SphereGrid(config.grid.ntheta, config.grid.nphi)
            return soccer_ball(grid), None
        if i.kind == "gaussians":
            from .initial import gaussians

            grid = SphereGrid(config.grid.ntheta, config.grid.nphi)
            return gaussians(grid.theta, grid.phi, config.validation.width), None
        scales = None
        if i.kind == "file":
            from .io import read_map

            data, fgrid, _ = read_map(i.file, name="initial.file")
            scales = (fgrid.scale_theta, fgrid.scale_phi)
            data = data * i.scale
        else:
            grid = SphereGrid(config.grid.ntheta, config.grid.nphi)
            if i.kind == "bipolar":
                data = bipolar_map(grid, i.regions or DEFAULT_REGIONS, i.dipole_gauss) * i.scale
            elif i.kind == "dipole":
                data = dipole_map(grid, i.dipole_gauss) * i.scale
            else:
                data = np.zeros(grid.shape)
        if i.flux_balance:
            data = balance_flux(SphereGrid(data.shape[-2], data.shape[-1]), data)
        return data, scales

    @staticmethod
    def _flow_model(config) -> FlowModel:
        fl = config.flow
        n = config.n_realizations
        if not config.advection:
            return FlowModel(n)
        pr = config.per_realization
        dr = np.stack([pr("flow", k) for k in ("dr_p0", "dr_p2", "dr_p4")]) if fl.differential_rotation else None
        mf = np.stack([pr("flow", k) for k in ("mf_p1", "mf_p3", "mf_p5")]) if fl.meridional_flow else None
        att = pr("flow", "attenuate_gauss") if fl.attenuate else None
        return FlowModel(n, dr, mf, fl.rigid_omega_km_s, fl.vt_const_km_s, att)

    def _distribute(self, field0, shape) -> None:
        """Fill the local interior from rank 0's ``field0`` (2-D: the same map for every realization)."""
        d = self.domain
        xp = self.xp
        R, C, nr = d.padded_shape
        f3 = self.f.reshape(R, C, nr)
        g = GHOST
        if len(shape) == 2 or shape[0] == 1:
            buf = np.ascontiguousarray(field0.reshape(shape[-2:]), dtype=np.float64) if self.rank == 0 \
                else np.empty(shape[-2:], dtype=np.float64)
            d.comm.Bcast(buf, root=0)
            block = buf[d.row0:d.row0 + d.ntl, d.col0:d.col0 + d.npl]
            f3[g:g + d.ntl, g:g + d.npl] = xp.asarray(np.repeat(block[:, :, None], nr, axis=2))
            return
        block = None
        if d.group_root:
            if self.rank == 0:
                block = np.ascontiguousarray(field0[d.r0:d.r1].transpose(1, 2, 0))
            else:
                block = np.empty(shape[-2:] + (nr,), dtype=np.float64)
                d.comm.Recv(block, source=0, tag=_TAG_BLOCK)
        if self.rank == 0:
            for g_idx, (a, b) in enumerate(d.blocks):
                root = g_idx * d.ranks_per_group
                if root != 0:
                    d.comm.Send(np.ascontiguousarray(field0[a:b].transpose(1, 2, 0)), dest=root, tag=_TAG_BLOCK)
        local = d.decomp.scatter(block, root=0, ghost=GHOST)
        f3[...] = xp.asarray(local)

    # ------------------------------------------------------------------ field access
    @property
    def field(self):
        """The padded local field ``(R, C, nr)`` (a view)."""
        return self.f.reshape(self.domain.padded_shape)

    def local_interior(self):
        """This rank's cells ``(ntl, npl, nr)`` (a view)."""
        return self.domain.interior(self.field)

    def gather(self, root: int = 0):
        """Every realization's map on ``root`` of ``comm`` as host ``(n_realizations, ntheta, nphi)``; None elsewhere.

        Collective on ``comm``.
        """
        d = self.domain
        block = d.decomp.gather(self.field, root=0, ghost=GHOST)
        if block is not None and hasattr(block, "get"):
            block = block.get()
        out = None
        if self.rank == root:
            out = np.empty((d.n_realizations,) + self.grid.shape)
        for g_idx, (a, b) in enumerate(d.blocks):
            src = g_idx * d.ranks_per_group
            if self.rank == src and self.rank == root:
                out[a:b] = block.transpose(2, 0, 1)
            elif self.rank == src:
                d.comm.Send(np.ascontiguousarray(block), dest=root, tag=_TAG_BLOCK + 1)
            elif self.rank == root:
                tmp = np.empty(self.grid.shape + (b - a,))
                d.comm.Recv(tmp, source=src, tag=_TAG_BLOCK + 1)
                out[a:b] = tmp.transpose(2, 0, 1)
        return out

    # ------------------------------------------------------------------ halo
    def _exchange(self, *arrays) -> None:
        """Fill the ghosts of flat or ``(R, C, nr)`` arrays (one round of messages). Neighbourwise collective."""
        shape = self.domain.padded_shape
        self.domain.halo.exchange(*[a.reshape(shape) for a in arrays])

    # ------------------------------------------------------------------ stepping
    def _events(self) -> list:
        c = self.config
        t0 = c.time.start_h
        ev = [c.time.end_h]
        o = c.output
        if self.output_enabled and o.map_cadence_h > 0:
            ev.append(t0 + (self.n_map + 1) * o.map_cadence_h)
        if self.output_enabled and o.checkpoint_cadence_h > 0:
            ev.append(t0 + (self.n_ckpt + 1) * o.checkpoint_cadence_h)
        if self.assimilation is not None:
            nxt = self.assimilation.next_time()
            if nxt is not None:
                ev.append(nxt)
        return ev

    def _prepare_flows(self) -> None:
        """HipFT's ``update_flow`` + ``get_flow_dtmax`` from the current field. Collective on ``comm``."""
        from mpi4py import MPI

        t0 = _time.perf_counter()
        self._exchange(self.f)
        rate = self.comm.allreduce(self.advection.prepare(self.f, self._exchange), op=MPI.MAX)
        self.wall_s["flows"] += _time.perf_counter() - t0
        dt = SAFETY * 0.5 / max(rate, np.finfo(np.float64).tiny)
        if self.config.time.strang:
            dt *= 2.0
        self.dt_flow = 2.0 * dt  # SSPRK(4,3) has CFL 2

    def _choose_dt(self) -> tuple:
        """``(dt, t_new)`` of the coming step (HipFT's ``update_timestep``); ``t_new`` lands exactly on events."""
        c = self.config
        dt = c.time.dt_h if c.time.dt_h > 0 else c.time.dt_max_h
        if self.advection is not None and c.time.dt_h <= 0:
            dt = min(dt, self.dt_flow)
        t = self.time
        target = min(e for e in self._events() if e > t + 1e-9 * max(1.0, abs(t)))
        if t + dt >= target - 1e-9 * max(1.0, abs(target)):
            return target - t, target
        return dt, t + dt

    def advect(self, dt: float, prepare: bool = False) -> None:
        """Advance by advection alone over ``dt`` [h]: one SSPRK(4,3) step (HipFT's form). Collective on ``comm``.

        ``prepare``: evaluate the flows (and attenuation) from the current field
        first; :meth:`step` does that once per step, as HipFT.
        """
        if prepare:
            self._prepare_flows()
        t0 = _time.perf_counter()
        op = self.advection
        f, f1, f2 = self.f, self.f1, self.f2
        self._exchange(f)
        op.stage(f, None, f1, 0.0, 1.0, 0.5 * dt)
        self._exchange(f1)
        op.stage(f1, None, f2, 0.0, 1.0, 0.5 * dt)
        self._exchange(f2)
        op.stage(f2, f, f1, 2.0 / 3.0, 1.0 / 3.0, dt / 6.0)
        self._exchange(f1)
        op.stage(f1, None, f, 0.0, 1.0, 0.5 * dt)
        self.wall_s["advection"] += _time.perf_counter() - t0

    def _sts(self, dt: float) -> int:
        """One super time step of ``dt`` [h] in place (HipFT's ``diffusion_step_sts_cd``); returns its stages."""
        method = self.config.diffusion.method
        s = sts_stages(dt / self.dt_exp, method)
        key = (s, method)
        if key not in self._coeff_cache:
            self._coeff_cache[key] = sts_coefficients(s, method)
        co = self._coeff_cache[key]
        op = self.diffusion
        u0, dty0, k1, k2, new = self.work
        u0[...] = self.f
        self._exchange(u0)
        op.sts_first(u0, dty0, k1, dt, co.mut[1])
        k2[...] = u0
        for j in range(2, s + 1):
            self._exchange(k1)
            op.sts_stage(k1, k2, u0, dty0, new, co.mu[j], co.nu[j], co.mut[j] * dt, co.gam[j])
            k2, k1, new = k1, new, k2
        self.f[...] = k1
        return s

    def practical_limit(self, dt_in: float) -> float:
        """HipFT's practical time-step limit of the current field, at least ``dt_in`` [h]. Collective on ``comm``.

        At the cells where ``|L f|`` is largest (over every realization and rank),
        the step at which an explicit Euler step would overshoot a neighbour:
        ``0.95 min(-(f - f_nb) / (Lf - Lf_nb))``; ``dt_in`` when that is smaller; the
        largest float when nothing limits.
        """
        from mpi4py import MPI

        op = self.diffusion
        af = self.tmp
        self._exchange(self.f)
        op.apply(self.f, af)
        self._exchange(af)
        amax = self.comm.allreduce(op.ptl_local(self.f, af), op=MPI.MAX)
        if amax <= 0.0:
            return _HUGE
        best = self.comm.allreduce(op.ptl_local(self.f, af, amax), op=MPI.MIN)
        best = 0.95 * best
        return dt_in if best < dt_in else best

    def diffuse(self, dt: float) -> None:
        """Advance by diffusion alone over ``dt`` [h]. Collective on ``comm``.

        HipFT's ``diffusion_step``: with ``diffusion.subcycles = 0`` (its default)
        each sub-cycle is as long as the practical time-step limit of the current
        field allows (never shorter than the previous one; the rest of the step at
        cycle 59), each an RKG2/RKL2 super step with ``s`` stages from its ratio to
        the explicit Euler limit; with ``subcycles = n`` the step is cut into ``n``
        equal super steps.
        """
        t0 = _time.perf_counter()
        if self.implicit is not None:
            self.implicit.step(self.f, dt)
            self.last_stages, self.last_subcycles = 1, 1
            self.wall_s["diffusion"] += _time.perf_counter() - t0
            return
        n_fixed = int(getattr(self.config.diffusion, "subcycles", 0) or 0)
        auto = n_fixed <= 0
        dt2 = 0.0 if auto else dt / n_fixed
        stepped = 0.0
        stages = 0
        i = 1
        while True:
            done = False
            if auto:
                dt2 = self.practical_limit(dt2)
                if stepped + dt2 >= dt:
                    dt2 = dt - stepped
                    done = True
                if i == MAX_SUBCYCLES - 1:
                    dt2 = dt - stepped
                    done = True
            s = self._sts(dt2)
            stages += s
            stepped += dt2
            if not auto and i == n_fixed:
                done = True
            if done:
                break
            i += 1
        self.last_stages, self.last_subcycles = stages, i
        self.last_cycle_stages = s  # HipFT's N_DIFF_PER_STEP (the last sub-cycle's stages)
        self.stages_total = getattr(self, "stages_total", 0) + stages
        self.wall_s["diffusion"] += _time.perf_counter() - t0

    def step(self) -> float:
        """Advance every realization by one step; returns the step [h]. Collective on ``comm``.

        HipFT's order: flows (and their attenuation) and the CFL limit from the
        current field, the step, then advection and diffusion (Strang ``A/2 D A/2``
        when ``time.strang``).
        """
        if self.advection is not None:
            self._prepare_flows()
        dt, t_new = self._choose_dt()
        strang = self.config.time.strang and self.advection is not None and self.diffusion is not None
        if strang:
            self.advect(0.5 * dt)
            self.diffuse(dt)
            self.advect(0.5 * dt)
        else:
            if self.advection is not None:
                self.advect(dt)
            if self.diffusion is not None:
                self.diffuse(dt)
        self.time = t_new
        self.steps += 1
        self.last_dt = dt
        if self.assimilation is not None:
            t0 = _time.perf_counter()
            self.assimilation.apply_due(self.time)
            self.wall_s["assimilation"] += _time.perf_counter() - t0
        return dt

    @property
    def done(self) -> bool:
        """Whether ``time.end_h`` is reached."""
        end = self.config.time.end_h
        return self.time >= end - 1e-9 * max(1.0, abs(end))

    # ------------------------------------------------------------------ diagnostics and output
    def exact_soccer(self):
        """The soccer-ball solution at the current time on this rank's cells ``(ntl, npl, nr)``."""
        d = self.domain
        g = self.grid
        t = self.time - self.config.time.start_h
        omega = self.config.flow.rigid_omega_km_s * KM_S_TO_RS_H if self.config.flow.enabled else 0.0
        theta = g.theta[d.row0:d.row0 + d.ntl]
        phi = g.phi[d.col0:d.col0 + d.npl] - omega * t
        T, P = np.meshgrid(theta, phi, indexing="ij")
        f0 = real_harmonic(6, 0, T, P) + math.sqrt(14.0 / 11.0) * real_harmonic(6, 5, T, P)
        if d.row0 == 0:
            f0[0] = real_harmonic(6, 0, 0.0, 0.0)
        if d.row0 + d.ntl == g.ntheta:
            f0[-1] = real_harmonic(6, 0, math.pi, 0.0)
        eta = self.eta if self.diffusion is not None else np.zeros(d.nr)
        out = f0[:, :, None] * np.exp(-42.0 * eta * t)[None, None, :]
        return self.xp.asarray(out)

    def exact_gaussians(self):
        """HipFT's validation run 2 exact solution at the current time on this rank's cells ``(ntl, npl, nr)``."""
        from .initial import gaussians

        d = self.domain
        g = self.grid
        c = self.config
        t = self.time - c.time.start_h
        f0 = gaussians(g.theta[d.row0:d.row0 + d.ntl], g.phi[d.col0:d.col0 + d.npl], c.validation.width,
                       dtheta=c.flow.vt_const_km_s * KM_S_TO_RS_H * t, dphi=c.flow.rigid_omega_km_s * KM_S_TO_RS_H * t)
        return self.xp.asarray(np.repeat(f0[:, :, None], d.nr, axis=2))

    def diagnose(self) -> dict:
        """History values of this rank's realizations ``{column: (nr,)}``. Collective on the group."""
        kind = self.config.validation.kind
        exact = self.exact_soccer() if kind == "soccer" else self.exact_gaussians() if kind == "gaussians" else None
        return self.diagnostics.compute(self.local_interior(), exact)

    def _history_due(self) -> bool:
        cad = self.config.output.history_cadence_h
        if cad <= 0:
            return True
        nxt = self.config.time.start_h + self.n_hist * cad
        return self.time >= nxt - 1e-9 * max(1.0, abs(nxt))

    def record_history(self, force: bool = False) -> Optional[dict]:
        """Compute and write a history row if due (or ``force``). Collective on ``comm``."""
        if not (force or self._history_due()):
            return None
        values = self.diagnose()
        self._record_zonal()
        self.n_hist += 1
        self.history_rows.append((self.steps, self.time, values))
        if self.history is not None:
            self.history.write(self.steps, self.time, values)
        return values

    def _record_zonal(self) -> None:
        """Append the longitude-averaged Br of realization 1 to :attr:`butterfly` (rank 0)."""
        d = self.domain
        if d.group != 0:
            return
        part = self.local_interior()[:, :, 0].sum(axis=1)
        part = part.get() if hasattr(part, "get") else np.asarray(part)
        parts = d.decomp.comm.gather((d.row0, np.asarray(part, dtype=np.float64)), root=0)
        if parts is not None:
            zonal = np.zeros(self.grid.ntheta)
            for row0, p in sorted(parts, key=lambda x: x[0]):
                zonal[row0:row0 + p.size] += p
            self.butterfly[0].append(self.time)
            self.butterfly[1].append(zonal / self.grid.nphi)

    def _path(self, name: str) -> str:
        return os.path.join(self.config.output.directory, name)

    def write_map(self, name: str) -> Optional[str]:
        """Gather and write all realizations as one HipFT map. Collective on ``comm``."""
        from .io import write_map

        data = self.gather(0)
        path = self._path(name)
        if self.rank == 0:
            write_map(path, data, self.grid, single_precision=self.config.output.single_precision,
                      force_3d=self.config.n_realizations > 1)
        return path if self.rank == 0 else None

    def state(self) -> dict:
        """The run state a checkpoint stores (time, step and output counters)."""
        s = {"time": self.time, "steps": self.steps, "n_map": self.n_map, "n_hist": self.n_hist,
             "n_ckpt": self.n_ckpt}
        if self.assimilation is not None:
            s["assim_index"] = self.assimilation.index
        return s

    def checkpoint(self, path: str) -> None:
        """Write every realization and the run state to ``path`` (HDF5). Collective on ``comm``.

        Restarting with ``FluxTransport(comm, config, restart=path)`` continues with the same bits.
        """
        from .io import write_checkpoint

        data = self.gather(0)
        if self.rank == 0:
            write_checkpoint(path, data, self.grid, self.state(), self.config.to_dict())
        self.comm.Barrier()

    def _output_step(self) -> None:
        o = self.config.output
        t0 = self.config.time.start_h
        if o.map_cadence_h > 0:
            nxt = t0 + (self.n_map + 1) * o.map_cadence_h
            if self.time >= nxt - 1e-9 * max(1.0, abs(nxt)):
                self.n_map += 1
                self.write_map(f"{o.prefix}_idx{self.n_map:06d}.h5")
        if o.checkpoint_cadence_h > 0:
            nxt = t0 + (self.n_ckpt + 1) * o.checkpoint_cadence_h
            if self.time >= nxt - 1e-9 * max(1.0, abs(nxt)):
                self.n_ckpt += 1
                self.checkpoint(self._path("checkpoint.h5"))

    def run(self, callback: Optional[Callable] = None) -> dict:
        """Step to ``time.end_h`` with history, maps, checkpoints, progress and plots. Collective on ``comm``.

        Returns a summary ``{"steps", "time", "wall_s", ...}`` (the same on every rank).
        """
        o = self.config.output
        t_start = _time.perf_counter()
        if self.output_enabled and not self._restarted:
            self.write_map(f"{o.prefix}_initial.h5")
        if not self._restarted:
            self.record_history(force=True)
        total = self.config.time.end_h - self.config.time.start_h
        every = o.progress_every
        shown = int(20 * (self.time - self.config.time.start_h) / total)
        while not self.done:
            self.step()
            w0 = _time.perf_counter()
            self.record_history()
            if self.output_enabled:
                self._output_step()
            self.wall_s["output"] += _time.perf_counter() - w0
            if callback is not None:
                callback(self)
            frac = (self.time - self.config.time.start_h) / total
            due = (self.steps % every == 0) if every else int(20 * frac) > shown
            shown = max(shown, int(20 * frac))
            if self.rank == 0 and due:
                log.info("step %d  t = %.4f / %.4f h  dt = %.4g h  (%.0f%%, %d STS stages x %d)", self.steps,
                         self.time, self.config.time.end_h, self.last_dt,
                         100.0 * (self.time - self.config.time.start_h) / total, self.last_stages,
                         self.last_subcycles)
        wall = self.comm.allreduce(_time.perf_counter() - t_start, op=_mpi_max())
        if self.output_enabled:
            w0 = _time.perf_counter()
            self.write_map(f"{o.prefix}_final.h5")
            self.checkpoint(self._path("checkpoint.h5"))
            if o.plots:
                self.plot()
            self.wall_s["output"] += _time.perf_counter() - w0
        return {"steps": self.steps, "time": self.time, "wall_s": wall, "phases_s": dict(self.wall_s)}

    def plot(self) -> list:
        """Write map, butterfly and history PNGs of realization 1 (rank 0). Collective on ``comm``."""
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            if self.rank == 0:
                warnings.warn("output.plots: matplotlib is not installed, no PNG written (pip install "
                              "'hpcore[plot]', or set output.plots = false)", stacklevel=2)
            return []
        from .plots import plot_run

        data = self.gather(0)
        files = []
        if self.rank == 0:
            bf = (self.butterfly[0], np.array(self.butterfly[1])) if self.butterfly[0] else None
            files = plot_run(self.config.output.directory, self.config.output.prefix, data[0], self.grid,
                             self._path(f"{self.history_stem}_r000001.out"), bf)
        return files

    def free(self) -> None:
        """Release communicators. Collective on ``comm``; safe to call twice."""
        if getattr(self, "implicit", None) is not None:
            self.implicit.free()
            self.implicit = None
        if getattr(self, "domain", None) is not None:
            self.domain.free()
            self.domain = None

    def __enter__(self) -> "FluxTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.free()


def _mpi_max():
    from mpi4py import MPI

    return MPI.MAX
