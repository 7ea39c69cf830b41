"""The CPU training path of SP4SC equals the plain path (float64): forward, gradients, BN statistics."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from sp4sc.models import create_model, list_models
from sp4sc.models.cpu_ops import PlusDepthwise, first_block_conv, plus_kernel

SP4SC_VARIANTS = [name for name in list_models() if name.startswith("sp4sc")]


def _pair(name: str, n_mels: int):
    torch.manual_seed(0)
    plain = create_model(name, n_classes=5, n_mels=n_mels, dropout=0.0).double().train()
    # non-trivial BN affine and kernels so that every tap matters
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.1 * torch.randn_like(p))
    cpu = copy.deepcopy(plain).set_cpu_path(True)
    return plain, cpu


def _run(model, x, y):
    x = x.clone().requires_grad_(True)
    out = model(x)
    loss = F.cross_entropy(out, y) + out.pow(2).mean()  # a loss with a gradient on every logit
    loss.backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("name", SP4SC_VARIANTS)
@pytest.mark.parametrize("frames,batch", [(32, 1), (43, 3), (64, 2)])
def test_cpu_path_equals_plain(name, frames, batch):
    n_mels = 32
    plain, cpu = _pair(name, n_mels)
    torch.manual_seed(1)
    x = torch.randn(batch, 1, frames, n_mels, dtype=torch.float64)
    y = torch.randint(0, 5, (batch,))
    out_p, gx_p = _run(plain, x, y)
    out_c, gx_c = _run(cpu, x, y)
    assert torch.allclose(out_c, out_p, rtol=0, atol=1e-9), (out_c - out_p).abs().max()
    assert torch.allclose(gx_c, gx_p, rtol=0, atol=1e-9)
    grads_p = dict(plain.named_parameters())
    for key, p in cpu.named_parameters():
        ref = grads_p[key].grad
        assert p.grad is not None, key
        scale = max(1.0, float(ref.abs().max()))
        assert torch.allclose(p.grad, ref, rtol=0, atol=1e-9 * scale), (key, (p.grad - ref).abs().max())
    buffers_p = dict(plain.named_buffers())
    for key, b in cpu.named_buffers():
        assert torch.equal(b, buffers_p[key]) if b.dtype == torch.long else torch.allclose(
            b, buffers_p[key], rtol=0, atol=1e-9), key
    # the state dict is untouched by the switch
    assert list(cpu.state_dict()) == list(plain.state_dict())


def test_cpu_path_can_be_switched_off():
    plain, cpu = _pair("sp4sc", 32)
    cpu.set_cpu_path(False)
    assert not any(block.cpu_path for block in cpu.blocks)


def test_plus_depthwise_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(3, 1, 3, 1, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(3, 1, 1, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(PlusDepthwise.apply, (x, w1, w2))
    # and the forward is the plain sum of the two dilated depthwise convs
    ref = F.conv2d(x, w1, padding=(2, 0), dilation=(2, 1), groups=3) + F.conv2d(
        x, w2, padding=(0, 2), dilation=(1, 2), groups=3)
    assert torch.allclose(PlusDepthwise.apply(x, w1, w2), ref, atol=1e-12)


def test_first_block_conv_matches_two_convs():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 9, 8, dtype=torch.float64, requires_grad=True)
    w_ch = torch.randn(4, 1, 1, 1, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(4, 1, 3, 1, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(4, 1, 1, 3, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(F.conv2d(x, w_ch), plus_kernel(w1, w2), padding=2, groups=4)
    assert torch.allclose(first_block_conv(x, w_ch, w1, w2), ref, atol=1e-12)
    assert torch.autograd.gradcheck(first_block_conv, (x, w_ch, w1, w2))


def test_bench_train_reports_both_paths_and_the_traffic_bound(capsys, monkeypatch):
    import json
    import statistics
    import sys

    from sp4sc.cli import main

    monkeypatch.setenv("SP4SC_COMPILE", "0")  # no compile here (the workers inherit it): seconds, not minutes
    assert main(["bench", "train", "--frames", "0.1", "--steps", "1", "--rounds", "3", "--warmup", "0",
                 "--models", "sp4sc", "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    paths = {r["path"]: r for r in out["results"]}
    assert set(paths) == {"plain", "cpu"} and out["ratios"]["sp4sc"] > 0
    # each path in its own process: the CPU path's process-wide allocator setting never reaches the plain path
    assert paths["plain"]["keep_freed_memory"] is False
    if sys.platform == "linux":
        assert paths["cpu"]["keep_freed_memory"] is True
    # rounds alternate the paths; clips/s is the median round and the ratio the median per-round ratio
    rates = {p: r["round_clips_per_s"] for p, r in paths.items()}
    assert len(rates["plain"]) == len(rates["cpu"]) == 3
    assert paths["plain"]["clips_per_s"] == pytest.approx(statistics.median(rates["plain"]))
    per_round = [c / p for c, p in zip(rates["cpu"], rates["plain"])]
    assert out["ratios"]["sp4sc"] == pytest.approx(statistics.median(per_round))
    assert out["ratio_ranges"]["sp4sc"] == pytest.approx([min(per_round), max(per_round)])
    assert paths["cpu"]["traffic_mb_per_clip"] == paths["plain"]["traffic_mb_per_clip"] > 0
    assert out["copy_bandwidth_gbs"] > 0 and paths["plain"]["traffic_bound_clips_per_s"] > 0
    # compute bound: the matrix-product rate over three forward passes of multiply-adds per clip
    plain = paths["plain"]
    assert plain["forward_macs_per_clip"] > 1e6 and out["gemm_gmacs"]["float32"] > 0
    assert plain["compute_bound_clips_per_s"] == pytest.approx(
        out["gemm_gmacs"]["float32"] * 1e9 / (3 * plain["forward_macs_per_clip"]))
    assert plain["achieved_gmacs"] == pytest.approx(plain["clips_per_s"] * 3 * plain["forward_macs_per_clip"] / 1e9)
    assert 0 < plain["share_of_gemm_rate"] == pytest.approx(plain["achieved_gmacs"] / out["gemm_gmacs"]["float32"])
    assert "AVX-512" in out["cpu"] and out["implied"]["esc10_5folds_200_epochs_h"] > 0


def test_bf16_autocast_switches_itself_off_without_native_bf16(monkeypatch):
    import torch

    from sp4sc import cpu
    from sp4sc.training.lit import SceneClassifier

    monkeypatch.setenv("SP4SC_CPU_BF16", "0")
    assert not cpu.has_native_bf16()
    model = SceneClassifier("sp4sc_w32", cpu_bf16=True, compile_backbone=False)
    model.configure_data([f"c{i}" for i in range(3)])
    setup = model.setup_cpu_training()
    assert setup == {**setup, "device": "cpu", "cpu_path": True, "compile": False, "bf16": False}
    assert all(block.cpu_path for block in model.backbone.blocks)
    monkeypatch.setenv("SP4SC_CPU_BF16", "1")  # a CPU that has it: on by default
    model = SceneClassifier("sp4sc_w32", compile_backbone=False)
    model.configure_data([f"c{i}" for i in range(3)])
    assert model.setup_cpu_training()["bf16"] is True
    x = torch.randn(2, 1, 32, 256)
    assert model._train_forward(x).shape == (2, 3)
