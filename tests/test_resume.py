"""A fit killed part-way (SIGKILL in a subprocess) and resumed with --ckpt_path last ends with the same
weights as an uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sp4sc.cli import main

ROOT = Path(__file__).resolve().parents[1]
KILLER = """
import os, signal
from pytorch_lightning.callbacks import Callback


class KillMidEpoch(Callback):
    \"\"\"SIGKILL this process in the middle of epoch `epoch` (after the previous epoch's checkpoints).\"\"\"

    def __init__(self, epoch: int = 2, batch: int = 1):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
"""


def _args(toy_root, cache, out):
    # mixup, SpecAugment and dropout on: every random draw must line up after the restart
    return ["--config", str(ROOT / "recipes" / "demo.yaml"),
            "--data.root", str(toy_root), "--data.cache_dir", str(cache), "--data.toy_n_per_class_device", "2",
            "--data.toy_duration", "1.0", "--data.duration", "1.0", "--data.batch_size", "8",
            "--data.progress", "false", "--model.mixup_alpha", "0.3", "--model.spec_augment", "[16, 2, 8, 2]",
            "--model.backbone", "sp4sc_w32", "--trainer.max_epochs", "4", "--trainer.default_root_dir", str(out),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.logger", "false"]


def _weights(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_killed_fit_resumes_to_the_same_weights(tmp_path):
    from sp4sc.data.toy import ensure_toy_dataset

    toy = ensure_toy_dataset(tmp_path / "toy", n_per_class_device=2, duration=1.0)
    cache = tmp_path / "cache"
    (tmp_path / "killer.py").write_text(textwrap.dedent(KILLER))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}

    # 1. killed in the middle of epoch 2 (epochs 0 and 1 are checkpointed)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sp4sc", "fit", *_args(toy, cache, killed),
           "--trainer.callbacks+=killer.KillMidEpoch"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    last = killed / "checkpoints" / "last.ckpt"
    assert last.exists() and _weights(last)["epoch"] == 1
    resumed_from = _weights(last)["state_dict"]

    # 2. resumed from last.ckpt to the end
    proc = subprocess.run([sys.executable, "-m", "sp4sc", "fit", *_args(toy, cache, killed), "--ckpt_path", "last"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Restored all states" in proc.stdout + proc.stderr

    # 3. uninterrupted reference (in-process)
    whole = tmp_path / "whole"
    assert main(["fit", *_args(toy, cache, whole)]) == 0

    a, b = _weights(killed / "checkpoints" / "last.ckpt"), _weights(whole / "checkpoints" / "last.ckpt")
    assert a["epoch"] == b["epoch"] == 3 and a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    # and the resumed run really trained on: its weights left the epoch-1 checkpoint
    assert any(not torch.equal(a["state_dict"][k], v) for k, v in resumed_from.items() if v.is_floating_point())
