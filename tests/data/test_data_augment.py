"""Tests for zooscape.data.augment: determinism, identities, content preservation, composition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zooscape.data.augment import build_augment, random_crop, random_hflip


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(b: int = 6, c: int = 3, h: int = 7, w: int = 9) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=_gen(123)) + 0.5  # strictly positive: padding zeros are visible


def test_crop_deterministic_given_generator_state():
    x = _batch()
    assert torch.equal(random_crop(x, 2, _gen(0)), random_crop(x, 2, _gen(0)))
    assert not torch.equal(random_crop(x, 2, _gen(0)), random_crop(x, 2, _gen(1)))


def test_crop_padding_zero_is_identity():
    x = _batch()
    assert torch.equal(random_crop(x, 0, _gen(5)), x)


def test_crop_is_a_per_sample_shift_of_the_zero_padded_input():
    x, p = _batch(b=16), 3
    out = random_crop(x, p, _gen(7))
    padded = F.pad(x, (p, p, p, p))
    offsets = set()
    for b in range(x.shape[0]):  # slow path: search all offsets for each sample
        hits = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(out[b], padded[b, :, dy : dy + x.shape[2], dx : dx + x.shape[3]])
        ]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 1  # offsets differ between samples


def test_flip_twice_with_same_state_is_identity_and_flips_whole_samples():
    x = _batch(b=32)
    y = random_hflip(x, _gen(3))
    assert torch.equal(random_hflip(y, _gen(3)), x)
    flipped = [torch.equal(y[b], x[b].flip(-1)) for b in range(32)]
    kept = [torch.equal(y[b], x[b]) for b in range(32)]
    assert all(f or k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < 32
    assert torch.equal(random_hflip(x, _gen(3), p=0.0), x)
    assert torch.equal(random_hflip(x, _gen(3), p=1.0), x.flip(-1))


def test_build_augment_composes_in_order_and_validates():
    x = _batch()
    aug = build_augment(["crop", "flip"], padding=2, flip_p=0.5)
    g1, g2 = _gen(11), _gen(11)
    expected = random_hflip(random_crop(x, 2, g2), g2, 0.5)
    assert torch.equal(aug(x, g1), expected)
    assert torch.equal(build_augment("crop+flip", padding=2)(x, _gen(11)), expected)
    assert torch.equal(build_augment([])(x, _gen(0)), x)
    with pytest.raises(ValueError, match=r"'rotate'.*crop.*flip"):
        build_augment(["crop", "rotate"])
    with pytest.raises(ValueError, match="strength"):
        build_augment(["crop"], strength=2)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\].*\(4, 64\)"):
        aug(torch.zeros(4, 64), _gen(0))


def test_augment_preserves_dtype_and_device():
    x = (torch.rand(4, 1, 5, 5, generator=_gen(0)) * 255).to(torch.uint8)
    out = build_augment(["crop", "flip"], padding=1)(x, _gen(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape and out.device == x.device
