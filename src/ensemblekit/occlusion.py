"""Training with occlusions: cutout and random erasing on a whole batch, and occlusion robustness.

Hiding random parts of the input during training stops a network from relying on any single part
of it -- dropout applied to the input, in contiguous blocks rather than independent pixels.

* **Cutout** (DeVries & Taylor 2017, arXiv:1708.04552): ``holes`` squares of side ``size`` at
  uniformly random centres anywhere in the image, clipped at the border (so a hole near an edge
  covers less), applied with probability ``p``; filled with 0, which on normalised inputs is the
  dataset mean. Practical advice from the paper: the side matters more than the shape; about half
  the image side for CIFAR-10 (16 of 32 px). One difference from the reference code: it cuts
  ``[c - size//2, c + size//2)``, so an odd size gives an even side; here the side is exactly
  ``size`` (``[c - size//2, c - size//2 + size)``).
* **Random erasing** (Zhong et al. 2017, AAAI 2020, arXiv:1708.04896), as in the authors' released
  code (and torchvision, timm): with probability ``p``, draw an area fraction ``s ~ U(scale)`` and
  an aspect ratio ``r`` (log-uniform on ``ratio``, as timm and torchvision do; the authors draw it
  uniformly on ``(r1, 1/r1)``), giving a rectangle ``h = round(sqrt(s*H*W*r))``,
  ``w = round(sqrt(s*H*W/r))``; keep it if ``h < H`` and ``w < W``, else try again; then draw its
  top-left corner uniformly over the positions where it fits. (The paper's Algorithm 1 draws the
  corner over the whole image and retries when the rectangle sticks out, which favours small
  rectangles; its code does not.) The authors retry up to 100 times; here each image gets
  ``attempts`` tries (default 10, as torchvision) and stays untouched if none fits. Fill:
  ``"constant"`` (``value``), ``"noise"`` (per-pixel N(0, 1), the normalised analogue of the
  paper's uniform [0, 255]) or ``"mean"`` (the dataset mean, which is 0 on normalised inputs;
  pass ``mean=`` per channel for raw inputs).

Each image gets its own draw, and masks are built by broadcasting per-image row and column
indicators of the boxes (``(B, H) x (B, W) -> (B, H, W)``), never by a loop over images. The
functional core (`cutout`, `random_erasing`) takes its random numbers explicitly (`CutoutDraw`,
`ErasingDraw`), so tests can feed the same numbers to a per-image reference; `Cutout` and
`RandomErasing` are the callable wrappers that draw them, for ``Batches(transform=...)`` or any
(B, C, H, W) tensor, with an optional ``torch.Generator``.

**Occlusion robustness**: `occlusion_robustness` scores models on test images each hidden by a
square occluder of side 0, 4, 8, ... px at a seeded position inside the image (the same positions
for every model), and `occlusion_sensitivity` slides an occluder over an image and records the
drop in the true-class probability (Zeiler & Fergus 2014, "Visualizing and understanding
convolutional networks", Sec. 4.2).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "CutoutDraw",
    "ErasingDraw",
    "ERASING_FILLS",
    "box_mask",
    "draw_cutout",
    "cutout_boxes",
    "cutout",
    "draw_erasing",
    "erasing_boxes",
    "random_erasing",
    "Cutout",
    "RandomErasing",
    "REFERENCE_SIDES",
    "scaled_sides",
    "occluder_corners",
    "occlude",
    "Robustness",
    "occlusion_robustness",
    "occlusion_sensitivity",
    "plot_robustness",
    "plot_sensitivity",
]

ERASING_FILLS = ("constant", "noise", "mean")
REFERENCE_SIDES = (0, 4, 8, 12, 16)  # occluder sides for 28x28 images; other sizes scale them


# ----------------------------------------------------------------------------- validation


def _check_images(x: Tensor) -> tuple[int, int, int, int]:
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {shape}; add a batch dimension with x[None]")
    b, c, h, w = x.shape
    return int(b), int(c), int(h), int(w)


def _check_probability(name: str, p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}={p!r}: a probability must lie in [0, 1]")
    return float(p)


def _check_side(name: str, side: int, height: int, width: int, *, minimum: int = 1) -> int:
    if isinstance(side, bool) or not isinstance(side, int) or side < minimum:
        raise ValueError(f"{name}={side!r}: must be a whole number of pixels >= {minimum}")
    if side > min(height, width):
        raise ValueError(
            f"{name}={side} is larger than the {height}x{width} image; use at most {min(height, width)} "
            f"(or sides scaled to the image, see scaled_sides)"
        )
    return side


def _check_range(name: str, bounds: Sequence[float], low: float, high: float, *, closed_low: bool) -> tuple[float, float]:
    """A (low, high) pair with ``low <= high`` inside the allowed interval."""
    try:
        lo, hi = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={bounds!r}: give a (low, high) pair") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name}={bounds!r}: bounds must be finite")
    if lo > hi:
        raise ValueError(f"{name}={bounds!r}: inverted range, low must not exceed high")
    inside_low = lo >= low if closed_low else lo > low
    if not inside_low or hi > high:
        left, right = "[" if closed_low else "(", ")" if math.isinf(high) else "]"
        raise ValueError(f"{name}={bounds!r}: both bounds must lie in {left}{low:g}, {high:g}{right}")
    return lo, hi


def _mask_dtype(x: Tensor) -> torch.dtype:
    """The dtype of the 0/1 box indicators for images ``x``: theirs if floating point."""
    return x.dtype if x.is_floating_point() else torch.float32


def _draw_device(x_device: torch.device, generator: torch.Generator | None) -> torch.device:
    # a generator draws on its own device; the numbers then move to the batch
    return x_device if generator is None else generator.device


# ----------------------------------------------------------------------------- masks


TABLE_MAX_SIDE = 64  # sides up to this use a lookup table of intervals: (65 * 65, 64) floats, 1 MB


@functools.lru_cache(maxsize=32)
def _interval_table(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """((n + 1)^2, n): row ``a * (n + 1) + b`` is the 0/1 indicator of [a, b) on 0 .. n - 1."""
    line = torch.arange(n, device=device)
    ends = torch.arange(n + 1, device=device)
    inside = (line >= ends[:, None, None]) & (line < ends[None, :, None])  # (n + 1, n + 1, n)
    return inside.to(dtype).view((n + 1) * (n + 1), n)


def _interval(start: Tensor, stop: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """(..., n) indicators of [start, stop) on 0 .. n - 1, for integer tensors of any shape (...,)."""
    if n <= TABLE_MAX_SIDE and dtype.is_floating_point:
        # a row lookup: for a batch of a few hundred, each broadcast compare costs more than this
        start, stop = start.clamp(0, n), stop.clamp(0, n)  # [start, stop) clipped to the image
        return _interval_table(n, start.device, dtype)[start * (n + 1) + stop]
    line = torch.arange(n, device=start.device)
    return ((line >= start[..., None]) & (line < stop[..., None])).to(dtype)


def _box_indicators(
    top: Tensor, left: Tensor, bottom: Tensor, right: Tensor, height: int, width: int, dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Row (..., H) and column (..., W) indicators of boxes [top, bottom) x [left, right), clipped."""
    return _interval(top, bottom, height, dtype), _interval(left, right, width, dtype)


