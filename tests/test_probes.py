"""Probes, fast part: windowing, embedding cache, extraction, checkpoints, probe and aggregation.

Uses the tiny FakeEncoder (8 kHz, 16-d); PaSST and BEATs are in test_probes_encoders.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from sp4sc.frontend.audio import load_audio, write_wav
from sp4sc.errors import Sp4scError
from sp4sc.probes.cache import EmbeddingCache, EmbeddingKey
from sp4sc.probes.extract import embed_clips
from sp4sc.probes.fake import FakeEncoder
from sp4sc.probes.probe import AGGREGATIONS, ProbeConfig, clip_predictions, fit_and_score, majority_vote
from sp4sc.probes.windows import cut_windows, n_windows, window_samples, window_starts

DTS = (1.0, 2.0, 3.0, 5.0, 10.0)
# Expected window counts with hop = δt (see sp4sc.probes.windows for the rule).
EXPECTED = {
    10.0: {1.0: 10, 2.0: 5, 3.0: 3, 5.0: 2, 10.0: 1},
    5.0: {1.0: 5, 2.0: 3, 3.0: 2, 5.0: 1, 10.0: 1},
    7.2: {1.0: 7, 2.0: 4, 3.0: 2, 5.0: 1, 10.0: 1},
}


@pytest.mark.parametrize("seconds", sorted(EXPECTED))
@pytest.mark.parametrize("sr", [16000, 32000])
def test_window_counts_and_shapes(seconds, sr):
    wave = np.random.default_rng(0).standard_normal(int(round(seconds * sr))).astype(np.float32)
    for dt in DTS:
        win = window_samples(dt, sr)
        w = cut_windows(wave, win, win)
        assert w.shape == (EXPECTED[seconds][dt], win), (seconds, dt)
        assert n_windows(len(wave), win, win) == EXPECTED[seconds][dt]
        # each window is the audio slice, zero-padded at the end
        for i, start in enumerate(window_starts(len(wave), win, win)):
            piece = wave[start : start + win]
            np.testing.assert_array_equal(w[i, : len(piece)], piece)
            assert not w[i, len(piece) :].any()


def test_window_rule_edges():
    # tail of exactly half a window is kept, just under half is dropped
    assert window_starts(1500, 1000, 1000) == [0, 1000]
    assert window_starts(1499, 1000, 1000) == [0]
    # a clip shorter than half a window still gives one zero-padded window
    w = cut_windows(np.ones(300, dtype=np.float32), 1000, 1000)
    assert w.shape == (1, 1000) and w[0, :300].all() and not w[0, 300:].any()
    # overlapping hop: only the first window running past the end is considered
    assert window_starts(5000, 2000, 500) == [0, 500, 1000, 1500, 2000, 2500, 3000, 3500]
    assert window_starts(5000, 2000, 3000) == [0, 3000]
    with pytest.raises(Sp4scError):
        window_samples(0, 16000)
    with pytest.raises(Sp4scError):
        cut_windows(np.zeros((2, 10), dtype=np.float32), 4, 4)


def test_cache_key_changes_with_dt_hop_checkpoint():
    base = EmbeddingKey("passt", "sha256:" + "a" * 64, 1.0, 1.0, 32000)
    variants = [
        EmbeddingKey("passt", "sha256:" + "a" * 64, 2.0, 1.0, 32000),  # δt
        EmbeddingKey("passt", "sha256:" + "a" * 64, 1.0, 0.5, 32000),  # hop
        EmbeddingKey("passt", "sha256:" + "b" * 64, 1.0, 1.0, 32000),  # checkpoint
        EmbeddingKey("passt", "random-init-seed0", 1.0, 1.0, 32000),  # random init
        EmbeddingKey("beats", "sha256:" + "a" * 64, 1.0, 1.0, 32000),  # encoder
    ]
    digests = {base.digest()} | {v.digest() for v in variants}
    assert len(digests) == 1 + len(variants)
    assert base.digest() == EmbeddingKey("passt", "sha256:" + "a" * 64, 1.0, 1.0, 32000).digest()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three 44.1 kHz clips of 10 s, 5 s and 7.2 s."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(1)
    names = []
    for i, sec in enumerate((10.0, 5.0, 7.2)):
        name = f"c{i}.wav"
        write_wav(root / name, (0.2 * rng.standard_normal(int(round(sec * 44100)))).astype(np.float32), 44100)
        names.append(name)
    return root, names


@pytest.fixture(scope="module")
def fake():
    return FakeEncoder().build(random_init=True, seed=0)


def test_embedded_window_equals_encoder_on_slice(clips, fake):
    root, names = clips
    for dt in (1.0, 3.0, 10.0):
        embs, stats = embed_clips(fake, root, names, dt=dt, batch_size=4)
        for name, e, sec in zip(names, embs, (10.0, 5.0, 7.2)):
            assert e.shape == (EXPECTED[sec][dt], fake.dim)
            wave = load_audio(root / name, fake.sample_rate)
            win = window_samples(dt, fake.sample_rate)
            starts = window_starts(len(wave), win, win)
            last = len(starts) - 1
            piece = np.zeros(win, dtype=np.float32)
            seg = wave[starts[last] : starts[last] + win]
            piece[: len(seg)] = seg
            direct = fake.embed(torch.from_numpy(piece[None])).numpy()[0]
            np.testing.assert_allclose(e[last], direct, rtol=1e-5, atol=1e-5)
        assert stats.computed == 3 and stats.windows == sum(len(e) for e in embs)


def test_cache_resumes_and_invalidates(clips, fake, tmp_path):
    root, names = clips
    first, s1 = embed_clips(fake, root, names[:2], dt=2.0, cache_dir=tmp_path, batch_size=3, chunk_clips=1)
    assert s1.computed == 2 and s1.cached == 0
    # a later run with one more clip reuses the two cached ones (resumption)
    again, s2 = embed_clips(fake, root, names, dt=2.0, cache_dir=tmp_path, batch_size=3)
    assert s2.cached == 2 and s2.computed == 1
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    # another hop is another cache entry
    _, s3 = embed_clips(fake, root, names, dt=2.0, hop=1.0, cache_dir=tmp_path, batch_size=3)
    assert s3.cached == 0 and s3.computed == 3
    # a file whose mtime changed is embedded again
    p = root / names[0]
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _, s4 = embed_clips(fake, root, names, dt=2.0, cache_dir=tmp_path, batch_size=3)
    assert s4.computed == 1 and s4.cached == 2
    # the manifest records each file once and matches its key
    cache = EmbeddingCache(tmp_path, EmbeddingKey(fake.name, fake.identity, 2.0, 2.0, fake.sample_rate), fake.dim)
    assert sorted(cache.entries) == sorted(names)


def test_checkpoint_wrong_keys_named(fake, tmp_path):
    good = tmp_path / "good.pt"
    torch.save({k: v.clone() for k, v in fake.model.state_dict().items()}, good)
    loaded = FakeEncoder().load_checkpoint(good)
    assert not loaded.random_init and loaded.identity.startswith("sha256:")
    x = torch.randn(2, 4000)
    torch.testing.assert_close(loaded.embed(x), fake.embed(x))
    state = dict(fake.model.state_dict())
    state["proj.wieght"] = state.pop("proj.weight")
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(Sp4scError) as err:
        FakeEncoder().load_checkpoint(bad)
    assert "proj.weight" in str(err.value) and "proj.wieght" in str(err.value)
    # the checkpoint hash is part of the identity (hence of the cache key)
    other = tmp_path / "other.pt"
    torch.save({k: v + 1 for k, v in fake.model.state_dict().items()}, other)
    assert FakeEncoder().load_checkpoint(other).identity != loaded.identity


def test_checkpoint_with_code_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"proj.weight": torch.zeros(16, 16), "obj": ProbeConfig()}, evil)
    with pytest.raises(Sp4scError, match="refused"):
        FakeEncoder().load_checkpoint(evil)


def test_majority_vote_tie_break():
    p = np.array([[0.6, 0.4, 0.0], [0.1, 0.9, 0.0], [0.2, 0.1, 0.7]])
    # one vote each; class 1 has the largest mean probability (0.467)
    assert majority_vote(p) == 1
    assert majority_vote(np.array([[0.1, 0.9], [0.2, 0.8], [0.9, 0.1]])) == 1


def _clusters(rng, n_clips, n_classes, dim, windows, noise):
    centres = rng.standard_normal((n_classes, dim)) * 3
    labels = np.arange(n_clips) % n_classes
    embs = [centres[y] + noise * rng.standard_normal((windows, dim)) for y in labels]
    return [e.astype(np.float32) for e in embs], labels


def test_probe_learns_and_aggregations_agree_on_separable_data():
    rng = np.random.default_rng(0)
    tr, ytr = _clusters(rng, 60, 3, 8, 3, 0.5)
    ev, yev = _clusters(np.random.default_rng(0), 30, 3, 8, 3, 0.5)
    scores = fit_and_score(tr, ytr, ev, yev, 3, ProbeConfig(epochs=15, lr=0.05), seed=0)
    assert set(scores) == set(AGGREGATIONS)
    for a in AGGREGATIONS:
        assert scores[a]["accuracy"] > 0.9, (a, scores[a])
    assert scores["majority-vote"]["logloss"] is None
    assert 0 <= scores["mean-prediction"]["logloss"] < 0.5


def test_clip_predictions_mean_prediction_is_mean_of_window_probs():
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 3).eval()
    embs = [np.random.default_rng(i).standard_normal((n, 4)).astype(np.float32) for i, n in enumerate((1, 4, 2))]
    pred, probs = clip_predictions("mean-prediction", None, module, embs)
    for e, p in zip(embs, probs):
        want = torch.softmax(module(torch.from_numpy(e)), dim=-1).mean(0).detach().numpy()
        np.testing.assert_allclose(p, want, rtol=1e-5)
    assert (pred == probs.argmax(1)).all()
    with pytest.raises(Sp4scError):
        clip_predictions("median", None, module, embs)


def test_probe_config_rejects_unknown_keys():
    with pytest.raises(Sp4scError, match="unknown keys"):
        ProbeConfig.from_dict({"epochs": 3, "epoch": 4})
    with pytest.raises(Sp4scError):
        ProbeConfig(epochs=0)
