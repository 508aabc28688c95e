"""The synthetic scene: a room lit by a window, drawn procedurally from a seed, and :func:`hdr_scene`,
which renders it as a scene-linear radiance map with a chosen dynamic range."""
from __future__ import annotations

import math

import torch

from ._common import check_float, check_int, check_seed, rec709_luminance
from .raster import Axis, Canvas, Crop, Noise, Rng, Smooth, colour, hsv, lerp_, ramp, smoothstep, square_wave

__all__ = ["DYNAMIC_RANGE_PERCENTILES", "MID_GREY", "hdr_scene"]

Tensor = torch.Tensor

#: linear value the automatic exposure gives the scene's median luminance at ``ev = 0``
MID_GREY = 0.18
#: percentiles of luminance whose ratio (in stops) is a scene's dynamic range
DYNAMIC_RANGE_PERCENTILES = (0.01, 0.99)
#: share of the dynamic range placed above the median (the rest is below): a room is mostly shadow
_HIGHLIGHT_SHARE = 0.3
#: the dynamic-range calibration reads at most this many pixels (a regular subgrid)
_CALIBRATION_SAMPLES = 1 << 20
#: pixels per band when drawing on CPU (temporaries stay small enough to be reused, not page-faulted)
_BAND_PIXELS = 1 << 19


# ---------------------------------------------------------------------------------------------------
# the scene: a room seen in one-point perspective through its open front, lit by a window in the back
# wall. Room coordinates: the camera is at the origin looking down +Z, the back wall is the plane Z = 1,
# so a point (X, Y, Z) appears at image offset (X / Z, Y / Z) from the vanishing point (vx, vy).


