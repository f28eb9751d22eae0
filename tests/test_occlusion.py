"""Cutout, random erasing and occlusion robustness against per-image references of the papers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from ensemblekit.data import Batches
from ensemblekit.occlusion import (
    Cutout, CutoutDraw, ErasingDraw, RandomErasing, box_mask, cutout, draw_cutout, draw_erasing, occluder_corners,
    occlusion_robustness, occlusion_sensitivity, random_erasing, scaled_sides,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- references


def cutout_reference(image: torch.Tensor, size: int, apply: bool, centres, fill: float) -> torch.Tensor:
    """DeVries & Taylor's per-image `Cutout.__call__` (their repo, util/cutout.py), with the centres
    given instead of drawn by np.random.randint, and an exact side for odd sizes."""
    out = image.clone()
    if not apply:
        return out
    _, h, w = image.shape
    mask = np.ones((h, w), np.float32)
    for y, x in centres:
        y1 = np.clip(y - size // 2, 0, h)
        y2 = np.clip(y - size // 2 + size, 0, h)
        x1 = np.clip(x - size // 2, 0, w)
        x2 = np.clip(x - size // 2 + size, 0, w)
        mask[y1:y2, x1:x2] = 0.0
    out[:, torch.from_numpy(mask == 0)] = fill
    return out


def erasing_reference(image, apply, area_u, ratio_u, top_u, left_u, scale, ratio, fill_values):
    """Zhong et al.'s released ``RandomErasing.__call__`` (their repo, transforms.py; as torchvision
    and timm) for one image, with its uniforms given, the aspect ratio log-uniform and a retry budget."""
    out = image.clone()
    if not apply:
        return out
    _, h, w = image.shape
    s_l, s_h = scale
    for a, r in zip(area_u, ratio_u):
        target_area = h * w * (s_l + (s_h - s_l) * float(a))
        aspect_ratio = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * float(r))
        h_e, w_e = round(math.sqrt(target_area * aspect_ratio)), round(math.sqrt(target_area / aspect_ratio))
        if 1 <= h_e < h and 1 <= w_e < w:
            # their random.randint(0, h - h_e), from a uniform
            y_e, x_e = math.floor(float(top_u) * (h - h_e + 1)), math.floor(float(left_u) * (w - w_e + 1))
            out[:, y_e : y_e + h_e, x_e : x_e + w_e] = fill_values[:, y_e : y_e + h_e, x_e : x_e + w_e]
            return out
    return out


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("height, width", [(5, 9), (32, 32), (70, 40)], ids=["small", "table", "compare"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_box_mask_equals_a_plain_loop_for_any_boxes(height, width, dtype):
    """Lookup-table (sides <= 64) and compare paths alike, boxes reaching outside the image or empty."""
    g = gen(3)
    top, bottom = torch.randint(-5, height + 5, (2, 40), generator=g)
    left, right = torch.randint(-5, width + 5, (2, 40), generator=g)
    mask = box_mask(top, left, bottom, right, height, width, dtype=dtype)
    assert mask.shape == (40, height, width) and mask.dtype == dtype
    for i in range(40):
        expected = torch.zeros(height, width, dtype=dtype)
        t, l = max(int(top[i]), 0), max(int(left[i]), 0)
        expected[t : max(int(bottom[i]), t), l : max(int(right[i]), l)] = 1
        assert torch.equal(mask[i], expected), i
    two_d = box_mask(top.view(4, 10), left.view(4, 10), bottom.view(4, 10), right.view(4, 10), height, width)
    assert torch.equal(two_d.view(40, height, width), box_mask(top, left, bottom, right, height, width))


# ----------------------------------------------------------------------------- identity at p = 0


def test_p_zero_is_the_identity():
    x = torch.randn(64, 3, 16, 16)
    assert torch.equal(Cutout(8, p=0.0, generator=gen())(x), x)
    assert torch.equal(RandomErasing(p=0.0, fill="noise", generator=gen())(x), x)
    # the functional core with nothing applied as well, even with boxes that would fit
    no = torch.zeros(64, dtype=torch.bool)
    assert torch.equal(cutout(x, CutoutDraw(no, torch.full((64, 2, 2), 8)), size=8), x)
    draw = draw_erasing(64, p=1.0, generator=gen())
    assert torch.equal(random_erasing(x, ErasingDraw(no, draw.area_ratio, draw.corner)), x)
    # and p = 1 always changes every image (a hole of side 8 always covers pixels)
    changed = (Cutout(8, p=1.0, generator=gen())(x) != x).flatten(1).any(1)
    assert changed.all()


# ----------------------------------------------------------------------------- statistics


def erased_boxes(x_out: torch.Tensor):
    """Per image: erased pixel count, bounding-box height and width (inputs were ones, fill 0)."""
    erased = (x_out[:, 0] == 0)  # (B, H, W)
    rows, cols = erased.any(2), erased.any(1)
    count = erased.flatten(1).sum(1)
    height, width = rows.sum(1), cols.sum(1)
    return count, height, width


def test_random_erasing_area_and_aspect_follow_the_ranges():
    h = w = 48
    scale, ratio = (0.1, 0.3), (0.5, 2.0)
    x = torch.ones(4000, 1, h, w)
    out = RandomErasing(p=1.0, scale=scale, ratio=ratio, generator=gen(1))(x)
    count, height, width = erased_boxes(out)
    done = count > 0
    assert done.all()  # every rectangle drawn here fits
    count, height, width = count[done].double(), height[done].double(), width[done].double()
    assert torch.equal(count, height * width)  # one solid rectangle
    # h and w are sqrt(area * r) and sqrt(area / r) rounded: some h*, w* within half a pixel of
    # them must have an area and an aspect ratio inside the ranges
    area = h * w
    assert ((height - 0.5) * (width - 0.5) <= scale[1] * area).all()
    assert ((height + 0.5) * (width + 0.5) >= scale[0] * area).all()
    assert ((height - 0.5) / (width + 0.5) <= ratio[1]).all()
    assert ((height + 0.5) / (width - 0.5) >= ratio[0]).all()
    fraction = count / area
    assert fraction.min() < scale[0] + 0.02 and fraction.max() > scale[1] - 0.02  # the range is covered
    aspect = height / width
    assert aspect.log().mean().abs() < 0.05  # log-uniform on a range symmetric in log: centred at 1
    assert aspect.min() < 0.6 and aspect.max() > 1.7


def test_random_erasing_probability_and_cutout_area():
    x = torch.ones(4000, 1, 28, 28)
    erased = (RandomErasing(p=0.3, generator=gen(2))(x) == 0).flatten(1).any(1).float().mean().item()
    assert abs(erased - 0.3) < 0.03  # at the defaults 96% of attempts fit: 10 leave ~1e-14 unerased
    out = Cutout(9, p=0.6, generator=gen(3))(x)
    count, height, width = erased_boxes(out)
    assert abs((count > 0).float().mean().item() - 0.6) < 0.03
    assert count.max() == 81 and torch.equal(count, height * width)
    # clipped at the border: all sides from 5 (centre on the edge) to 9 appear
    assert set(height[count > 0].tolist()) == {5, 6, 7, 8, 9}
    inside = (height == 9) & (width == 9)
    assert abs(inside[count > 0].float().mean().item() - (20 / 28) ** 2) < 0.03  # centres 4..23 of 28


# ----------------------------------------------------------------------------- randomness


@pytest.mark.parametrize("make", [
    lambda g: Cutout(6, holes=2, generator=g),
    lambda g: RandomErasing(p=1.0, fill="noise", generator=g),
])
def test_draws_differ_across_images_and_repeat_for_a_seed(make):
    x = torch.zeros(32, 3, 20, 20) + 5.0  # identical images
    a, b, c = make(gen(7))(x), make(gen(7))(x), make(gen(8))(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    masks = {tuple((img[0] != 5.0).flatten().tolist()) for img in a}
    assert len(masks) > 28  # each image its own box
    # two calls of one transform continue the stream: different draws
    t = make(gen(7))
    assert not torch.equal(t(x), t(x))


def test_global_seed_makes_training_transform_reproducible():
    x = torch.zeros(16, 1, 12, 12)
    torch.manual_seed(0)
    a = Cutout(4)(x)
    torch.manual_seed(0)
    assert torch.equal(Cutout(4)(x), a)


# ----------------------------------------------------------------------------- against the papers


@pytest.mark.parametrize("fill", [-1.5, 0.0])  # a zero fill is a multiply, any other a lerp
@pytest.mark.parametrize("size,holes,shape", [(8, 1, (3, 32, 32)), (7, 3, (1, 28, 28)), (1, 2, (2, 5, 9)), (9, 1, (1, 9, 12))])
def test_cutout_equals_per_image_reference(size, holes, shape, fill):
    x = torch.randn(50, *shape, generator=gen(0))
    draw = draw_cutout(50, shape[1], shape[2], holes=holes, p=0.7, generator=gen(1))
    out = cutout(x, draw, size=size, fill=fill)
    for b in range(50):
        expected = cutout_reference(x[b], size, bool(draw.apply[b]), draw.centres[b].tolist(), fill)
        assert torch.equal(out[b], expected), f"image {b}"
    assert not torch.equal(out, x)


@pytest.mark.parametrize("fill,value,given_mean", [
    ("constant", 3.0, True), ("constant", 0.0, True), ("noise", 0.0, True), ("mean", 0.0, True), ("mean", 0.0, False),
])  # a zero fill (value 0, or "mean" without means) takes a path of its own: a multiply
@pytest.mark.parametrize("scale,ratio,shape", [
    ((0.02, 0.4), (0.3, 3.3), (3, 32, 32)),  # square: rows and columns from one table lookup
    ((0.2, 0.9), (0.1, 1.0), (1, 11, 17)),  # not square, and many images where no attempt fits
    ((0.02, 0.4), (0.3, 3.3), (2, 70, 90)),  # sides over 64: indicators by comparison
])
def test_random_erasing_equals_per_image_reference(fill, value, given_mean, scale, ratio, shape):
    b = 200
    x = torch.randn(b, *shape, generator=gen(0))
    draw = draw_erasing(b, attempts=5, p=0.8, noise_shape=x.shape, generator=gen(1))
    mean = torch.arange(shape[0], dtype=torch.float32) + 0.25 if given_mean else torch.zeros(shape[0])
    out = random_erasing(x, draw, scale=scale, ratio=ratio, fill=fill, value=value,
                         mean=mean.tolist() if given_mean else None)
    for i in range(b):
        if fill == "noise":
            values = draw.noise[i]
        elif fill == "mean":
            values = mean.view(-1, 1, 1).expand(shape)
        else:
            values = torch.full(shape, value)
        expected = erasing_reference(x[i], bool(draw.apply[i]), draw.area_ratio[0, i], draw.area_ratio[1, i],
                                     draw.corner[0, i], draw.corner[1, i], scale, ratio, values)
        assert torch.equal(out[i], expected), f"image {i}"
    changed = (out != x).flatten(1).any(1)
    assert changed.sum() > 20  # the comparison covered erased images too
    if scale[0] >= 0.2:  # and chosen images where no attempt fit, left untouched
        assert (draw.apply & ~changed).sum() > 5


def test_integer_images_get_the_same_boxes_as_float_ones():
    x = torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8, generator=gen(0))
    draw = draw_erasing(64, p=0.7, generator=gen(1))
    as_int = random_erasing(x, draw, fill="mean", mean=[10, 20, 30])
    as_float = random_erasing(x.float(), draw, fill="mean", mean=[10, 20, 30])
    assert as_int.dtype == torch.uint8 and torch.equal(as_int.float(), as_float)
    cut = draw_cutout(64, 12, 12, holes=2, generator=gen(2))
    assert torch.equal(cutout(x, cut, size=5).float(), cutout(x.float(), cut, size=5))  # zero fill
    assert (as_int != x).any()


def test_transforms_do_not_modify_their_input_and_work_in_batches():
    images = torch.randint(0, 256, (40, 1, 10, 10), dtype=torch.uint8)
    fill = 100.0  # far outside the normalised range, easy to spot
    batches = Batches(images, torch.zeros(40, dtype=torch.long), batch_size=16, transform=Cutout(4, fill=fill))
    for x, _ in batches.epoch(0):
        assert ((x == fill).flatten(1).sum(1) > 0).all()
    x = torch.randn(8, 2, 10, 10)
    before = x.clone()
    RandomErasing(p=1.0)(x)
    Cutout(3)(x)
    assert torch.equal(x, before)


# ----------------------------------------------------------------------------- robustness


class Recorder(nn.Module):
    """A linear model that remembers every input it was shown."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(64, 4)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        return self.linear(x.flatten(1))


