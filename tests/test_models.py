"""Model registry, shapes, counts, gradients and the SP4SC fast path."""

from __future__ import annotations

import pytest
import torch

from sp4sc.errors import Sp4scError
from sp4sc.frontend.features import PRESETS, frontend_preset
from sp4sc.models import create_model, list_models, model_entry

ALL = list_models()
SP4SC_FAMILY = [n for n in ALL if n.startswith("sp4sc")]


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _n_state(m: torch.nn.Module) -> int:
    return sum(v.numel() for v in m.state_dict().values())


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.rand(n, generator=g) * 4 - 2)
            mod.running_var.copy_(torch.rand(n, generator=g) * 3 + 0.01)
            mod.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            mod.bias.data.copy_(torch.rand(n, generator=g) * 2 - 1)


def test_registry_has_both_families_and_named_variants():
    assert "cnn6" in ALL and "sp4sc" in ALL and "cpmobile" in ALL
    assert {"sp4sc_w32", "sp4sc_w48", "sp4sc_d3"} <= set(ALL)
    for name in ALL:
        if name.startswith(("cnn6", "sp4sc", "cpmobile")):
            assert model_entry(name).frontend in PRESETS, name
    with pytest.raises(Sp4scError, match="unknown model 'resnet'"):
        create_model("resnet")
    with pytest.raises(Sp4scError, match="bad option"):
        create_model("sp4sc", widht=3)


def test_cnn6_counts_are_panns():
    m = create_model("cnn6", n_classes=10, n_mels=64)
    assert _n_params(m) == 4_572_234
    assert _n_state(m) == 4_574_287
    keys = set(m.state_dict())
    assert {"bn0.running_var", "conv_block4.conv1.weight", "conv_block4.bn1.weight", "fc1.bias", "fc_audioset.weight"} <= keys
    assert tuple(m.state_dict()["conv_block2.conv1.weight"].shape) == (128, 64, 5, 5)


