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
from sp4sc.data.datamodule import SceneDataModule
from sp4sc.errors import Sp4scError
from sp4sc.training.lit import SceneClassifier, distillation_loss
from sp4sc.probes import teacher as teacher_mod
from sp4sc.probes.encoders import ENCODERS, register_encoder
from sp4sc.probes.fake import FakeEncoder
from sp4sc.probes.teacher import TeacherConfig, compute_teacher, teacher_key, teacher_logits
from test_cv import make_esc_toy

ROOT = Path(__file__).resolve().parents[1]
PROBE = {"epochs": 20, "lr": 0.05}  # 12 training clips, one step per epoch


@pytest.fixture(autouse=True)
def fake_registered():
    register_encoder(FakeEncoder.name, FakeEncoder)
    yield
    ENCODERS.pop(FakeEncoder.name, None)


@pytest.fixture(scope="module")
def esc(tmp_path_factory):
    """3 folds x 2 classes x 3 clips of 0.5 s (told apart by pitch)."""
    return make_esc_toy(tmp_path_factory.mktemp("kd") / "esc")


def _dm(root: Path, tmp: Path, fold: int = 1) -> SceneDataModule:
    return SceneDataModule(dataset="esc", root=str(root), frontend="demo", duration=0.5, fold=fold, batch_size=4,
                           cache_dir=str(tmp / "features"), progress=False, num_workers=0, keep_on_device=True)


def _teacher(tmp: Path, **kw) -> dict:
    return {"encoder": FakeEncoder.name, "random_init": True, "dt": 0.25, "probe": dict(PROBE), "device": "cpu",
            "cache_dir": str(tmp / "kdcache"), **kw}


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
    assert zero.kd_logits is not None and zero.kd_logits.shape == (12, 2)
    # train + val logits computed once, in prepare_data; setup (every DDP rank) read them from the cache
    assert computed == [18, 0] and len(calls) == 1
    a, b = plain.backbone.state_dict(), zero.backbone.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a real weight on the teacher changes the training
    kd = _fit(esc, tmp_path, kd_teacher=_teacher(tmp_path), kd_lambda=0.9, kd_temperature=2.0)
    c = kd.backbone.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert kd.kd_info["fit_clips"] == 12 and kd.kd_info["accuracy"]["val"] == 1.0
    # the teacher's confidence at T, per stage, from the same logits the student is trained on
    expected = torch.softmax(kd.kd_logits / 2.0, dim=1).max(dim=1).values.mean().item()
    assert kd.kd_info["top_probability"]["train"] == pytest.approx(expected, abs=1e-6)
    assert 1 / 2 < kd.kd_info["top_probability"]["val"] <= 1.0


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
    assert again.kd_logits is None and again.kd_config.encoder == FakeEncoder.name


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


# ----------------------------------------------------------------------------- teacher-labelled crops

def test_random_crop_cuts_each_example_at_its_own_offset():
    from sp4sc.data.augment import random_crop

    x = torch.arange(4 * 10 * 3, dtype=torch.float32).reshape(4, 1, 10, 3)
    g = torch.Generator().manual_seed(0)
    crops, offsets = random_crop(x, 4, g)
    assert crops.shape == (4, 1, 4, 3) and offsets.shape == (4,)
    for i, o in enumerate(offsets.tolist()):
        assert 0 <= o <= 6 and torch.equal(crops[i], x[i, :, o : o + 4])
    seen = set()
    for _ in range(50):
        seen.update(random_crop(x, 4, g)[1].tolist())
    assert seen == set(range(7))  # every position, the last included
    with pytest.raises(Sp4scError, match="does not fit"):
        random_crop(x, 11, g)


def test_crop_logits_average_the_windows_wholly_inside_the_crop():
    from sp4sc.probes.teacher import TeacherWindows

    n_windows, dim = 9, 3
    emb = torch.randn(2, n_windows, dim)
    starts = torch.arange(n_windows, dtype=torch.float64).repeat(2, 1) * 0.25  # 0, 0.25, ..., 2.0 s
    starts[1, 7:] = float("inf")  # the second clip has 7 windows
    emb[1, 7:] = 0
    probe = torch.nn.Linear(dim, 2)
    tw = TeacherWindows(embeddings=emb, starts=starts, dt=0.5, hop=0.25, probe=probe)
    index = torch.tensor([0, 1])
    out = tw.crop_logits(index, torch.tensor([0.4, 1.0], dtype=torch.float64),
                         torch.tensor([1.6, 2.5], dtype=torch.float64))
    # clip 0, crop [0.4, 1.6]: windows starting at 0.5, 0.75, 1.0 (1.25 + 0.5 > 1.6)
    # clip 1, crop [1.0, 2.5]: windows at 1.0, 1.25, 1.5 (its windows stop at 1.5)
    want = probe(torch.stack([emb[0, 2:5].mean(0), emb[1, 4:7].mean(0)]))
    assert torch.allclose(out, want, atol=1e-6)
    # a crop that holds no whole window is refused, naming the fix
    with pytest.raises(Sp4scError, match="train_crop >= dt \\+ hop"):
        tw.crop_logits(index[:1], torch.tensor([0.1], dtype=torch.float64), torch.tensor([0.55], dtype=torch.float64))