def test_robustness_uses_identical_occluders_for_every_model():
    x = torch.randn(300, 1, 8, 8, generator=gen(0))
    y = torch.randint(0, 4, (300,), generator=gen(1))
    a, b = Recorder(0), Recorder(1)
    sides = (0, 2, 5)
    result = occlusion_robustness({"a": a, "b": b}, x, y, sides, seed=3, batch_size=128)
    assert len(a.seen) == len(b.seen) == 3 * 3  # 3 sides x 3 chunks
    for seen_a, seen_b in zip(a.seen, b.seen):
        assert torch.equal(seen_a, seen_b)
    # each occluder is a whole side x side square inside the image, set to the fill (0)
    occluded = torch.cat(a.seen[6:9])
    differs = (occluded != x)[:, 0]
    assert torch.equal(differs.flatten(1).sum(1), torch.full((300,), 25))
    assert torch.equal(torch.cat(a.seen[:3]), x)  # side 0: clean
    # positions depend on the seed only: a model scored alone gets the same numbers
    alone = occlusion_robustness({"b": Recorder(1)}, x, y, sides, seed=3)
    assert alone.accuracy["b"] == result.accuracy["b"]
    expected = (b.linear(occluded.flatten(1)).argmax(1) == y).double().mean().item()
    assert result.accuracy["b"][2] == pytest.approx(expected)
    other = occlusion_robustness({"b": Recorder(1)}, x, y, sides, seed=4)
    assert other.accuracy["b"][0] == result.accuracy["b"][0]


