"""DCASE complexity figures, MAC counters checked against the layer shapes, budget errors and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sp4sc.models.checkpoint import model_spec, save_model
from sp4sc.cli import main
from sp4sc.deploy.complexity import check_budget, complexity_report, count_params
from sp4sc.constants import SCENES
from sp4sc.errors import BudgetExceeded, Sp4scError
from sp4sc.frontend.features import frontend_preset
from sp4sc.models.fold import fold_batchnorm
from sp4sc.models import create_model

ROOT = Path(__file__).resolve().parents[1]


def test_sp4sc_golden_figures():
    r = complexity_report(create_model("sp4sc"), frontend_preset("sp4asc"), count_macs=False)
    assert r["params"] == 62_474
    assert r["bytes_fp16"] == 124_948 and r["kb_fp16"] == 122.0
    assert r["bytes_fp32"] == 4 * 62_474 and r["bytes_int8_weights_only"] == 62_474
    # int8 as stored: weights 1 B, conv/linear biases int32, a float32 scale per output channel, input affine float32
    # by hand: biases on sp_conv2 (448) + fc1 (128) + fc2 (10); scales: 3 x 448 block convs + 128 + 10 channels
    assert r["int8_bytes"] == {"int8_weights": 62_474 - 586 - 512, "int32_biases": 4 * 586, "float32_scales": 4 * 1_482,
                               "float32_other": 4 * 512, "total": 71_696}
    assert r["bytes_int8"] == 71_696
    assert r["state_dict_values_unfolded"] == 64_335
    assert r["params_unfolded"] == 62_922  # running statistics and num_batches_tracked are buffers
    assert r["folded"] is True and r["model"] == "sp4sc"
    assert check_budget(r)["within_budget"] is True
    json.dumps(r)  # JSON-able


def test_counts_exclude_buffers_and_track_zeros():
    m = fold_batchnorm(create_model("sp4sc_w32"))
    m.register_buffer("mel_fb", torch.ones(1025, 256))  # a fixed matrix is not a parameter
    before = count_params(m)
    assert before["params"] == sum(p.numel() for p in m.parameters())
    with torch.no_grad():
        m.fc1.weight.zero_()
        m.fc1.bias.fill_(1.0)
    after = count_params(m)
    assert after["params"] == before["params"]
    assert after["nonzero_params"] == before["params"] - m.fc1.weight.numel() - int((m.fc1.bias == 0).sum()) \
        - sum(int((p == 0).sum()) for n, p in m.named_parameters() if not n.startswith("fc1."))


def test_cnn6_is_over_budget_with_both_numbers():
    r = complexity_report(create_model("cnn6"), frontend_preset("panns"), count_macs=False)
    assert r["params"] == 4_571_274  # 4,572,234 minus one BN bias per block channel pair folded into a conv bias
    with pytest.raises(BudgetExceeded) as info:
        check_budget(r)
    msg = str(info.value)
    assert "4,571,274" in msg and "65,536" in msg and "9,142,548" in msg and "131,072" in msg
    assert info.value.exit_code == 3
    # a bytes-only limit at int8 passes the parameter count but still names the bytes
    with pytest.raises(BudgetExceeded, match="4,582,032 bytes at int8"):
        check_budget(r, max_params=None, max_bytes=131_072, precision="int8")


def _sp4sc_macs_by_hand(model, frames: int, mels: int) -> tuple[int, int]:
    """thop and torchinfo MACs of a folded SP4SC from its layer shapes alone."""
    thop = frames * mels  # per-mel affine: one multiply-add per input element
    tinfo = 2 * mels  # torchinfo charges a non-conv layer its parameter count once
    t, f = frames, mels
    for block in model.blocks:
        cin, cout = block.ch_conv1.in_channels, block.ch_conv1.out_channels
        pos = t * f
        thop += pos * cout * cin + 2 * pos * cout * 3  # 1x1 conv, two 3-tap depthwise convs
        tinfo += pos * (cout * cin) + pos * (cout * 3) + pos * (cout * 3 + cout)  # bias on sp_conv2 at every position
        t, f = t // 2, f // 2
        thop += cout * t * f  # thop counts one op per average-pooling output
    for fc in (model.fc1, model.fc2):
        thop += fc.in_features * fc.out_features
        tinfo += fc.in_features * fc.out_features + fc.out_features
    return thop, tinfo


@pytest.mark.parametrize("name,seconds", [("sp4sc", 10.0), ("sp4sc_d3", 1.0)])
def test_macs_match_the_layer_shapes(name, seconds):
    cfg = frontend_preset("sp4asc")
    model = create_model(name)
    r = complexity_report(model, cfg, duration=seconds)
    frames = cfg.frames_for(seconds)
    assert r["input_shape"] == [1, 1, frames, 256]
    thop, tinfo = _sp4sc_macs_by_hand(fold_batchnorm(model), frames, 256)
    assert r["macs_thop"] == thop
    assert r["macs_torchinfo"] == tinfo
    if name == "sp4sc":
        assert r["input_shape"] == [1, 1, 431, 256]
        assert 440e6 < r["macs_thop"] < 460e6  # about 0.45 G MACs per 10 s clip
        assert r["input_shape_1s"] == [1, 1, 44, 256]
        assert r["macs_1s_torchinfo"] == _sp4sc_macs_by_hand(fold_batchnorm(model), 44, 256)[1]
        with pytest.raises(BudgetExceeded, match=r"MACs per 1 s clip \(torchinfo\) > limit 30,000,000"):
            check_budget(r, max_macs_per_s=30_000_000)


def test_fast_path_model_is_counted_in_its_plain_form():
    cfg = frontend_preset("sp4asc")
    plain = complexity_report(create_model("sp4sc_d3"), cfg, duration=1.0)
    fast = complexity_report(create_model("sp4sc_d3", fast=True), cfg, duration=1.0)
    assert fast["model_kwargs"]["fast"] is False
    assert (fast["params"], fast["macs_thop"], fast["macs_torchinfo"]) == (
        plain["params"], plain["macs_thop"], plain["macs_torchinfo"])


def test_report_rejects_mismatched_front_end():
    with pytest.raises(Sp4scError, match="256 mel bins"):
        complexity_report(create_model("sp4sc"), frontend_preset("panns"), count_macs=False)


def test_cli_model_json_and_exit_codes(capsys):
    assert main(["complexity", "--model", "sp4sc", "--no-macs", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 62_474 and out["budget"]["within_budget"] is True
    assert main(["complexity", "--model", "cnn6", "--no-macs"]) == 3
    captured = capsys.readouterr()
    assert "4,571,274" in captured.err and "65,536" in captured.err
    assert "Traceback" not in captured.err
    assert main(["complexity", "--model", "cnn6", "--no-macs", "--no-budget"]) == 0
    assert "not checked" in capsys.readouterr().out
    assert main(["complexity", "--model", "nope"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_cli_config_with_init_args_and_bases(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text("data:\n  frontend: sp4asc\n  duration: 10.0\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "# bases: base.yaml\n"
        "model:\n  class_path: sp4sc.training.lit.SceneClassifier\n  init_args:\n"
        "    backbone: sp4sc_w32\n    backbone_kwargs: {dropout: 0.1}\n"
        "data:\n  init_args:\n    duration: 1.0\n"
    )
    assert main(["complexity", "--config", str(recipe), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "sp4sc_w32" and out["frontend"] == "sp4asc"
    assert out["duration"] == 1.0 and out["input_shape"] == [1, 1, 44, 256]
    assert out["model_kwargs"]["dropout"] == 0.1
    assert main(["complexity", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  frontend: sp4asc\n")
    assert main(["complexity", "--config", str(bad)]) == 2
    assert "model.backbone" in capsys.readouterr().err


def test_cli_on_the_project_recipes(capsys):
    recipes = ROOT / "recipes"
    assert main(["complexity", "--config", str(recipes / "sp4sc.yaml"), "--no-macs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 62_474
    assert main(["complexity", "--config", str(recipes / "cnn6.yaml"), "--no-macs"]) == 3


def test_cli_ckpt(tmp_path, capsys):
    m = create_model("sp4sc_w48")
    path = tmp_path / "m.pt"
    save_model(path, m, model_spec(m.arch_name, m.arch_kwargs, frontend_preset("sp4asc"), SCENES))
    assert main(["complexity", "--ckpt", str(path), "--duration", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "sp4sc_w48" and out["params"] == sum(p.numel() for p in fold_batchnorm(m).parameters())
    assert out["macs_thop"] > 0 and out["macs_torchinfo"] > out["macs_thop"] - 1e6
    assert main(["complexity", "--ckpt", str(tmp_path / "none.pt")]) == 2
