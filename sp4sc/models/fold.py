"""Deploy-time BatchNorm folding: ``fold_batchnorm(model)`` returns a folded copy.

As timm's ``reparameterize_model``: deep-copy, eval mode, then the model's
``fuse()`` calls each block's ``fuse()``. Folding keeps BatchNorm's eps
(scale = gamma / sqrt(running_var + eps)), so the folded model computes the same
function as the unfolded one in eval mode (checked to 1e-5 in tests/test_fold.py).
SP4ASC's own ``merge_conv_bn`` drops eps and does not.

What becomes what:
- input BN over mel bins -> per-mel affine ``x * weight + bias`` (:class:`sp4sc.models._common.MelAffine`);
  it cannot go into the first conv exactly, because of that conv's zero padding;
- conv -> BN (CNN6) -> conv with bias;
- SP4SC: BN after the sum of the two depthwise convs -> both kernels scaled, one bias on ``sp_conv2``.

After folding, :func:`deploy_model` rewrites each folded SP4SC block as the graph
that is deployed (:class:`DeploySepBlock`: one plus-shaped 5x5 depthwise conv,
merged with the 1x1 conv in the first block). :func:`inference_model` is both
steps: the model ``sp4sc infer`` runs and ``sp4sc export`` writes to ONNX, so the
two compute the same function the same way. This module sits below both
(:mod:`sp4sc.deploy.infer`, :mod:`sp4sc.deploy.onnx_export`) and imports neither.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sp4sc.errors import Sp4scError


def is_folded(model: nn.Module) -> bool:
    """True when ``model`` holds no BatchNorm (already folded, or never had one)."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A folded copy of ``model`` in eval mode; ``model`` itself is untouched.

    Args:
        model: a model from :func:`sp4sc.models.create_model` (it must have ``fuse()``).

    Returns:
        The folded copy, with no BatchNorm left; its ``arch_kwargs["folded"]`` is True,
        so ``create_model(m.arch_name, **m.arch_kwargs)`` builds the same structure.
        The SP4SC training fast path is switched off in the copy (same function, plain form).
    """
    if is_folded(model):
        folded = copy.deepcopy(model).eval()
        return folded
    if not callable(getattr(model, "fuse", None)):
        raise Sp4scError(f"{type(model).__name__}: cannot fold BatchNorm, the model has no fuse() method")
    folded = copy.deepcopy(model)
    if hasattr(folded, "arch_kwargs"):
        folded.arch_kwargs = dict(folded.arch_kwargs)
    folded.eval()
    if callable(getattr(folded, "set_fast", None)):
        folded.set_fast(False)  # deploy the plain form: fewer MACs than the 5x5 training restatement
    folded.fuse()
    left = [name for name, m in folded.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise Sp4scError(f"{type(model).__name__}: BatchNorm left after folding: {', '.join(left)}")
    return folded.eval()


class DeploySepBlock(nn.Module):
    """A folded SP4SC block rewritten for inference: the same function in fewer, larger ops.

    The two 3-tap dilated depthwise convolutions (time and mel) share their centre
    tap and sum into one plus-shaped 5x5 depthwise kernel; in the first block
    (one input channel) the 1x1 convolution is merged in too, giving one dense
    1 -> C 5x5 convolution. ONNX Runtime then runs Conv+ReLU fused and skips the
    two full-size intermediate tensors and the Add (about 2x faster at the sp4asc
    front end on 2 cores). Parity against the folded torch model is checked at
    every export.

    Args:
        block: a folded :class:`sp4sc.models.sp4sc.SepBlock`.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        kernel = block.plus_kernel().detach().clone()  # (C, 1, 5, 5)
        bias = block.sp_conv2.bias.detach().clone() if block.sp_conv2.bias is not None else None
        channels, pad = kernel.shape[0], kernel.shape[-1] // 2
        pointwise = block.ch_conv1
        if pointwise.in_channels == 1:
            self.pointwise = None
            self.conv = nn.Conv2d(1, channels, kernel.shape[-1], padding=pad, bias=bias is not None)
            merged = kernel * pointwise.weight.detach()  # (C, 1, 5, 5) * (C, 1, 1, 1)
        else:
            self.pointwise = nn.Conv2d(pointwise.in_channels, channels, 1, bias=False)
            self.pointwise.weight.data.copy_(pointwise.weight.detach())
            self.conv = nn.Conv2d(channels, channels, kernel.shape[-1], padding=pad, groups=channels,
                                  bias=bias is not None)
            merged = kernel
        self.conv.weight.data.copy_(merged)
        if bias is not None:
            self.conv.bias.data.copy_(bias)
        self.pool = block.pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, cin, frames, mels)
        if self.pointwise is not None:
            x = self.pointwise(x)  # (batch, C, frames, mels)
        x = torch.relu(self.conv(x))  # (batch, C, frames, mels)
        return self.pool(x)  # (batch, C, frames // 2, mels // 2)


def deploy_model(folded: nn.Module) -> nn.Module:
    """A copy of a folded model with its SP4SC blocks replaced by :class:`DeploySepBlock` (others unchanged)."""
    from sp4sc.models.sp4sc import SepBlock

    model = copy.deepcopy(folded).eval()
    for _, child in list(model.named_modules()):
        for sub_name, sub in list(child.named_children()):
            if isinstance(sub, SepBlock) and sub.folded and isinstance(sub.bn, nn.Identity):
                setattr(child, sub_name, DeploySepBlock(sub).eval())
    return model


def inference_model(model: nn.Module) -> nn.Module:
    """The model as it is deployed: BatchNorm folded and SP4SC blocks merged (the ONNX graph's structure).

    Same function as ``model`` in eval mode (to float rounding; the export checks it at every
    export) and about 1.5x faster in eager mode. Models that cannot be folded are used as they are.
    """
    try:
        return deploy_model(fold_batchnorm(model)).eval()
    except Sp4scError:
        return model.eval()
