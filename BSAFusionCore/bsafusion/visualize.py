"""Pictures people would rather look at than read: checkerboards and quick-look panels.

matplotlib runs with the non-interactive Agg backend (no screen needed); figures are written
atomically through :func:`bsafusion.io.atomic_output`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bsafusion.io import atomic_output  # noqa: E402


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Alternate square tiles of ``a`` and ``b`` (grey or RGB, same height/width).

    Misregistration shows as broken edges where tiles meet.
    """
    a, b = _as_rgb(a), _as_rgb(b)
    if a.shape != b.shape:
        raise ValueError(f"checkerboard needs images of one shape, got {a.shape} and {b.shape}")
    h, w = a.shape[:2]
    yy, xx = np.meshgrid(np.arange(h) * tiles // h, np.arange(w) * tiles // w, indexing="ij")
    mask = ((yy + xx) % 2 == 0)[..., None]
    return np.where(mask, a, b)


def save_panel(path: str | Path, images: Sequence[tuple[str, np.ndarray]], title: str | None = None) -> Path:
    """Write a one-row panel of titled images (grey or RGB, values in [0, 1]) as PNG."""
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False)
    for ax, (name, img) in zip(axes[0], images):
        ax.imshow(_as_rgb(img), interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
