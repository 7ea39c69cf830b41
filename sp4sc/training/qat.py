"""Quantisation-aware training: a short fine-tune of the folded model with int8 fake quantisation.

For when post-training static quantisation (``sp4sc export --int8``) loses too much.
:func:`prepare_qat` takes a trained model (or the weights in ``init_from``), folds its
BatchNorm (:func:`sp4sc.models.fold.fold_batchnorm`: the deployed structure, so the
fine-tuned weights are the ones exported) and makes its forward see int8 rounding:

- weights of every ``Conv1d``/``Conv2d``/``Linear``: symmetric int8 with one scale per
  output channel, ``scale = max|w| / 127``, as ``quantize_static`` stores them
  (``torch.fake_quantize_per_channel_affine``);
- activations: int8 with one scale and zero point per tensor from a moving average of
  the batch min / max (``torch.fake_quantize_per_tensor_affine``, ``torch.ao.quantization``'s
  moving-average min-max rule, averaging constant 0.01), at the model's input and the
  outputs of the input affine, every ReLU, average pooling and linear layer.

Gradients pass straight through the rounding (the straight-through estimator of
``torch.ao.quantization.FakeQuantize``). Nothing is added to the state dict: modules keep
their class's parameter names (their class is swapped for a subclass whose forward
quantises) and the observers are plain attributes, so a QAT checkpoint holds a plain
folded model that ``load_model`` rebuilds strictly and ``sp4sc export --int8`` quantises
(calibrating the activations again on training clips).

Use: ``sp4sc fit --config recipes/X.yaml --model.qat true --model.qat_from BEST.ckpt
--trainer.max_epochs 5 --model.lr 1e-4`` (:class:`sp4sc.training.lit.SceneClassifier`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from sp4sc.errors import Sp4scError

QMIN, QMAX = -128, 127  # int8 activations, as quantize_static's QInt8
AVERAGING = 0.01  # moving-average min/max (torch.ao.quantization.MovingAverageMinMaxObserver's default)


def _fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 fake quantisation (straight-through gradients)."""
    flat = w.detach().reshape(w.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / 127.0).clamp_min(1e-12).float()  # (out,)
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


class _QATConv1d(nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _fake_quant_weight(self.weight), self.bias)


class _QATConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _fake_quant_weight(self.weight), self.bias)


class _QATLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, _fake_quant_weight(self.weight), self.bias)


_SWAP = {nn.Conv1d: _QATConv1d, nn.Conv2d: _QATConv2d, nn.Linear: _QATLinear}


class ActivationObserver:
    """Moving-average min / max of a tensor and its int8 fake quantisation (per tensor, affine).

    A plain object (not a module): its state stays out of the state dict and the checkpoints.
    """

    def __init__(self):
        self.lo: Optional[float] = None
        self.hi: Optional[float] = None

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if training or self.lo is None:
            lo, hi = float(x.detach().min()), float(x.detach().max())
            if self.lo is None:
                self.lo, self.hi = lo, hi
            else:
                self.lo += AVERAGING * (lo - self.lo)
                self.hi += AVERAGING * (hi - self.hi)
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)  # the range holds zero, as ORT's calibration makes it
        scale = max((hi - lo) / (QMAX - QMIN), 1e-8)
        zero = int(round(QMIN - lo / scale))
        zero = max(QMIN, min(QMAX, zero))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, QMIN, QMAX)


def _observed(module: nn.Module) -> bool:
    from sp4sc.models._common import MelAffine

    return isinstance(module, (nn.ReLU, nn.AvgPool2d, nn.Linear, MelAffine))


def prepare_qat(model: nn.Module, init_from: Optional[str] = None) -> nn.Module:
    """A folded copy of ``model`` (weights from ``init_from`` when given) that trains with int8 fake quantisation.

    Args:
        model: a registry model (its structure; its weights unless ``init_from``).
        init_from: a model file or Lightning checkpoint of the same model (strict load).

    Returns:
        The folded model, its conv / linear layers quantising their weights and its activations
        observed and quantised; ``arch_kwargs["folded"]`` is True and ``qat`` is True.
    """
    from sp4sc.models.fold import fold_batchnorm

    if getattr(model, "qat", False):
        return model
    if init_from:
        from sp4sc.models.checkpoint import load_model

        loaded = load_model(init_from)  # strict: a mismatch names the keys
        want = getattr(model, "arch_kwargs", {})
        have = getattr(loaded.model, "arch_kwargs", {})
        if loaded.name != getattr(model, "arch_name", loaded.name) or any(
                want.get(k) != have.get(k) for k in ("n_classes", "n_mels") if k in want):
            raise Sp4scError(
                f"--model.qat_from {init_from}: holds {loaded.name} {({k: have.get(k) for k in ('n_classes', 'n_mels')})}, "
                f"the recipe builds {getattr(model, 'arch_name', '?')} "
                f"{({k: want.get(k) for k in ('n_classes', 'n_mels')})}; start from a checkpoint of the recipe's model")
        model = loaded.model
    folded = fold_batchnorm(model).train()
    for m in folded.modules():
        swap = _SWAP.get(type(m))
        if swap is not None:
            m.__class__ = swap
    observers = []

    def hook(module: nn.Module, inputs, output):
        return module._qat_observer(output, module.training)

    for m in folded.modules():
        if _observed(m):
            object.__setattr__(m, "_qat_observer", ActivationObserver())
            m.register_forward_hook(hook)
            observers.append(m)
    input_observer = ActivationObserver()
    folded.register_forward_pre_hook(lambda module, args: (input_observer(args[0], module.training), *args[1:]))
    folded.qat = True
    return folded
