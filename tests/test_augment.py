"""SpecAugment stripes (SP4ASC semantics), seeded test-time use, and mixup."""

from __future__ import annotations

import pytest
import torch

from sp4sc.data.augment import SpecAugment, mixup, mixup_draw
from sp4sc.errors import Sp4scError


def _x(b=8, t=50, f=20):
    return torch.randn(b, 1, t, f, generator=torch.Generator().manual_seed(0)) + 5.0


def test_identity_in_eval_mode_and_active_in_training():
    aug = SpecAugment(20, 2, 8, 2)
    x = _x()
    aug.eval()
    assert aug(x) is x
    aug.train()
    torch.manual_seed(0)
    y = aug(x)
    assert y.shape == x.shape
    assert not torch.equal(y, x)


def test_stripes_have_sp4asc_widths_and_counts():
    # zero fill makes the dropped cells visible (inputs are ~5, never 0)
    t, f, tw, fw = 60, 30, 10, 6
    aug = SpecAugment(tw, 2, 0, 0, fill="zero").train()
    torch.manual_seed(1)
    y = aug(_x(b=400, t=t, f=f))
    dropped_frames = (y[:, 0] == 0).all(dim=2)  # (B, T): whole time rows zeroed
    per_example = dropped_frames.sum(1)
    assert per_example.max() <= 2 * (tw - 1)  # two stripes of at most tw-1 frames
    assert (per_example == 0).any() and per_example.float().mean() > 2  # widths drawn from 0..tw-1
    assert not (y[:, 0] == 0).all(dim=1).any()  # no frequency stripes asked
    aug = SpecAugment(0, 0, fw, 3, fill="zero").train()
    y = aug(_x(b=400, t=t, f=f))
    per_example = (y[:, 0] == 0).all(dim=1).sum(1)
    assert per_example.max() <= 3 * (fw - 1)


def test_mean_fill_uses_each_examples_mel_bin_mean():
    aug = SpecAugment(30, 1, 0, 0, fill="mean").train()
    x = _x(b=4)
    torch.manual_seed(3)
    y = aug(x)
    changed = (y != x).any(dim=3)[:, 0]  # (B, T)
    mean = x.mean(dim=2)  # (B, 1, F)
    for b in range(4):
        for t in torch.nonzero(changed[b]).flatten():
            assert torch.allclose(y[b, 0, t], mean[b, 0])


def test_width_larger_than_input_is_clamped():
    aug = SpecAugment(128, 2, 32, 2).train()
    y = aug(_x(b=3, t=9, f=5))  # 1 s demo-like input shorter than the stripe width
    assert y.shape == (3, 1, 9, 5) and torch.isfinite(y).all()


def test_seeded_generator_repeats_in_eval_mode():
    aug = SpecAugment(20, 2, 8, 2).eval()
    x = _x()
    a = aug(x, generator=torch.Generator().manual_seed(7))
    b = aug(x, generator=torch.Generator().manual_seed(7))
    c = aug(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    assert not torch.equal(aug(x, force=True), x)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(Sp4scError, match="four non-negative"):
        SpecAugment(-1, 2, 3, 4)
    with pytest.raises(Sp4scError, match="4 numbers"):
        SpecAugment.from_list([1, 2, 3])
    with pytest.raises(Sp4scError, match="fill"):
        SpecAugment(1, 1, 1, 1, fill="noise")
    assert SpecAugment.from_list(None) is None


def test_mixup_is_a_convex_pairing():
    x = torch.arange(6, dtype=torch.float32).view(6, 1)
    y = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).float()
    xm, ym = mixup(x, y, 0.2, torch.Generator().manual_seed(0))
    assert torch.allclose(ym.sum(1), torch.ones(6))
    # every mixed target is lam * own + (1 - lam) * partner with one lam for the batch
    lam = None
    for i in range(6):
        for j in range(6):
            if i == j:
                continue
            cand = (xm[i, 0] - x[j, 0]) / (x[i, 0] - x[j, 0])
            if torch.allclose(ym[i], cand * y[i] + (1 - cand) * y[j], atol=1e-5):
                lam = cand if lam is None else lam
    assert lam is not None and 0 <= float(lam) <= 1
    xm2, ym2 = mixup(x, y, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(xm, xm2) and torch.equal(ym, ym2)
    assert mixup(x, y, 0.0)[0] is x


def test_mixup_draw_is_the_draw_mixup_makes():
    """mixup_draw() is the permutation and weight mixup() itself draws from the same generator."""
    x = torch.randn(5, 1, 7, 3)
    y = torch.nn.functional.one_hot(torch.arange(5) % 2, 2).float()
    xm, ym = mixup(x, y, 1.0, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    perm, lam = mixup_draw(5, 1.0, g)
    assert sorted(perm.tolist()) == list(range(5)) and 0.0 <= lam <= 1.0
    assert torch.equal(xm, x * lam + x[perm] * (1.0 - lam)) and torch.equal(ym, y * lam + y[perm] * (1.0 - lam))
    # and it moves the generator as mixup does: the next draws agree
    g2 = torch.Generator().manual_seed(3)
    mixup(x, y, 1.0, g2)
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=g2))
