"""2-process DDP on CPU (gloo) on toy data: ranks see disjoint shards and agree on the synced metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORDER = """
import json, os
from pytorch_lightning.callbacks import Callback


class RecordShards(Callback):
    \"\"\"Write, per rank, the clip indices it trained / validated on and its synced validation report.\"\"\"

    def __init__(self, out: str):
        self.out, self.train, self.val = out, [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 0:
            self.train += batch["index"].tolist()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking and trainer.current_epoch == 0:
            self.val += batch["index"].tolist()

    def on_fit_end(self, trainer, pl_module):
        rec = {"rank": trainer.global_rank, "world": trainer.world_size, "train": self.train, "val": self.val,
               "report": pl_module.reports["val"], "logloss": float(trainer.callback_metrics["val/logloss"])}
        with open(os.path.join(self.out, f"rank{trainer.global_rank}.json"), "w") as fh:
            json.dump(rec, fh)
"""


@pytest.mark.slow
def test_two_process_ddp_shards_and_synced_metrics(tmp_path):
    from sp4sc.data.toy import ensure_toy_dataset

    toy = ensure_toy_dataset(tmp_path / "toy", n_per_class_device=2, duration=1.0)
    (tmp_path / "recorder.py").write_text(textwrap.dedent(RECORDER))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sp4sc", "fit", "--config", str(ROOT / "recipes" / "demo.yaml"),
           "--data.root", str(toy), "--data.cache_dir", str(tmp_path / "cache"),
           "--data.toy_n_per_class_device", "2", "--data.toy_duration", "1.0", "--data.duration", "1.0",
           "--data.batch_size", "4", "--data.progress", "false", "--model.backbone", "sp4sc_w32",
           "--trainer.max_epochs", "1", "--trainer.strategy", "ddp", "--trainer.devices", "2",
           "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path / "run"),
           "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
           "--trainer.logger", "false", "--trainer.num_sanity_val_steps", "0",
           "--trainer.callbacks+=recorder.RecordShards", f"--trainer.callbacks.out={tmp_path}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    n_train = len(ranks[0]["train"]) + len(ranks[1]["train"])
    n_val = len(ranks[0]["val"]) + len(ranks[1]["val"])
    # disjoint shards that together cover each split (toy: 60 clips, even split sizes, no sampler padding)
    assert set(ranks[0]["train"]).isdisjoint(ranks[1]["train"]) and ranks[0]["train"] and ranks[1]["train"]
    assert set(ranks[0]["val"]).isdisjoint(ranks[1]["val"]) and ranks[0]["val"] and ranks[1]["val"]
    assert len(set(ranks[0]["train"]) | set(ranks[1]["train"])) == n_train
    # synced metrics: both ranks report the same figures, computed over all validation clips
    assert ranks[0]["report"] == ranks[1]["report"]
    assert ranks[0]["logloss"] == pytest.approx(ranks[1]["logloss"], rel=1e-12)
    assert sum(map(sum, ranks[0]["report"]["confusion"])) == n_val