def test_occluder_positions_are_uniform_inside_the_image():
    top, left = occluder_corners(20000, 28, 20, 12, seed=0)
    assert top.min() == 0 and top.max() == 16 and left.min() == 0 and left.max() == 8
    counts = torch.bincount(left, minlength=9).double()
    assert (counts / counts.mean() - 1).abs().max() < 0.1
    assert torch.equal(occluder_corners(50, 28, 20, 12, seed=5)[0], occluder_corners(50, 28, 20, 12, seed=5)[0])


def test_sensitivity_equals_a_loop_over_positions():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 9 * 7, 5))
    images = torch.randn(3, 2, 9, 7, generator=gen(0))
    labels = torch.tensor([0, 3, 4])
    maps = occlusion_sensitivity(model, images, labels, patch=3, stride=2, fill=0.5)
    assert maps.shape == (3, 4, 3)
    with torch.no_grad():
        for n in range(3):
            clean = model(images[n : n + 1]).softmax(1)[0, labels[n]]
            for i, top in enumerate(range(0, 7, 2)):
                for j, left in enumerate(range(0, 5, 2)):
                    hidden = images[n].clone()
                    hidden[:, top : top + 3, left : left + 3] = 0.5
                    drop = clean - model(hidden[None]).softmax(1)[0, labels[n]]
                    assert maps[n, i, j].item() == pytest.approx(drop.item(), abs=1e-6)