def test_train_crop_arguments_are_checked():
    with pytest.raises(Sp4scError, match="train_crop"):
        SceneClassifier("sp4sc_w32", train_crop=0)
    with pytest.raises(Sp4scError, match="shorter than the teacher's window plus its hop"):
        SceneClassifier("sp4sc_w32", train_crop=0.3, kd_teacher={"encoder": FakeEncoder.name, "random_init": True,
                                                                 "dt": 0.25}, kd_lambda=0.5)


def test_crop_fit_trains_on_crops_and_the_teacher_labels_each_crop(esc, tmp_path, monkeypatch):
    seen_frames, targets = [], []
    real_forward = SceneClassifier._train_forward

    def watch(self, x):
        seen_frames.append(x.shape[2])
        return real_forward(self, x)

    real_probs = SceneClassifier._teacher_probs

    def watch_probs(self, batch, offsets=None, crop=0):
        p = real_probs(self, batch, offsets, crop)
        targets.append((offsets, p))
        return p

    monkeypatch.setattr(SceneClassifier, "_train_forward", watch)
    monkeypatch.setattr(SceneClassifier, "_teacher_probs", watch_probs)
    whole = _fit(esc, tmp_path)
    full_frames = seen_frames[0]
    seen_frames.clear()
    # demo front end: 0.5 s clips; crops of 0.3 s; teacher windows of 0.1 s every 0.05 s
    kd = _fit(esc, tmp_path, kd_teacher=_teacher(tmp_path, dt=0.1, hop=0.05), kd_lambda=0.9, kd_temperature=2.0,
              train_crop=0.3)
    fe = kd.frontend_cfg
    crop = round(0.3 * fe.sample_rate / fe.hop_length)
    assert set(seen_frames) == {crop} and crop < full_frames
    # 9 whole windows in 0.5 s, plus the zero-padded tail window at 0.45 s (half of it is audio)
    assert kd.kd_info["crops"] == {"train_crop": 0.3, "windows_per_clip": 10}
    # each crop has its own target: crops of one clip at other offsets get other teacher probabilities
    offsets, probs = targets[-1]
    assert offsets is not None and probs.shape == (offsets.shape[0], 2)
    assert torch.allclose(probs.sum(dim=1), torch.ones(offsets.shape[0]))
    index = torch.arange(12)
    frame_s = fe.hop_length / fe.sample_rate
    early = kd.kd_windows.crop_logits(index, torch.zeros(12, dtype=torch.float64),
                                      torch.full((12,), crop * frame_s, dtype=torch.float64), frame_s / 2)
    late_begin = torch.full((12,), (full_frames - crop) * frame_s, dtype=torch.float64)
    late = kd.kd_windows.crop_logits(index, late_begin, late_begin + crop * frame_s, frame_s / 2)
    assert not torch.allclose(early, late)
    # the student still exports as the plain architecture, and validation saw whole clips
    a, b = whole.backbone.state_dict(), kd.backbone.state_dict()
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- the online teacher

def test_online_teacher_without_mixing_is_the_cached_teacher(esc, tmp_path):
    dm = _dm(esc, tmp_path)
    for extra in ({}, {"dt": 0.1, "hop": 0.05}):  # one window per clip; several, the tail one zero-padded
        cfg = TeacherConfig.from_dict(_teacher(tmp_path, online=True, **extra))
        cached = compute_teacher(dm, cfg).logits["train"]  # (12, 2)
        online = teacher_mod.online_teacher(dm, cfg)
        assert online.waves.shape == (12, round(0.5 * FakeEncoder.sample_rate))
        torch.testing.assert_close(online.logits(torch.arange(12)), cached, rtol=1e-4, atol=1e-5)
        # rows follow the index asked for
        torch.testing.assert_close(online.logits(torch.tensor([5, 0])), cached[[5, 0]], rtol=1e-4, atol=1e-5)


