"""Import official SP4ASC checkpoints (valeoai/SP4ASC) as sp4sc model files.

An SP4ASC checkpoint is ``{"epoch", "net", "optim", "scheduler", "config"}``
(their ``TrainingManager.save_state``); ``net`` is the state dict of their
``Cnn6_60k``. It is read with ``torch.load(..., weights_only=True)`` (the three
published files hold only tensors, numbers, strings, lists, dicts and None, so
nothing is refused) and mapped strictly onto our ``sp4sc`` model through the
explicit table :func:`key_map` (our keys are theirs, by design).

What SP4ASC's pipeline computes, and why ours is the same function
------------------------------------------------------------------
Facts from their code (``sp4asc/models/cnns.py``, ``datasets/dcase.py``,
``testing.py``) and torchlibrosa's ``stft.py``:

- audio: ``torchaudio.load(normalization=True)``: float in [-1, 1] (24-bit PCM
  divided by 2**31, as libsndfile/soundfile do), mono, 44.1 kHz asserted, cut to
  441,000 samples (no padding: TAU clips are exactly 10 s);
- STFT (torchlibrosa ``Spectrogram``): n_fft = win = 2048, hop 1024, periodic
  Hann (``get_window('hann', fftbins=True)``), ``center=True`` with reflect
  padding of n_fft // 2, computed as float32 conv1d with DFT matrices; power
  = re**2 + im**2;
- mel (torchlibrosa ``LogmelFilterBank``): ``librosa.filters.mel(sr=44100,
  n_fft=2048, n_mels=256, fmin=0, fmax=22050)`` (Slaney scale, Slaney norm);
  ``10 * log10(max(mel, amin=1e-10)) - 10 * log10(max(amin, ref=1.0))``, with
  ``top_db=None``: no clipping and no other normalisation;
- network input ``(batch, 1, 431, 256)``; ``bn0`` over mel bins is the only
  input normalisation (it is part of ``net``); SpecAugment sits after bn0 and is
  inactive in eval mode (they force it on only for test-time augmentation).

Our ``sp4asc`` front-end preset (:mod:`sp4sc.frontend.features`) is exactly these
settings (periodic Hann, reflect centring, power spectrum, Slaney mels,
10*log10(max(P, 1e-10))) and our ``sp4sc`` model is their ``Cnn6_60k`` layer for
layer, so the pipeline computes the same function; the only differences are
floating-point ones (our STFT is an FFT, theirs a float32 DFT matmul), checked
in ``tests/test_convert.py`` on real ESC-10 audio.

Their deployed model differs from their trained one: ``TestManager.load_state``
calls ``merge_conv_bn`` (scale = gamma / sqrt(running_var), eps dropped) and then
rounds the weights through fp16. The eps matters here: ``conv1.bn.running_var``
of ``..._128_2_32_2.pth`` goes down to 9e-11. We fold with eps
(:func:`sp4sc.models.fold.fold_batchnorm`), so our folded model equals the unfolded one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from sp4sc.models.checkpoint import check_state_dict, model_spec, read_checkpoint, save_model
from sp4sc.constants import SCENES
from sp4sc.errors import Sp4scError

SP4ASC_NET = "Cnn6_60k"
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def key_map(depth: int = 4) -> dict[str, str]:
    """SP4ASC ``Cnn6_60k`` state-dict key -> our ``sp4sc`` key (identical names, listed explicitly)."""
    table: dict[str, str] = {f"bn0.{s}": f"bn0.{s}" for s in _BN}
    for i in range(1, depth + 1):
        for s in _BN:
            table[f"conv{i}.bn.{s}"] = f"conv{i}.bn.{s}"
        for conv in ("ch_conv1", "sp_conv1", "sp_conv2"):
            table[f"conv{i}.{conv}.weight"] = f"conv{i}.{conv}.weight"
    for fc in ("fc1", "fc2"):
        for s in ("weight", "bias"):
            table[f"{fc}.{s}"] = f"{fc}.{s}"
    return table


def read_sp4asc(path: str | os.PathLike) -> dict[str, Any]:
    """Read an SP4ASC checkpoint with ``weights_only=True`` and check its layout."""
    ckpt = read_checkpoint(path)
    if "sp4sc" in ckpt:
        raise Sp4scError(f"{path}: already an sp4sc model file; nothing to convert")
    net = ckpt.get("net")
    if not isinstance(net, dict) or not all(isinstance(v, torch.Tensor) for v in net.values()):
        raise Sp4scError(
            f"{path}: not an SP4ASC checkpoint (expected a dict with 'net', its state dict, "
            f"and 'config'; found keys {sorted(ckpt)[:6]})"
        )
    config = ckpt.get("config")
    if config is not None and not isinstance(config, dict):
        raise Sp4scError(f"{path}: SP4ASC checkpoint has a 'config' that is not a dict")
    config = dict(config or {})
    arch = config.get("net", SP4ASC_NET)
    if arch != SP4ASC_NET:
        raise Sp4scError(f"{path}: SP4ASC network {arch!r} is not supported; only {SP4ASC_NET} maps onto sp4sc")
    return {"net": net, "config": config, "epoch": ckpt.get("epoch")}


def map_state_dict(net: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename SP4ASC keys to ours with :func:`key_map`; unknown keys are an error naming them."""
    net = {k[len("module."):] if k.startswith("module.") else k: v for k, v in net.items()}  # DataParallel saves
    table = key_map()
    unknown = [k for k in net if k not in table]
    if unknown:
        shown = ", ".join(unknown[:4]) + (f" and {len(unknown) - 4} more" if len(unknown) > 4 else "")
        raise Sp4scError(f"{source}: keys that are not in SP4ASC's Cnn6_60k: {shown}")
    return {table[k]: v for k, v in net.items()}