def box_mask(
    top: Tensor, left: Tensor, bottom: Tensor, right: Tensor, height: int, width: int, *, dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(..., H, W) mask, 1 on rows [top, bottom) and columns [left, right) of each box, else 0.

    Boxes are integer tensors of any common shape (...,); the mask is the outer product of a row
    indicator (..., H) and a column indicator (..., W), so it costs one multiply per pixel and no
    loop. A float mask by default because it is also the weight of `torch.lerp`.
    """
    in_rows, in_cols = _box_indicators(top, left, bottom, right, height, width, dtype)
    if not dtype.is_floating_point:
        return in_rows[..., :, None] & in_cols[..., None, :]
    return in_rows[..., :, None] * in_cols[..., None, :]  # (..., H, W)


def _fill_boxes(x: Tensor, in_rows: Tensor, in_cols: Tensor, fill: Tensor | float, inplace: bool = False) -> Tensor:
    """``x`` (B, C, H, W) with its boxes set to ``fill`` (scalar, (C, 1, 1) or x-shaped): a copy, or
    ``x`` itself changed if ``inplace``.

    The boxes are given by float 0/1 indicators of their rows (B, K, H) and columns (B, K, W),
    K boxes per image. One pass over the batch: a multiply by the kept pixels for a zero fill (the
    usual one: 0 is the mean of normalised inputs), else a `torch.lerp` towards the fill.
    """
    if isinstance(fill, (int, float)) and fill == 0 and x.is_floating_point():
        # kept = 1 - rows * cols = max(1 - rows, 1 - cols) for 0/1 values: one broadcast op
        kept = torch.maximum(1 - in_rows[:, :, :, None], 1 - in_cols[:, :, None, :])  # (B, K, H, W)
        kept = kept[:, 0] if kept.shape[1] == 1 else kept.amin(dim=1)  # (B, H, W)
        # x * 1 = x and x * 0 = 0 exactly (a negative x gives -0.0, which equals 0.0)
        return x.mul_(kept[:, None]) if inplace else x * kept[:, None]
    mask = in_rows[:, :, :, None] * in_cols[:, :, None, :]  # (B, K, H, W)
    mask = mask[:, 0, None] if mask.shape[1] == 1 else mask.amax(dim=1, keepdim=True)  # (B, 1, H, W)
    fill = torch.as_tensor(fill).to(device=x.device, dtype=x.dtype)
    if not x.is_floating_point():
        filled = torch.where(mask.bool(), fill, x)  # e.g. uint8 images, fill per channel (C, 1, 1)
        return x.copy_(filled) if inplace else filled
    # lerp with a 0/1 weight is exact: weight 0 returns x, weight 1 returns fill (torch computes
    # end - (end - start) * (1 - weight) for weights >= 0.5)
    return x.lerp_(fill, mask) if inplace else torch.lerp(x, fill, mask)


# ----------------------------------------------------------------------------- cutout


@dataclass(frozen=True)
class CutoutDraw:
    """The random numbers of one cutout call: which images, and where each hole is centred."""

    apply: Tensor  # (B,) bool: image b is cut (drawn as U(0, 1) < p)
    centres: Tensor  # (B, holes, 2) long: (row, column), uniform over the image


def draw_cutout(
    batch: int, height: int, width: int, *, holes: int = 1, p: float = 1.0,
    generator: torch.Generator | None = None, device: str | torch.device = "cpu",
) -> CutoutDraw:
    """Draw cutout's random numbers for ``batch`` images of ``height`` x ``width``."""
    device = torch.device(device)
    draw_on = _draw_device(device, generator)
    apply = torch.rand(batch, generator=generator, device=draw_on) < p
    rows = torch.randint(0, height, (batch, holes), generator=generator, device=draw_on)
    cols = torch.randint(0, width, (batch, holes), generator=generator, device=draw_on)
    return CutoutDraw(apply.to(device), torch.stack([rows, cols], dim=-1).to(device))


def cutout_boxes(centres: Tensor, size: int, height: int, width: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(top, left, bottom, right), each (B, holes): squares of side ``size`` clipped at the border."""
    top = centres[..., 0] - size // 2
    left = centres[..., 1] - size // 2
    return (top.clamp(0, height), left.clamp(0, width),
            (top + size).clamp(0, height), (left + size).clamp(0, width))


def cutout(x: Tensor, draw: CutoutDraw, *, size: int, fill: float = 0.0, inplace: bool = False) -> Tensor:
    """Cutout with the given random numbers: a new tensor, or ``x`` itself changed if ``inplace``."""
    b, _, h, w = _check_images(x)
    _check_side("size", size, h, w)
    if draw.apply.shape != (b,) or draw.centres.ndim != 3 or draw.centres.shape[0] != b:
        raise ValueError(
            f"draw shapes apply {tuple(draw.apply.shape)} / centres {tuple(draw.centres.shape)} "
            f"do not match a batch of {b}"
        )
    top, left, bottom, right = cutout_boxes(draw.centres.to(x.device), size, h, w)
    bottom = torch.where(draw.apply.to(x.device)[:, None], bottom, top)  # images left alone get empty boxes
    in_rows, in_cols = _box_indicators(top, left, bottom, right, h, w, _mask_dtype(x))  # (B, holes, H), (B, holes, W)
    return _fill_boxes(x, in_rows, in_cols, fill, inplace)


class Cutout:
    """Batch transform: ``holes`` squares of side ``size``, each image cut with probability ``p``.

    ``Cutout(12, p=0.5)(x)`` on any (B, C, H, W) tensor; pass ``generator`` for draws independent
    of torch's global RNG (without one, `train.fit` seeding makes training runs reproducible).
    ``inplace=True`` overwrites the batch instead of copying it (saves one pass); safe as a
    `Batches` transform, whose batches are fresh tensors.
    """

    def __init__(self, size: int, *, holes: int = 1, p: float = 1.0, fill: float = 0.0,
                 generator: torch.Generator | None = None, inplace: bool = False) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size={size!r}: the side of a hole must be a whole number of pixels >= 1")
        if isinstance(holes, bool) or not isinstance(holes, int) or holes < 1:
            raise ValueError(f"holes={holes!r}: must be a whole number >= 1")
        self.size, self.holes = size, holes
        self.p = _check_probability("p", p)
        self.fill = float(fill)
        self.generator, self.inplace = generator, inplace

    def __call__(self, x: Tensor) -> Tensor:
        b, _, h, w = _check_images(x)
        _check_side("size", self.size, h, w)
        if self.p == 0.0:
            return x
        draw = draw_cutout(b, h, w, holes=self.holes, p=self.p, generator=self.generator, device=x.device)
        return cutout(x, draw, size=self.size, fill=self.fill, inplace=self.inplace)

    def __repr__(self) -> str:
        return f"Cutout(size={self.size}, holes={self.holes}, p={self.p}, fill={self.fill})"


# ----------------------------------------------------------------------------- random erasing


@dataclass(frozen=True)
class ErasingDraw:
    """The random numbers of one random-erasing call, U(0, 1) but ``noise``; ``attempts`` tries per image."""

    apply: Tensor  # (B,) bool: image b is erased (drawn as U(0, 1) < p)
    # (2, B, attempts): the positions of the area fraction within ``scale`` and of log(aspect ratio)
    # within log(``ratio``), one pair per attempt
    area_ratio: Tensor
    # (2, B): where the chosen h x w rectangle goes, top = floor(u * (H - h + 1)), left likewise
    corner: Tensor
    # fill="noise": N(0, 1) values, either (B, C, H, W) (one per pixel, most read nowhere) or 1-D with
    # one value per erased element, in the order of x[mask] (what `RandomErasing` draws: less work)
    noise: Tensor | None = None


def draw_erasing(
    batch: int, *, attempts: int = 10, p: float = 0.5, noise_shape: Sequence[int] | None = None,
    generator: torch.Generator | None = None, device: str | torch.device = "cpu",
) -> ErasingDraw:
    """Draw random erasing's numbers for ``batch`` images; ``noise_shape`` (B, C, H, W) adds noise."""
    device = torch.device(device)
    draw_on = _draw_device(device, generator)
    # one call for all of them: at a batch of 256 the generator's per-call cost is a third of the
    # draw. float32 is exact once widened to the float64 that `_first_fitting_box` computes in.
    u = torch.rand(batch * (2 * attempts + 3), generator=generator, device=draw_on).to(device)
    apply = u[:batch] < p
    corner = u[batch : 3 * batch].view(2, batch)
    area_ratio = u[3 * batch :].view(2, batch, attempts)
    noise = None
    if noise_shape is not None:
        noise = torch.randn(tuple(noise_shape), generator=generator, device=draw_on).to(device)
    return ErasingDraw(apply, area_ratio, corner, noise)


@functools.lru_cache(maxsize=64)
def _erasing_constants(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], device: torch.device,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """float64 constants of `_first_fitting_box`: slope and offset (2, 1, 1) mapping the uniforms to
    (area, log(r) / 2), the signs (2, 1, 1) of log(r) / 2 in h and w, the image sizes (2, 1, 1) and
    the sizes + 1 (2, 1)."""
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    pixels = height * width
    as_tensor = functools.partial(torch.tensor, dtype=torch.float64, device=device)
    slope = as_tensor([pixels * (scale[1] - scale[0]), (log_hi - log_lo) / 2]).view(2, 1, 1)
    offset = as_tensor([pixels * scale[0], log_lo / 2]).view(2, 1, 1)
    sizes = as_tensor([float(height), float(width)]).view(2, 1, 1)
    return slope, offset, as_tensor([1.0, -1.0]).view(2, 1, 1), sizes, (sizes + 1).view(2, 1)


def _first_fitting_box(
    draw: ErasingDraw, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
) -> Tensor:
    """(4, B) long: top, left, height, width of each image's rectangle; all 0 where no attempt fit
    or the image was not chosen.

    All attempts are evaluated at once. h = round(sqrt(area * r)) and w = round(sqrt(area / r)) are
    computed as round(sqrt(area) * exp(+-log(r) / 2)), stacked, so each step is one op on (2, B, T):
    at a batch of a few hundred the cost is the number of ops, not their size.
    """
    slope, offset, signs, sizes, sizes_plus_one = _erasing_constants(height, width, scale, ratio, draw.apply.device)
    # float64 (from the constants' dtype), so that the rounding is the reference's
    area_half_log = torch.addcmul(offset, draw.area_ratio, slope)  # (2, B, T): area, log(r) / 2
    extent = (area_half_log[1] * signs).exp_().mul_(area_half_log[0].sqrt_()).round_()  # (2, B, T): h, w
    fits = extent < sizes  # (2, B, T); strictly, as the authors' code and torchvision
    if height * width * scale[0] * min(ratio[0], 1 / ratio[1]) < 0.3:
        fits.logical_and_(extent >= 1)  # a side can round to 0 only for areas this small
    fits = fits[0].logical_and_(fits[1])  # (B, T); cheaper than a reduction over dim 0
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # (B, 1): argmax returns the first 1
    erased = fits.gather(1, first).squeeze(1).logical_and_(draw.apply)  # (B,)
    extent = extent.gather(2, first[None].expand(2, -1, 1)).squeeze(2)  # (2, B): h, w
    corner = (sizes_plus_one - extent).mul_(draw.corner).floor_()  # (2, B): uniform over where it fits
    return torch.cat([corner, extent]).long().mul_(erased)


def erasing_boxes(
    draw: ErasingDraw, height: int, width: int, *, scale: tuple[float, float], ratio: tuple[float, float],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(top, left, bottom, right, erased), each (B,): the first attempt that fits, per image.

    ``erased`` is False where the image was not chosen (``p``) or no attempt fit (its box is then
    empty, at (0, 0)).
    """
    top, left, h, w = _first_fitting_box(draw, height, width, scale, ratio)
    return top, left, top + h, left + w, h > 0


def random_erasing(
    x: Tensor, draw: ErasingDraw, *, scale: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 3.3), fill: str = "constant", value: float = 0.0,
    mean: Sequence[float] | Tensor | None = None, inplace: bool = False,
) -> Tensor:
    """Random erasing with the given random numbers: a new tensor, or ``x`` itself changed if ``inplace``."""
    b, c, h, w = _check_images(x)
    scale = _check_range("scale", scale, 0.0, 1.0, closed_low=False)
    ratio = _check_range("ratio", ratio, 0.0, math.inf, closed_low=False)
    if fill not in ERASING_FILLS:
        raise ValueError(f"fill={fill!r}: choose one of {', '.join(ERASING_FILLS)}")
    if (draw.apply.shape != (b,) or draw.corner.shape != (2, b) or draw.area_ratio.ndim != 3
            or draw.area_ratio.shape[:2] != (2, b)):
        raise ValueError(
            f"draw shapes apply {tuple(draw.apply.shape)} / corner {tuple(draw.corner.shape)} / area_ratio "
            f"{tuple(draw.area_ratio.shape)} do not match a batch of {b}; expected ({b},), (2, {b}), (2, {b}, attempts)"
        )
    box = _first_fitting_box(draw, h, w, scale, ratio).to(x.device)
    return _erase(x, box, fill=fill, value=value, mean=mean, noise=draw.noise, inplace=inplace)


def _erased_count(box: Tensor, channels: int) -> int:
    """How many elements the (4, B) boxes (top, left, height, width) cover."""
    return channels * int((box[2] * box[3]).sum())


def _inside_box_indicators(box: Tensor, height: int, width: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Row (B, 1, H) and column (B, 1, W) indicators of (4, B) boxes (top, left, height, width)
    that lie inside the image: `_box_indicators` without its clipping, and a square image looks
    rows and columns up in one indexing."""
    if height == width and height <= TABLE_MAX_SIDE:
        index = torch.add(box[2:], box[:2], alpha=height + 2)  # (2, B): start * (n + 1) + (start + length)
        table = _interval_table(height, box.device, dtype)
        in_rows, in_cols = table.index_select(0, index.view(-1)).view(2, -1, 1, height)  # (2, B, 1, n)
        return in_rows, in_cols
    top, left, h, w = box
    in_rows, in_cols = _box_indicators(top, left, top + h, left + w, height, width, dtype)
    return in_rows[:, None], in_cols[:, None]


def _erase(
    x: Tensor, box: Tensor, *, fill: str, value: float, mean: Sequence[float] | Tensor | None,
    noise: Tensor | None, inplace: bool,
) -> Tensor:
    """Random erasing's fill of the (4, B) boxes (top, left, height, width), after the argument checks."""
    _, c, h, w = x.shape
    in_rows, in_cols = _inside_box_indicators(box, h, w, _mask_dtype(x))
    if fill == "noise":
        if noise is not None and noise.shape == x.shape:
            return _fill_boxes(x, in_rows, in_cols, noise, inplace)
        erased = _erased_count(box, c)
        if noise is None or noise.shape != (erased,):
            got = None if noise is None else tuple(noise.shape)
            raise ValueError(f"fill='noise' needs draw.noise of shape {tuple(x.shape)} or ({erased},), got {got}")
        mask = (in_rows[:, 0, :, None] * in_cols[:, 0, None, :]).bool()  # (B, H, W)
        out = x if inplace else x.clone()
        return out.masked_scatter_(mask[:, None].expand_as(x), noise.to(device=x.device, dtype=x.dtype))
    if fill == "mean" and mean is not None:
        means = torch.as_tensor(mean, dtype=torch.float32).flatten()
        if means.shape != (c,):
            raise ValueError(f"mean has {means.numel()} values for {c} channels")
        return _fill_boxes(x, in_rows, in_cols, means.view(c, 1, 1), inplace)
    # "mean" without means: normalised inputs, whose mean is 0
    return _fill_boxes(x, in_rows, in_cols, 0.0 if fill == "mean" else value, inplace)


class RandomErasing:
    """Batch transform: each image erased with probability ``p`` (Zhong et al. 2017 defaults).

    ``RandomErasing(p=0.5, fill="noise")(x)`` on any (B, C, H, W) tensor; ``mean`` (per channel)
    is only needed for ``fill="mean"`` on inputs that are not normalised. ``inplace`` as for `Cutout`.
    """

    def __init__(
        self, *, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.4), ratio: tuple[float, float] = (0.3, 3.3),
        fill: str = "constant", value: float = 0.0, mean: Sequence[float] | None = None, attempts: int = 10,
        generator: torch.Generator | None = None, inplace: bool = False,
    ) -> None:
        self.p = _check_probability("p", p)
        self.scale = _check_range("scale", scale, 0.0, 1.0, closed_low=False)
        self.ratio = _check_range("ratio", ratio, 0.0, math.inf, closed_low=False)
        if fill not in ERASING_FILLS:
            raise ValueError(f"fill={fill!r}: choose one of {', '.join(ERASING_FILLS)}")
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts={attempts!r}: must be a whole number >= 1")
        if not math.isfinite(value):
            raise ValueError(f"value={value!r}: must be finite")
        self.fill, self.value, self.mean, self.attempts = fill, float(value), mean, attempts
        self.generator, self.inplace = generator, inplace

    def __call__(self, x: Tensor) -> Tensor:
        b = _check_images(x)[0]
        if self.p == 0.0:
            return x
        if self.fill == "noise" and not x.is_floating_point():
            raise ValueError(f"fill='noise' needs floating-point images, got {x.dtype}")
        draw = draw_erasing(b, attempts=self.attempts, p=self.p, generator=self.generator, device=x.device)
        box = _first_fitting_box(draw, x.shape[2], x.shape[3], self.scale, self.ratio)
        noise = None
        if self.fill == "noise":
            # noise only for the erased pixels: ~1/10 of a full (B, C, H, W) draw at the defaults
            count = _erased_count(box, x.shape[1])
            noise = torch.randn(count, generator=self.generator, device=_draw_device(x.device, self.generator))
        return _erase(x, box, fill=self.fill, value=self.value, mean=self.mean, noise=noise, inplace=self.inplace)

    def __repr__(self) -> str:
        return (f"RandomErasing(p={self.p}, scale={self.scale}, ratio={self.ratio}, fill={self.fill!r}, "
                f"attempts={self.attempts})")


# ----------------------------------------------------------------------------- robustness


def scaled_sides(height: int, width: int, reference: Sequence[int] = REFERENCE_SIDES, base: int = 28) -> tuple[int, ...]:
    """``reference`` occluder sides (chosen for 28x28 images) scaled to a ``height`` x ``width`` image."""
    factor = min(height, width) / base
    return tuple(min(int(round(s * factor)), min(height, width)) for s in reference)


def occluder_corners(count: int, height: int, width: int, side: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Top-left corners (count,) of ``side``-pixel squares lying inside the image, seeded.

    One pair of U(0, 1) numbers per image is drawn from ``seed`` alone and scaled to the room left
    for each side, so every model, and every call, sees the same occluders.
    """
    _check_side("side", side, height, width, minimum=0)
    u = torch.rand(2, count, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    top = torch.floor(u[0] * (height - side + 1)).long()
    left = torch.floor(u[1] * (width - side + 1)).long()
    return top, left


def occlude(x: Tensor, top: Tensor, left: Tensor, side: int, *, fill: float = 0.0) -> Tensor:
    """``x`` (B, C, H, W) with a ``side``-pixel square at (top[b], left[b]) set to ``fill``."""
    b, _, h, w = _check_images(x)
    _check_side("side", side, h, w, minimum=0)
    if top.shape != (b,) or left.shape != (b,):
        raise ValueError(f"top/left of shape {tuple(top.shape)}/{tuple(left.shape)} do not match a batch of {b}")
    top, left = top.to(x.device), left.to(x.device)
    in_rows, in_cols = _box_indicators(top, left, top + side, left + side, h, w, _mask_dtype(x))
    return _fill_boxes(x, in_rows[:, None], in_cols[:, None], fill)


@dataclass(frozen=True)
class Robustness:
    """Accuracy of each model (fractions) at each occluder side; ``seed`` fixed the positions."""

    sides: tuple[int, ...]
    accuracy: dict[str, tuple[float, ...]]
    seed: int

    def drop(self, name: str, side: int) -> float:
        """Clean accuracy minus accuracy at ``side`` (a fraction; 0.05 = 5 points)."""
        acc = dict(zip(self.sides, self.accuracy[name]))
        clean = acc[0] if 0 in acc else None
        if clean is None:
            raise ValueError("no side 0 (clean) in the evaluation; include 0 in sides")
        return clean - acc[side]

    def to_dict(self) -> dict:
        return {"sides": list(self.sides), "seed": self.seed, "accuracy": {k: list(v) for k, v in self.accuracy.items()}}


Predictor = Callable[[Tensor], Tensor]  # (B, C, H, W) -> class probabilities (B, classes)


def _predict(model: nn.Module | Predictor, x: Tensor, batch_size: int) -> Tensor:
    if isinstance(model, nn.Module):
        from .train import predict_logits

        return predict_logits(model, x, batch_size=batch_size)
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def occlusion_robustness(
    models: Mapping[str, nn.Module | Predictor], inputs: Tensor, labels: Tensor,
    sides: Sequence[int] = REFERENCE_SIDES, *, seed: int = 0, fill: float = 0.0, batch_size: int = 1024,
) -> Robustness:
    """Accuracy of every model on ``inputs`` occluded by one square per image, for each side.

    The occluded inputs are built once per side and fed to every model, so all models are scored
    on identical images. Side 0 is the clean accuracy.
    """
    b, _, h, w = _check_images(inputs)
    if labels.shape != (b,):
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match {b} images")
    if not sides:
        raise ValueError("sides is empty: give occluder sides in pixels, e.g. 0 4 8 12 16")
    for side in sides:
        _check_side("side", side, h, w, minimum=0)
    accuracy: dict[str, list[float]] = {name: [] for name in models}
    for side in sides:
        top, left = occluder_corners(b, h, w, side, seed=seed)
        occluded = occlude(inputs, top, left, side, fill=fill)
        for name, model in models.items():
            predicted = _predict(model, occluded, batch_size).argmax(dim=1).to(labels.device)
            accuracy[name].append((predicted == labels).double().mean().item())
    return Robustness(tuple(sides), {k: tuple(v) for k, v in accuracy.items()}, seed)


@torch.no_grad()
def occlusion_sensitivity(
    model: nn.Module | Predictor, images: Tensor, labels: Tensor, *, patch: int, stride: int = 1,
    fill: float = 0.0, batch_size: int = 1024,
) -> Tensor:
    """Drop in true-class probability (N, rows, cols) as a ``patch`` square slides over each image.

    Entry [n, i, j] is p(y_n | image n) - p(y_n | image n with the square at (i*stride, j*stride)
    set to ``fill``): large where the model looks. All N * rows * cols occluded copies go through
    the model as one batch (in chunks of ``batch_size``).
    """
    n, c, h, w = _check_images(images)
    _check_side("patch", patch, h, w)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride={stride!r}: must be a whole number >= 1")
    if labels.shape != (n,):
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match {n} images")
    tops = torch.arange(0, h - patch + 1, stride)
    lefts = torch.arange(0, w - patch + 1, stride)
    grid_top, grid_left = torch.meshgrid(tops, lefts, indexing="ij")  # (rows, cols) each
    positions = grid_top.numel()
    copies = images[:, None].expand(n, positions, c, h, w).reshape(n * positions, c, h, w)
    occluded = occlude(copies, grid_top.flatten().repeat(n), grid_left.flatten().repeat(n), patch, fill=fill)
    index = labels.to(images.device)[:, None]
    clean = _proba(model, images, batch_size).gather(1, index)  # (N, 1)
    hidden = _proba(model, occluded, batch_size).view(n, positions, -1)  # (N, P, classes)
    hidden = hidden.gather(2, index[:, None].expand(n, positions, 1)).squeeze(2)  # (N, P)
    return (clean - hidden).view(n, tops.numel(), lefts.numel())


def _proba(model: nn.Module | Predictor, x: Tensor, batch_size: int) -> Tensor:
    out = _predict(model, x, batch_size)
    # an nn.Module gives logits; a plain predictor (an ensemble's predict_proba) gives probabilities
    return out.softmax(dim=1) if isinstance(model, nn.Module) else out


# ----------------------------------------------------------------------------- plots


def plot_robustness(robustness: Robustness, path: str | os.PathLike, *, title: str = "") -> str:
    """Accuracy (%) against occluder side, one line per model, saved as PNG."""
    from .report import new_figure, save_figure

    fig, ax = new_figure(figsize=(5.5, 4))
    for name, acc in robustness.accuracy.items():
        ax.plot(robustness.sides, [100 * a for a in acc], marker="o", label=name)
    ax.set_xlabel("occluder side (px)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(list(robustness.sides))
    ax.set_title(title or f"accuracy under a random square occluder (seed {robustness.seed})")
    ax.grid(alpha=0.3)
    ax.legend()
    return str(save_figure(fig, path))


def plot_sensitivity(
    images: Tensor, maps: Mapping[str, Tensor], path: str | os.PathLike, *, patch: int, stride: int = 1,
    titles: Sequence[str] | None = None,
) -> str:
    """Images in the first row, then one row of sensitivity maps per model, saved as PNG.

    ``images`` (N, C, H, W) are shown as they are (normalised is fine); each map (N, rows, cols)
    is drawn at the occluder centres it was measured at, on a shared colour scale.
    """
    from .report import new_figure, save_figure

    n, c, h, w = _check_images(images)
    fig, axes = new_figure(1 + len(maps), n, figsize=(1.7 * n + 1, 1.8 * (1 + len(maps))), squeeze=False)
    limit = max([float(m.abs().max()) for m in maps.values()] + [1e-6])
    for j in range(n):
        shown = images[j].permute(1, 2, 0).cpu().float()
        shown = (shown - shown.min()) / (shown.max() - shown.min()).clamp_min(1e-6)
        axes[0, j].imshow((shown.squeeze(2) if c == 1 else shown).numpy(), cmap="gray")
        if titles is not None:
            axes[0, j].set_title(titles[j], fontsize=8)
    image = None
    for i, (name, grid) in enumerate(maps.items(), start=1):
        rows, cols = grid.shape[1:]
        # cell (r, k) was measured with the occluder centred at (r*stride + patch/2, k*stride + patch/2)
        start, half = patch / 2 - 0.5, stride / 2
        extent = (start - half, start + (cols - 1) * stride + half, start + (rows - 1) * stride + half, start - half)
        for j in range(n):
            image = axes[i, j].imshow(grid[j].cpu().numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, extent=extent)
            axes[i, j].set_xlim(-0.5, w - 0.5)
            axes[i, j].set_ylim(h - 0.5, -0.5)
        axes[i, 0].set_ylabel(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=axes[1:, :].ravel().tolist(), shrink=0.8, label="drop in p(true class)")
    fig.suptitle(f"occlusion sensitivity ({patch}x{patch} grey square, stride {stride})", fontsize=10)
    return str(save_figure(fig, path))
