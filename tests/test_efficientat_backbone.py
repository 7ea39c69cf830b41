"""EfficientAT mn04 as a trainable backbone: its front end preset, its weights, and parity with the frozen encoder.

The parity tests (marked ``shared``) show that ``efficientat_mn04`` built from the AudioSet
weights, before any training step, gives the embedding ``sp4sc probe embed`` gives for the
same ESC-50 clips (one δt = 5 s window = the whole clip):

* float32 log-mels (``LogMel`` of the ``efficientat32k`` preset): within 1e-4 of the largest
  embedding value (float32 rounding; the two paths run the same code on the same samples);
* the training pipeline itself (``SceneDataModule`` -> feature cache, which stores float16
  log-mels -> ``SceneClassifier``): within 2e-3 of the largest value and a cosine above
  0.99999, the float16 rounding of the cached features (measured: 5.5e-4 and 0.9999997).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sp4sc.errors import Sp4scError
from sp4sc.frontend.efficientat_mel import EfficientATMel
from sp4sc.frontend.features import PRESETS, FrontEndConfig, LogMel, frontend_preset
from sp4sc.models import create_model, model_entry
from sp4sc.models.efficientat import EfficientATMobileNet, embedding_dim
from tests.conftest import shared_path

WEIGHTS = ("weights", "efficientat", "mn04_as_mAP_432.pt")
# 5 clips, one per fold, 5 classes of the shared ESC-50 copy (16 kHz FLAC)
CLIPS = ("1-100032-A-0.flac", "2-102414-A-17.flac", "3-100018-A-18.flac", "4-102844-A-49.flac", "5-200334-A-1.flac")


def test_librosa_presets_keep_their_keys_and_digests():
    # the style field is left out of to_dict() at its default: caches and exports made before it keep their names
    assert PRESETS["sp4asc"].digest() == "faf6630339ceb251"
    assert PRESETS["sp4asc16k"].digest() == "dacacd7f66d0abf6"
    assert "style" not in PRESETS["panns"].to_dict()
    cfg = frontend_preset("efficientat32k", duration=5.0)
    assert cfg.to_dict()["style"] == "efficientat" and FrontEndConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.digest() != cfg.replace(style="librosa").digest()
    with pytest.raises(Sp4scError, match="style must be one of"):
        FrontEndConfig("x", 32000, 1024, 800, 320, 128, 0.0, 15000.0, style="kaldi")


@pytest.mark.parametrize("seconds", [0.1, 1.0, 5.0, 10.0])
def test_efficientat_preset_is_efficientats_front_end(seconds):
    cfg = frontend_preset("efficientat32k", duration=seconds)
    wav = torch.randn(2, cfg.n_samples, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        ours = LogMel(cfg)(wav)  # (batch, frames, mels)
        ref = EfficientATMel()(wav).transpose(1, 2)  # the frozen encoder's front end
    assert ours.shape == (2, cfg.n_frames, 128) and cfg.n_frames == 1 + (cfg.n_samples - 1) // 320
    assert torch.equal(ours, ref)
    assert seconds != 10.0 or cfg.n_frames == 1000  # EfficientAT: a 10 s clip gives 1000 frames


def test_backbone_is_the_encoder_network_with_a_new_head():
    torch.manual_seed(0)
    enc = EfficientATMobileNet(0.4).eval()
    m = create_model("efficientat_mn04", n_classes=50).eval()
    assert model_entry("efficientat_mn04").frontend == "efficientat32k"
    own, theirs = m.state_dict(), enc.state_dict()
    assert set(own) == set(theirs)
    assert own["classifier.5.weight"].shape == (50, 512) and theirs["classifier.5.weight"].shape == (527, 512)
    m.load_state_dict({k: (own[k] if k.startswith("classifier.5.") else v) for k, v in theirs.items()}, strict=True)
    x = torch.randn(3, 1, 120, 128)  # (batch, 1, frames, mels): our layout
    with torch.no_grad():
        logits, emb = m.logits_and_features(x)
        _, ref = enc(x.transpose(2, 3))  # EfficientAT's layout (batch, 1, mels, frames)
    assert logits.shape == (3, 50) and emb.shape == (3, embedding_dim(0.4)) == (3, 384)
    torch.testing.assert_close(emb, ref, rtol=0, atol=1e-6)
    assert m.feature_dim == 384


def test_pretrained_errors_are_one_line(tmp_path):
    with pytest.raises(Sp4scError, match="no such file"):
        create_model("efficientat_mn04", pretrained=str(tmp_path / "none.pt"))
    bad = tmp_path / "mn10.pt"
    torch.save(EfficientATMobileNet(1.0).state_dict(), bad)
    with pytest.raises(Sp4scError, match="try --model.backbone efficientat_mn10"):
        create_model("efficientat_mn04", pretrained=str(bad))
    partial = tmp_path / "partial.pt"
    state = EfficientATMobileNet(0.4).state_dict()
    state.pop("features.3.block.0.1.running_mean")
    torch.save(state, partial)
    with pytest.raises(Sp4scError, match="missing keys features.3.block.0.1.running_mean"):  # strict
        create_model("efficientat_mn04", pretrained=str(partial))
    with pytest.raises(Sp4scError, match="bad option"):
        create_model("efficientat_mn04", pretraind="x")


def test_pretrained_is_not_a_rebuild_argument(tmp_path):
    path = tmp_path / "as.pt"
    torch.save(EfficientATMobileNet(0.4).state_dict(), path)
    m = create_model("efficientat_mn04", n_classes=7, pretrained=str(path))
    assert m.pretrained_from == str(path) and "pretrained" not in m.arch_kwargs
    again = create_model(m.arch_name, **m.arch_kwargs)
    again.load_state_dict(m.state_dict(), strict=True)


def _probe_embed(paths: list[Path], weights: Path, tmp_path: Path) -> np.ndarray:
    """``sp4sc probe embed --dt 5`` of the files: one window each, ``(n, 384)``."""
    from sp4sc.cli import main

    out = tmp_path / "probe.npz"
    rc = main(["probe", "embed", "--encoder", "efficientat_mn04", "--ckpt", str(weights), "--dt", "5",
               "--device", "cpu", "--out", str(out), *map(str, paths)])
    assert rc == 0
    z = np.load(out)
    assert list(z["counts"]) == [1] * len(paths)
    return z["embeddings"]


@pytest.fixture(scope="module")
def esc50_subset(tmp_path_factory) -> Path:
    """An ESC-50-layout folder holding 5 clips of the shared copy (its csv rows, the audio linked)."""
    src = shared_path("data", "esc50")
    root = tmp_path_factory.mktemp("esc50")
    (root / "meta").mkdir()
    (root / "audio").mkdir()
    with open(src / "meta" / "esc50.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    keep = [rows[0]] + [r for r in rows[1:] if r[0] in CLIPS]
    assert len(keep) == 1 + len(CLIPS)
    with open(root / "meta" / "esc50.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(keep)
    for name in CLIPS:
        try:
            (root / "audio" / name).symlink_to(src / "audio" / name)
        except OSError:
            shutil.copy(src / "audio" / name, root / "audio" / name)
    return root


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.shared
@pytest.mark.slow
def test_backbone_before_training_equals_probe_embed(esc50_subset, tmp_path):
    from sp4sc.frontend.audio import load_audio

    weights = shared_path(*WEIGHTS)
    paths = [esc50_subset / "audio" / c for c in CLIPS]
    ref = _probe_embed(paths, weights, tmp_path)  # (5, 384)
    m = create_model("efficientat_mn04", n_classes=50, pretrained=str(weights)).eval()
    cfg = frontend_preset("efficientat32k", duration=5.0)
    wav = torch.from_numpy(np.stack([load_audio(p, cfg.sample_rate, cfg.duration) for p in paths]))
    with torch.no_grad():
        emb = m.embed(LogMel(cfg)(wav).unsqueeze(1)).numpy()  # (5, 384)
    assert np.abs(ref).max() > 0.1 and np.isfinite(ref).all()
    assert _rel(emb, ref) <= 1e-4, _rel(emb, ref)
    # and the embeddings tell the clips apart: parity is not two constant vectors
    assert np.linalg.matrix_rank(ref) == len(CLIPS)


@pytest.mark.shared
@pytest.mark.slow
def test_training_pipeline_before_any_step_equals_probe_embed(esc50_subset, tmp_path):
    from sp4sc.data.datamodule import SceneDataModule
    from sp4sc.training.lit import SceneClassifier

    weights = shared_path(*WEIGHTS)
    dm = SceneDataModule(dataset="esc", root=str(esc50_subset), frontend="efficientat32k", duration=5.0, fold=1,
                         batch_size=4, cache_dir=str(tmp_path / "cache"), progress=False)
    dm.prepare_data()
    dm.setup("fit")
    lit = SceneClassifier("efficientat_mn04", backbone_kwargs={"pretrained": str(weights)})
    lit.configure_data(dm.classes, dm.frontend_cfg)
    lit.eval()
    rows: dict[str, np.ndarray] = {}
    for stage, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader())):
        clips = list(dm.clips(stage))
        for batch in loader:
            assert batch["x"].shape[1:] == (1, 500, 128)  # (batch, 1, frames, mels): 5 s at 100 frames/s
            with torch.no_grad():
                emb = lit.backbone.embed(batch["x"].float()).numpy()
            for i, e in zip(batch["index"].tolist(), emb):
                rows[Path(clips[i].path).name] = e
    assert sorted(rows) == sorted(CLIPS)
    got = np.stack([rows[c] for c in CLIPS])
    ref = _probe_embed([esc50_subset / "audio" / c for c in CLIPS], weights, tmp_path)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    print(json.dumps({"max_rel_err": _rel(got, ref), "min_cosine": float(cos.min())}))
    assert _rel(got, ref) <= 2e-3 and cos.min() >= 0.99999  # the float16 rounding of the feature cache
