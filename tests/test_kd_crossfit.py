"""Out-of-fold (cross-fitted) teacher targets: ``--model.kd_teacher.cross_fit k``.

For the training clips of a CV fold, each clip's teacher target comes from a probe fitted on
the other inner folds, never on a probe that saw that clip with its label. Shown here on a tiny
ESC-format set (3 folds x 2 classes x 3 clips) with the fake encoder: no clip's own label leaks
into its target (its target is bit-for-bit the same when its label is flipped, while the
in-sample teacher's follows the flip), the inner folds keep ESC's official folds whole, the
targets are deterministic, and a killed teacher or KD fit resumes from its cache.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from sp4sc.data.datamodule import SceneDataModule
from sp4sc.data.index import Clip
from sp4sc.errors import Sp4scError
from sp4sc.probes import teacher as teacher_mod
from sp4sc.probes.fake import FakeEncoder
from sp4sc.probes.teacher import TeacherConfig, compute_teacher, inner_folds, teacher_key
from sp4sc.training.lit import SceneClassifier
from kd_toy import PROBE, ROOT, esc, fake_registered, kd_dm, teacher_settings  # noqa: F401 (fixtures)

def _dm(root: Path, tmp: Path, fold: int = 1) -> SceneDataModule:
    return kd_dm(root, tmp, fold)


def _cfg(tmp: Path, **kw) -> TeacherConfig:
    return TeacherConfig.from_dict(teacher_settings(tmp, **kw))


class _Data:
    """The three things the teacher reads from a datamodule, with the training labels replaceable."""

    def __init__(self, dm: SceneDataModule, train: list[Clip]):
        self.classes = dm.classes
        self._dm, self._train = dm, train

    def index(self):
        return self._dm.index()

    def clips(self, stage: str) -> list[Clip]:
        return list(self._train) if stage == "train" else self._dm.clips(stage)


# ----------------------------------------------------------------------------- inner folds

def test_inner_folds_keep_groups_whole_and_are_deterministic():
    # ESC-50's outer fold 1: the training clips of official folds 2-5, 4 inner folds = the 4 official folds
    clips = [Clip(f"{f}-{i}-A-{i % 3}.flac", label=i % 3, fold=f) for f in (2, 3, 4, 5) for i in range(10)]
    folds = inner_folds(clips, 4)
    by_official = {f: {folds[j] for j, c in enumerate(clips) if c.fold == f} for f in (2, 3, 4, 5)}
    assert all(len(v) == 1 for v in by_official.values())  # a group (an official fold) is never split
    assert sorted(v.pop() for v in by_official.values()) == [0, 1, 2, 3]
    # independent of the clips' order, repeatable
    shuffled = clips[:]
    random.Random(1).shuffle(shuffled)
    again = dict(zip((c.path for c in shuffled), inner_folds(shuffled, 4)))
    assert again == dict(zip((c.path for c in clips), folds))
    with pytest.raises(Sp4scError, match=r"cross_fit 5: the 40 training clips form only 4 groups"):
        inner_folds(clips, 5)
    # TAU: a recording location stays in one inner fold; clips without groups are balanced one by one
    tau = [Clip(f"a-{i}.wav", label=0, location=f"loc{i // 3}") for i in range(30)]
    f_tau = inner_folds(tau, 5)
    assert all(len({f_tau[j] for j in range(30) if tau[j].location == loc}) == 1 for loc in {c.location for c in tau})
    loose = [Clip(f"b-{i}.wav", label=0) for i in range(23)]
    assert sorted(np.bincount(inner_folds(loose, 5)).tolist()) == [4, 4, 5, 5, 5]


def test_cross_fit_settings_are_checked(esc, tmp_path):
    with pytest.raises(Sp4scError, match=r"kd_teacher.cross_fit 1: give the number of inner folds"):
        _cfg(tmp_path, cross_fit=1)
    with pytest.raises(Sp4scError, match=r"kd_teacher.cross_fit 'two': expected an integer"):
        _cfg(tmp_path, cross_fit="two")
    assert _cfg(tmp_path, cross_fit="4").cross_fit == 4  # from the command line
    with pytest.raises(Sp4scError, match=r"cross_fit 3: the 12 training clips form only 2 groups"):
        compute_teacher(_dm(esc, tmp_path), _cfg(tmp_path, cross_fit=3))


# ----------------------------------------------------------------------------- no leak

def test_no_clips_own_label_leaks_into_its_target(esc, tmp_path, monkeypatch):
    """Each clip's embedding is its own one-hot: its label is predictable from the clip itself only.

    The in-sample teacher (cross_fit 0) memorises every label, so its target for a clip follows that
    clip's label when it is flipped. The out-of-fold target of the clip is bit-for-bit unchanged by the
    flip: no probe that produced it saw the clip's label.
    """
    dm = _dm(esc, tmp_path)
    train = list(dm.clips("train"))
    everyone = sorted({c.path for s in ("train", "val") for c in dm.clips(s)})

    def identity(self, paths):
        x = np.zeros((len(paths), len(everyone)), dtype=np.float32)
        for i, p in enumerate(paths):
            x[i, everyone.index(p)] = 1.0
        return x

    monkeypatch.setattr(teacher_mod._Teacher, "clip_embeddings", identity)
    probe = {"epochs": 60, "lr": 0.1}

    def targets(clips, k):
        cfg = _cfg(tmp_path, cross_fit=k, probe=probe)
        return compute_teacher(_Data(dm, clips), cfg, stages=("train",), use_cache=False).logits["train"]

    oof, ins = targets(train, 2), targets(train, 0)
    labels = torch.tensor([c.label for c in train])
    assert (ins.argmax(1) == labels).all()  # the in-sample fit reproduces every label from the clip itself
    # one clip of each (official fold, class): both inner folds, both labels
    picks = sorted({(c.fold, c.label): i for i, c in enumerate(train)}.values())
    assert len(picks) == 4
    for i in picks:
        flipped = train[:i] + [dataclasses.replace(train[i], label=1 - train[i].label)] + train[i + 1:]
        assert torch.equal(targets(flipped, 2)[i], oof[i]), train[i].path  # no leak: the own label changes nothing
        ins_flipped = targets(flipped, 0)[i]
        assert int(ins_flipped.argmax()) == 1 - train[i].label  # the in-sample target follows the flip
        assert not torch.equal(ins_flipped, ins[i])


def test_each_inner_probe_is_fitted_on_the_other_official_folds(esc, tmp_path, monkeypatch):
    fed = []
    real = teacher_mod.train_probe

    def spy(x_train, y_train, *args, **kwargs):
        fed.append(len(x_train))
        return real(x_train, y_train, *args, **kwargs)

    monkeypatch.setattr(teacher_mod, "train_probe", spy)
    dm = _dm(esc, tmp_path)
    out = compute_teacher(dm, _cfg(tmp_path, cross_fit=2), stages=("train", "val"))
    train, val = dm.clips("train"), dm.clips("val")
    assert {c.fold for c in train} == {2, 3} and {c.fold for c in val} == {1}
    # two inner probes on 6 clips each (one official fold) + the probe on all 12 for the validation clips
    assert sorted(fed) == [6, 6, 12]
    labelled_by = {}
    for i in range(2):
        rec = json.loads((out.folder / f"probe_inner{i}of2.json").read_text())
        (fold,) = {int(Path(p).name.split("-")[0]) for p in rec["fit_clips"]}
        labelled_by[i] = fold
        assert not {c.path for c in val} & set(rec["fit_clips"])
    assert sorted(labelled_by.values()) == [2, 3]
    # the inner probe fitted on fold 2 labels the fold-3 clips and vice versa: recompute one row by hand
    from sp4sc.models.checkpoint import read_checkpoint
    from sp4sc.probes.probe import make_probe_module

    teacher = teacher_mod._Teacher(_cfg(tmp_path, cross_fit=2), Path(dm.index().root), 2, out.folder,
                                   tmp_path / "kdcache")
    fold_of = inner_folds(train, 2)
    j = next(n for n, c in enumerate(train) if c.fold == 3)
    i = fold_of[j]
    assert labelled_by[i] == 2  # clip j (fold 3) is labelled by the probe fitted on fold 2 only
    state = read_checkpoint(out.folder / f"probe_inner{i}of2.pt")
    dim = int(state["mean"].shape[0])
    probe = make_probe_module(dim, 2, teacher.cfg.probe, np.zeros(dim), np.ones(dim))
    probe.load_state_dict(state, strict=True)
    with torch.no_grad():
        by_hand = probe.eval()(torch.from_numpy(teacher.clip_embeddings([train[j].path])))[0]
    torch.testing.assert_close(out.logits["train"][j], by_hand.float())
    assert out.accuracy["train"] == 1.0 and out.accuracy["val"] == 1.0  # the toy classes are separable


def test_cross_fitted_targets_are_deterministic_and_cached_apart(esc, tmp_path):
    dm = _dm(esc, tmp_path)
    a = compute_teacher(dm, _cfg(tmp_path / "a", cross_fit=2), stages=("train", "val"))
    b = compute_teacher(dm, _cfg(tmp_path / "b", cross_fit=2), stages=("train", "val"))
    assert torch.equal(a.logits["train"], b.logits["train"]) and torch.equal(a.logits["val"], b.logits["val"])
    ins = compute_teacher(dm, _cfg(tmp_path / "a"), stages=("train", "val"))
    assert ins.folder != a.folder and not torch.equal(ins.logits["train"], a.logits["train"])
    # the validation clips get the probe on all training clips in both modes
    torch.testing.assert_close(ins.logits["val"], a.logits["val"])
    # the in-sample key is the one made before cross_fit existed (no new field in its digest)
    cfg = _cfg(tmp_path)
    key = teacher_key(cfg, dm.classes, dm.clips("train"), Path(dm.index().root))
    fields = dataclasses.asdict(key)
    fields.pop("cross_fit")
    old = __import__("hashlib").sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    assert key.digest() == old


# ----------------------------------------------------------------------------- resume

def test_killed_teacher_resumes_from_its_cached_probes(esc, tmp_path, monkeypatch):
    dm = _dm(esc, tmp_path)
    whole = compute_teacher(dm, _cfg(tmp_path / "whole", cross_fit=2), stages=("train", "val"))
    real, calls = teacher_mod.train_probe, []

    def dies_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while fitting the second inner probe
        return real(*args, **kwargs)

    monkeypatch.setattr(teacher_mod, "train_probe", dies_on_second)
    cfg = _cfg(tmp_path / "killed", cross_fit=2)
    with pytest.raises(KeyboardInterrupt):
        compute_teacher(dm, cfg, stages=("train", "val"))
    monkeypatch.setattr(teacher_mod, "train_probe", lambda *a, **k: calls.append(1) or real(*a, **k))
    calls.clear()
    resumed = compute_teacher(dm, cfg, stages=("train", "val"))
    assert len(calls) == 2  # the first inner probe came from its cache; the second and the full one are fitted
    assert torch.equal(resumed.logits["train"], whole.logits["train"])
    assert torch.equal(resumed.logits["val"], whole.logits["val"])
    calls.clear()
    again = compute_teacher(dm, cfg, stages=("train", "val"))  # everything cached: nothing fitted, nothing computed
    assert again.computed == 0 and not calls and torch.equal(again.logits["train"], whole.logits["train"])


def _trainer(tmp: Path, epochs: int) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp)


def _kd_model(tmp: Path) -> SceneClassifier:
    # cosine_epochs fixed: the schedule of the run stopped after one epoch is the 2-epoch one
    return SceneClassifier("sp4sc_w32", mixup_alpha=0.4, spec_augment=[4, 1, 4, 1], lr=5e-3, cosine_epochs=2,
                           kd_teacher=_cfg(tmp, cross_fit=2).to_dict(), kd_lambda=0.9, kd_temperature=2.0)


def test_killed_kd_fit_resumes_from_its_cached_targets(esc, tmp_path, monkeypatch):
    pl.seed_everything(0, verbose=False)
    whole = _kd_model(tmp_path)
    _trainer(tmp_path / "whole", 2).fit(whole, datamodule=_dm(esc, tmp_path))
    assert whole.distill.info["cross_fit"] == 2 and whole.distill.logits.shape == (12, 2)
    # the same run killed after its first epoch (its teacher cached), then resumed from the epoch checkpoint
    pl.seed_everything(0, verbose=False)
    first = _kd_model(tmp_path)
    _trainer(tmp_path / "killed", 1).fit(first, datamodule=_dm(esc, tmp_path))
    (ckpt,) = (tmp_path / "killed").rglob("*.ckpt")
    monkeypatch.setattr(teacher_mod, "train_probe", lambda *a, **k: pytest.fail("resume refitted a teacher probe"))
    computed = []
    real_compute = teacher_mod.compute_teacher
    monkeypatch.setattr(teacher_mod, "compute_teacher",
                        lambda *a, **k: (lambda out: computed.append(out.computed) or out)(real_compute(*a, **k)))
    pl.seed_everything(0, verbose=False)
    resumed = _kd_model(tmp_path)
    _trainer(tmp_path / "killed", 2).fit(resumed, datamodule=_dm(esc, tmp_path), ckpt_path=str(ckpt))
    assert computed and all(c == 0 for c in computed)  # every target read from the cache
    assert torch.equal(resumed.distill.logits, whole.distill.logits)
    a, b = whole.backbone.state_dict(), resumed.backbone.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # and the resumed run ends where the uninterrupted one did


# ----------------------------------------------------------------------------- the recipe

def test_esc50_kd_recipe_is_the_plain_recipe_plus_an_out_of_fold_teacher():
    import yaml

    from sp4sc.commands.lightning import expand_configs

    args = expand_configs(["--config", str(ROOT / "recipes" / "esc50_sp4sc_kd.yaml")])
    files = [Path(a) for a in args if a != "--config"]
    assert [f.name for f in files][-2:] == ["esc50_sp4sc.yaml", "esc50_sp4sc_kd.yaml"]
    kd = yaml.safe_load(files[-1].read_text())
    plain = yaml.safe_load(files[-2].read_text())
    assert kd["model"]["backbone"] == plain["model"]["backbone"] and kd["data"]["frontend"] == plain["data"]["frontend"]
    # seed, epochs, batch, lr, augmentation and precise BN come from the base: the runs differ by the teacher alone
    assert set(kd["model"]) == {"backbone", "kd_teacher", "kd_lambda", "kd_temperature"}
    assert set(kd["data"]) == {"frontend"} and set(kd["trainer"]) == {"default_root_dir"} and "seed_everything" not in kd
    cfg = TeacherConfig.from_dict(kd["model"]["kd_teacher"])
    assert cfg.ckpt is None and cfg.encoder == "efficientat_mn04" and cfg.dt == 5.0
    assert cfg.cross_fit == 4  # ESC-50: an outer fold's four official training folds


# ----------------------------------------------------------------------------- a fine-tuned teacher

def _inner_cv(data: Path, out: Path, cache: Path, folds: list[int]) -> Path:
    from sp4sc.cli import main

    argv = ["cv", "--config", str(ROOT / "recipes" / "esc10_sp4sc.yaml"), "--data.root", str(data),
            "--folds", *map(str, folds), "--out", str(out), "--data.frontend", "demo", "--data.duration", "0.5",
            "--data.batch_size", "4", "--data.cache_dir", str(cache), "--data.progress", "false",
            "--model.backbone", "sp4sc_w32", "--model.spec_augment", "[4, 1, 4, 1]", "--trainer.max_epochs", "1",
            "--trainer.enable_model_summary", "false", "--trainer.logger", "false"]
    assert main(argv) == 0
    return out


@pytest.mark.slow
def test_finetuned_teacher_targets_are_out_of_fold(esc, tmp_path):
    from sp4sc.frontend.audio import load_audio
    from sp4sc.frontend.features import LogMel
    from sp4sc.models.checkpoint import load_model

    # outer fold 1: the inner cross-validation runs on folds 2 and 3 only, one fit validated on each
    inner = teacher_mod.inner_cv_root(esc, 1, tmp_path / "outer1")
    cvdir = _inner_cv(inner, tmp_path / "cv_outer1", tmp_path / "features", [2, 3])
    dm = _dm(esc, tmp_path)
    cfg = _cfg(tmp_path, finetuned=str(cvdir))
    out = compute_teacher(dm, cfg, stages=("train", "val"))
    train = dm.clips("train")
    models = {m.fold: m for m in teacher_mod.finetuned_models(cvdir)}
    assert sorted(models) == [2, 3] and all(not {c.path for c in dm.clips("val")} & m.trained_on
                                            for m in models.values())
    # a fold-2 clip's target is the prediction of the fit validated on fold 2 (trained on fold 3 alone)
    j = next(n for n, c in enumerate(train) if c.fold == 2)
    assert train[j].path not in models[2].trained_on and train[j].path in models[3].trained_on
    loaded = load_model(models[2].checkpoint)
    wav = torch.from_numpy(load_audio(Path(dm.index().root) / train[j].path, loaded.frontend.sample_rate,
                                      loaded.frontend.duration))[None]
    with torch.no_grad():
        by_hand = loaded.model(LogMel(loaded.frontend)(wav).unsqueeze(1))[0]
    torch.testing.assert_close(out.logits["train"][j], by_hand.float())
    again = compute_teacher(dm, cfg, stages=("train", "val"))  # cached
    assert again.computed == 0 and torch.equal(again.logits["train"], out.logits["train"])
    # refused: fits that saw the outer validation fold (an inner CV over the full dataset) ...
    leaky = _inner_cv(esc, tmp_path / "cv_full", tmp_path / "features", [2, 3])
    with pytest.raises(Sp4scError, match=r"was trained on 6 clips of this run's validation fold"):
        compute_teacher(dm, _cfg(tmp_path, finetuned=str(leaky)), stages=("train", "val"))
    # ... a missing inner fold, and the combinations that are not out-of-fold
    (cvdir / "fold3" / "result.json").rename(cvdir / "fold3" / "result.moved")
    with pytest.raises(Sp4scError, match=r"no inner fit validated on fold 3"):
        compute_teacher(dm, cfg, stages=("train", "val"), use_cache=False)
    with pytest.raises(Sp4scError, match=r"kd_teacher.finetuned with"):
        _cfg(tmp_path, finetuned=str(cvdir), cross_fit=2)
    with pytest.raises(Sp4scError, match=r"kd_teacher.finetuned /no/such: no such folder"):
        compute_teacher(dm, _cfg(tmp_path, finetuned="/no/such"))
