"""Rasterisation helpers of the synthetic scenes: sampling grids, crops, smooth fields, seeded
random draws, value noise and small shading functions.

Positions are in scene units (``y`` in ``[-0.5, 0.5]`` downwards, ``x`` centred on the frame, unit =
image height), so a field drawn on a :class:`Canvas` is the same at any resolution. Smooth fields are
evaluated on a grid of at most ``_SMOOTH_DENSITY`` samples per unit and upsampled bilinearly; edges
are evaluated per pixel with one-pixel anti-aliasing (:func:`ramp`).
"""
from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

#: samples per unit of image height for smooth fields; finer outputs are upsampled from this grid
_SMOOTH_DENSITY = 384
#: half extents (image-height units) of the noise lattices; beyond them noise is constant
_X_EXTENT, _Y_EXTENT = 2.0, 0.75
#: standard deviation of one octave of cubic B-spline value noise on uniform(-1, 1) lattice values
_BSPLINE_NOISE_STD = 0.2768


# ---------------------------------------------------------------------------------------------------
# sampling grids, random draws, noise


class Axis:
    """Evenly spaced sample positions ``start + step * k`` for ``k < count`` along one axis."""

    def __init__(self, start: float, step: float, count: int):
        self.start, self.step, self.count = start, step, count

    @property
    def stop(self) -> float:
        return self.start + self.step * (self.count - 1)

    def values(self, device, dtype) -> Tensor:
        return self.start + self.step * torch.arange(self.count, device=device, dtype=dtype)

    def coarse(self, density: float) -> Axis:
        """An axis over the same extent with about ``density`` samples per unit (at least two)."""
        extent = self.step * self.count
        count = max(2, math.ceil(extent * density))
        step = extent / count
        return Axis(self.start - self.step / 2 + step / 2, step, count)


def _first_pixel(position: float, count: int) -> int:
    """Index of the first pixel whose centre is at or after ``position`` (in pixels), within ``[0, count]``."""
    position = min(max(position, -1.0), count + 1.0)
    return min(max(math.ceil(position - 0.5), 0), count)


class Canvas:
    """The output grid in scene units (``y`` in ``[-0.5, 0.5]`` downwards, ``x`` centred, unit = height).

    A canvas may stand for one band of rows of the image (``rows``): its crops are clipped to the band
    and index a buffer holding just those rows, so the scene is drawn band by band with small
    temporaries, each pixel computed as it would be in one pass (up to floating-point rounding).
    """

    def __init__(self, height: int, width: int, device, dtype, rows: tuple[int, int] | None = None):
        self.height, self.width, self.device, self.dtype = height, width, device, dtype
        self.pixel = 1.0 / height
        self.row0, self.row1 = rows if rows is not None else (0, height)

    def band(self, row0: int, row1: int) -> Canvas:
        return Canvas(self.height, self.width, self.device, self.dtype, (row0, row1))

    def crop(self, x0: float, x1: float, y0: float, y1: float) -> Crop | None:
        """Pixels whose centres lie in ``[x0, x1) x [y0, y1)`` (``None`` when there are none)."""
        h, w = self.height, self.width
        r0 = max(_first_pixel((y0 + 0.5) * h, h), self.row0)
        r1 = min(_first_pixel((y1 + 0.5) * h, h), self.row1)
        c0, c1 = _first_pixel(x0 * h + w / 2, w), _first_pixel(x1 * h + w / 2, w)
        if r1 <= r0 or c1 <= c0:
            return None
        return Crop(self, r0, r1, c0, c1)

    def everything(self) -> Crop:
        crop = self.crop(-math.inf, math.inf, -math.inf, math.inf)
        if crop is None:
            raise ValueError(f"the canvas band of rows {self.row0}:{self.row1} is empty")
        return crop

    def box(self, cx: float, cy: float, rx: float, ry: float | None = None) -> Crop | None:
        """Crop around a centre with half sizes (plus two pixels of margin for anti-aliasing)."""
        ry = rx if ry is None else ry
        m = 2 * self.pixel
        return self.crop(cx - rx - m, cx + rx + m, cy - ry - m, cy + ry + m)

    def bounds(self, points, margin: float = 0.0) -> Crop | None:
        """Crop around the bounding box of ``(x, y)`` points."""
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        m = margin + 2 * self.pixel
        return self.crop(min(xs) - m, max(xs) + m, min(ys) - m, max(ys) + m)


