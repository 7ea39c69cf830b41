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
"""

from __future__ import annotations

import copy

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
