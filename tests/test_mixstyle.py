"""Frequency-MixStyle and time rolling: the statistics they produce, their draws, and the recipe options (off by default)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from sp4sc.data import augment
from sp4sc.data.augment import freq_mixstyle, mix_frequency_stats, roll_time
from sp4sc.errors import Sp4scError
from sp4sc.training.lit import SceneClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_lit import RandomDM, TinyNet, _trainer  # noqa: E402


def _clips(batch: int = 4, frames: int = 50, mels: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # each clip its own per-mel level and spread, as different devices would give
    level = torch.randn(batch, 1, 1, mels, generator=g, dtype=torch.float64) * 10 - 40
    spread = torch.rand(batch, 1, 1, mels, generator=g, dtype=torch.float64) * 5 + 1
    return level + spread * torch.randn(batch, 1, frames, mels, generator=g, dtype=torch.float64)


def test_mixed_clip_has_the_mixed_per_frequency_statistics():
    x = _clips()
    perm = torch.tensor([2, 0, 3, 1])
    lam = torch.tensor([0.0, 0.25, 0.7, 1.0], dtype=torch.float64)
    out = mix_frequency_stats(x, perm, lam, eps=0.0)
    mu, sd = x.mean(dim=(1, 2)), x.std(dim=(1, 2))  # (batch, mels): over time, per frequency bin
    lam_ = lam.view(-1, 1)
    torch.testing.assert_close(out.mean(dim=(1, 2)), lam_ * mu + (1 - lam_) * mu[perm])
    torch.testing.assert_close(out.std(dim=(1, 2)), lam_ * sd + (1 - lam_) * sd[perm])
    # lam = 1 keeps the clip; lam = 0 gives it its partner's statistics and keeps its own shape over time
    torch.testing.assert_close(out[3], x[3])
    z_in = (x[0] - x[0].mean(dim=1, keepdim=True)) / x[0].std(dim=1, keepdim=True)
    z_out = (out[0] - out[0].mean(dim=1, keepdim=True)) / out[0].std(dim=1, keepdim=True)
    torch.testing.assert_close(z_out, z_in)
    # with the default eps the statistics are the same to eps / variance
    torch.testing.assert_close(mix_frequency_stats(x, perm, lam).mean(dim=(1, 2)), out.mean(dim=(1, 2)))


def test_statistics_are_detached_in_the_gradient():
    x = _clips(batch=3).requires_grad_(True)
    perm, lam = torch.tensor([1, 2, 0]), torch.tensor([0.3, 0.5, 0.9], dtype=torch.float64)
    out = mix_frequency_stats(x, perm, lam, eps=0.0)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    with torch.no_grad():
        sd = x.std(dim=(1, 2), keepdim=True)
        sig_mix = lam.view(-1, 1, 1, 1) * sd + (1 - lam.view(-1, 1, 1, 1)) * sd[perm]
    torch.testing.assert_close(x.grad, w * sig_mix / sd)  # only the normalised signal carries gradient


def test_p_zero_is_identity_and_draws_follow_the_generator():
    x = _clips().float()
    assert freq_mixstyle(x, 0.0, 0.3) is x
    a = freq_mixstyle(x, 1.0, 0.3, torch.Generator().manual_seed(5))
    b = freq_mixstyle(x, 1.0, 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.allclose(a, x)
    # one draw per batch: mixed with probability p
    mixed = sum(not torch.equal(freq_mixstyle(x, 0.4, 0.3, torch.Generator().manual_seed(s)), x) for s in range(300))
    assert 0.3 < mixed / 300 < 0.5
    with pytest.raises(Sp4scError, match="alpha"):
        freq_mixstyle(x, 1.0, 0.0)


def test_roll_time_rolls_each_clip_circularly_within_the_bound():
    x = torch.arange(3 * 20 * 4, dtype=torch.float32).view(3, 1, 20, 4)
    assert roll_time(x, 0) is x
    for seed in range(20):
        out = roll_time(x, 3, torch.Generator().manual_seed(seed))
        for i in range(3):
            shifts = [s for s in range(-3, 4) if torch.equal(out[i], torch.roll(x[i], s, dims=1))]
            assert len(shifts) == 1, (seed, i)
    seen = {int(torch.randint(-3, 4, (1,), generator=torch.Generator().manual_seed(s))) for s in range(50)}
    assert seen == set(range(-3, 4))


def test_recipe_options_are_off_by_default_and_checked(tmp_path, monkeypatch):
    m = SceneClassifier(TinyNet())
    assert (m.hparams["mixstyle_p"], m.hparams["roll_sec"]) == (0.0, 0.0)
    with pytest.raises(Sp4scError, match="mixstyle_p"):
        SceneClassifier(TinyNet(), mixstyle_p=1.5)
    with pytest.raises(Sp4scError, match="roll_sec"):
        SceneClassifier(TinyNet(), roll_sec=-0.1)
    calls = {"mix": 0, "roll": []}

    def spy_mix(x, p, alpha, g=None):
        calls["mix"] += 1
        assert (p, alpha) == (0.4, 0.3)
        return x

    def spy_roll(x, frames, g=None):
        calls["roll"].append(frames)
        return x

    monkeypatch.setattr("sp4sc.training.lit.freq_mixstyle", spy_mix)
    monkeypatch.setattr("sp4sc.training.lit.roll_time", spy_roll)
    trainer = dict(logger=False, enable_checkpointing=False, max_epochs=1, limit_val_batches=0)
    pl.seed_everything(0, verbose=False)
    _trainer(tmp_path, **trainer).fit(SceneClassifier(TinyNet()), datamodule=RandomDM())
    assert calls == {"mix": 0, "roll": []}  # off by default
    _trainer(tmp_path, **trainer).fit(SceneClassifier(TinyNet(), mixstyle_p=0.4, roll_sec=0.1), datamodule=RandomDM())
    # every training batch: 48 clips in batches of 8; demo front end: 0.1 s = 6.25 frames of 16 ms -> 6
    assert calls["mix"] == 6 and calls["roll"] == [6] * 6
    assert augment.freq_mixstyle is not spy_mix  # the library function itself is untouched


def test_training_with_mixstyle_and_rolling_runs(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = SceneClassifier(TinyNet(), mixstyle_p=1.0, mixstyle_alpha=0.3, roll_sec=0.05, mixup_alpha=0.2,
                            spec_augment=[4, 1, 2, 1])
    _trainer(tmp_path, logger=False, enable_checkpointing=False, max_epochs=1).fit(model, datamodule=RandomDM())
    assert all(torch.isfinite(p).all() for p in model.backbone.parameters())