class _Scene:
    """Every random choice of a scene, drawn in a fixed order so seeds are stable across sizes."""

    def __init__(self, rng: Rng):
        u = rng.uniform
        # room: vanishing point and back-wall half extents left/right/up/down of it
        self.vx, self.vy = u(-0.12, 0.12), u(-0.07, 0.03)
        self.left, self.right = u(0.36, 0.55), u(0.36, 0.55)
        self.top, self.bottom = u(0.26, 0.33), u(0.19, 0.25)
        a, b, c, d = self.left, self.right, self.top, self.bottom
        # window in the back wall (tall, sill near the floor) with glazing bars
        width = u(0.32, 0.5) * (a + b)
        self.win_x0 = u(-a + 0.07, b - 0.07 - width)
        self.win_x1 = self.win_x0 + width
        self.win_y0 = -c + u(0.04, 0.07)
        self.win_y1 = d - u(0.05, 0.12)
        panes = rng.integer(2, 3)
        self.win_bars_x = [self.win_x0 + width * k / panes for k in range(1, panes)]
        self.win_bar_y = self.win_y0 + (self.win_y1 - self.win_y0) * u(0.22, 0.38)
        self.win_bar, self.win_frame = u(0.008, 0.013), u(0.012, 0.02)
        # sun direction as an image offset from the vanishing point: upper part of the window or above
        self.sun_x = u(self.win_x0 - 0.05, self.win_x1 + 0.05)
        self.sun_y = u(self.win_y0 - 0.12, 0.55 * self.win_y0)
        self.sun_radius = 0.011
        self.sun_colour = (1.0, 0.9, 0.78)
        # outside: sky colours, hills and tree line, cloud cover
        self.zenith = hsv(u(0.57, 0.64), u(0.55, 0.75), 0.55)
        self.horizon = hsv(u(0.55, 0.62), u(0.12, 0.25), 1.0)
        self.cloud_cover = u(-0.2, 0.8)
        self.hill_height, self.tree_height = u(0.02, 0.06), u(0.01, 0.025)
        self.hill_colour = hsv(u(0.45, 0.58), u(0.2, 0.35), 0.42)
        self.land_colour = hsv(u(0.18, 0.28), u(0.55, 0.8), 0.22)
        # materials: wall paint, optional wallpaper stripes, ceiling, floor
        self.wall = hsv(u(0.0, 1.0), u(0.1, 0.35), u(0.45, 0.7))
        self.wall_stripes = rng.integer(0, 1) == 1
        self.stripe_period, self.stripe_contrast = u(0.03, 0.07), u(0.12, 0.3)
        self.baseboard = u(0.03, 0.045)
        self.ceiling = hsv(u(0.0, 1.0), u(0.0, 0.08), u(0.55, 0.75))
        self.floor_tiles = rng.integer(0, 2) == 0
        self.floor_colour = hsv(u(0.04, 0.1), u(0.45, 0.75), u(0.22, 0.4))
        self.tile_colour = hsv(u(0.0, 1.0), u(0.05, 0.5), u(0.05, 0.2))
        self.plank_width = u(0.055, 0.09)
        self.plank_length = self.plank_width * u(5.0, 9.0)
        self.tile_size = u(0.09, 0.15)
        self.plank_tone = [u(0.7, 1.3) for _ in range(32)]
        self.plank_shift = [u(0.0, 1.0) for _ in range(32)]
        self.plank_phase = [u(0.0, 6.3) for _ in range(32)]
        # rug on the floor
        rug_w, rug_d = u(0.35, 0.6) * (a + b), u(0.18, 0.3)
        self.rug_x0 = u(-a + 0.05, b - 0.05 - rug_w)
        self.rug_x1 = self.rug_x0 + rug_w
        self.rug_z0 = u(0.45, 0.6)
        self.rug_z1 = self.rug_z0 + rug_d
        dyes = [(0.45, 0.03, 0.03), (0.03, 0.06, 0.3), (0.55, 0.32, 0.03), (0.02, 0.25, 0.22), (0.04, 0.22, 0.05),
                (0.3, 0.02, 0.1), (0.7, 0.62, 0.45), (0.55, 0.12, 0.02)]
        self.rug_colours = [dyes[rng.integer(0, len(dyes) - 1)] for _ in range(3)]
        self.rug_stripe = u(0.02, 0.05)
        # painting on a side wall: a Mondrian-like grid of flat colours in a dark frame
        self.painting_left = rng.integer(0, 1) == 1
        self.painting_z0 = u(0.62, 0.75)
        self.painting_z1 = self.painting_z0 + u(0.12, 0.2)
        self.painting_y0 = u(-0.15, -0.08)
        self.painting_y1 = self.painting_y0 + u(0.12, 0.18)
        self.painting_cuts_u = sorted(u(0.1, 0.9) for _ in range(rng.integer(1, 3)))
        self.painting_cuts_v = sorted(u(0.1, 0.9) for _ in range(rng.integer(1, 3)))
        primaries = [(0.75, 0.04, 0.03), (0.85, 0.65, 0.02), (0.03, 0.12, 0.6), (0.8, 0.8, 0.75), (0.8, 0.8, 0.75),
                     (0.02, 0.02, 0.02)]
        self.painting_cells = [primaries[rng.integer(0, len(primaries) - 1)] for _ in range(16)]
        # balls on the floor: position (X, Z), radius, saturated colour
        self.balls = []
        for _ in range(rng.integer(2, 4)):
            radius = u(0.03, 0.06)
            self.balls.append((u(-a + radius + 0.02, b - radius - 0.02), u(0.5, 0.92), radius,
                               hsv(u(0.0, 1.0), u(0.8, 0.95), u(0.45, 0.75))))
        self.balls.sort(key=lambda ball: -ball[1])  # far to near, for occlusion
        # pendant lamp: a paper globe hanging from the ceiling, usually on
        self.lamp_x, self.lamp_z = u(-0.6 * a, 0.6 * b), u(0.6, 0.85)
        self.lamp_y = -c + u(0.07, 0.15)
        self.lamp_radius = u(0.025, 0.04)
        self.lamp_on = rng.uniform(0.0, 1.0) < 0.8
        # noise fields: textures of the room (plaster, stains), clouds, outside textures, silhouettes
        self.room_noise = Noise(rng, 2, 6.0, 5)
        self.cloud_noise = Noise(rng, 2, 5.0, 5, stretch=2.5)
        self.land_noise = Noise(rng, 2, 20.0, 3)
        self.ridge_noise = Noise(rng, 2, 4.0, 5)

    # --- geometry and light --------------------------------------------------------------------

    def window_opening(self, hx: Tensor, hy: Tensor, blur) -> Tensor:
        """Fraction of light through the window at back-wall offsets ``(hx, hy)`` (bars block it)."""
        open_ = ramp(hx - self.win_x0, blur) * ramp(self.win_x1 - hx, blur)
        open_ = open_ * ramp(hy - self.win_y0, blur) * ramp(self.win_y1 - hy, blur)
        for bar_x in self.win_bars_x:
            open_ = open_ * (1 - ramp(self.win_bar / 2 - (hx - bar_x).abs(), blur))
        return open_ * (1 - ramp(self.win_bar / 2 - (hy - self.win_bar_y).abs(), blur))

    def room_point(self, dx: Tensor, dy: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Room surface point seen at image offsets ``(dx, dy)``, and how much window light it faces."""
        u = dx / torch.where(dx > 0, self.right, self.left)
        v = dy / torch.where(dy > 0, self.bottom, self.top)
        s = torch.maximum(u.abs(), v.abs())
        z = 1 / s.clamp(min=1.0)
        # crude form factors: walls see the window obliquely, the ceiling mostly gets bounce light
        kind = torch.where(u.abs() > v.abs(), 0.8, torch.where(dy > 0, 1.0, 0.4))
        kind = torch.where(s <= 1, 1.0, kind)
        return dx * z, dy * z, z, kind

    def irradiance(self, y_axis: Axis, x_axis: Axis) -> Tensor:
        """Smooth light on the room's surfaces: window, bounce, lamp, with occlusion. ``[3, h, w]``."""
        device, dtype = self.device, self.dtype
        dy = y_axis.values(device, dtype)[:, None] - self.vy
        dx = x_axis.values(device, dtype)[None, :] - self.vx
        px, py, pz, kind = self.room_point(dx, dy)
        a, b, c, d = self.left, self.right, self.top, self.bottom
        # the window as one area source: cosine at the window over squared distance
        cx, cy = (self.win_x0 + self.win_x1) / 2, (self.win_y0 + self.win_y1) / 2
        area = (self.win_x1 - self.win_x0) * (self.win_y1 - self.win_y0)
        dist2 = (px - cx) ** 2 + (py - cy) ** 2 + (1 - pz) ** 2
        window = 0.55 * area * (1.03 - pz) * kind / (dist2 + area / 4) ** 1.5
        # ambient occlusion from the room's five planes (the plane the point lies on cancels out)
        occlusion = torch.ones_like(pz)
        for gap in (d - py, py + c, px + a, b - px, 1 - pz):
            occlusion = occlusion * (1 - 0.55 * torch.exp(-gap.clamp(min=0) / 0.05))
        occlusion = occlusion / 0.45
        for bx, bz, radius, _ in self.balls:
            contact2 = (px - bx) ** 2 + (py - d) ** 2 + (pz - bz) ** 2
            occlusion = occlusion * (1 - 0.8 * torch.exp(-contact2 / (1.4 * radius) ** 2))
        texture = self.room_noise(y_axis, x_axis, device, dtype)
        occlusion = occlusion * (1 + 0.06 * texture[0]) * (1 + 0.12 * texture[1].clamp(min=-1.5, max=1.5))
        sky = colour((0.85, 0.92, 1.0), pz)
        bounce = colour(tuple(0.5 + 0.5 * w for w in self.wall), pz)
        light = (sky * window + 0.012 * bounce) * occlusion
        if self.lamp_on:
            lamp2 = (px - self.lamp_x) ** 2 + (py - self.lamp_y) ** 2 + (pz - self.lamp_z) ** 2
            light = light + colour((1.0, 0.72, 0.45), pz) * (0.006 / (lamp2 + 0.01)) * occlusion.sqrt()
        return light

    def floor_share(self, crop: Crop, side: int = 1) -> Tensor:
        """Anti-aliased share of each pixel of a crop that is floor (``side=-1``: ceiling)."""
        a, b, vx, vy = self.left, self.right, self.vx, self.vy
        half = self.bottom if side > 0 else self.top
        dx, dy = crop.xs - vx, crop.ys - vy
        # distance to the diagonal where floor meets side wall, in pixels; no diagonal above the back wall
        inv_slope = torch.where(dx < -a, 1 / math.hypot(1 / half, 1 / a),
                                torch.where(dx > b, 1 / math.hypot(1 / half, 1 / b), 1e6))
        u = dx.abs() / torch.where(dx > 0, b, a)
        return ramp((side * dy / half - u) * inv_slope, crop.canvas.pixel) * (side * dy >= half)

    # --- rendering ---------------------------------------------------------------------------------

    def render(self, radiance: Tensor, canvas: Canvas) -> list[Canvas]:
        """Draws the (uncalibrated) radiance into ``[3, H, W]`` band by band; returns the bands."""
        self.device, self.dtype = canvas.device, canvas.dtype
        self.light = Smooth(canvas.everything(), self.irradiance)
        window = self.window_crop(canvas)
        self.outside = Smooth(window, self.outside_smooth)
        if window is not None:  # silhouettes of the hills and the tree line, by column
            self.ridge = (self.ridge_noise.line(window.x_axis, canvas.device, canvas.dtype), window.c0)
        rows = canvas.height if canvas.device.type != "cpu" else max(1, _BAND_PIXELS // canvas.width)
        bands = [canvas.band(row0, min(row0 + rows, canvas.height)) for row0 in range(0, canvas.height, rows)]
        for band in bands:
            self.render_band(radiance[:, band.row0:band.row1], band)
        return bands

    def render_band(self, out: Tensor, band: Canvas) -> None:
        light = self.light.sample(band.everything())
        self.add_sun_patch(light, band)
        albedo = torch.zeros_like(light)
        self.paint_room(albedo, band)
        self.paint_window_frame(albedo, band)
        self.paint_rug(albedo, band)
        self.paint_painting(albedo, band)
        torch.mul(albedo, light, out=out)
        del albedo, light
        self.draw_outside(out, band)
        self.draw_balls(out, band)
        self.draw_lamp(out, band)
        out.clamp_(min=1e-6)  # radiance stays positive even where anti-aliased corners leave a gap

    # --- albedo ------------------------------------------------------------------------------------

    def paint_room(self, albedo: Tensor, canvas: Canvas) -> None:
        """Walls, floor and ceiling; every pixel belongs to one surface (shared on the diagonals)."""
        a, b, c, d, vx, vy = self.left, self.right, self.top, self.bottom, self.vx, self.vy
        px = canvas.pixel
        back = canvas.crop(vx - a, vx + b, vy - c, vy + d)
        if back is not None:
            albedo[back.index] = self.wall_albedo(back.xs - vx, back.ys - vy, px, px)
        # side walls: all rows of the columns beside the back wall, meeting floor and ceiling on diagonals
        for side, crop in ((-1, canvas.crop(-math.inf, vx - a, -math.inf, math.inf)),
                           (1, canvas.crop(vx + b, math.inf, -math.inf, math.inf))):
            if crop is None:
                continue
            half = a if side < 0 else b
            dx, dy = crop.xs - vx, crop.ys - vy
            z = half / (side * dx)  # [1, w]
            inv_slope = torch.where(dy > d, 1 / math.hypot(1 / d, 1 / half),
                                    torch.where(dy < -c, 1 / math.hypot(1 / c, 1 / half), 1e6))
            v = dy.abs() / torch.where(dy > 0, d, c)
            coverage = ramp((side * dx / half - v) * inv_slope, px)
            value = self.wall_albedo(z, dy * z, px * z * z / half, px * z)
            albedo[crop.index] += value.mul_(coverage)
        floor = canvas.crop(-math.inf, math.inf, vy + d, math.inf)
        if floor is not None:
            dx, dy = floor.xs - vx, floor.ys - vy
            z = d / dy  # [h, 1]
            value = self.floor_albedo(dx * z, z, px * z, px * z * z / d)
            albedo[floor.index] += value.mul_(self.floor_share(floor))
        ceiling = canvas.crop(-math.inf, math.inf, -math.inf, vy - c)
        if ceiling is not None:
            albedo[ceiling.index] += colour(self.ceiling, albedo) * self.floor_share(ceiling, -1)

    def wall_albedo(self, along: Tensor, y: Tensor, footprint_along, footprint_y) -> Tensor:
        """Paint or striped wallpaper, and a white baseboard; ``along`` runs horizontally on the wall."""
        paint = colour(self.wall, y)
        if self.wall_stripes:
            stripes = square_wave(along, self.stripe_period, footprint_along, duty=0.35)
            paint = paint * (1 - self.stripe_contrast * stripes)
        paint = paint.expand(3, y.shape[0], along.shape[1]).clone()
        board = ramp(y - (self.bottom - self.baseboard), footprint_y)
        groove = ramp(0.0015 - (y - (self.bottom - self.baseboard + 0.004)).abs(), footprint_y)
        return lerp_(paint, colour((0.75, 0.74, 0.7), y), board * (1 - 0.6 * groove))

    def floor_albedo(self, x: Tensor, z: Tensor, footprint_x: Tensor, footprint_z: Tensor) -> Tensor:
        """Wooden planks running towards the back wall, or a chequered tile floor (floor coordinates)."""
        base = colour(self.floor_colour, x)
        if self.floor_tiles:
            size = self.tile_size
            checker = (square_wave(x, 2 * size, footprint_x) - square_wave(z, 2 * size, footprint_z)).abs_()
            grout = square_wave(x + 0.025 * size, size, footprint_x, duty=0.95) \
                * square_wave(z + 0.025 * size, size, footprint_z, duty=0.95)
            value = torch.lerp(base, colour(self.tile_colour, x), checker)
            return lerp_(value, colour((0.45, 0.43, 0.4), x), 1 - grout)
        q = x / self.plank_width
        plank = torch.floor(q).long().remainder_(32)
        tone = torch.tensor(self.plank_tone, device=x.device, dtype=x.dtype)[plank]
        shift = torch.tensor(self.plank_shift, device=x.device, dtype=x.dtype)[plank]
        phase = torch.tensor(self.plank_phase, device=x.device, dtype=x.dtype)[plank]
        seams = square_wave(q + 0.03, 1.0, footprint_x / self.plank_width, duty=0.94)
        seams = seams.mul_(square_wave(z / self.plank_length + shift + 0.01, 1.0, footprint_z / self.plank_length,
                                        duty=0.98))
        # grain: stripes along the plank, wavering; faded out before they alias
        fade = (1 - 2 * footprint_x * (7.0 / self.plank_width)).clamp_(min=0.0)
        grain = torch.sin(q * (2 * math.pi * 7) + torch.sin(z * 23 + phase).mul_(0.8)).mul_(0.1 * fade).add_(1)
        return base * tone.mul_(grain).mul_(seams.mul_(0.6).add_(0.4))

    def paint_window_frame(self, albedo: Tensor, canvas: Canvas) -> None:
        """The window's white frame and bars (the view replaces the glass later)."""
        vx, vy, px, f = self.vx, self.vy, canvas.pixel, self.win_frame
        crop = canvas.crop(vx + self.win_x0 - f - px, vx + self.win_x1 + f + px, vy + self.win_y0 - f - px,
                           vy + self.win_y1 + px)
        if crop is not None:
            dx, dy = crop.xs - vx, crop.ys - vy
            coverage = ramp(dx - (self.win_x0 - f), px) * ramp(self.win_x1 + f - dx, px) \
                * ramp(dy - (self.win_y0 - f), px) * ramp(self.win_y1 + f / 2 - dy, px)
            lerp_(albedo[crop.index], colour((0.72, 0.71, 0.68), coverage), coverage)

    def paint_rug(self, albedo: Tensor, canvas: Canvas) -> None:
        """A striped rug with a border, lying on the floor."""
        d, vx, vy = self.bottom, self.vx, self.vy
        x0, x1, z0, z1 = self.rug_x0, self.rug_x1, self.rug_z0, self.rug_z1
        crop = canvas.bounds([(vx + x / z, vy + d / z) for x in (x0, x1) for z in (z0, z1)])
        if crop is None:
            return
        z = d / (crop.ys - vy).clamp(min=d)
        x = (crop.xs - vx) * z
        fx, fz = canvas.pixel * z, canvas.pixel * z * z / d
        inside = ramp(x - x0, fx) * ramp(x1 - x, fx) * ramp(z - z0, fz) * ramp(z1 - z, fz)
        edge = torch.minimum(torch.minimum(x - x0, x1 - x), torch.minimum(z - z0, z1 - z))
        stripes = square_wave(x + z * 0.5, self.rug_stripe, fx + fz)
        first, second, border = (colour(c, x) for c in self.rug_colours)
        value = torch.lerp(first, second, stripes)
        value = lerp_(value, border, ramp(0.035 - edge, fx))
        lerp_(albedo[crop.index], value, inside)

    def paint_painting(self, albedo: Tensor, canvas: Canvas) -> None:
        """A Mondrian-like grid of flat colours and black lines, framed, on a side wall."""
        side = -1 if self.painting_left else 1
        half = self.left if side < 0 else self.right
        vx, vy, frame = self.vx, self.vy, 0.012
        z0, z1, y0, y1 = self.painting_z0, self.painting_z1, self.painting_y0, self.painting_y1
        corners = [(vx + side * half / z, vy + y / z) for z in (z0 - frame, z1 + frame) for y in (y0 - frame, y1 + frame)]
        crop = canvas.bounds(corners)
        if crop is None:
            return
        z = half / (side * (crop.xs - vx)).clamp(min=1e-3)  # [1, w]
        y = (crop.ys - vy) * z
        fz, fy = canvas.pixel * z * z / half, canvas.pixel * z
        outer = ramp(z - z0 + frame, fz) * ramp(z1 + frame - z, fz) * ramp(y - y0 + frame, fy) \
            * ramp(y1 + frame - y, fy)
        inner = ramp(z - z0, fz) * ramp(z1 - z, fz) * ramp(y - y0, fy) * ramp(y1 - y, fy)
        cuts_u = torch.tensor(self.painting_cuts_u, device=z.device, dtype=z.dtype)
        cuts_v = torch.tensor(self.painting_cuts_v, device=z.device, dtype=z.dtype)
        column = torch.bucketize(((z - z0) / (z1 - z0)).expand_as(y).contiguous(), cuts_u)
        row = torch.bucketize(((y - y0) / (y1 - y0)).contiguous(), cuts_v)
        cells = torch.tensor(self.painting_cells, device=z.device, dtype=z.dtype)  # [16, 3]
        picture = cells[(row * 4 + column).clamp_(0, 15)].permute(2, 0, 1)
        lines = torch.ones_like(y)
        for cut in self.painting_cuts_u:
            lines = lines * (1 - ramp(0.006 - (z - (z0 + cut * (z1 - z0))).abs(), fz))
        for cut in self.painting_cuts_v:
            lines = lines * (1 - ramp(0.006 - (y - (y0 + cut * (y1 - y0))).abs(), fy))
        picture = torch.lerp(colour((0.03, 0.03, 0.03), y), picture, lines)
        picture = torch.lerp(colour((0.08, 0.05, 0.03), y), picture, inner)
        lerp_(albedo[crop.index], picture, outer)

    # --- light and emitters drawn after shading ------------------------------------------------------

    def add_sun_patch(self, light: Tensor, canvas: Canvas) -> None:
        """Sunlight through the window onto the floor (bars and balls cast shadows), into ``light``."""
        d, vx, vy = self.bottom, self.vx, self.vy
        sx, sy = self.sun_x, self.sun_y
        # floor points whose ray to the sun crosses the window: t = 1 - Z in [t0, t1]
        t0, t1 = (self.win_y1 - d) / sy, (self.win_y0 - d) / sy
        t1 = min(t1, 1 - 0.98 * d / (0.5 - vy + canvas.pixel))  # no further than the bottom of the frame
        if t1 <= t0:
            return
        corners = [(vx + (x - t * sx) / (1 - t), vy + d / (1 - t)) for t in (t0, t1) for x in (self.win_x0, self.win_x1)]
        crop = canvas.bounds(corners, margin=0.03 * t1 / (1 - t1))
        if crop is None:
            return
        z = d / (crop.ys - vy).clamp(min=d)
        x = (crop.xs - vx) * z
        t = 1 - z
        lit = self.window_opening(x + t * sx, d + t * sy, 0.02 * t + canvas.pixel * z) * self.floor_share(crop)
        norm2 = sx * sx + sy * sy + 1
        for bx, bz, radius, _ in self.balls:
            # distance from the ball's centre to the ray from the floor point towards the sun
            wx, wy, wz = bx - x, -radius, bz - z
            along = (wx * sx + wy * sy + wz) / norm2
            miss2 = (wx * wx + wy * wy + wz * wz - along * along * norm2).clamp_(min=0)
            shadow = ramp(radius - miss2.sqrt_(), 0.02 * along.abs() + canvas.pixel * z) * (along > 0)
            lit = lit * (1 - shadow)
        strength = 7.0 * (-sy) / math.sqrt(norm2)  # the sun's cosine on the floor
        light[crop.index] += colour(self.sun_colour, lit) * lit.mul_(strength)

    def window_crop(self, canvas: Canvas) -> Crop | None:
        px = canvas.pixel
        return canvas.crop(self.vx + self.win_x0 - px, self.vx + self.win_x1 + px, self.vy + self.win_y0 - px,
                           self.vy + self.win_y1 + px)

    def draw_outside(self, radiance: Tensor, canvas: Canvas) -> None:
        """The view through the window: sky with sun and clouds, hills, trees and fields (emission)."""
        crop = self.window_crop(canvas)
        if crop is None:
            return
        px = canvas.pixel
        dx, dy = crop.xs - self.vx, crop.ys - self.vy
        ridge, first = self.ridge
        ridge = ridge[:, crop.c0 - first:crop.c1 - first]
        hills_top = (self.hill_height * (0.6 + 0.4 * ridge[0])).clamp_(min=0.004).neg_()  # [w]
        trees_top = 0.004 - self.tree_height * (0.5 + 0.5 * ridge[1].abs())
        smooth = self.outside.sample(crop)
        view = lerp_(smooth[0:3], smooth[3:6], ramp(dy - hills_top, px))
        view = lerp_(view, smooth[6:9], ramp(dy - trees_top, px))
        sun = ramp(self.sun_radius - torch.sqrt((dx - self.sun_x) ** 2 + (dy - self.sun_y) ** 2), px)
        view = lerp_(view, colour(self.sun_colour, view) * self.sun_level, sun * ramp(hills_top - dy, px))
        lerp_(radiance[crop.index], view, self.window_opening(dx, dy, px))

    def outside_smooth(self, y_axis: Axis, x_axis: Axis) -> Tensor:
        """Smooth parts of the view: sky (with glow and clouds), hazy hills, land. ``[9, h, w]``."""
        device, dtype = self.device, self.dtype
        dy = y_axis.values(device, dtype)[:, None] - self.vy
        dx = x_axis.values(device, dtype)[None, :] - self.vx
        shape = (3, dy.shape[0], dx.shape[1])
        elevation = smoothstep(-0.02, 0.35, -dy) ** 0.6
        sky = torch.lerp(colour(self.horizon, dy), colour(self.zenith, dy), elevation).expand(shape)
        r = torch.sqrt((dx - self.sun_x) ** 2 + (dy - self.sun_y) ** 2)
        glow = 1.2 * torch.exp(-r / 0.04) + 0.5 * torch.exp(-r / 0.2)
        sky = sky + colour(self.sun_colour, dy) * glow
        clouds = self.cloud_noise(y_axis, x_axis, device, dtype)
        density = smoothstep(0.1, 1.1, clouds[0] + self.cloud_cover) * smoothstep(0.0, 0.12, -dy)
        cloud = (0.75 + 0.25 * clouds[1].clamp(-2, 2)) * (1.1 + 1.5 * glow)
        sky = lerp_(sky, cloud * colour((1.0, 0.98, 0.96), dy), density)
        texture = self.land_noise(y_axis, x_axis, device, dtype)
        haze = smoothstep(-0.1, 0.0, dy)
        hills = colour(self.hill_colour, dy) * (1 + 0.15 * texture[0]) * (1 + 0.3 * haze)
        land = torch.lerp(colour(self.land_colour, dy) * 0.45, colour((0.3, 0.42, 0.12), dy),
                          smoothstep(0.0, 0.06, dy))
        land = land * (1 + 0.35 * texture[1].clamp(-2, 2))
        return torch.cat([sky, hills.expand(shape), land.expand(shape)])

    def draw_balls(self, radiance: Tensor, canvas: Canvas) -> None:
        """Glossy coloured balls on the floor: diffuse shading, sun rim light, window reflection."""
        vx, vy, d = self.vx, self.vy, self.bottom
        norm = math.sqrt(self.sun_x**2 + self.sun_y**2 + 1)
        sun = (self.sun_x / norm, self.sun_y / norm, 1 / norm)
        win_x, win_y = (self.win_x0 + self.win_x1) / 2, (self.win_y0 + self.win_y1) / 2
        for bx, bz, radius, ball_colour in self.balls:
            cx, cy, r_img = vx + bx / bz, vy + (d - radius) / bz, radius / bz
            crop = canvas.box(cx, cy, r_img)
            if crop is None:
                continue
            nx, ny = (crop.xs - cx) / r_img, (crop.ys - cy) / r_img
            rho2 = nx * nx + ny * ny
            coverage = ramp((1 - rho2.sqrt()) * r_img, canvas.pixel)
            nz = (1 - rho2).clamp_(min=0).sqrt_().neg_()  # the visible side faces the camera (-Z)
            to_win = (win_x - bx, win_y - (d - radius), 1 - bz)
            length = math.sqrt(sum(c * c for c in to_win))
            facing = (nx * (to_win[0] / length) + ny * (to_win[1] / length) + nz * (to_win[2] / length)).clamp_(min=0)
            # sun rim light when the ball stands in the sun patch
            t = 1 - bz
            in_sun = float(self.window_opening(torch.tensor(bx + t * self.sun_x), torch.tensor(d + t * self.sun_y),
                                               0.02 * t + 1e-3))
            rim = (nx * sun[0] + ny * sun[1] + nz * sun[2]).clamp_(min=0)
            diffuse = self.light.sample(crop) * (0.35 + 1.1 * facing) + colour(self.sun_colour, nx) * (7.0 * in_sun * rim)
            value = diffuse * colour(ball_colour, nx)
            # mirror reflection of the window (weak, as for a dielectric): reflect the view ray
            ex, ey = (cx - vx) + nx * r_img, (cy - vy) + ny * r_img
            view_length = torch.sqrt(ex * ex + ey * ey + 1)
            ex, ey, ez = ex / view_length, ey / view_length, 1 / view_length
            dot = ex * nx + ey * ny + ez * nz
            rx, ry, rz = ex - 2 * dot * nx, ey - 2 * dot * ny, ez - 2 * dot * nz
            hit = (1 - bz) / rz.clamp(min=1e-3)
            mirror = self.window_opening(bx + nx * radius + hit * rx, (d - radius) + ny * radius + hit * ry, 0.01)
            value = value + colour(self.horizon, nx) * (0.05 * mirror * (rz > 1e-3))
            lerp_(radiance[crop.index], value, coverage)

    def draw_lamp(self, radiance: Tensor, canvas: Canvas) -> None:
        """A paper globe on a cord; it glows (with a halo) when on."""
        z, px = self.lamp_z, canvas.pixel
        cx, cy, r_img = self.vx + self.lamp_x / z, self.vy + self.lamp_y / z, self.lamp_radius / z
        cord = canvas.crop(cx - 0.003 / z - px, cx + 0.003 / z + px, self.vy - self.top / z, cy)
        if cord is not None:
            radiance[cord.index].mul_(1 - 0.9 * ramp(0.0015 / z - (cord.xs - cx).abs(), px))
        crop = canvas.box(cx, cy, 8 * r_img if self.lamp_on else r_img)
        if crop is None:
            return
        rho = torch.sqrt((crop.xs - cx) ** 2 + (crop.ys - cy) ** 2) / r_img
        coverage = ramp((1 - rho) * r_img, px)
        limb = (1 - rho * rho).clamp_(min=0).sqrt_()
        if self.lamp_on:
            level = self.lamp_level
            globe = colour((1.0, 0.78, 0.52), rho) * (level * (0.7 + 0.3 * limb)) \
                + colour((1.0, 0.85, 0.6), rho) * (4 * level * torch.exp(-rho * rho / 0.08))
            glow = colour((1.0, 0.75, 0.5), rho) * (0.05 * level * torch.exp(-(rho - 1).clamp(min=0) / 1.5))
            radiance[crop.index] += glow.mul_(1 - coverage)
        else:
            globe = self.light.sample(crop) * (0.48 + 0.32 * limb)
        lerp_(radiance[crop.index], globe, coverage)

    def set_levels(self, dynamic_range_ev: float) -> None:
        # sky radiance is 1; the sun disk and the lamp sit well above it, more so in a wider scene
        self.sun_level = 2.0 ** (0.55 * dynamic_range_ev + 2)
        self.lamp_level = 2.0 ** (0.12 * dynamic_range_ev)


def _quantile(values: Tensor, q: float) -> float:
    """The ``q`` quantile of a 1-D tensor (nearest rank; selection, not a full sort)."""
    return values.kthvalue(min(max(round(q * (values.numel() - 1)) + 1, 1), values.numel())).values.item()


class _Remap:
    """Piecewise-linear map of log2 luminance about the median that sets a scene's dynamic range.

    Fitted on (a subgrid of) a rendering so that ``log2(p99 / p1)`` of luminance becomes the target, the median
    goes to :data:`MID_GREY` and ``_HIGHLIGHT_SHARE`` of the range lies above it. Each pixel is scaled
    as a whole, so colour ratios are kept.
    """

    def __init__(self, radiance: Tensor, dynamic_range_ev: float):
        log_y = rec709_luminance(radiance).clamp_(min=1e-30).log2_().reshape(-1)
        low, self.median, high = (_quantile(log_y, q) for q in (DYNAMIC_RANGE_PERCENTILES[0], 0.5,
                                                                  DYNAMIC_RANGE_PERCENTILES[1]))
        above = _HIGHLIGHT_SHARE * dynamic_range_ev
        self.gain_high = above / max(high - self.median, 1e-3)
        self.gain_low = (dynamic_range_ev - above) / max(self.median - low, 1e-3)
        self.shift = math.log2(MID_GREY) - self.median

    def apply_(self, radiance: Tensor) -> Tensor:
        offset = rec709_luminance(radiance).clamp_(min=1e-30).log2_().sub_(self.median)
        gain = torch.where(offset > 0, self.gain_high - 1, self.gain_low - 1)
        # scale by 2 ** (new log luminance - old)
        return radiance.mul_(offset.mul_(gain).add_(self.shift).exp2_())


def hdr_scene(
    height: int,
    width: int,
    *,
    seed: int = 0,
    dynamic_range_ev: float = 14.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""A procedural high-dynamic-range scene: scene-linear RGB radiance, all values positive and finite.

    The scene is a room in one-point perspective lit through a tall window in the back wall: outside,
    a sky gradient with clouds and a sun many stops above everything else, hazy hills and a tree line;
    inside, painted or wallpapered walls, a wooden or tiled floor with a patch of sunlight shaped by the
    window bars, a rug, a painting of flat primary colours, glossy coloured balls (which reflect the
    window and cast shadows in the sun) and usually a glowing pendant lamp. The seed draws the layout,
    materials, colours, sun position and noise, so different seeds give visibly different scenes.

    Luminance (Rec. ITU-R BT.709 weights) is then calibrated so that ``log2(p99 / p1)`` equals
    ``dynamic_range_ev`` (percentiles from :data:`DYNAMIC_RANGE_PERCENTILES`, measured on the output
    itself, from at most 2**20 pixels of a regular subgrid), with the median at :data:`MID_GREY` and 30 %
    of the range above it (a lit room is mostly shadow); the sun and the lamp lie beyond the 99th
    percentile. The calibration is a piecewise-linear map of log luminance about the median, applied to
    each pixel as a whole, so colour ratios are kept.

    The scene lives in continuous coordinates in units of the image height, so the same seed at another
    size is the same scene resampled (a wider aspect ratio sees more of the room); only the calibration
    gains shift slightly with size, as thin features are resolved differently. On CPU the image is
    drawn in bands of rows with small temporaries (a 12 MP scene takes about a second on two cores).
    Random draws use a local CPU ``torch.Generator``: the global RNG is untouched and CPU and GPU
    outputs agree to rounding.

    Textures use fractal value noise (K. Perlin, "An image synthesizer", SIGGRAPH 1985,
    doi:10.1145/325165.325247) interpolated with cubic B-splines; the geometry is a pinhole camera in
    one-point perspective; luminance weights are those of Rec. ITU-R BT.709-6.

    Args:
        height: output height in pixels (> 0).
        width: output width in pixels (> 0).
        seed: selects the scene.
        dynamic_range_ev: stops between the 1st and 99th percentiles of luminance (> 0).
        device: device of the result (default: the current default device).
        dtype: floating dtype of the result (computed in float32, or float64 when asked for; values are
            clamped to the dtype's normal range, which matters for float16 only).

    Returns:
        Radiance in arbitrary linear units (median luminance 0.18), strictly positive and finite.

    Shape:
        - Output: :math:`(3, H, W)`.

    Example:
        >>> scene = hdr_scene(64, 96, seed=3)
        >>> scene.shape, bool((scene > 0).all())
        (torch.Size([3, 64, 96]), True)
    """
    check_int("height", height)
    check_int("width", width)
    check_seed(seed)
    dynamic_range_ev = check_float("dynamic_range_ev", dynamic_range_ev, positive=True)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    device = torch.empty(0, device=device).device
    work = torch.float64 if dtype == torch.float64 else torch.float32

    scene = _Scene(Rng(seed))
    scene.set_levels(dynamic_range_ev)
    canvas = Canvas(height, width, device, work)
    radiance = torch.empty(3, height, width, device=device, dtype=work)
    bands = scene.render(radiance, canvas)
    step = max(1, math.isqrt(height * width // _CALIBRATION_SAMPLES))
    remap = _Remap(radiance[:, ::step, ::step], dynamic_range_ev)
    for band in bands:
        remap.apply_(radiance[:, band.row0:band.row1])
    return radiance.clamp_(min=torch.finfo(dtype).tiny, max=torch.finfo(dtype).max).to(dtype)
