"""A parametric image renderer: a shaded sphere, box or torus, ray-marched on signed distances."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from engage.core.simulators.base import Simulator
from engage.core.space import ParameterSpace

SHAPES = ("sphere", "box", "torus")


def _sdf(points: np.ndarray, shape: int, size: float) -> np.ndarray:
    # exact signed distance functions (Quilez) of primitives centred at the origin
    if shape == 0:
        return np.linalg.norm(points, axis=-1) - size
    if shape == 1:
        q = np.abs(points) - size * 0.8
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
        return outside + np.minimum(q.max(axis=-1), 0.0)
    ring = np.sqrt(points[..., 0] ** 2 + points[..., 2] ** 2) - size
    return np.sqrt(ring**2 + points[..., 1] ** 2) - size * 0.35


class ImageRenderer(Simulator):
    """Renders one ``size x size`` grayscale float32 image in ``[0, 1]`` per run.

    Parameters: ``light_azimuth`` and ``light_elevation`` (degrees), ``albedo`` (diffuse
    reflectance), ``shininess`` (Phong exponent), ``shape_size`` and ``shape`` (categorical:
    sphere, box, torus). The scene is ray-marched (sphere tracing) from a fixed camera; shading
    is Lambertian plus a Phong highlight with surface normals from the distance field's gradient.
    The box and torus are tilted so the light direction changes their silhouette shading.

    Example::

        >>> renderer = ImageRenderer(size=32)
        >>> image = next(renderer.run({"light_azimuth": 30, "light_elevation": 45, "albedo": 0.8,
        ...                            "shininess": 20, "shape_size": 0.8, "shape": "sphere"}))
        >>> image.shape, image.dtype, bool(image.max() > 0.5), float(image[0, 0])
        ((32, 32), dtype('float32'), True, 0.0)
    """

    fresh_samples = True  # every step yields a new array (astype copies)

    def __init__(self, size: int = 32, max_steps: int = 48):
        if size < 4:
            raise ValueError(f"size must be >= 4, got {size}")
        self.size = int(size)
        self.max_steps = int(max_steps)
        self.space = ParameterSpace.from_config(
            {
                "light_azimuth": {"low": -180, "high": 180},
                "light_elevation": {"low": 5, "high": 85},
                "albedo": {"low": 0.2, "high": 1.0},
                "shininess": {"distribution": "loguniform", "low": 2, "high": 200},
                "shape_size": {"low": 0.5, "high": 1.0},
                "shape": {"distribution": "categorical", "choices": list(SHAPES)},
            }
        )
        self.sample_shape = (self.size, self.size)
        self.dtype = np.dtype("float32")
        self.samples_per_run = 1
        self.value_range = (0.0, 1.0)

    def launch_spec(self) -> dict:
        return {"target": f"{__name__}.ImageRenderer", "kwargs": {"size": self.size, "max_steps": self.max_steps}}

    def simulate(self, parameters: np.ndarray) -> Iterator[np.ndarray]:
        azimuth, elevation, albedo, shininess, size, shape = (float(v) for v in parameters)
        shape_index = int(shape)
        n = self.size
        # camera at z = -3 looking at the origin, field of view about 50 degrees
        u = (np.arange(n) + 0.5) / n * 2 - 1
        xs, ys = np.meshgrid(u, -u)
        directions = np.stack([xs * 0.47, ys * 0.47, np.ones_like(xs)], axis=-1)
        directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
        origin = np.array([0.0, 0.0, -3.0])
        tilt = np.radians(30.0) if shape_index else 0.0
        rotation = np.array(
            [[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]], dtype=np.float64
        )

        def distance(points: np.ndarray) -> np.ndarray:
            return _sdf(points @ rotation, shape_index, size)

        t = np.zeros((n, n))
        hit = np.zeros((n, n), dtype=bool)
        for _ in range(self.max_steps):
            d = distance(origin + directions * t[..., None])
            hit |= d < 1e-3
            t = np.where(hit, t, t + d)
            if np.all(hit | (t > 6.0)):
                break
        points = origin + directions * t[..., None]
        eps = 1e-3
        normal = np.stack(
            [
                distance(points + np.array(offset)) - distance(points - np.array(offset))
                for offset in ([eps, 0, 0], [0, eps, 0], [0, 0, eps])
            ],
            axis=-1,
        )
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True) + 1e-12
        az, el = np.radians(azimuth), np.radians(elevation)
        light = np.array([np.cos(el) * np.sin(az), np.sin(el), -np.cos(el) * np.cos(az)])
        diffuse = np.clip(normal @ light, 0.0, None)
        view = -directions
        reflected = 2 * (normal @ light)[..., None] * normal - light
        specular = np.clip(np.sum(reflected * view, axis=-1), 0.0, None) ** shininess * (diffuse > 0)
        image = np.where(hit, 0.05 + albedo * diffuse + 0.5 * specular, 0.0)
        yield np.clip(image, 0.0, 1.0).astype(np.float32)
