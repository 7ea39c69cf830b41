"""BatchNorm folding: a copy, no BatchNorm left, same function to 1e-5 (random inputs and real ESC-10 log-mels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sp4sc.frontend.features import LogMel, frontend_preset
from sp4sc.models.fold import fold_batchnorm, is_folded
from sp4sc.models import create_model, list_models, model_entry
from sp4sc.models._common import MelAffine

ALL = list_models()


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters (some tiny variances, where eps matters)."""
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.rand(n, generator=g) * 4 - 2)
            var = torch.rand(n, generator=g) * 3 + 0.05
            var[::7] = 1e-4  # comparable to eps = 1e-5: dropping eps would show
            mod.running_var.copy_(var)
            mod.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            mod.bias.data.copy_(torch.rand(n, generator=g) * 2 - 1)
            mod.num_batches_tracked.fill_(1000)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _model(name: str, n_mels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_model(name, n_mels=n_mels)
    randomise_bn(m, seed=1)
    if name.startswith("efficientat"):
        # 17 conv-BN layers deep: the statistics above (scales up to ~45) overflow float32 on the way
        # through; milder ones (scales 0.35-2.1, every channel still different) keep it finite
        g = torch.Generator().manual_seed(1)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) * 0.4 - 0.2)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) * 1.5 + 0.5)
    # the input BN works on dB values: give it statistics of dB inputs (CP-Mobile has no input BN)
    if hasattr(m, "bn0"):
        m.bn0.running_mean.uniform_(-60, -20)
        m.bn0.running_var.uniform_(20, 200)
    return m.eval()


@pytest.mark.parametrize("name", ALL)
def test_fold_equals_unfolded_on_random_inputs(name):
    cfg = frontend_preset(model_entry(name).frontend)
    m = _model(name, cfg.n_mels)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    f = fold_batchnorm(m)
    # the original is untouched, the copy has no BatchNorm and is in eval mode
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert not is_folded(m) and is_folded(f) and not f.training
    if hasattr(m, "bn0"):
        assert isinstance(f.bn0, MelAffine) and f.bn0.weight.shape == (cfg.n_mels,)
    assert f.arch_kwargs["folded"] is True and m.arch_kwargs["folded"] is False
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in f.modules())
    torch.manual_seed(2)
    frames = cfg.frames_for(1.0)
    x = torch.randn(2, 1, frames, cfg.n_mels) * 15 - 40
    with torch.no_grad():
        y, yf = m(x), f(x)
    assert _rel_err(yf, y) < 1e-5
    # the folded structure is what create_model(..., folded=True) builds: it saves and reloads strictly
    g = create_model(f.arch_name, **f.arch_kwargs)
    g.load_state_dict(f.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(g.eval()(x), yf)


def test_fold_is_exact_in_float64_and_eps_matters():
    m = _model("sp4sc", 64).double()
    f = fold_batchnorm(m)
    x = torch.randn(1, 1, 32, 64, dtype=torch.float64) * 15 - 40
    with torch.no_grad():
        assert _rel_err(f(x), m(x)) < 1e-6  # BN variances of 1e-4 amplify rounding by ~1e2 per block
    # dropping eps (what SP4ASC's merge_conv_bn does) changes the output measurably on the same model
    no_eps = _model("sp4sc", 64).double()
    for mod in no_eps.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eps = 0.0
    with torch.no_grad():
        assert _rel_err(fold_batchnorm(no_eps)(x), m(x)) > 1e-4


def test_sp4sc_block_fold_scales_both_kernels_and_adds_one_bias():
    m = _model("sp4sc", 256)
    f = fold_batchnorm(m)
    bn = m.conv2.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(f.conv2.sp_conv1.weight, m.conv2.sp_conv1.weight * scale.view(-1, 1, 1, 1))
    torch.testing.assert_close(f.conv2.sp_conv2.weight, m.conv2.sp_conv2.weight * scale.view(-1, 1, 1, 1))
    torch.testing.assert_close(f.conv2.sp_conv2.bias, bn.bias - bn.running_mean * scale)
    assert f.conv2.sp_conv1.bias is None and f.conv2.ch_conv1.bias is None
    assert sum(p.numel() for p in f.parameters()) == 62_474


def _esc10_logmels(root, cfg, n=2) -> torch.Tensor:
    import soundfile as sf

    clips = sorted((root / "audio").glob("*.ogg"))[:: max(1, 400 // n)][:n]
    assert clips, f"no clips under {root / 'audio'}"
    waves = []
    for path in clips:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
        wav = wav.mean(axis=1)
        if sr != cfg.sample_rate:
            import librosa

            wav = librosa.resample(wav, orig_sr=sr, target_sr=cfg.sample_rate).astype(np.float32)
        wav = np.pad(wav, (0, max(0, cfg.n_samples - len(wav))))[: cfg.n_samples]
        waves.append(wav)
    with torch.no_grad():
        return LogMel(cfg)(torch.from_numpy(np.stack(waves))).unsqueeze(1)  # (n, 1, frames, mels)


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("frontend", ["sp4asc", "panns"])
def test_fold_equals_unfolded_on_real_esc10_logmels(esc10_root, frontend):
    cfg = frontend_preset(frontend, duration=3.0 if frontend == "sp4asc" else 2.0)
    x = _esc10_logmels(esc10_root, cfg)
    assert torch.isfinite(x).all() and x.std() > 1.0
    for name in ALL:
        if model_entry(name).frontend != frontend:
            continue
        m = _model(name, cfg.n_mels)
        # input BN statistics of the real features, so activations have a realistic range
        m.bn0.running_mean.copy_(x.mean(dim=(0, 1, 2)))
        m.bn0.running_var.copy_(x.var(dim=(0, 1, 2)))
        with torch.no_grad():
            y, yf = m(x), fold_batchnorm(m)(x)
        assert _rel_err(yf, y) < 1e-5, name
