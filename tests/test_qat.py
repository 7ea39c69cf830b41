"""Quantisation-aware training (issue 30): fake-quantised folded model, plain checkpoints, int8 export."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sp4sc.deploy import onnx_export
from sp4sc.errors import Sp4scError
from sp4sc.models import create_model
from sp4sc.models.checkpoint import load_model
from sp4sc.models.fold import fold_batchnorm
from sp4sc.training.qat import prepare_qat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cv import make_esc_toy  # noqa: E402
from test_onnx_export import TINY, make_model_file, randomise_bn  # noqa: E402


@pytest.mark.parametrize("name", ["sp4sc_w32", "cnn6_w16"])
def test_prepare_qat_folds_quantises_and_keeps_plain_keys(name, tmp_path):
    torch.manual_seed(0)
    model = randomise_bn(create_model(name, n_mels=TINY.n_mels), 0)
    folded = fold_batchnorm(model)
    qat = prepare_qat(model)
    # the state dict is the plain folded model's: the fake quantisation adds no keys
    assert list(qat.state_dict()) == list(folded.state_dict()) and qat.arch_kwargs["folded"] is True
    x = torch.from_numpy(onnx_export.parity_inputs(TINY.n_mels, [(4, 40)], model=folded)[0])
    qat.train()
    qat(x)  # observe the activation ranges once
    qat.eval()
    with torch.no_grad():
        ref, out = folded(x), qat(x)
    assert not torch.equal(ref, out)  # int8 rounding is in the forward ...
    assert (ref - out).abs().max() < 0.1 * ref.abs().max() + 1e-3  # ... and close to the float model
    # straight-through gradients reach every weight
    qat.train()
    qat(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in qat.parameters())
    # the weights a conv sees are int8 on a per-channel grid
    conv = next(m for m in qat.modules() if isinstance(m, torch.nn.Conv2d))
    from sp4sc.training.qat import _fake_quant_weight

    w = _fake_quant_weight(conv.weight.detach())
    steps = w.reshape(w.shape[0], -1) / (conv.weight.detach().reshape(w.shape[0], -1).abs().amax(1, keepdim=True) / 127)
    assert torch.allclose(steps, steps.round(), atol=1e-3)


def test_qat_from_must_match_the_recipe_model(tmp_path):
    ckpt = make_model_file(tmp_path / "m.pt", "sp4sc_w32")
    with pytest.raises(Sp4scError, match="--model.qat_from .*start from a checkpoint of the recipe's model"):
        prepare_qat(create_model("sp4sc_w48", n_mels=TINY.n_mels), str(ckpt))


@pytest.mark.slow
def test_qat_fine_tune_checkpoint_loads_strictly_and_exports_int8(tmp_path):
    import pytorch_lightning as pl

    from sp4sc.data.datamodule import SceneDataModule
    from sp4sc.training.lit import SceneClassifier

    data = make_esc_toy(tmp_path / "esc", folds=2, per_class=4)

    def trainer(root: Path) -> pl.Trainer:
        return pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                          default_root_dir=str(root), accelerator="cpu", devices=1)

    def datamodule() -> SceneDataModule:
        return SceneDataModule(dataset="esc", root=str(data), frontend="demo", duration=0.5, fold=1, batch_size=4,
                               num_workers=0, cache_dir=str(tmp_path / "cache"), progress=False)

    t = trainer(tmp_path / "plain")
    t.fit(SceneClassifier("sp4sc_w32", lr=3e-3), datamodule=datamodule())
    plain = tmp_path / "plain.ckpt"
    t.save_checkpoint(plain)
    with pytest.raises(Sp4scError, match="--model.qat_from: only with --model.qat true"):
        SceneClassifier("sp4sc_w32", qat_from=str(plain)).configure_data(["dog", "rain"])
    q = trainer(tmp_path / "qat")
    module = SceneClassifier("sp4sc_w32", lr=1e-4, qat=True, qat_from=str(plain))
    q.fit(module, datamodule=datamodule())
    assert module.backbone.qat and any(type(m).__name__ == "_QATConv2d" for m in module.backbone.modules())
    # the fake quantisation was not bypassed: no CPU path (raw-weight kernels), no compile, no bf16
    assert module.train_setup["cpu_path"] is False and not module.train_setup["compile"] and not module.train_setup["bf16"]
    assert not any(getattr(m, "cpu_path", False) for m in module.backbone.modules())
    qckpt = tmp_path / "qat.ckpt"
    q.save_checkpoint(qckpt)
    loaded = load_model(qckpt)  # strict
    assert loaded.model_kwargs["folded"] is True and not getattr(loaded.model, "qat", False)
    start = fold_batchnorm(load_model(plain).model).state_dict()
    moved = [k for k, v in loaded.model.state_dict().items() if not torch.equal(v, start[k])]
    assert moved  # the fine-tune changed the folded weights
    calib = onnx_export.parity_inputs(loaded.frontend.n_mels, [(8, loaded.frontend.n_frames)], model=loaded.model)[0]
    report = onnx_export.export_onnx(loaded, tmp_path / "exp", int8=True, calib=calib)
    assert (tmp_path / "exp" / "model_int8.onnx").is_file()
    assert report["parity"]["variants"]["int8"]["mean_abs_prob"] < 0.05
