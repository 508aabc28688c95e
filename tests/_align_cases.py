"""Cases for the alignment and deghosting tests: static brackets warped by known transforms."""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

from conftest import BURSTS, burst_frames, load_burst_uint8


def bracket_folders():
    """Every burst folder in ../shared (empty when absent)."""
    if not BURSTS.exists():
        return []
    folders = []
    for path in sorted(BURSTS.rglob("*")):
        if path.is_dir() and len(burst_frames(path)) >= 2:
            folders.append(path)
    return folders


def load_small(folder, width: int, max_frames: int = 3) -> torch.Tensor:
    """A burst resized (area) to ``width`` columns, float64 ``[N, 3, H, W]``; at most ``max_frames``
    frames spread over the bracket (darkest, middle, brightest)."""
    frames = load_burst_uint8(folder)
    n = frames.shape[0]
    pick = sorted({round(i * (n - 1) / (max_frames - 1)) for i in range(max_frames)}) if n > max_frames else range(n)
    x = torch.from_numpy(frames[list(pick)]).permute(0, 3, 1, 2).double() / 255
    h = round(x.shape[-2] * width / x.shape[-1])
    return F.interpolate(x, size=(h, width), mode="area")


def smooth_texture(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A static bracket ``[n, 3, h, w]`` of smooth random texture at exposures 2 EV apart."""
    g = torch.Generator().manual_seed(seed)
    base = torch.zeros(1, 3, h, w, dtype=torch.float64)
    for scale in (4, 8, 16, 32):
        noise = torch.rand(1, 3, max(2, h // scale), max(2, w // scale), generator=g, dtype=torch.float64)
        base = base + F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False) / 4
    radiance = (base.clamp(0, 1) ** 2.2) * 1.5
    evs = [2.0 * (i - (n - 1) / 2) for i in range(n)]
    return torch.cat([(radiance * 2 ** ev).clamp(0, 1) ** (1 / 2.2) for ev in evs])


def homography(shift=(0.0, 0.0), angle_deg: float = 0.0, scale: float = 1.0, perspective=(0.0, 0.0), centre=(0.0, 0.0)):
    """Reference pixel -> frame pixel: rotation/scale about ``centre``, then shift, then a perspective term."""
    a = math.radians(angle_deg)
    cx, cy = centre
    t = torch.tensor([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], dtype=torch.float64)
    r = torch.tensor([[scale * math.cos(a), -scale * math.sin(a), 0], [scale * math.sin(a), scale * math.cos(a), 0], [0, 0, 1]], dtype=torch.float64)
    back = torch.tensor([[1, 0, cx + shift[0]], [0, 1, cy + shift[1]], [0, 0, 1]], dtype=torch.float64)
    p = torch.tensor([[1, 0, 0], [0, 1, 0], [perspective[0], perspective[1], 1]], dtype=torch.float64)
    h = back @ r @ t
    # perspective about the centre too, so the image stays in place
    return h @ torch.linalg.inv(t) @ p @ t / (torch.linalg.inv(t) @ p @ t)[2, 2]


def render(source: torch.Tensor, homographies: torch.Tensor, size, jpeg: int | None = 90) -> torch.Tensor:
    """Frames ``[N, C, h, w]`` seen through ``homographies`` (reference crop pixel -> frame crop pixel).

    The crop is the centre ``size`` of ``source``; frame n shows ``source_n`` at ``T G_n^-1 y``, so
    that ``frame_n(G_n x) = source_n(T x)`` = the static frame at reference pixel x.
    """
    n, _, hs, ws = source.shape
    h, w = size
    oy, ox = (hs - h) // 2, (ws - w) // 2
    t = torch.tensor([[1, 0, ox], [0, 1, oy], [0, 0, 1]], dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pts = torch.stack((xs, ys, torch.ones_like(xs)), dim=-1).reshape(-1, 3)
    out = []
    for i in range(n):
        m = t @ torch.linalg.inv(homographies[i])
        q = pts @ m.T
        px, py = q[:, 0] / q[:, 2], q[:, 1] / q[:, 2]
        assert px.min() >= 0 and px.max() <= ws - 1 and py.min() >= 0 and py.max() <= hs - 1, "warp leaves the source"
        grid = torch.stack((2 * px / (ws - 1) - 1, 2 * py / (hs - 1) - 1), dim=-1).reshape(1, h, w, 2)
        frame = F.grid_sample(source[i : i + 1], grid, mode="bicubic", padding_mode="border", align_corners=True)[0]
        out.append(frame.clamp(0, 1))
    frames = torch.stack(out)
    return jpeg_roundtrip(frames, jpeg) if jpeg else frames


def crop(source: torch.Tensor, size) -> torch.Tensor:
    hs, ws = source.shape[-2:]
    h, w = size
    oy, ox = (hs - h) // 2, (ws - w) // 2
    return source[..., oy : oy + h, ox : ox + w]


def jpeg_roundtrip(frames: torch.Tensor, quality: int) -> torch.Tensor:
    from PIL import Image

    out = []
    for frame in frames:
        array = (frame.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as im:
            back = np.array(im.convert("RGB"))
        out.append(torch.from_numpy(back).permute(2, 0, 1).double() / 255)
    return torch.stack(out)


def corner_rms(estimated: torch.Tensor, truth: torch.Tensor, size) -> float:
    """RMS distance (pixels) between where two homographies send the four image corners."""
    h, w = size
    corners = torch.tensor([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], dtype=torch.float64)

    def apply(m):
        q = corners @ m.double().T
        return q[:, :2] / q[:, 2:]

    return float(((apply(estimated) - apply(truth)) ** 2).sum(-1).mean().sqrt())


def psnr(a: torch.Tensor, b: torch.Tensor, region: torch.Tensor | None = None, peak: float = 1.0) -> float:
    diff = (a - b) ** 2
    if region is not None:
        region = region.expand_as(diff)
        mse = float(diff[region].mean())
    else:
        mse = float(diff.mean())
    return 10 * math.log10(peak ** 2 / max(mse, 1e-20))


def exposure_bracket(frame: torch.Tensor, evs) -> torch.Tensor:
    """Re-expose one frame (gamma 2.2 taken as the response) at ``evs``, clipped: ``[len(evs), C, H, W]``."""
    linear = frame.clamp(0, 1) ** 2.2
    return torch.stack([(linear * 2.0 ** ev).clamp(0, 1) ** (1 / 2.2) for ev in evs])
