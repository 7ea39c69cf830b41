"""What the distillation tests share: the fake encoder registered, a tiny ESC-format set, its datamodule
and teacher settings (imported by test_kd.py and test_kd_crossfit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sp4sc.data.datamodule import SceneDataModule
from sp4sc.probes.encoders import ENCODERS, register_encoder
from sp4sc.probes.fake import FakeEncoder
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


def kd_dm(root: Path, tmp: Path, fold: int = 1) -> SceneDataModule:
    """The toy set's datamodule (demo front end, 0.5 s, batch 4, features cached under ``tmp``)."""
    return SceneDataModule(dataset="esc", root=str(root), frontend="demo", duration=0.5, fold=fold, batch_size=4,
                           cache_dir=str(tmp / "features"), progress=False, num_workers=0, keep_on_device=True)


def teacher_settings(tmp: Path, **kw) -> dict:
    """``--model.kd_teacher`` of a random fake encoder at δt 0.25 s with its caches under ``tmp``."""
    return {"encoder": FakeEncoder.name, "random_init": True, "dt": 0.25, "probe": dict(PROBE), "device": "cpu",
            "cache_dir": str(tmp / "kdcache"), **kw}
