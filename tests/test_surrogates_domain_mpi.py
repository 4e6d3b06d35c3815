"""Domain-parallel MG patching under MPI: inputs against a serial construction, the whole-sample loss and its
gradient, end-to-end training on 2 and 4 ranks, refusals on every rank."""

import numpy as np
import pytest
from mpi4py import MPI
from mpi_checks import raises_everywhere, verdict

from hpcore import MismatchError
from solvers.surrogates import build_model
from solvers.surrogates.data import ArrayDataset
from solvers.surrogates.domain import DomainTrainer, MultigridPatches, activation_bytes
from solvers.surrogates.training import TrainConfig

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(300)]


def smooth_data(n, shape=(16, 16), seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.random((n, 1) + shape) > 0.5).astype(float)
    k0 = np.fft.fftfreq(shape[0])[:, None]
    k1 = np.fft.fftfreq(shape[1])[None, :]
    y = np.fft.ifft2(np.fft.fft2(x) * np.exp(-40 * (k0**2 + k1**2))).real + 1.0
    return ArrayDataset(x, y)


def model_cfg(levels, seed=0):
    return {"model": "fno", "in_channels": 1 + levels, "n_modes": [4, 4], "hidden_channels": 6,
            "lifting_channels": 0, "projection_channels": 8, "n_layers": 2, "positional_embedding": True,
            "dtype": "float64", "seed": seed}


@pytest.mark.parametrize("padding,levels", [(2, 1), (0, 2), (3, 0), (1, 2)])
def test_inputs_match_serial_construction(padding, levels):
    comm = MPI.COMM_WORLD
    P = MultigridPatches(comm, (16, 16), padding=padding, levels=levels)
    rng = np.random.default_rng(1)
    g = rng.standard_normal((3, 2, 16, 16))
    got = P.inputs(P.local(g))
    sx, sy = P.local_slices
    px, py = P.patch_shape
    zp = np.pad(g, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ref = [zp[:, :, sx.start:sx.stop + 2 * padding, sy.start:sy.stop + 2 * padding]]
    for level in range(1, levels + 1):
        f = 2**level
        coarse = g.reshape(3, 2, 16 // f, f, 16 // f, f).mean(axis=(3, 5))
        cpad = np.pad(coarse, ((0, 0), (0, 0), (32, 32), (32, 32)))
        x0 = int(round((sx.start + (sx.stop - sx.start) / 2) / f - px / 2)) + 32
        y0 = int(round((sy.start + (sy.stop - sy.start) / 2) / f - py / 2)) + 32
        ref.append(cpad[:, :, x0:x0 + px, y0:y0 + py])
    ref = np.concatenate(ref, axis=1)
    ok = got.shape == ref.shape and np.array_equal(got, ref)
    # the stitched crop of the patch channel is the input itself
    back = P.gather(P.crop(got[:, :2]))
    if comm.rank == 0:
        ok = ok and np.array_equal(back, g)
    verdict(comm, ok, f"shape {got.shape} vs {ref.shape}")
    P.free()


def test_whole_sample_loss_and_gradient():
    comm = MPI.COMM_WORLD
    P = MultigridPatches(comm, (16, 16), padding=2, levels=1)
    train = smooth_data(4)
    t = DomainTrainer(build_model(model_cfg(1)), P, train, None, TrainConfig(batch_size=4, normalize_output=True),
                      log=False)
    model = t.model
    index = np.arange(4)
    x, y = t._patch_batch(train, index)
    # the loss equals the relative L2 of the stitched prediction
    pred = P.gather(t.predict_patch(x))
    per, _ = t._global_l2(t.predict_patch(x), y)
    ok, detail = True, ""
    if comm.rank == 0:
        ref = np.sqrt(((pred - train.y) ** 2).sum(axis=(1, 2, 3))) / np.sqrt((train.y**2).sum(axis=(1, 2, 3)))
        ok, detail = np.allclose(per, ref, rtol=1e-12), f"{per} vs {ref}"
    verdict(comm, ok, detail)

    def loss(p):
        saved = model.params.copy()
        model.params[...] = p
        v, _ = t._global_l2(t.predict_patch(x), y)
        model.params[...] = saved
        return float(v.sum()) / len(index)

    model.zero_grad()
    out = model.forward(x)
    inner = P.crop(out)
    _, dpred = t._global_l2(t.normalizer.decode(inner), y)
    t.parallel.backward(P.uncrop_grad(t.normalizer.decode_grad(dpred) / len(index)))
    g = model.grads.copy()
    p0 = model.params.copy()
    rng = np.random.default_rng(2)
    for _ in range(2):
        v = rng.standard_normal(p0.shape)
        fd = (loss(p0 + 1e-6 * v) - loss(p0 - 1e-6 * v)) / 2e-6
        verdict(comm, np.isclose(fd, g @ v, rtol=1e-6, atol=1e-10), f"fd {fd} vs {g @ v}")
    P.free()


def test_trains_end_to_end_same_model_everywhere():
    comm = MPI.COMM_WORLD
    P = MultigridPatches(comm, (16, 16), padding=2, levels=1)
    t = DomainTrainer(build_model(model_cfg(1)), P, smooth_data(24), smooth_data(6, seed=1),
                      TrainConfig(epochs=4, batch_size=8, lr=1e-2, normalize_output=False), log=False)
    before = t.evaluate(t.tests["test"])
    t.fit()
    after = t.history[-1]["test"]["test"]
    x, _ = t._patch_batch(t.train, np.arange(4))
    mem = activation_bytes(t.model, x)
    learned = after < 0.5 * before and t.history[-1]["train_loss"] < t.history[0]["train_loss"]
    verdict(comm, t.parallel.same_on_every_rank() and learned and mem["peak_bytes"] > 0,
            f"test error {before:.3f} -> {after:.3f}, same {t.parallel.same_on_every_rank()}")
    P.free()


def test_refusals_on_every_rank():
    comm = MPI.COMM_WORLD
    raises_everywhere(comm, ValueError, lambda: MultigridPatches(comm, (18, 18), levels=3), match="2^levels")
    raises_everywhere(comm, ValueError, lambda: MultigridPatches(comm, (16, 16), padding=9), match="padding")
    raises_everywhere(comm, MismatchError,
                      lambda: MultigridPatches(comm, (16, 16), levels=1 if comm.rank else 2), match="levels")
    P = MultigridPatches(comm, (16, 16), padding=1, levels=1)
    raises_everywhere(comm, ValueError, lambda: DomainTrainer(build_model(model_cfg(2)), P, smooth_data(2), log=False),
                      match="in_channels")
    P.free()
