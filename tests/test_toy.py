"""The toy dataset: TAU2020 layout, 24-bit 44.1 kHz, deterministic, atomic."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import soundfile as sf

from sp4sc.constants import SCENES
from sp4sc.data.index import load_index
from sp4sc.data.toy import ensure_toy_dataset, synth_clip, toy_name
from sp4sc.errors import Sp4scError


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_layout_format_and_determinism(tmp_path):
    a = ensure_toy_dataset(tmp_path / "a", n_per_class_device=2, duration=0.25)
    b = ensure_toy_dataset(tmp_path / "b", n_per_class_device=2, duration=0.25)
    assert _digest(a) == _digest(b)
    idx = load_index("tau2020", a)  # checks every listed file exists
    assert idx.classes == SCENES
    assert [len(idx.split(s)) for s in ("train", "evaluate", "test")] == [30, 30, 30]
    assert {c.device for c in idx.all_clips()} == {"a", "b", "c"}
    assert {c.scene for c in idx.split("train")} == set(SCENES)
    assert not {c.city for c in idx.split("train")} & {c.city for c in idx.split("evaluate")}
    ev = load_index("tau2021eval", a)
    assert len(ev.split("test")) == 30 and ev.split("test")[0].label is None
    info = sf.info(str(a / idx.split("train")[0].path))
    assert (info.samplerate, info.subtype, info.channels, info.frames) == (44100, "PCM_24", 1, 11025)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary folder left behind


def test_other_parameters_and_seeds(tmp_path):
    a = ensure_toy_dataset(tmp_path / "a", n_per_class_device=2, duration=0.25)
    with pytest.raises(Sp4scError, match="other parameters"):
        ensure_toy_dataset(a, n_per_class_device=2, duration=0.5)
    (tmp_path / "junk").mkdir()
    with pytest.raises(Sp4scError, match="not a toy dataset"):
        ensure_toy_dataset(tmp_path / "junk")
    c = ensure_toy_dataset(tmp_path / "c", n_per_class_device=2, duration=0.25, seed=1)
    assert _digest(a) != _digest(c)
    assert toy_name(12, 2.0, 0) != toy_name(12, 2.0, 1) != toy_name(12, 1.0, 0)


def test_default_root_in_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SP4SC_CACHE", str(tmp_path))
    root = ensure_toy_dataset(n_per_class_device=2, duration=0.25)
    assert root == tmp_path / toy_name(2, 0.25, 0) and (root / "meta.csv").exists()
    assert ensure_toy_dataset(n_per_class_device=2, duration=0.25) == root  # reused


def test_scenes_differ_and_devices_filter():
    n = 22050
    clips = {s: synth_clip(s, "a", n, np.random.default_rng(0)) for s in SCENES}
    assert all(np.isfinite(x).all() and x.dtype == np.float32 and 0 < np.abs(x).max() < 1 for x in clips.values())

    def band_energy(x):
        spec = np.abs(np.fft.rfft(x)) ** 2
        edges = np.linspace(0, len(spec), 9).astype(int)
        return np.log10([spec[a:b].sum() + 1e-12 for a, b in zip(edges, edges[1:])])

    profiles = np.array([band_energy(x) for x in clips.values()])
    assert np.min([np.abs(p - q).max() for i, p in enumerate(profiles) for q in profiles[i + 1 :]]) > 0.1
    # device c is band-limited: far less energy above 10 kHz than device a
    a = synth_clip("park", "a", n, np.random.default_rng(1))
    c = synth_clip("park", "c", n, np.random.default_rng(1))
    hi = lambda x: (np.abs(np.fft.rfft(x / np.sqrt(np.mean(x**2)))) ** 2)[int(10000 / 44100 * n) :].sum()  # noqa: E731
    assert hi(c) < 0.1 * hi(a)
