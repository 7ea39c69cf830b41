"""Knowledge distillation: the teacher (frozen encoder + probe on the training clips, cached logits),
the KD loss, KD fits on a tiny ESC-format set with the fake encoder, and the KD recipe through the CLI."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from sp4sc.models.checkpoint import load_model
from sp4sc.errors import Sp4scError
from sp4sc.training.distill import distillation_loss
from sp4sc.training.lit import SceneClassifier
from sp4sc.probes import teacher as teacher_mod
from sp4sc.probes.fake import FakeEncoder
from sp4sc.probes.teacher import TeacherConfig, compute_teacher, teacher_key, teacher_logits
from kd_toy import PROBE, ROOT, esc, fake_registered, kd_dm, teacher_settings  # noqa: F401 (fixtures)

_dm, _teacher = kd_dm, teacher_settings


# ----------------------------------------------------------------------------- the teacher

def test_cache_key_changes_with_checkpoint_probe_and_training_set(esc, tmp_path):
    fake = FakeEncoder().build(random_init=True, seed=0)
    ckpt_a, ckpt_b, copy_a = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "copy_of_a.pt"
    torch.save(fake.model.state_dict(), ckpt_a)
    torch.save({k: v + 1 for k, v in fake.model.state_dict().items()}, ckpt_b)
    copy_a.write_bytes(ckpt_a.read_bytes())
    dm1, dm2 = _dm(esc, tmp_path, 1), _dm(esc, tmp_path, 2)
    classes = list(dm1.classes)

    def key(dm=dm1, **kw):
        cfg = TeacherConfig.from_dict({"encoder": FakeEncoder.name, "probe": dict(PROBE), **kw})
        return teacher_key(cfg, classes, dm.clips("train"), Path(dm.index().root)).digest()

    base = key(ckpt=str(ckpt_a))
    assert key(ckpt=str(ckpt_a)) == base
    assert key(ckpt=str(copy_a)) == base  # the checkpoint's content, not its path
    variants = {
        "other checkpoint": key(ckpt=str(ckpt_b)),
        "random init": key(random_init=True),
        "dt": key(ckpt=str(ckpt_a), dt=0.5),
        "hop": key(ckpt=str(ckpt_a), hop=0.1),
        "probe epochs": key(ckpt=str(ckpt_a), probe={**PROBE, "epochs": 21}),
        "probe lr": key(ckpt=str(ckpt_a), probe={**PROBE, "lr": 0.01}),
        "probe hidden": key(ckpt=str(ckpt_a), probe={**PROBE, "hidden": 8}),
        "probe seed": key(ckpt=str(ckpt_a), seed=1),
        "training set (fold 2)": key(dm2, ckpt=str(ckpt_a)),
    }
    assert base not in variants.values()
    assert len(set(variants.values())) == len(variants), variants
    assert key(random_init=True, init_seed=1) != variants["random init"]


def test_teacher_is_fitted_on_training_clips_only_and_cached(esc, tmp_path, monkeypatch):
    fed = []
    real = teacher_mod.train_probe

    def spy(x_train, y_train, x_val, y_val, *args, **kwargs):
        fed.append((np.array(x_train), np.array(y_train), np.array(x_val), np.array(y_val)))
        return real(x_train, y_train, x_val, y_val, *args, **kwargs)

    monkeypatch.setattr(teacher_mod, "train_probe", spy)
    dm = _dm(esc, tmp_path)
    cfg = TeacherConfig.from_dict(_teacher(tmp_path))
    out = compute_teacher(dm, cfg, stages=("train", "val", "test"))
    train, val = dm.clips("train"), dm.clips("val")
    assert len(train) == 12 and len(val) == 6
    # the probe saw the 12 training clips, for training and for choosing its epoch; no validation clip
    assert len(fed) == 1
    x_train, y_train, x_val, y_val = fed[0]
    assert x_train.shape[0] == 12 and np.array_equal(x_val, x_train) and np.array_equal(y_val, y_train)
    assert y_train.tolist() == [c.label for c in train]
    assert out.fit_clips == [c.path for c in train] and not set(out.fit_clips) & {c.path for c in val}
    recorded = json.loads((out.folder / "probe.json").read_text())
    assert recorded["fit_clips"] == out.fit_clips
    # logits per stage, rows in the datamodule's order, classes in its order (the toy classes are separable)
    assert out.logits["train"].shape == (12, 2) and out.logits["val"].shape == (6, 2)
    assert out.logits["val"].dtype == torch.float32
    assert torch.equal(out.logits["test"], out.logits["val"])  # ESC: the test split is the validation fold
    assert out.logits["val"].argmax(1).tolist() == [c.label for c in val]
    assert out.accuracy["val"] == 1.0 and out.computed == 12 + 6
    # computed once: a second call reads every clip from the cache and fits nothing
    again = compute_teacher(dm, cfg, stages=("train", "val"))
    assert again.computed == 0 and len(fed) == 1
    assert torch.equal(again.logits["train"], out.logits["train"])
    assert torch.equal(again.logits["val"], out.logits["val"])
    # the convenience function gives the same tensors
    plain = teacher_logits(dm, _teacher(tmp_path), stages=("train",))
    assert set(plain) == {"train"} and torch.equal(plain["train"], out.logits["train"])
    # a changed audio file is predicted again with the stored probe (no refit)
    path = Path(dm.index().root) / val[0].path
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = compute_teacher(dm, cfg, stages=("train", "val"))
    assert third.computed == 1 and len(fed) == 1
    torch.testing.assert_close(third.logits["val"], out.logits["val"])


def test_teacher_config_errors_name_the_key(esc, tmp_path):
    with pytest.raises(Sp4scError, match=r"--model.kd_teacher.bogus: unknown key"):
        TeacherConfig.from_dict({"bogus": 1})
    with pytest.raises(Sp4scError, match=r"--model.kd_teacher.dt 'abc': expected a number"):
        TeacherConfig.from_dict({"dt": "abc"})
    with pytest.raises(Sp4scError, match=r"--model.kd_teacher.probe.epoch: unknown key"):
        TeacherConfig.from_dict({"probe": {"epoch": 3}})
    with pytest.raises(Sp4scError, match=r"--model.kd_teacher.dt -1"):
        TeacherConfig.from_dict({"dt": -1})
    # command-line strings are parsed
    cfg = TeacherConfig.from_dict({"dt": "2", "random_init": "true", "probe": {"epochs": "5"}, "hop": "null"})
    assert (cfg.dt, cfg.random_init, cfg.probe.epochs, cfg.hop) == (2.0, True, 5, None)
    with pytest.raises(Sp4scError, match=r"--model.kd_teacher.ckpt: give the teacher"):
        compute_teacher(_dm(esc, tmp_path), TeacherConfig())
    with pytest.raises(Sp4scError, match=r"--model.kd_teacher.ckpt /no/such.pt: no such file"):
        compute_teacher(_dm(esc, tmp_path), TeacherConfig(ckpt="/no/such.pt"))


# ----------------------------------------------------------------------------- the loss

def test_distillation_loss_by_hand():
    s = torch.tensor([[1.0, -0.5, 0.2], [0.3, 0.8, -1.2]])
    t = torch.tensor([[2.0, 0.1, -0.3], [-0.4, 1.5, 0.0]])
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.7, 0.3]])  # one-hot and mixed
    lam, temp = 0.7, 2.5

    def softmax(v):
        e = [math.exp(a) for a in v]
        return [a / sum(e) for a in e]

    total = 0.0
    for i in range(2):
        p = softmax([a / temp for a in t[i].tolist()])
        q = softmax([a / temp for a in s[i].tolist()])
        kl = sum(pj * math.log(pj / qj) for pj, qj in zip(p, q))
        ce = -sum(yj * math.log(sj) for yj, sj in zip(target[i].tolist(), softmax(s[i].tolist())))
        total += lam * temp**2 * kl + (1 - lam) * ce
    teacher_probs = torch.softmax(t / temp, dim=1)
    got = distillation_loss(s, target, teacher_probs, lam, temp)
    assert got.item() == pytest.approx(total / 2, rel=1e-6)
    # lambda = 0 is the label loss alone; lambda = 1 the distillation term alone (zero when student = teacher)
    assert distillation_loss(s, target, teacher_probs, 0.0, temp).item() == pytest.approx(
        -(target * torch.log_softmax(s, 1)).sum(1).mean().item(), rel=1e-6)
    assert distillation_loss(t, target, teacher_probs, 1.0, temp).item() == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------- the student

def _fit(esc: Path, tmp: Path, **model_kw) -> SceneClassifier:
    pl.seed_everything(0, verbose=False)
    model = SceneClassifier("sp4sc_w32", **{"mixup_alpha": 0.4, "spec_augment": [4, 1, 4, 1], "lr": 5e-3, **model_kw})
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp, enable_checkpointing=False)
    trainer.fit(model, datamodule=_dm(esc, tmp))
    model.trainer_ = trainer
    return model


def test_kd_fit_with_lambda_zero_equals_the_plain_fit(esc, tmp_path, monkeypatch):
    calls, computed = [], []
    real, real_compute = teacher_mod.train_probe, teacher_mod.compute_teacher
    monkeypatch.setattr(teacher_mod, "train_probe", lambda *a, **k: calls.append(1) or real(*a, **k))

    def compute(*a, **k):
        out = real_compute(*a, **k)
        computed.append(out.computed)
        return out

    monkeypatch.setattr(teacher_mod, "compute_teacher", compute)
    plain = _fit(esc, tmp_path)
    zero = _fit(esc, tmp_path, kd_teacher=_teacher(tmp_path), kd_lambda=0.0, kd_temperature=2.0)
    assert zero.distill.logits is not None and zero.distill.logits.shape == (12, 2)
    # train + val logits computed once, in prepare_data; setup (every DDP rank) read them from the cache
    assert computed == [18, 0] and len(calls) == 1
    a, b = plain.backbone.state_dict(), zero.backbone.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a real weight on the teacher changes the training
    kd = _fit(esc, tmp_path, kd_teacher=_teacher(tmp_path), kd_lambda=0.9, kd_temperature=2.0)
    c = kd.backbone.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert kd.distill.info["fit_clips"] == 12 and kd.distill.info["accuracy"]["val"] == 1.0
    # the teacher's confidence at T, per stage, from the same logits the student is trained on
    expected = torch.softmax(kd.distill.logits / 2.0, dim=1).max(dim=1).values.mean().item()
    assert kd.distill.info["top_probability"]["train"] == pytest.approx(expected, abs=1e-6)
    assert 1 / 2 < kd.distill.info["top_probability"]["val"] <= 1.0


def test_kd_student_checkpoint_loads_without_the_teacher(esc, tmp_path):
    model = _fit(esc, tmp_path, kd_teacher=_teacher(tmp_path), kd_lambda=0.9, kd_temperature=2.0)
    path = tmp_path / "student.ckpt"
    model.trainer_.save_checkpoint(path)
    ck = torch.load(path, map_location="cpu", weights_only=True)
    # only the backbone is stored: no teacher logits, plain hyper-parameters
    assert all(k.startswith("backbone.") for k in ck["state_dict"])
    assert ck["hyper_parameters"]["kd_teacher"]["encoder"] == FakeEncoder.name
    assert ck["sp4sc"]["distillation"]["kd_lambda"] == 0.9
    assert ck["sp4sc"]["distillation"]["teacher"]["weights"] == "random-init-seed0"
    loaded = load_model(path)
    assert loaded.name == "sp4sc_w32" and loaded.classes == list(model.classes)
    x = torch.randn(2, 1, 32, 64)
    model.eval()
    torch.testing.assert_close(loaded.model(x), model.backbone(x))
    # it exports like any model (fold, budget, ONNX, parity)
    from sp4sc.cli import main

    assert main(["export", "--ckpt", str(path), "--out", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "model.onnx").is_file()
    # the Lightning module reloads it too (as validate/test with --ckpt_path do)
    again = SceneClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert again.distill.logits is None and again.distill.config.encoder == FakeEncoder.name


def test_kd_arguments_are_checked():
    for kw, needle in [
        ({"kd_lambda": 1.5, "kd_teacher": {}}, "--model.kd_lambda 1.5: must be in [0, 1]"),
        ({"kd_lambda": -0.1, "kd_teacher": {}}, "--model.kd_lambda -0.1"),
        ({"kd_temperature": 0.0}, "--model.kd_temperature 0.0: must be > 0"),
        ({"kd_lambda": 0.5}, "--model.kd_lambda 0.5: needs a teacher"),
        ({"kd_teacher": {"dtt": 1}}, "--model.kd_teacher.dtt: unknown key"),
        ({"kd_teacher": "efficientat_mn04"}, "--model.kd_teacher: expected a mapping"),
    ]:
        with pytest.raises(Sp4scError) as err:
            SceneClassifier("sp4sc_w32", **kw)
        assert needle in str(err.value) and len(str(err.value).splitlines()) == 1


def test_kd_needs_a_scene_datamodule(tmp_path):
    from test_lit import RandomDM, TinyNet

    model = SceneClassifier(TinyNet(n_classes=3), kd_teacher=_teacher(tmp_path), kd_lambda=0.5)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, enable_checkpointing=False)
    with pytest.raises(Sp4scError, match="SceneDataModule"):
        trainer.fit(model, datamodule=RandomDM())


# ----------------------------------------------------------------------------- the recipe

def test_kd_recipe_is_the_plain_recipe_plus_a_teacher():
    from sp4sc.commands.lightning import expand_configs
    import yaml

    args = expand_configs(["--config", str(ROOT / "recipes" / "esc10_sp4sc_kd.yaml")])
    files = [Path(a) for a in args if a != "--config"]
    assert [f.name for f in files][-2:] == ["esc10_sp4sc.yaml", "esc10_sp4sc_kd.yaml"]
    kd = yaml.safe_load(files[-1].read_text())
    plain = yaml.safe_load(files[-2].read_text())
    assert kd["model"]["backbone"] == plain["model"]["backbone"] and kd["data"]["frontend"] == plain["data"]["frontend"]
    # what would make the comparison unfair is not restated: epochs, seed, batch, lr, augmentation come from the base
    assert set(kd["model"]) == {"backbone", "kd_teacher", "kd_lambda", "kd_temperature"}
    assert set(kd["data"]) == {"frontend"} and set(kd["trainer"]) == {"default_root_dir"}
    assert kd["model"]["kd_teacher"]["ckpt"] is None  # no path in the recipe: --model.kd_teacher.ckpt
    TeacherConfig.from_dict(kd["model"]["kd_teacher"])


def test_kd_recipe_runs_through_cv(esc, tmp_path):
    from sp4sc.cli import main

    out = tmp_path / "cv"
    argv = ["cv", "--config", str(ROOT / "recipes" / "esc10_sp4sc_kd.yaml"), "--data.root", str(esc), "--folds", "1",
            "--out", str(out), "--data.frontend", "demo", "--data.duration", "0.5", "--data.batch_size", "4",
            "--data.cache_dir", str(tmp_path / "features"), "--data.progress", "false",
            "--model.backbone", "sp4sc_w32", "--model.spec_augment", "[4, 1, 4, 1]", "--trainer.max_epochs", "1",
            "--trainer.enable_model_summary", "false", "--trainer.logger", "false",
            # the teacher, key by key from the command line (strings, parsed by TeacherConfig)
            "--model.kd_teacher.encoder", FakeEncoder.name, "--model.kd_teacher.random_init", "true",
            "--model.kd_teacher.dt", "0.25", "--model.kd_teacher.probe.epochs", "20",
            "--model.kd_teacher.probe.lr", "0.05", "--model.kd_teacher.cache_dir", str(tmp_path / "kdcache")]
    assert main(argv) == 0
    result = json.loads((out / "fold1" / "result.json").read_text())
    assert 0.0 <= result["accuracy"] <= 1.0 and result["epochs"] == 1
    ckpt = Path(result["checkpoint"])
    assert load_model(ckpt).name == "sp4sc_w32"
    teacher = list((tmp_path / "kdcache" / "teacher" / FakeEncoder.name).iterdir())
    assert len(teacher) == 1 and json.loads((teacher[0] / "probe.json").read_text())["fit_clips"]


# ----------------------------------------------------------------------------- removed variants

def test_removed_variants_are_refused_in_one_line():
    # crops, the online teacher and feature distillation measured no gain and were removed
    with pytest.raises(Sp4scError) as err:
        TeacherConfig.from_dict({"encoder": FakeEncoder.name, "online": True})
    assert "online teacher was removed" in str(err.value) and len(str(err.value).splitlines()) == 1
    assert TeacherConfig.from_dict({"encoder": FakeEncoder.name, "online": False}).encoder == FakeEncoder.name
    for gone in ("train_crop", "kd_embed_weight"):
        with pytest.raises(TypeError):
            SceneClassifier("sp4sc_w32", **{gone: 1.0})


# ----------------------------------------------------------------------------- the backbones' features

@pytest.mark.parametrize("name", ["sp4sc_w32", "cnn6"])
def test_logits_and_features_is_forward_and_the_classifier_input(name):
    from sp4sc.models import create_model

    torch.manual_seed(0)
    net = create_model(name, n_classes=3, n_mels=64).eval()
    x = torch.randn(2, 1, 32, 64)
    logits, feats = net.logits_and_features(x)
    assert feats.shape == (2, net.feature_dim)
    torch.testing.assert_close(logits, net(x))
    torch.testing.assert_close(feats, net.features(x))
    torch.testing.assert_close(getattr(net, net.head_name)(feats), logits)