class Crop:
    """Rows ``r0:r1`` and columns ``c0:c1`` of the image (within a canvas) and their pixel centres."""

    def __init__(self, canvas: Canvas, r0: int, r1: int, c0: int, c1: int):
        self.canvas, self.r0, self.r1, self.c0, self.c1 = canvas, r0, r1, c0, c1
        h, w = canvas.height, canvas.width
        self.index = (slice(None), slice(r0 - canvas.row0, r1 - canvas.row0), slice(c0, c1))
        self.y_axis = Axis((r0 + 0.5) / h - 0.5, canvas.pixel, r1 - r0)
        self.x_axis = Axis((c0 + 0.5 - w / 2) / h, canvas.pixel, c1 - c0)
        self.ys = self.y_axis.values(canvas.device, canvas.dtype)[:, None]  # [h, 1]
        self.xs = self.x_axis.values(canvas.device, canvas.dtype)[None, :]  # [1, w]


class Smooth:
    """A smooth field ``field(y_axis, x_axis) -> [C, h, w]`` over a region of the image.

    It is evaluated once, on the region's pixels or, when those are finer than ``_SMOOTH_DENSITY`` per
    unit, on a coarser grid over the same extent, and sampled bilinearly per crop with the
    ``align_corners=False`` convention of :func:`torch.nn.functional.interpolate`, so bands join
    seamlessly and the field does not depend on the output size. Columns are interpolated once up
    front (coarse rows by full width), so sampling a band only blends two contiguous rows.
    """

    def __init__(self, region: Crop | None, field):
        self._region = region
        if region is None:
            return
        y_axis, x_axis = region.y_axis, region.x_axis
        if region.canvas.height > _SMOOTH_DENSITY:
            y_axis, x_axis = y_axis.coarse(_SMOOTH_DENSITY), x_axis.coarse(_SMOOTH_DENSITY)
        values = field(y_axis, x_axis)
        self.ratio_y = y_axis.count / region.y_axis.count
        if x_axis.count != region.x_axis.count:
            j0, j1, wx = self._taps(0, region.x_axis.count, x_axis.count / region.x_axis.count, x_axis.count)
            values = torch.lerp(values[:, :, j0], values[:, :, j1], wx)
        self.values = values  # [C, coarse rows, region columns]

    @property
    def region(self) -> Crop:
        """The region the field covers (there is none to sample when it was built without one)."""
        if self._region is None:
            raise ValueError("this smooth field covers no pixels")
        return self._region

    def _taps(self, first: int, count: int, ratio: float, size: int) -> tuple[Tensor, Tensor, Tensor]:
        canvas = self.region.canvas
        position = (torch.arange(first, first + count, device=canvas.device, dtype=torch.float64) + 0.5) * ratio
        position = position.sub_(0.5).clamp_(0, size - 1)
        lower = position.floor().long()
        return lower, (lower + 1).clamp_(max=size - 1), (position - lower).to(canvas.dtype)

    def sample(self, crop: Crop) -> Tensor:
        """The field at the pixels of ``crop`` (which must lie in the region): a new ``[C, h, w]`` tensor."""
        region = self.region
        values = self.values[:, :, crop.c0 - region.c0:crop.c1 - region.c0]
        if self.ratio_y == 1:
            return values[:, crop.r0 - region.r0:crop.r1 - region.r0].clone()
        i0, i1, wy = self._taps(crop.r0 - region.r0, crop.r1 - crop.r0, self.ratio_y, values.shape[1])
        return torch.lerp(values.index_select(1, i0), values.index_select(1, i1), wy[:, None])


class Rng:
    """Scene randomness: a CPU ``torch.Generator`` so a seed gives one scene on every device."""

    def __init__(self, seed: int):
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=self.generator, dtype=torch.float64).item()

    def integer(self, low: int, high: int) -> int:
        """Uniform integer in ``[low, high]``."""
        return int(torch.randint(low, high + 1, (), generator=self.generator).item())

    def lattice(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.generator, dtype=torch.float64) * 2 - 1


def _bspline_matrix(coords: Tensor, lo: int, n: int) -> Tensor:
    """``[len(coords), n]`` uniform cubic B-spline weights of lattice nodes ``lo .. lo + n - 1``."""
    base = torch.floor(coords)
    f = (coords - base)[:, None]
    f2, f3 = f * f, f * f * f
    weights = torch.cat([(1 - f) ** 3, 3 * f3 - 6 * f2 + 4, -3 * f3 + 3 * f2 + 3 * f + 1, f3], dim=1) / 6
    index = base.long()[:, None] + torch.arange(-1, 3, device=coords.device) - lo
    index.clamp_(0, n - 1)
    out = torch.zeros(coords.shape[0], n, dtype=coords.dtype, device=coords.device)
    return out.scatter_add_(1, index, weights)


