"""HaloExchange on CuPy fields: staged and CUDA-aware paths against the global reference (GPU only)."""

import numpy as np
import pytest
from mpi4py import MPI
from test_halo_mpi import _config, _expected, _ghost_for, _global, _local_with_sentinel

from comms import CartDecomposition, HaloExchange

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.gpu, pytest.mark.timeout(300, method="thread")]


def _paths():
    from hpcore.cuda_aware import detect_cuda_aware

    out = [dict(cuda_aware=False)]
    if bool(detect_cuda_aware()):
        out.append(dict(cuda_aware=True))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_device_fields_match_global_reference(cupy, seed):
    comm = MPI.COMM_WORLD
    ndim, shape, periodic, stencil, fields, rng = _config(seed, comm.size)
    with CartDecomposition(comm, shape, periodic=periodic) as d:
        ghost = _ghost_for(d, rng)
        for kw in _paths() + [dict(cuda_aware=False, contiguous_messages=True)]:
            with HaloExchange(d, ghost=ghost, stencil=stencil, method="pack", **kw) as h:
                globs = [_global(shape, comps, dt, seed * 10 + k) for k, (dt, comps) in enumerate(fields)]
                locs = [cupy.asarray(_local_with_sentinel(d, g, ghost)) for g in globs]
                for _ in range(2):
                    h.exchange(*locs)
                for g, loc in zip(globs, locs):
                    np.testing.assert_array_equal(cupy.asnumpy(loc), _expected(d, g, ghost, stencil), err_msg=str(kw))


def test_device_errors(cupy):
    comm = MPI.COMM_WORLD
    with CartDecomposition(comm, (8, 9), periodic=True) as d:
        with HaloExchange(d, ghost=1) as h:
            dev = cupy.zeros(h.full_shape)
            host = np.zeros(h.full_shape)
            with pytest.raises(ValueError, match="mixes host and device"):
                h.exchange(dev, host)
            if cupy.cuda.runtime.getDeviceCount() > 1:
                with cupy.cuda.Device(1):
                    other = cupy.zeros(h.full_shape)
                with pytest.raises(ValueError, match="GPU 1"):
                    h.exchange(other)
            h.exchange(dev)


def test_device_heat_step_overlaps(cupy):
    comm = MPI.COMM_WORLD
    with CartDecomposition(comm, (24, 20, 16), periodic=True) as d:
        with HaloExchange(d, ghost=1, stencil="star") as h:
            glob = _global((24, 20, 16), (), np.float64, 1)
            loc = cupy.asarray(_local_with_sentinel(d, glob, (1, 1, 1)))
            handle = h.start(loc)
            s = float(loc[2:-2, 2:-2, 2:-2].sum())
            handle.wait()
            assert s == float(glob[d.local_slices][1:-1, 1:-1, 1:-1].sum())
            np.testing.assert_array_equal(cupy.asnumpy(loc), _expected(d, glob, (1, 1, 1), "star"))
