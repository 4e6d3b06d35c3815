"""PNG plots of a training run: loss curves and predictions against the truth (matplotlib, imported lazily)."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_history", "plot_predictions"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib (pip install matplotlib), or set output.plots = false") from None
    return plt


def plot_history(history: list, path: str, title: str = "") -> str:
    """Train loss and test errors per epoch (log scale) to the PNG ``path``. Not collective."""
    if not history:
        raise ValueError("history: nothing to plot (no epoch finished)")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    epochs = [r["epoch"] for r in history]
    ax.semilogy(epochs, [r["train_loss"] for r in history], "k-", label="train loss")
    names = sorted({k for r in history for k in r.get("test", {})})
    for name in names:
        pts = [(r["epoch"], r["test"][name]) for r in history if name in r.get("test", {})]
        ax.semilogy(*zip(*pts), "o-", ms=3, label=f"test rel. L2 [{name}]")
    ax.set_xlabel("epoch")
    ax.set_ylabel("relative error")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title or "training history")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_predictions(x, y, pred, path: str, n: int = 3, title: str = "") -> str:
    """Input, truth, prediction and error of the first ``n`` samples to the PNG ``path``. Not collective.

    Arrays ``(samples, channels, *spatial)`` with one or two spatial axes (channel 0 is shown).
    """
    x, y, pred = (np.asarray(a) for a in (x, y, pred))
    if y.shape != pred.shape or y.ndim not in (3, 4):
        raise ValueError(f"y, pred: expected equal (samples, channels, x[, y]) shapes, got {y.shape}, {pred.shape}")
    plt = _pyplot()
    n = min(n, y.shape[0])
    if y.ndim == 3:
        fig, axes = plt.subplots(n, 1, figsize=(6, 2.2 * n), dpi=110, squeeze=False)
        for i in range(n):
            ax = axes[i, 0]
            ax.plot(x[i, 0], color="0.6", label="input")
            ax.plot(y[i, 0], "k-", label="truth")
            ax.plot(pred[i, 0], "r--", label="prediction")
            ax.legend(fontsize=7)
    else:
        fig, axes = plt.subplots(n, 4, figsize=(10, 2.5 * n), dpi=110, squeeze=False)
        for i in range(n):
            err = pred[i, 0] - y[i, 0]
            lo, hi = float(y[i, 0].min()), float(y[i, 0].max())
            for j, (img, name, kw) in enumerate(((x[i, 0], "input", {}), (y[i, 0], "truth", {"vmin": lo, "vmax": hi}),
                                                 (pred[i, 0], "prediction", {"vmin": lo, "vmax": hi}),
                                                 (err, "error", {"cmap": "RdBu_r"}))):
                im = axes[i, j].imshow(img.T, origin="lower", **kw)
                axes[i, j].set_title(name if j < 3 else
                                     f"error (rel. L2 {np.linalg.norm(err) / np.linalg.norm(y[i, 0]):.3f})", fontsize=8)
                axes[i, j].set_xticks([])
                axes[i, j].set_yticks([])
                fig.colorbar(im, ax=axes[i, j], fraction=0.046)
    fig.suptitle(title or "test samples")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