def test_sp4sc_counts_and_keys_are_sp4ascs():
    m = create_model("sp4sc", n_classes=10, n_mels=256)
    assert _n_state(m) == 64_335
    # SP4ASC's state-dict layout (valeoai/SP4ASC sp4asc/models/cnns.py, Cnn6_60k).
    expected = {f"bn0.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    for i in range(1, 5):
        expected |= {f"conv{i}.bn.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
        expected |= {f"conv{i}.ch_conv1.weight", f"conv{i}.sp_conv1.weight", f"conv{i}.sp_conv2.weight"}
    expected |= {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert set(m.state_dict()) == expected
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes["conv1.ch_conv1.weight"] == (64, 1, 1, 1)
    assert shapes["conv3.sp_conv1.weight"] == (128, 1, 3, 1)
    assert shapes["conv3.sp_conv2.weight"] == (128, 1, 1, 3)
    assert m.conv2.sp_conv1.dilation == (2, 1) and m.conv2.sp_conv1.padding == (2, 0)
    assert m.conv2.sp_conv2.dilation == (1, 2) and m.conv2.sp_conv2.padding == (0, 2)


def test_variants_differ_in_size_and_rebuild_from_arch_kwargs():
    sizes = {name: _n_params(create_model(name)) for name in SP4SC_FAMILY}
    assert sizes["sp4sc_w32"] < sizes["sp4sc_w48"] < sizes["sp4sc"] < sizes["sp4sc_w96"]
    assert sizes["sp4sc_d3"] < sizes["sp4sc"]
    for name in ALL:
        m = create_model(name, n_classes=7)
        assert m.arch_name == name
        again = create_model(m.arch_name, **m.arch_kwargs)
        again.load_state_dict(m.state_dict(), strict=True)
        assert again.arch_kwargs == m.arch_kwargs


@pytest.mark.parametrize("name", ALL)
def test_forward_any_length_and_batch(name):
    torch.manual_seed(0)
    cfg = frontend_preset(model_entry(name).frontend)
    m = create_model(name, n_classes=10, n_mels=cfg.n_mels).eval()
    heavy = name == "cnn6"
    with torch.no_grad():
        for seconds, batch in ((10.0, 1), (5.0, 1 if heavy else 2), (1.0, 3)):
            frames = cfg.frames_for(seconds)
            x = torch.randn(batch, 1, frames, cfg.n_mels) * 10 - 40  # dB-like
            y = m(x)
            assert y.shape == (batch, 10), (seconds, batch)
            assert torch.isfinite(y).all()
    # batch elements are independent in eval mode
    x = torch.randn(3, 1, cfg.frames_for(1.0), cfg.n_mels)
    with torch.no_grad():
        assert torch.allclose(m(x)[1:2], m(x[1:2]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    cfg = frontend_preset(model_entry(name).frontend)
    m = create_model(name, n_mels=cfg.n_mels).train()
    x = torch.randn(2, 1, cfg.frames_for(1.0), cfg.n_mels)
    loss = torch.nn.functional.cross_entropy(m(x), torch.tensor([1, 2]))
    loss.backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_bad_input_is_a_one_line_error():
    m = create_model("sp4sc").eval()
    with pytest.raises(Sp4scError, match=r"\(batch, 1, frames, 256\)"):
        m(torch.zeros(1, 1, 50, 64))
    with pytest.raises(Sp4scError, match="too short"):
        m(torch.zeros(1, 1, 8, 256))
    with pytest.raises(Sp4scError, match="channels must be positive"):
        create_model("sp4sc", n_mels=256).__class__(channels=())


def _fast_vs_plain(name: str, train: bool, folded: bool = False, frames: int = 35, mels: int = 32):
    torch.manual_seed(1)
    plain = create_model(name, n_mels=mels, folded=folded).double()
    _randomise_bn(plain)
    fast = create_model(name, n_mels=mels, folded=folded, fast=True).double()
    fast.load_state_dict(plain.state_dict())
    assert fast.state_dict().keys() == plain.state_dict().keys()
    plain.train(train)
    fast.train(train)
    # dropout off so both paths see the same function; BN still uses batch statistics in train mode
    for m in (plain, fast):
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    x = torch.randn(3, 1, frames, mels, dtype=torch.float64) * 5
    y_plain, y_fast = plain(x), fast(x)
    torch.testing.assert_close(y_fast, y_plain, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(y_plain)
    (y_plain * w).sum().backward()
    (y_fast * w).sum().backward()
    grads_fast = dict(fast.named_parameters())
    for pname, p in plain.named_parameters():
        torch.testing.assert_close(grads_fast[pname].grad, p.grad, rtol=1e-9, atol=1e-10, msg=pname)
    if train and not folded:  # running statistics updated identically too
        for (k, v), (k2, v2) in zip(plain.state_dict().items(), fast.state_dict().items()):
            assert k == k2
            torch.testing.assert_close(v2, v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", SP4SC_FAMILY)
def test_fast_path_equals_plain_path_train(name):
    _fast_vs_plain(name, train=True)


def test_fast_path_equals_plain_path_eval_and_folded():
    _fast_vs_plain("sp4sc", train=False)
    _fast_vs_plain("sp4sc", train=False, folded=True)


def test_fast_path_uses_one_conv_per_block_and_is_switchable():
    m = create_model("sp4sc", fast=True)
    assert all(block.fast for block in m.blocks) and m.arch_kwargs["fast"] is True
    k = m.conv2.plus_kernel()
    assert k.shape == (128, 1, 5, 5)
    # plus shape: zero off the centre row and column; the centre holds both centre taps
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[2, :] = True
    mask[:, 2] = True
    assert (k[:, 0][:, ~mask] == 0).all()
    torch.testing.assert_close(k[:, 0, 2, 2], m.conv2.sp_conv1.weight[:, 0, 1, 0] + m.conv2.sp_conv2.weight[:, 0, 0, 1])
    torch.testing.assert_close(k[:, 0, 0, 2], m.conv2.sp_conv1.weight[:, 0, 0, 0])
    torch.testing.assert_close(k[:, 0, 2, 4], m.conv2.sp_conv2.weight[:, 0, 0, 2])
    m.set_fast(False)
    assert not any(block.fast for block in m.blocks) and m.arch_kwargs["fast"] is False
