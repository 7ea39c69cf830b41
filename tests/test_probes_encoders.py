"""PaSST and BEATs bundles with random weights (no download), checkpoints, and a short PaSST sweep.

Slow on CPU (86-90 M-parameter transformers): kept to a few short windows.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch

from sp4sc.errors import Sp4scError
from sp4sc.probes.encoders import BEATS_ITER3_CFG, BeatsEncoder, PasstEncoder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def no_network():
    """Any attempt to open a connection fails the test (building must never download)."""
    mp = pytest.MonkeyPatch()

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket, "create_connection", refuse)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def passt(no_network):
    return PasstEncoder().build(random_init=True, seed=0)


@pytest.fixture(scope="module")
def beats(no_network):
    return BeatsEncoder().build(random_init=True, seed=0)


def test_passt_random_init_embedding(passt):
    assert passt.sample_rate == 32000 and passt.dim == 768 and passt.random_init
    assert not passt.model.training and not any(p.requires_grad for p in passt.model.parameters())
    wav = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))  # 0.5 s: 4 patch columns
    emb = passt.embed(wav)
    assert emb.shape == (2, 768) and emb.dtype == torch.float32
    # the embedding is what PaSST's head reads (mean of the cls and distillation tokens), and in
    # eval mode there is no random masking: hear21passt's own forward gives the same vector
    with torch.inference_mode():
        _, features = passt.model.net(passt.model.mel(wav).unsqueeze(1))
    torch.testing.assert_close(emb, features.float(), rtol=1e-4, atol=1e-4)
    with pytest.raises(Sp4scError, match="longer than PaSST"):
        passt.embed(torch.zeros(1, int(10.5 * 32000)))


def test_passt_checkpoint_layout_and_wrong_keys(passt, tmp_path):
    from sp4sc.models.checkpoint import check_state_dict

    # the released layout: PaSST's own state dict, optionally under "model" with a "net." prefix
    own = passt.model.net.state_dict()
    state = PasstEncoder()._state_from_checkpoint({"model": {f"net.{k}": v for k, v in own.items()}}, tmp_path)
    assert state.keys() == own.keys()
    check_state_dict(passt.model.net, state, "in-memory")  # strict load of the same weights
    bad = tmp_path / "bad.pt"
    torch.save({"cls_token": torch.zeros(1, 1, 768), "blocks.0.attn.qkv.wieght": torch.zeros(4, 4)}, bad)
    target = PasstEncoder()
    target.model = passt.model  # skip a second 86 M build; a refused load changes nothing
    with pytest.raises(Sp4scError) as err:
        target.load_checkpoint(bad)
    assert "blocks.0.attn.qkv.wieght" in str(err.value) and "missing keys" in str(err.value)


def test_beats_random_init_3s_gives_144_patches(beats):
    assert beats.sample_rate == 16000 and beats.dim == 768
    wav = 0.1 * torch.randn(1, 48000, generator=torch.Generator().manual_seed(0))
    assert beats.patch_outputs(wav).shape == (1, 144, 768)  # 298 fbank frames x 128 bins -> 18 x 8 patches
    short = wav[:, :8000]  # 0.5 s: 48 frames -> 3 x 8 patches
    patches = beats.patch_outputs(short)
    assert patches.shape == (1, 24, 768)
    torch.testing.assert_close(beats.embed(short), patches.mean(dim=1), rtol=1e-4, atol=1e-4)


TINY_BEATS = {**BEATS_ITER3_CFG, "encoder_layers": 1, "encoder_embed_dim": 64, "encoder_ffn_embed_dim": 128,
              "encoder_attention_heads": 4, "embed_dim": 32, "conv_pos": 16, "conv_pos_groups": 4}


def test_beats_checkpoint_cfg_and_keys(tmp_path, no_network):
    src = BeatsEncoder()
    src.model = src._build(TINY_BEATS).eval()
    path = tmp_path / "BEATs_tiny.pt"
    torch.save({"cfg": TINY_BEATS, "model": src.model.state_dict()}, path)
    loaded = BeatsEncoder().load_checkpoint(path)  # the file's cfg decides the architecture
    assert loaded.dim == 64 and not loaded.random_init
    wav = 0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want = src.model(wav, wav_lens=torch.ones(1))[0].mean(dim=1)
    torch.testing.assert_close(loaded.embed(wav), want, rtol=1e-4, atol=1e-4)
    state = dict(src.model.state_dict())
    state["layer_norm.wieght"] = state.pop("layer_norm.weight")
    bad = tmp_path / "bad.pt"
    torch.save({"cfg": TINY_BEATS, "model": state}, bad)
    with pytest.raises(Sp4scError) as err:
        BeatsEncoder().load_checkpoint(bad)
    assert "layer_norm.weight" in str(err.value) and "layer_norm.wieght" in str(err.value)
    # cfg keys BEATs does not know are dropped (and recorded), not passed on
    extra = tmp_path / "extra.pt"
    torch.save({"cfg": {**TINY_BEATS, "train_only_key": 2}, "model": src.model.state_dict()}, extra)
    assert BeatsEncoder().load_checkpoint(extra).ignored_cfg_keys == ["train_only_key"]


def test_passt_random_init_sweep_two_clips(passt, tmp_path):
    from sp4sc.data.toy import ensure_toy_dataset
    from sp4sc.probes.probe import ProbeConfig
    from sp4sc.probes.sweep import SweepConfig, run_sweep, write_outputs

    root = ensure_toy_dataset(tmp_path / "toy", n_per_class_device=2, duration=2.0)
    cfg = SweepConfig(
        encoder="passt", dataset="toy", root=str(root), dts=(1.0, 2.0), random_init=True, seeds=1,
        max_clips=1, cache_dir=str(tmp_path / "cache"), cost_windows=1, device="cpu",
        aggregations=("mean-embedding", "mean-prediction"), probe=ProbeConfig(epochs=1),
    )
    result = run_sweep(cfg, bundle=passt)  # the module's random-init PaSST: no second build
    paths = write_outputs(result, tmp_path / "out")
    saved = json.loads(open(paths["json"]).read())
    assert saved["encoder"] == "passt" and saved["random_init"] is True and "RANDOM-INIT" in saved["note"]
    assert saved["clips"] == {"train": 1, "eval": 1}
    assert {(r["dt"], r["aggregation"]) for r in saved["rows"]} == {
        (d, a) for d in (1.0, 2.0) for a in ("mean-embedding", "mean-prediction")
    }
    cost = {c["dt"]: c for c in saved["cost"]}
    # PaSST-S at 1 s: 12 x 9 patches + 2 tokens through 12 blocks: tens of GFLOPs, more at 2 s
    assert 5 < cost[1.0]["gflops_per_window"] < cost[2.0]["gflops_per_window"] < 200
    assert all(np.isfinite(c["windows_per_s"]) and c["windows_per_s"] > 0 for c in saved["cost"])
    assert saved["encoder_params"] > 80_000_000
    assert "RANDOM-INIT" in open(paths["table"]).read()
    # an embedded (cached) window equals PaSST applied to that slice of the resampled clip
    from sp4sc.frontend.audio import load_audio
    from sp4sc.probes.cache import EmbeddingCache, EmbeddingKey

    cache = EmbeddingCache(tmp_path / "cache", EmbeddingKey("passt", passt.identity, 1.0, 1.0, 32000), 768)
    name = sorted(cache.entries)[0]
    stored = cache.get(name)
    assert stored.shape == (2, 768)  # 2 s clip, δt = 1 s
    wave = load_audio(root / name, 32000)
    direct = passt.embed(torch.from_numpy(wave[32000:64000][None])).numpy()
    np.testing.assert_allclose(stored[1:2], direct, rtol=1e-4, atol=1e-4)