class Noise:
    """Fractal value noise: octaves of cubic B-spline noise on lattices fixed in scene units.

    Lattices cover ``|x| <= _X_EXTENT``, ``|y| <= _Y_EXTENT`` whatever the output size, so the noise
    is resolution independent. Evaluation is separable (two small matrix products per octave). The
    result has about unit standard deviation.
    """

    def __init__(self, rng: Rng, channels: int, frequency: float, octaves: int, *, stretch: float = 1.0,
                 persistence: float = 0.5):
        self.octaves = []
        total = 0.0
        for k in range(octaves):
            fx = frequency * 2**k
            fy = fx * stretch
            nx = math.ceil(2 * _X_EXTENT * fx) + 4
            ny = math.ceil(2 * _Y_EXTENT * fy) + 4
            amplitude = persistence**k
            total += amplitude**2
            self.octaves.append((fx, fy, amplitude, rng.lattice(channels, ny, nx)))
        self.gain = 1.0 / (_BSPLINE_NOISE_STD * math.sqrt(total))

    @staticmethod
    def _matrix(axis: Axis, extent: float, frequency: float, n: int, device, dtype) -> tuple[Tensor, int, int]:
        def node(v: float) -> float:
            return (v + extent) * frequency + 1

        lo = min(max(math.floor(node(axis.start)) - 1, 0), n - 1)
        hi = min(max(math.floor(node(axis.stop)) + 3, lo + 1), n)
        coords = (axis.values(device, torch.float64) + extent) * frequency + 1
        return _bspline_matrix(coords, lo, hi - lo).to(dtype), lo, hi

    def __call__(self, y_axis: Axis, x_axis: Axis, device, dtype) -> Tensor:
        out = None
        for fx, fy, amplitude, lattice in self.octaves:
            my, y0, y1 = self._matrix(y_axis, _Y_EXTENT, fy, lattice.shape[1], device, dtype)
            mx, x0, x1 = self._matrix(x_axis, _X_EXTENT, fx, lattice.shape[2], device, dtype)
            values = lattice[:, y0:y1, x0:x1].to(device=device, dtype=dtype)
            octave = my @ values @ mx.T
            out = octave.mul_(amplitude) if out is None else out.add_(octave, alpha=amplitude)
        if out is None:
            raise ValueError("value noise needs at least one octave")
        return out.mul_(self.gain)

    def line(self, x_axis: Axis, device, dtype) -> Tensor:
        """1-D noise along ``x`` (the row ``y = 0`` of the field): ``[C, len]``."""
        return self(Axis(0.0, 1.0, 1), x_axis, device, dtype)[:, 0]


# ---------------------------------------------------------------------------------------------------
# small helpers


def ramp(signed_distance: Tensor, width) -> Tensor:
    """Anti-aliased coverage of an edge: 1 inside (distance > 0), 0 outside, linear over ``width``."""
    return (signed_distance / width).add_(0.5).clamp_(0.0, 1.0)


def smoothstep(edge0: float, edge1: float, x: Tensor) -> Tensor:
    t = ((x - edge0) / (edge1 - edge0)).clamp_(0.0, 1.0)
    return t * t * (3 - 2 * t)


def square_wave(u: Tensor, period: float, footprint, duty: float = 0.5) -> Tensor:
    """Box-filtered stripes: 1 on the first ``duty`` of each period; tends to ``duty`` when unresolved."""
    distance = (torch.remainder(u / period, 1.0) - duty / 2).abs_()  # from the stripe centre, in periods
    distance = torch.minimum(distance, 1 - distance)
    return ramp((duty / 2 - distance) * period, footprint)


def hsv(hue: float, saturation: float, value: float) -> tuple[float, float, float]:
    h = (hue % 1.0) * 6
    i, f = int(h) % 6, h - math.floor(h)
    p, q, t = value * (1 - saturation), value * (1 - saturation * f), value * (1 - saturation * (1 - f))
    return [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)][i]


def colour(rgb, like: Tensor) -> Tensor:
    return torch.tensor(rgb, device=like.device, dtype=like.dtype)[:, None, None]


def lerp_(target: Tensor, value: Tensor, weight: Tensor) -> Tensor:
    """``target + weight * (value - target)``: in place (one pass) when ``target`` has the result's shape."""
    shape = torch.broadcast_shapes(target.shape, value.shape, weight.shape)
    if shape == target.shape:
        return target.lerp_(value, weight)
    return torch.lerp(target.expand(shape), value, weight)
