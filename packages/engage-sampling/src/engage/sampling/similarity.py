"""The similarity landscape of a parameter space: how much outputs (images, fields) change
between neighbouring parameter points, measured with scikit-image metrics.

Example::

    >>> import numpy as np
    >>> points = np.array([[0.1], [0.2], [0.3], [0.9]])
    >>> images = np.stack([np.full((8, 8), v) for v in (0.0, 0.0, 0.0, 1.0)])
    >>> landscape = similarity_landscape(points, images, neighbours=1, metric="nrmse")
    >>> [int(i) for i in landscape.edges[np.argmax(landscape.dissimilarity)]]  # where the output jumps
    [2, 3]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from engage.sampling.names import METRICS


@dataclass
class SimilarityLandscape:
    """Neighbour pairs ``edges`` ``(E, 2)`` of unit ``points`` ``(n, d)`` and the dissimilarity of
    their outputs (``1 - SSIM``, ``1 / PSNR`` or NRMSE: larger means more different);
    ``scores`` ``(n,)`` is each point's largest dissimilarity to a neighbour."""

    points: np.ndarray
    edges: np.ndarray
    dissimilarity: np.ndarray
    scores: np.ndarray
    metric: str

    def refine(self, n: int, rng: np.random.Generator, jitter: float = 0.25, top_k: int | None = None) -> np.ndarray:
        """``n`` new unit points between neighbours that differ most: edges are drawn with
        probability proportional to their dissimilarity (among the ``top_k`` largest), and a point
        is placed near the edge midpoint, moved along it by up to ``jitter`` of its length."""
        if len(self.edges) == 0:
            return rng.random((n, self.points.shape[1]))
        order = np.argsort(self.dissimilarity)[::-1][: top_k or len(self.edges)]
        weights = np.clip(self.dissimilarity[order], 0.0, None)
        probabilities = weights / weights.sum() if weights.sum() > 0 else None
        chosen = self.edges[rng.choice(order, size=n, p=probabilities)]
        a, b = self.points[chosen[:, 0]], self.points[chosen[:, 1]]
        t = 0.5 + rng.uniform(-jitter, jitter, size=(n, 1))
        return np.clip(a + t * (b - a), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, for checkpoints (``torch.save``, JSON)."""
        return {
            "points": self.points.tolist(),
            "edges": self.edges.tolist(),
            "dissimilarity": self.dissimilarity.tolist(),
            "scores": self.scores.tolist(),
            "metric": self.metric,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> SimilarityLandscape:
        """The landscape saved by :meth:`to_dict`."""
        points = np.asarray(state["points"], dtype=np.float64)
        return cls(
            points=points.reshape(len(points), -1),
            edges=np.asarray(state["edges"], dtype=np.int64).reshape(-1, 2),
            dissimilarity=np.asarray(state["dissimilarity"], dtype=np.float64),
            scores=np.asarray(state["scores"], dtype=np.float64),
            metric=str(state["metric"]),
        )


def ssim_fits(shape: tuple[int, ...]) -> bool:
    """Whether SSIM can compare images of ``shape``: its window needs both sides of at least 3 pixels
    (a 1D profile or a ``(1, n)`` row is not an image to it)."""
    return len(shape) >= 2 and min(shape[-2:]) >= 3


def _as_images(outputs: np.ndarray) -> np.ndarray:
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 2:  # one value per point or a 1D profile: compare as 1-row images
        return outputs[:, None, :]
    return outputs


def dissimilarity(a: np.ndarray, b: np.ndarray, metric: str = "ssim", data_range: float | None = None) -> float:
    """How different two outputs of the same shape are (0 when identical).

    ``ssim``: ``1 - SSIM`` with a window no larger than the image; ``psnr``: ``1 / PSNR``
    (identical images give 0); ``nrmse``: normalised RMSE of ``b`` against ``a``. For float
    images ``data_range`` should be the range the values can span; it defaults to the range of
    the pair.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if data_range is None:
        data_range = float(max(a.max(), b.max()) - min(a.min(), b.min())) or 1.0
    if metric == "ssim":
        side = min(a.shape[-2:]) if a.ndim >= 2 else a.shape[-1]
        if side < 3:
            raise ValueError(f"ssim needs images of at least 3x3 pixels, got shape {a.shape}; use metric='nrmse'")
        win_size = min(7, side if side % 2 else side - 1)
        channel_axis = -1 if a.ndim == 3 else None
        return float(
            1.0 - structural_similarity(a, b, data_range=data_range, win_size=win_size, channel_axis=channel_axis)
        )
    if metric == "psnr":
        if np.array_equal(a, b):
            return 0.0
        return float(1.0 / max(peak_signal_noise_ratio(a, b, data_range=data_range), 1e-6))
    if not np.any(a):
        return float(np.sqrt(np.mean((a - b) ** 2)) / data_range)
    return float(normalized_root_mse(a, b))


def pairwise_dissimilarity(
    images: np.ndarray, edges: np.ndarray, metric: str = "ssim", data_range: float | None = None
) -> np.ndarray:
    """:func:`dissimilarity` of ``images[i]`` and ``images[j]`` for every edge ``(i, j)``;
    ``data_range`` defaults to the range of all ``images``, so that scores compare across pairs.

    For small 2D images and ``ssim`` the pairs go through one call of scikit-image's SSIM rather than one
    call each (a call costs about 0.3 ms, mostly overhead, on small images): the images of each
    side are laid out as tiles of a mosaic, ``win_size`` pixels apart, and each pair's SSIM is the
    mean of the full SSIM map over its tile less the ``(win_size - 1) // 2`` border, which is the
    region scikit-image averages for a single pair; no window there reaches another tile.
    """
    edges = np.asarray(edges, dtype=int).reshape(-1, 2)
    if data_range is None:
        data_range = float(images.max() - images.min()) or 1.0
    # beyond about 32x32 pixels the filtering, not the call, dominates and the mosaic stops paying
    if metric != "ssim" or images.ndim != 3 or len(edges) < 2 or images.shape[1] * images.shape[2] > 1024:
        return np.array([dissimilarity(images[i], images[j], metric, data_range) for i, j in edges])
    height, width = images.shape[1:]
    side = min(height, width)
    if not ssim_fits(images.shape[1:]):
        raise ValueError(f"ssim needs images of at least 3x3 pixels, got shape {images.shape[1:]}; use metric='nrmse'")
    win_size = min(7, side if side % 2 else side - 1)
    pad, stride = (win_size - 1) // 2, width + win_size

    def mosaic(tiles: np.ndarray) -> np.ndarray:
        out = np.zeros((height, stride * len(tiles)), dtype=np.float64)
        for k, tile in enumerate(tiles):
            out[:, k * stride : k * stride + width] = tile
        return out

    _, full = structural_similarity(
        mosaic(images[edges[:, 0]]), mosaic(images[edges[:, 1]]), data_range=data_range, win_size=win_size, full=True
    )
    tiles = full.reshape(height, len(edges), stride)[pad : height - pad, :, pad : width - pad]
    return 1.0 - tiles.mean(axis=(0, 2))


def neighbour_edges(points: np.ndarray, neighbours: int) -> np.ndarray:
    """Unique pairs ``(i, j)``, ``i < j``, of each point and its ``neighbours`` nearest points."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 2:
        return np.empty((0, 2), dtype=int)
    k = min(int(neighbours), len(points) - 1)
    _, index = cKDTree(points).query(points, k=k + 1)
    pairs = {(min(i, int(j)), max(i, int(j))) for i, row in enumerate(index) for j in row[1:] if int(j) != i}
    return np.asarray(sorted(pairs), dtype=int).reshape(-1, 2)


def similarity_landscape(
    points: np.ndarray,
    outputs: np.ndarray,
    neighbours: int = 4,
    metric: str = "ssim",
    data_range: float | None = None,
) -> SimilarityLandscape:
    """Compare the outputs ``(n, *shape)`` of each unit point ``(n, d)`` with those of its nearest
    neighbours. ``data_range`` defaults to the range of all outputs, so scores compare across pairs."""
    points = np.asarray(points, dtype=np.float64)
    images = _as_images(outputs)
    if len(points) != len(images):
        raise ValueError(f"{len(points)} points but {len(images)} outputs")
    if data_range is None:
        data_range = float(images.max() - images.min()) or 1.0
    edges = neighbour_edges(points, neighbours)
    values = pairwise_dissimilarity(images, edges, metric, data_range)
    scores = np.zeros(len(points))
    if len(edges):
        np.maximum.at(scores, edges[:, 0], values)
        np.maximum.at(scores, edges[:, 1], values)
    return SimilarityLandscape(points, edges, values if len(edges) else np.empty(0), scores, metric)