def test_scaled_sides():
    assert scaled_sides(28, 28) == (0, 4, 8, 12, 16)
    assert scaled_sides(8, 8) == (0, 1, 2, 3, 5)
    assert scaled_sides(32, 32) == (0, 5, 9, 14, 18)
    assert scaled_sides(3, 100) == (0, 0, 1, 1, 2)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call,needle", [
    (lambda: Cutout(40)(torch.zeros(2, 1, 28, 28)), "size=40"),
    (lambda: Cutout(0), "size=0"),
    (lambda: Cutout(4, p=1.5), "p=1.5"),
    (lambda: Cutout(4, p=-0.1), "p=-0.1"),
    (lambda: Cutout(4, holes=0), "holes=0"),
    (lambda: Cutout(4)(torch.zeros(1, 28, 28)), "(1, 28, 28)"),
    (lambda: RandomErasing(p=2), "p=2"),
    (lambda: RandomErasing(scale=(0.4, 0.1)), "inverted"),
    (lambda: RandomErasing(scale=()), "scale=()"),
    (lambda: RandomErasing(scale=(0.0, 0.5)), "scale=(0.0, 0.5)"),
    (lambda: RandomErasing(scale=(0.1, 1.5)), "scale=(0.1, 1.5)"),
    (lambda: RandomErasing(ratio=(3.0, 0.3)), "ratio=(3.0, 0.3)"),
    (lambda: RandomErasing(ratio=(0.0, 2.0)), "ratio=(0.0, 2.0)"),
    (lambda: RandomErasing(fill="zeros"), "fill='zeros'"),
    (lambda: RandomErasing(attempts=0), "attempts=0"),
    (lambda: RandomErasing()(torch.zeros(3, 4, 1, 28, 28)), "(3, 4, 1, 28, 28)"),
    (lambda: occlusion_robustness({}, torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), (0, 4, 12)), "side=12"),
    (lambda: occlusion_robustness({}, torch.zeros(4, 8, 8), torch.zeros(4, dtype=torch.long)), "(4, 8, 8)"),
    (lambda: occlusion_sensitivity(nn.Identity(), torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), patch=9), "patch=9"),
])
def test_bad_input_names_the_value(call, needle):
    with pytest.raises(ValueError) as info:
        call()
    assert needle in str(info.value)


# ----------------------------------------------------------------------------- CLI


def test_cli_runs_end_to_end_on_digits(tmp_path, capsys):
    from ensemblekit.cli import main

    out = tmp_path / "out.json"
    code = main(["occlusion", "--dataset", "digits", "--model", "mlp", "--hidden", "64", "--epochs", "2",
                 "--quiet", "--plots", str(tmp_path), "--json", str(out), "--sensitivity-images", "3"])
    assert code == 0
    payload = json.loads(out.read_text())
    assert [r["name"] for r in payload["rows"]] == ["plain", "cutout", "erasing"]
    assert payload["robustness"]["sides"] == [0, 1, 2, 3, 5]
    assert (tmp_path / "robustness.png").stat().st_size > 1000
    assert (tmp_path / "sensitivity.png").stat().st_size > 1000
    assert main(["occlusion", "--dataset", "digits", "--sides", "0", "12", "--quiet"]) == 2
    assert "side=12" in capsys.readouterr().err
