"""SceneDataModule: batches per the contract, lazy memory-mapped items, keep_on_device, seeds, ESC folds."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import soundfile as sf
import torch

from sp4sc.constants import SCENES
from sp4sc.data.datamodule import SceneDataModule
from sp4sc.data.toy import ensure_toy_dataset
from sp4sc.errors import Sp4scError


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return ensure_toy_dataset(tmp_path_factory.mktemp("toy") / "toy", n_per_class_device=2, duration=0.5)


def _dm(toy_root, tmp_path, **kw):
    args = dict(dataset="toy", root=str(toy_root), frontend="demo", batch_size=8, cache_dir=str(tmp_path / "cache"),
                toy_n_per_class_device=2, toy_duration=0.5, progress=False, cache_workers=0)
    args.update(kw)
    dm = SceneDataModule(**args)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_batches_follow_the_contract(toy_root, tmp_path):
    dm = _dm(toy_root, tmp_path)
    assert dm.classes == SCENES and dm.num_classes == 10 and dm.devices == ("a", "b", "c")
    assert dm.frontend_cfg.duration == 0.5 and dm.frontend_cfg.n_mels == 64  # toy clip length, not the preset's 2 s
    batch = next(iter(dm.train_dataloader()))
    frames = dm.frontend_cfg.n_frames
    assert batch["x"].shape == (8, 1, frames, 64) and batch["x"].dtype == torch.float32
    assert batch["y"].dtype == torch.int64 and batch["y"].shape == (8,)
    assert batch["index"].dtype == torch.int64 and len(batch["device"]) == 8
    clips = dm.clips("train")
    for k in range(8):
        c = clips[int(batch["index"][k])]
        assert batch["y"][k] == c.label and batch["device"][k] == c.device
    val = list(dm.val_dataloader())
    assert sum(len(b["y"]) for b in val) == 30 and torch.equal(val[0]["index"], torch.arange(8))
    pred = next(iter(dm.predict_dataloader()))
    assert pred["x"].shape[1:] == (1, frames, 64)


def test_items_are_lazy_memmap_reads(toy_root, tmp_path):
    dm = _dm(toy_root, tmp_path)
    split = dm.split("train")
    assert isinstance(split.cache.array, np.memmap)
    assert len(pickle.dumps(split)) < 100_000  # workers get the path, not the features
    row = split.cache.row(split.clips[0].path)
    assert np.array_equal(split[0]["x"][0].numpy(), np.asarray(split.cache[row], dtype=np.float32))


def test_seeded_shuffle_and_keep_on_device(toy_root, tmp_path):
    a = _dm(toy_root, tmp_path, seed=3)
    b = _dm(toy_root, tmp_path, seed=3, keep_on_device=True)
    c = _dm(toy_root, tmp_path, seed=4)
    ba, bb, bc = (next(iter(m.train_dataloader())) for m in (a, b, c))
    assert torch.equal(ba["index"].cpu(), bb["index"].cpu()) and not torch.equal(ba["index"], bc["index"])
    assert torch.equal(ba["x"], bb["x"].cpu()) and torch.equal(ba["y"], bb["y"].cpu()) and ba["device"] == bb["device"]


def test_esc_folds(tmp_path):
    root = tmp_path / "esc"
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    rng = np.random.default_rng(0)
    for fold in range(1, 4):
        for cat in ("dog", "rain"):
            name = f"{fold}-1-A-{cat}.ogg"
            sf.write(str(root / "audio" / name), (0.1 * rng.standard_normal(8000)).astype(np.float32), 22050,
                     format="OGG", subtype="VORBIS")
            rows.append(f"{name},{fold},0,{cat},True,1,A")
    (root / "meta" / "esc10.csv").write_text("\r\n".join(rows) + "\r\n")
    dm = SceneDataModule("esc", str(root), frontend="demo", duration=0.5, fold=2, batch_size=4,
                         cache_dir=str(tmp_path / "cache"), progress=False, cache_workers=0)
    dm.prepare_data()
    dm.setup()
    assert dm.classes == ("dog", "rain") and len(dm.split("train")) == 4 and len(dm.split("val")) == 2
    assert {c.fold for c in dm.clips("val")} == {2} and dm.devices == ()
    batch = next(iter(dm.val_dataloader()))
    assert batch["device"] == ["", ""] and batch["x"].shape == (2, 1, dm.frontend_cfg.n_frames, 64)


def test_argument_errors(tmp_path):
    with pytest.raises(Sp4scError, match="--data.root: required for dataset 'tau2020'"):
        SceneDataModule("tau2020")
    with pytest.raises(Sp4scError, match="--data.fold 2"):
        SceneDataModule("tau2020", str(tmp_path), fold=2)
    with pytest.raises(Sp4scError, match="--data.dataset 'tau'"):
        SceneDataModule("tau", str(tmp_path))
    with pytest.raises(Sp4scError, match="unknown front end 'big'"):
        SceneDataModule(frontend="big")