def test_online_teacher_labels_the_mixed_waveforms(esc, tmp_path):
    from sp4sc.frontend.audio import load_audio

    dm = _dm(esc, tmp_path)
    cfg = TeacherConfig.from_dict(_teacher(tmp_path, online=True))
    online = teacher_mod.online_teacher(dm, cfg)
    index, perm, lam = torch.tensor([0, 4, 7, 11]), torch.tensor([2, 0, 3, 1]), 0.7
    got = online.logits(index, perm, lam)  # (4, 2)
    # by hand: the files mixed at the encoder's rate, two windows of 0.25 s per clip, their mean embedding
    root, train = Path(dm.index().root), dm.clips("train")
    wav = torch.stack([torch.from_numpy(load_audio(root / train[i].path, FakeEncoder.sample_rate, duration=0.5))
                       for i in index.tolist()])  # (4, 4000)
    mixed = wav * lam + wav[perm] * (1 - lam)
    win = round(0.25 * FakeEncoder.sample_rate)
    emb = (online.bundle.embed(mixed[:, :win]) + online.bundle.embed(mixed[:, win:])) / 2  # (4, 16)
    with torch.no_grad():
        expected = online.probe(emb)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # a mixture's answer is not the mix of the clips' answers (what the cached teacher gives)
    clean = online.logits(index)
    assert not torch.allclose(got, clean * lam + clean[perm] * (1 - lam), atol=1e-3)


def test_online_kd_fit_without_mixup_equals_the_cached_kd_fit(esc, tmp_path, monkeypatch):
    cached = _fit(esc, tmp_path, kd_teacher=_teacher(tmp_path), kd_lambda=0.9, kd_temperature=2.0, mixup_alpha=0.0)
    online = _fit(esc, tmp_path, kd_teacher=_teacher(tmp_path, online=True), kd_lambda=0.9, kd_temperature=2.0,
                  mixup_alpha=0.0)
    assert online.kd_online is not None and cached.kd_online is None and online.kd_info["online"] is True
    a, b = cached.backbone.state_dict(), online.backbone.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    # with mixup, the online teacher is asked about the mixed clips, with the student's own draw
    seen = []
    real = teacher_mod.OnlineTeacher.logits

    def watch(self, index, perm=None, lam=1.0):
        seen.append((perm, lam))
        return real(self, index, perm, lam)

    monkeypatch.setattr(teacher_mod.OnlineTeacher, "logits", watch)
    mixed = _fit(esc, tmp_path, kd_teacher=_teacher(tmp_path, online=True), kd_lambda=0.9, kd_temperature=2.0)
    assert seen and all(p is not None and 0.0 <= lam <= 1.0 for p, lam in seen)
    c = mixed.backbone.state_dict()
    assert not all(torch.allclose(b[k], c[k]) for k in b)


def test_online_teacher_refuses_train_crop():
    with pytest.raises(Sp4scError) as err:
        SceneClassifier("sp4sc_w32", kd_teacher={"encoder": FakeEncoder.name, "online": True, "dt": 0.1},
                        kd_lambda=0.5, train_crop=0.3)
    assert "--model.kd_teacher.online" in str(err.value) and len(str(err.value).splitlines()) == 1


# ----------------------------------------------------------------------------- feature distillation

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


def test_feature_distillation_mixes_the_embeddings_with_the_labels(tmp_path):
    from sp4sc.data.augment import mixup_draw

    model = SceneClassifier("sp4sc_w32", kd_teacher=_teacher(tmp_path), kd_lambda=0.5, kd_embed_weight=1.0,
                            mixup_alpha=0.4)
    model.configure_data(["a", "b"])
    assert isinstance(model.kd_embed_head, torch.nn.Linear)
    assert (model.kd_embed_head.in_features, model.kd_embed_head.out_features) == (model.backbone.feature_dim,
                                                                                   FakeEncoder.dim)
    torch.manual_seed(1)
    model.kd_logits, model.kd_embeddings = torch.randn(6, 2), torch.randn(6, FakeEncoder.dim)
    index = torch.tensor([0, 2, 3, 5])
    batch = {"x": torch.randn(4, 1, 32, 64), "y": torch.tensor([0, 1, 1, 0]), "index": index}
    target = torch.nn.functional.one_hot(batch["y"], 2).float()
    x, mixed_target, teacher, emb = model._mixup(batch, batch["x"], target, torch.Generator().manual_seed(5), None, 0)
    perm, lam = mixup_draw(4, 0.4, torch.Generator().manual_seed(5))
    assert 0.0 < lam < 1.0

    def mix(a):
        return a * lam + a[perm] * (1 - lam)

    e = model.kd_embeddings[index]
    torch.testing.assert_close(emb, mix(e))
    torch.testing.assert_close(mixed_target, mix(target))
    torch.testing.assert_close(teacher, mix(torch.softmax(model.kd_logits[index], dim=1)))
    torch.testing.assert_close(x, mix(batch["x"]))


