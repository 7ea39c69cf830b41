"""SceneClassifier on a tiny backbone and a random-tensor DataModule of the SceneDataModule batch format."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sp4sc.models.checkpoint import read_checkpoint
from sp4sc.errors import Sp4scError
from sp4sc.frontend.features import frontend_preset
from sp4sc.training.lit import SceneClassifier

CLASSES = ("x", "y", "z")


class TinyNet(nn.Module):
    """(batch, 1, frames, mels) -> (batch, n_classes)."""

    arch_name = "tiny"

    def __init__(self, n_classes: int = 3, n_mels: int = 8):
        super().__init__()
        self.arch_kwargs = {"n_classes": n_classes, "n_mels": n_mels}
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4, n_classes)

    def forward(self, x):
        # (batch, 1, frames, mels)
        x = torch.relu(self.bn(self.conv(x)))  # (batch, 4, frames, mels)
        return self.fc(self.drop(x.mean(dim=(2, 3))))  # (batch, n_classes)


class _Set(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.x = torch.randn(n, 1, 12, 8, generator=g) + self.y.view(-1, 1, 1, 1).float()  # learnable
        self.dev = ["a", "b", "s1"]

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i], "device": self.dev[i % 3], "index": i}


class RandomDM(pl.LightningDataModule):
    classes = CLASSES
    num_classes = 3
    devices = ("a", "b", "s1")
    frontend_cfg = frontend_preset("demo", n_mels=8)

    def train_dataloader(self):
        return DataLoader(_Set(48, 0), batch_size=8, shuffle=True)

    def val_dataloader(self):
        return DataLoader(_Set(24, 1), batch_size=8)

    test_dataloader = val_dataloader

    def predict_dataloader(self):
        return DataLoader(_Set(10, 2), batch_size=4)


def _trainer(tmp_path, **kw):
    opts = dict(max_epochs=2, logger=pl.loggers.TensorBoardLogger(tmp_path, name="tb"), enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu", devices=1)
    opts.update(kw)
    return pl.Trainer(**opts)


def test_fit_validate_test_predict_and_checkpoint(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = SceneClassifier(TinyNet(), loss="focal", focal_gamma=1.0, mixup_alpha=0.2,
                            spec_augment=[4, 1, 2, 1], lr=5e-3, eta_min=1e-4)
    trainer = _trainer(tmp_path)
    trainer.fit(model, datamodule=RandomDM())
    assert model.lr_schedulers().get_last_lr()[0] == pytest.approx(1e-4)  # cosine reached eta_min at max_epochs
    res = trainer.test(model, datamodule=RandomDM(), verbose=False)[0]
    for key in ("test/acc", "test/macro_acc", "test/logloss", "test/loss", "test_device/acc_s1",
                "test_class/logloss_z"):
        assert key in res
    rep = model.reports["test"]
    assert set(rep["device_wise"]) == {"a", "b", "s1"} and set(rep["class_wise"]) == set(CLASSES)
    assert sum(map(sum, rep["confusion"])) == 24
    # the eval loss is the clip-mean cross-entropy, i.e. the DCASE log loss in float precision
    assert res["test/loss"] == pytest.approx(res["test/logloss"], rel=1e-4)
    preds = trainer.predict(model, datamodule=RandomDM())
    probs = torch.cat([p["probs"] for p in preds])
    assert probs.shape == (10, 3) and torch.allclose(probs.sum(1), torch.ones(10))
    # checkpoint: plain types only, the "sp4sc" model description, backbone.* keys
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ck = torch.load(path, map_location="cpu", weights_only=True)
    assert read_checkpoint(path).keys() == ck.keys()
    assert ck["sp4sc"]["model"] == "tiny" and ck["sp4sc"]["classes"] == list(CLASSES)
    assert ck["sp4sc"]["frontend"]["n_mels"] == 8
    assert all(k.startswith("backbone.") for k in ck["state_dict"])
    assert ck["hyper_parameters"]["backbone"] == "tiny"
    # the confusion figure reached TensorBoard
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events


def test_loss_decreases_and_learns(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = SceneClassifier(TinyNet(), lr=2e-2, eta_min=1e-3)
    trainer = _trainer(tmp_path, max_epochs=6, logger=False, enable_checkpointing=False)
    before = trainer.validate(model, datamodule=RandomDM(), verbose=False)[0]["val/logloss"]
    trainer.fit(model, datamodule=RandomDM())
    after = trainer.validate(model, datamodule=RandomDM(), verbose=False)[0]
    assert after["val/logloss"] < before
    assert after["val/acc"] > 0.5  # 3 classes, separable by the mean


def test_runs_repeat_exactly(tmp_path):
    def run():
        pl.seed_everything(0, verbose=False)
        model = SceneClassifier(TinyNet(), mixup_alpha=0.4, spec_augment=[4, 2, 2, 1])
        _trainer(tmp_path, logger=False, enable_checkpointing=False).fit(model, datamodule=RandomDM())
        return model.backbone.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_label_count_must_match_the_data():
    model = SceneClassifier(TinyNet(n_classes=5))
    with pytest.raises(Sp4scError, match="5 classes but the data has 3"):
        model.configure_data(CLASSES, RandomDM.frontend_cfg)
    with pytest.raises(Sp4scError, match="loss"):
        SceneClassifier(TinyNet(), loss="hinge")
    with pytest.raises(Sp4scError, match="fast path"):
        SceneClassifier(TinyNet(), fast_path=True)


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    logits = torch.randn(5, 3)
    target = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 1, 0]), 3).float()
    focal = SceneClassifier(TinyNet(), loss="focal", focal_gamma=0.0)
    assert torch.allclose(focal._loss(logits, target), torch.nn.functional.cross_entropy(logits, target.argmax(1)))
    focal2 = SceneClassifier(TinyNet(), loss="focal", focal_gamma=2.0)
    assert focal2._loss(logits, target) < focal._loss(logits, target)


def test_recompute_bn_statistics_averages_batches_with_only_batchnorm_in_training_mode():
    from sp4sc.training.precise_bn import recompute_bn_statistics

    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(3), nn.Linear(3, 2))
    model.train()
    model[1].running_mean.fill_(7.0)  # a stale moving average, to be replaced
    batches = [torch.randn(6, 3) * (i + 1) + i for i in range(4)]
    assert recompute_bn_statistics(model, batches) == 24
    bn = model[1]
    # plain averages of the per-batch statistics of the inputs as given: dropout stayed in eval mode
    assert torch.allclose(bn.running_mean, torch.stack([b.mean(0) for b in batches]).mean(0), atol=1e-6)
    assert torch.allclose(bn.running_var, torch.stack([b.var(0) for b in batches]).mean(0), atol=1e-5)
    assert bn.momentum == 0.1 and all(m.training for m in model.modules())  # modes and momentum restored
    assert recompute_bn_statistics(nn.Linear(3, 2), batches) == 0  # no BatchNorm: nothing to do
    assert recompute_bn_statistics(model, batches, max_batches=2) == 12


def test_precise_bn_changes_only_the_statistics_and_the_last_validation_sees_them(tmp_path):
    import copy

    from sp4sc.training.precise_bn import recompute_bn_statistics

    fitted = {}
    for precise in (False, True):
        pl.seed_everything(0, verbose=False)
        model = SceneClassifier(TinyNet(), mixup_alpha=0.2, spec_augment=[4, 1, 2, 1], lr=5e-3, precise_bn=precise)
        trainer = _trainer(tmp_path / str(precise), logger=False, enable_checkpointing=False)
        trainer.fit(model, datamodule=RandomDM())
        fitted[precise] = (model, dict(model.reports["val"]["overall"]), trainer)
    plain, precise = fitted[False][0].state_dict(), fitted[True][0].state_dict()
    stats = ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked")
    for key in plain:  # training is unchanged: the same weights
        if not key.endswith(stats):
            assert torch.equal(plain[key], precise[key]), key
    assert not torch.allclose(plain["backbone.bn.running_mean"], precise["backbone.bn.running_mean"])
    assert fitted[True][0].precise_bn_clips == 48 and fitted[False][0].precise_bn_clips == 0
    # the statistics are the plain average over the training clips, in the documented order
    again = copy.deepcopy(fitted[True][0])
    batches = DataLoader(_Set(48, 0), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    recompute_bn_statistics(again, batches)
    assert torch.allclose(again.backbone.bn.running_mean, fitted[True][0].backbone.bn.running_mean, atol=1e-6)
    # the last epoch's validation already used them: validating the final model again gives the same report
    model, report, trainer = fitted[True]
    trainer.validate(model, datamodule=RandomDM(), verbose=False)
    assert model.reports["val"]["overall"]["logloss"] == pytest.approx(report["logloss"], abs=1e-6)
    assert model.reports["val"]["overall"]["accuracy"] == pytest.approx(report["accuracy"])


def _recipe_checkpoints() -> list:
    """The ModelCheckpoint callbacks of ``recipes/base/trainer.yaml``, built from its init_args."""
    from pathlib import Path

    import yaml

    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "base" / "trainer.yaml").read_text())
    return [pl.callbacks.ModelCheckpoint(dirpath=None, **cb["init_args"]) for cb in base["trainer"]["callbacks"]
            if cb["class_path"].endswith("ModelCheckpoint")]


def test_last_checkpoint_every_epoch_with_sparse_validation_and_after_precise_bn(tmp_path, monkeypatch):
    import sp4sc.training.lit as lit_mod

    saved = []

    class Epochs(pl.Callback):  # the epoch in last.ckpt after each epoch (Lightning runs checkpointing last)
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch:
                saved.append(read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["epoch"])

        def on_fit_end(self, trainer, pl_module):
            saved.append(read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["epoch"])

    pl.seed_everything(0, verbose=False)
    model = SceneClassifier(TinyNet(), lr=5e-3, precise_bn=True)
    trainer = _trainer(tmp_path, logger=False, max_epochs=4, check_val_every_n_epoch=2,
                       callbacks=[*_recipe_checkpoints(), Epochs()])
    trainer.fit(model, datamodule=RandomDM())
    # a killed run loses at most the epoch it was in, also between validations
    assert saved == [0, 1, 2, 3]
    # and the last epoch's checkpoint was written after its validation, so it holds the precise-BN statistics
    assert model.precise_bn_clips == 48
    last = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
    for key, value in model.state_dict().items():
        assert torch.equal(last[key], value), key
    # a last epoch that the validation interval skips (5 epochs, every 2nd validated) still gets them, once
    pl.seed_everything(0, verbose=False)
    skipped = SceneClassifier(TinyNet(), lr=5e-3, precise_bn=True)
    calls = []
    real = lit_mod.recompute_from_training_clips
    monkeypatch.setattr(lit_mod, "recompute_from_training_clips", lambda *a: calls.append(a[-1]) or real(*a))
    trainer = _trainer(tmp_path / "skip", logger=False, max_epochs=5, check_val_every_n_epoch=2,
                       callbacks=_recipe_checkpoints())
    trainer.fit(skipped, datamodule=RandomDM())
    assert calls == [4] and skipped.precise_bn_clips == 48
    last = read_checkpoint(tmp_path / "skip" / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 4 and torch.equal(last["state_dict"]["backbone.bn.running_mean"],
                                              skipped.backbone.bn.running_mean)


def test_validation_interval_does_not_change_the_trained_weights(tmp_path):
    """Validating every epoch or only the last one trains the same model, bit for bit.

    A validation pass draws from torch's global generator (the loader iterator's base seed); the
    per-epoch reseed keeps those draws from reaching the next epoch's shuffle, dropout, mixup and
    SpecAugment, so `--trainer.check_val_every_n_epoch N` only saves time.
    """
    def run(every: int):
        pl.seed_everything(0, verbose=False)
        model = SceneClassifier(TinyNet(), lr=5e-3, mixup_alpha=0.4, spec_augment=[4, 2, 2, 1], precise_bn=True)
        trainer = _trainer(tmp_path / str(every), logger=False, enable_checkpointing=False, max_epochs=4,
                           check_val_every_n_epoch=every)
        trainer.fit(model, datamodule=RandomDM())
        return model.state_dict(), trainer.callback_metrics["val/acc"]

    (every_epoch, acc1), (last_only, acc4) = run(1), run(4)
    assert every_epoch.keys() == last_only.keys()
    for key, value in every_epoch.items():
        assert torch.equal(value, last_only[key]), key
    assert acc1 == acc4


def test_progress_lines_show_validation_only_in_the_epochs_that_ran_it(tmp_path):
    import io

    from sp4sc.training.progress import LineProgress

    out = io.StringIO()
    pl.seed_everything(0, verbose=False)
    trainer = _trainer(tmp_path, logger=False, enable_checkpointing=False, max_epochs=4, check_val_every_n_epoch=2,
                       callbacks=[LineProgress(every_n_batches=0, stream=out)])
    trainer.fit(SceneClassifier(TinyNet(), lr=5e-3), datamodule=RandomDM())
    epochs = [ln for ln in out.getvalue().splitlines() if " step " in ln]
    assert [("val_acc" in ln) for ln in epochs] == [False, True, False, True], epochs


class _NoDeviceSet(_Set):
    """Clips without a recording device, as ESC-50 and the toy sets give them ("")."""

    def __getitem__(self, i):
        return {**super().__getitem__(i), "device": ""}


class NoDeviceDM(RandomDM):
    devices = ()

    def val_dataloader(self):
        return DataLoader(_NoDeviceSet(24, 1), batch_size=8)

    test_dataloader = val_dataloader


def test_data_without_devices_logs_and_reports_no_device_rows(tmp_path):
    from sp4sc.training.report import metrics_md_text

    pl.seed_everything(0, verbose=False)
    model = SceneClassifier(TinyNet(), lr=5e-3)
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=NoDeviceDM())
    res = trainer.validate(model, datamodule=NoDeviceDM(), verbose=False)[0]
    assert "val/acc" in res and "val_class/acc_z" in res
    assert not [k for k in (*res, *trainer.callback_metrics) if "device" in k]  # logs and TensorBoard alike
    rep = model.reports["val"]
    assert rep["device_wise"] == {} and model.device_names == []
    assert "device" not in metrics_md_text(rep, "validation split", CLASSES)  # no rows, no remark on them
    # TAU-style data keeps its device rows, its own devices first
    model = SceneClassifier(TinyNet(), lr=5e-3)
    trainer = _trainer(tmp_path / "tau", max_epochs=1)
    res = trainer.validate(model, datamodule=RandomDM(), verbose=False)[0]
    assert {"val_device/acc_a", "val_device/acc_s1"} <= set(res) and "val_device/acc_unknown" not in res
    assert model.device_names[:3] == ["a", "b", "s1"]
