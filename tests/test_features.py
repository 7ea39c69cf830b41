"""Log-mel front ends: shapes, configs, and parity with librosa on real ESC-10 audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sp4sc.errors import Sp4scError
from sp4sc.frontend.features import PRESETS, FrontEndConfig, LogMel, frontend_preset

ESC_CLIPS = ("1-100032-A-0.ogg", "1-116765-A-41.ogg", "2-109505-A-21.ogg", "3-151080-A-20.ogg", "4-175945-A-38.ogg")


def librosa_logmel(x: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    import librosa

    s = librosa.feature.melspectrogram(
        y=x.astype(np.float64), sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
        win_length=cfg.win_length, window="hann", center=True, pad_mode="reflect", power=2.0,
        n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max, htk=False, norm="slaney",
    )
    return librosa.power_to_db(s, ref=1.0, amin=1e-10, top_db=None).T  # (frames, mels)


@pytest.mark.parametrize("name,shape", [("sp4asc", (431, 256)), ("panns", (1001, 64)), ("demo", (126, 64))])
def test_preset_shapes(name, shape):
    cfg = frontend_preset(name)
    x = torch.randn(1, cfg.n_samples) * 0.1
    y = LogMel(cfg)(x)
    assert y.shape == (1, *shape) and y.dtype == torch.float32
    assert (cfg.n_frames, cfg.n_mels) == shape


@pytest.mark.shared
@pytest.mark.parametrize("name", ["sp4asc", "panns"])
def test_parity_with_librosa_on_esc10(esc10_root, name):
    from sp4sc.frontend.audio import load_audio

    cfg = frontend_preset(name, duration=5.0)
    logmel = LogMel(cfg)
    worst = 0.0
    for clip in ESC_CLIPS:
        x = load_audio(esc10_root / "audio" / clip, cfg.sample_rate, cfg.duration)
        ours = logmel(torch.from_numpy(x)[None])[0].numpy()
        ref = librosa_logmel(x, cfg)
        assert ours.shape == ref.shape
        worst = max(worst, float(np.abs(ours - ref).max()))
    # The bar is 0.01 dB; a float32 FFT misses it on quiet bins (0.036 dB on 1-100032-A-0).
    assert worst <= 0.01, worst


def test_parity_quiet_and_silent_input():
    cfg = frontend_preset("sp4asc", duration=1.0)
    rng = np.random.default_rng(0)
    x = np.zeros(cfg.n_samples, dtype=np.float32)
    x[: cfg.n_samples // 2] = 1e-4 * rng.standard_normal(cfg.n_samples // 2)  # quiet noise then digital silence
    ours = LogMel(cfg)(torch.from_numpy(x)[None])[0].numpy()
    ref = librosa_logmel(x, cfg)
    assert np.abs(ours - ref).max() <= 0.01
    assert ours.min() == pytest.approx(-100.0)  # the amin floor


def test_batch_equals_single_clips_and_chunking():
    cfg = frontend_preset("demo")
    x = torch.randn(5, cfg.n_samples) * 0.1
    batched = LogMel(cfg)(x)
    small_chunks = LogMel(cfg, cpu_chunk_frames=1)(x)
    single = torch.cat([LogMel(cfg)(x[i : i + 1]) for i in range(5)])
    assert torch.allclose(batched, single, atol=1e-4)
    assert torch.allclose(batched, small_chunks, atol=1e-4)
    assert LogMel(cfg)(x[0]).shape == (1, cfg.n_frames, cfg.n_mels)  # 1-D input


def test_logmel_survives_dtype_casts():
    cfg = frontend_preset("demo", duration=0.5)
    m = LogMel(cfg).float()
    assert m.window.dtype == torch.float64
    assert m(torch.randn(1, cfg.n_samples)).dtype == torch.float32
    assert "window" not in m.state_dict() and "mel_fb" not in m.state_dict()


def test_config_digest_and_dict():
    a = frontend_preset("sp4asc")
    assert a.digest() == a.replace(name="other").digest()  # the name does not change features
    assert a.digest() != a.replace(duration=5.0).digest()
    assert FrontEndConfig.from_dict(a.to_dict()) == a
    assert hash(a) == hash(FrontEndConfig.from_dict(a.to_dict()))
    with pytest.raises(Sp4scError, match="unknown keys.*'nfft'"):
        FrontEndConfig.from_dict({**a.to_dict(), "nfft": 1})
    with pytest.raises(Sp4scError, match="f_max"):
        a.replace(f_max=30000.0)
    with pytest.raises(Sp4scError, match="unknown front end 'spasc'"):
        frontend_preset("spasc")
    assert set(PRESETS) >= {"sp4asc", "panns", "demo"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_mel_filterbank_matches_librosa(name):
    import librosa

    from sp4sc.frontend.features import mel_filterbank

    cfg = PRESETS[name]
    ref = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max,
                              htk=False, norm="slaney", dtype=np.float64).T
    ours = mel_filterbank(cfg)
    assert ours.shape == (cfg.n_fft // 2 + 1, cfg.n_mels) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= 1e-7 * np.abs(ref).max() + 1e-9