def convert_sp4asc(path: str | os.PathLike):
    """Build our ``sp4sc`` model holding an SP4ASC checkpoint's weights (strict).

    Returns:
        ``(model, spec)``: the model in eval mode and the model-file description
        (front end ``sp4asc``, classes :data:`SCENES`, source checkpoint name, epoch and config).
    """
    from sp4sc.frontend.features import frontend_preset
    from sp4sc.models import create_model

    src = read_sp4asc(path)
    state = map_state_dict(src["net"], str(path))
    try:
        n_classes = int(state["fc2.weight"].shape[0])
        n_mels = int(state["bn0.weight"].shape[0])
    except KeyError as exc:
        raise Sp4scError(f"{path}: SP4ASC checkpoint lacks {exc.args[0]}; is the file complete?") from exc
    if n_classes != len(SCENES):
        raise Sp4scError(f"{path}: {n_classes} output classes; SP4ASC's TAU models have {len(SCENES)}")
    dropout = float(src["config"].get("dropout", 0.2) or 0.0)
    model = create_model("sp4sc", n_classes=n_classes, n_mels=n_mels, dropout=dropout)
    check_state_dict(model, state, str(path))
    model.eval()
    frontend = frontend_preset("sp4asc")
    if frontend.n_mels != n_mels:
        raise Sp4scError(f"{path}: {n_mels} mel bins; the sp4asc front end has {frontend.n_mels}")
    spec = model_spec(
        model.arch_name, model.arch_kwargs, frontend, SCENES,
        source={"format": "sp4asc", "checkpoint": Path(path).name, "epoch": src["epoch"], "config": src["config"]},
    )
    return model, spec


def write_converted(in_path: str | os.PathLike, out_path: str | os.PathLike, *, overwrite: bool = False) -> dict:
    """Convert ``in_path`` and write the model file ``out_path`` atomically; return a summary."""
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise Sp4scError(f"{out_path}: exists; choose another output path or pass --force to replace it")
    if out_path.is_dir():
        raise Sp4scError(f"{out_path}: is a folder; give a file path such as models/sp4asc_ce.pt")
    model, spec = convert_sp4asc(in_path)
    with torch.no_grad():
        probe = model(torch.full((1, 1, 44, model.n_mels), -40.0))
    if not torch.isfinite(probe).all():
        raise Sp4scError(f"{in_path}: converted model gives non-finite outputs; the checkpoint is damaged")
    save_model(out_path, model, spec)
    return {
        "input": str(in_path),
        "output": str(out_path),
        "model": spec["model"],
        "model_kwargs": spec["model_kwargs"],
        "frontend": spec["frontend"]["name"],
        "epoch": spec["source"]["epoch"],
        "config": spec["source"]["config"],
        "state_dict_values": int(sum(v.numel() for v in model.state_dict().values())),
    }
