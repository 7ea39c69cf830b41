"""Audio reading: formats, mono mix, resampling, pad/crop, and errors that name the file."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf

from sp4sc import log
from sp4sc.frontend.audio import load_audio, load_batch
from sp4sc.errors import Sp4scError

SR = 44100


def _tone(n=SR // 2, sr=SR):
    t = np.arange(n) / sr
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize("fmt,subtype,tol", [
    ("WAV", "PCM_16", 1e-4), ("WAV", "PCM_24", 1e-6), ("WAV", "FLOAT", 0.0), ("FLAC", "PCM_16", 1e-4),
    ("FLAC", "PCM_24", 1e-6), ("OGG", "VORBIS", 0.05),
])
def test_formats_round_trip(tmp_path, fmt, subtype, tol):
    x = _tone()
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(str(path), x, SR, format=fmt, subtype=subtype)
    y = load_audio(path, SR)
    assert y.dtype == np.float32 and y.ndim == 1 and y.shape == x.shape
    assert np.abs(y - x).max() <= tol + 1e-9


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = _tone(), np.zeros(SR // 2, dtype=np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], 1), SR, subtype="FLOAT")
    assert np.allclose(load_audio(path, SR), (left + right) / 2)


def test_resampling_is_noted_once(tmp_path, caplog):
    log.reset_notes()
    log.logger.propagate = True  # let caplog see sp4sc's records
    try:
        for i in range(2):
            sf.write(str(tmp_path / f"{i}.wav"), _tone(48000, 48000), 48000, subtype="PCM_16")
        with caplog.at_level(logging.INFO, logger="sp4sc"):
            ys = [load_audio(tmp_path / f"{i}.wav", 16000) for i in range(2)]
    finally:
        log.logger.propagate = False
    assert all(y.shape == (16000,) for y in ys)
    notes = [r for r in caplog.records if "resampling audio from 48000 Hz to 16000 Hz" in r.getMessage()]
    assert len(notes) == 1
    # the 440 Hz tone survives: its peak bin is still at 440 Hz
    spec = np.abs(np.fft.rfft(ys[0]))
    assert abs(np.argmax(spec) * 16000 / len(ys[0]) - 440) < 2


def test_pad_crop_and_far_shorter_warning(tmp_path, caplog):
    path = tmp_path / "short.wav"
    sf.write(str(path), _tone(SR // 10), SR, subtype="PCM_24")  # 0.1 s
    log.logger.propagate = True
    try:
        with caplog.at_level(logging.WARNING, logger="sp4sc"):
            y = load_audio(path, SR, duration=1.0)
    finally:
        log.logger.propagate = False
    assert y.shape == (SR,) and np.all(y[SR // 10 :] == 0)
    assert any("short.wav" in r.getMessage() and "far shorter" in r.getMessage() for r in caplog.records)
    assert load_audio(path, SR, duration=0.05).shape == (SR // 20,)
    batch = load_batch([path, path], SR, 0.2)
    assert batch.shape == (2, int(0.2 * SR)) and batch.dtype == np.float32


def _nan_wav(path):
    x = _tone()
    x[100] = np.nan
    sf.write(str(path), x, SR, subtype="FLOAT")


def _inf_wav(path):
    x = _tone()
    x[5] = np.inf
    sf.write(str(path), x, SR, subtype="FLOAT")


@pytest.mark.parametrize("name,make,message", [
    ("missing.wav", lambda p: None, "no such audio file"),
    ("zero.wav", lambda p: p.write_bytes(b""), "empty \\(0 bytes\\)"),
    ("header.wav", lambda p: p.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(range(200))), "not a readable audio file"),
    ("notes.wav", lambda p: p.write_text("this is a text file, not audio\n" * 5), "looks like a text file"),
    ("empty.wav", lambda p: sf.write(str(p), np.zeros(0, np.float32), SR, subtype="PCM_16"), "no audio samples"),
    ("nan.wav", _nan_wav, "NaN/inf"),
    ("inf.wav", _inf_wav, "NaN/inf"),
])
def test_bad_files_are_named(tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    with pytest.raises(Sp4scError, match=message) as err:
        load_audio(path, SR)
    assert name in str(err.value) and "\n" not in str(err.value)


@pytest.mark.shared
@pytest.mark.slow
def test_all_esc10_clips_decode(esc10_root):
    from sp4sc.data.index import load_index

    idx = load_index("esc", esc10_root)
    lengths = []
    for clip in idx.all_clips():
        x = load_audio(idx.path(clip), SR)
        assert x.dtype == np.float32 and np.isfinite(x).all() and np.abs(x).max() < 1.5  # Vorbis may overshoot 1.0 a little
        lengths.append(len(x) / SR)
    assert len(lengths) == 400 and 3.0 < min(lengths) and max(lengths) < 8.0