def test_feature_distillation_fit_trains_a_head_that_never_leaves_the_checkpoint(esc, tmp_path, monkeypatch):
    kd = _fit(esc, tmp_path, kd_teacher=_teacher(tmp_path), kd_lambda=0.9, kd_temperature=2.0)
    assert kd.kd_embed_head is None and kd.kd_embeddings is None
    head_inits = []
    real = teacher_mod.teacher_embeddings
    monkeypatch.setattr(teacher_mod, "teacher_embeddings", lambda *a, **k: head_inits.append(1) or real(*a, **k))
    feat = _fit(esc, tmp_path, kd_teacher=_teacher(tmp_path), kd_lambda=0.9, kd_temperature=2.0, kd_embed_weight=2.0)
    assert head_inits == [1]
    # the teacher's clip embeddings, standardised over the 12 training clips
    e = feat.kd_embeddings
    assert e.shape == (12, FakeEncoder.dim)
    torch.testing.assert_close(e.mean(dim=0), torch.zeros(FakeEncoder.dim), atol=1e-5, rtol=0)
    assert feat.kd_info["embed"] == {"weight": 2.0, "dim": FakeEncoder.dim}
    # the term changes the training; the head itself was trained (it is in the optimizer)
    a, b = kd.backbone.state_dict(), feat.backbone.state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7919)
        untrained = torch.nn.Linear(feat.backbone.feature_dim, FakeEncoder.dim)
    assert not torch.equal(untrained.weight, feat.kd_embed_head.weight)
    # the head is in the Lightning checkpoint (a fold resumes, validate loads strictly) ...
    path = tmp_path / "feat.ckpt"
    feat.trainer_.save_checkpoint(path)
    ck = torch.load(path, map_location="cpu", weights_only=True)
    head_keys = {k for k in ck["state_dict"] if not k.startswith("backbone.")}
    assert head_keys == {"kd_embed_head.weight", "kd_embed_head.bias"}
    again = SceneClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    torch.testing.assert_close(again.kd_embed_head.weight, feat.kd_embed_head.weight)
    assert ck["sp4sc"]["distillation"]["kd_embed_weight"] == 2.0
    # ... but never in the student: same parameters as the plain model, same outputs
    loaded = load_model(path)
    plain_params = sum(p.numel() for p in kd.backbone.parameters())
    assert sum(p.numel() for p in loaded.model.parameters()) == plain_params
    x = torch.randn(2, 1, 32, 64)
    feat.eval()
    torch.testing.assert_close(loaded.model(x), feat.backbone(x))
    from sp4sc.cli import main

    assert main(["export", "--ckpt", str(path), "--out", str(tmp_path / "export")]) == 0


def test_feature_distillation_arguments_are_checked(tmp_path):
    from test_lit import TinyNet

    teacher = {"encoder": FakeEncoder.name, "dt": 0.1}
    for kw, needle in [
        ({"kd_embed_weight": -1.0, "kd_teacher": teacher}, "--model.kd_embed_weight -1.0: must be >= 0"),
        ({"kd_embed_weight": 1.0}, "--model.kd_embed_weight 1.0: needs a teacher"),
        ({"kd_embed_weight": 1.0, "kd_teacher": {**teacher, "online": True}}, "drop --model.kd_teacher.online"),
        ({"kd_embed_weight": 1.0, "kd_teacher": teacher, "train_crop": 0.3}, "--model.train_crop"),
    ]:
        with pytest.raises(Sp4scError) as err:
            SceneClassifier("sp4sc_w32", **kw)
        assert needle in str(err.value) and len(str(err.value).splitlines()) == 1
    model = SceneClassifier(TinyNet(n_classes=2), kd_teacher=teacher, kd_embed_weight=1.0)
    with pytest.raises(Sp4scError, match="backbone 'tiny' has no logits_and_features"):
        model.configure_data(["a", "b"])
