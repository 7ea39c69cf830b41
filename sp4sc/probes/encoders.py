"""Frozen pre-trained audio encoders as bundles with one interface.

A bundle knows its name, sample rate and embedding size, how to build the
network (random weights, never a download), how to load a user's checkpoint
from a local path (``torch.load(weights_only=True)``, strict, mismatching keys
named), and how to embed a batch of waveforms at its own sample rate::

    bundle = create_encoder("passt")
    bundle.build(random_init=True)        # or bundle.build(); bundle.load_checkpoint(path)
    emb = bundle.embed(wav)               # (batch, samples) -> (batch, dim)

Bundles always run in eval mode (PaSST's mel front end masks time and
frequency in train mode), under ``torch.no_grad()``, with bf16 autocast on a GPU.

Encoders with their own classifier (EfficientAT's AudioSet taggers, see
:mod:`sp4sc.probes.efficientat`) also give logits: ``emb, logits =
bundle.embed_with_logits(wav)``.

Registry: :data:`ENCODERS` lists the names the command line accepts. Tests add
their tiny fake encoder with :func:`register_encoder` (see
:mod:`sp4sc.probes.fake`); it is never registered by the package itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from sp4sc.errors import Sp4scError
from sp4sc.probes import EFFICIENTAT_VARIANTS
from sp4sc.models.checkpoint import unwrap_state
from sp4sc.probes.bundle import EncoderBundle


# --------------------------------------------------------------------------- PaSST
class _PasstNet(nn.Module):
    """hear21passt's mel front end + PaSST-S network; forward gives the 768-d embedding."""

    def __init__(self, mel: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.mel = mel
        self.net = net

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        # wav: (batch, samples) at 32 kHz
        with torch.autocast(wav.device.type, enabled=False):  # front end in float32 (STFT has no bf16 path)
            spec = self.mel(wav.float())  # (batch, 128 mels, frames); 100 frames per second
        cls_tok, dist_tok = self.net.forward_features(spec.unsqueeze(1))  # (batch, 768) each
        return (cls_tok + dist_tok) / 2  # (batch, 768): mean of the cls and distillation tokens


class PasstEncoder(EncoderBundle):
    """PaSST-S (Koutini et al. 2022) through ``hear21passt``.

    32 kHz, hear21passt's own 128-bin mel front end (window 800, hop 320,
    n_fft 1024), patches 16 x 16 with stride 10 over a 998-frame input
    (architecture ``passt_s_swa_p16_128_ap476``). The embedding is the mean of
    the final cls and distillation tokens (768-d), the same vector PaSST's
    head reads. The time positional embedding covers 99 patch columns (10 s):
    longer windows are refused; shorter ones use its first columns, as
    hear21passt does.

    A checkpoint is the state dict of the PaSST network (the released
    ``passt-s-f128-p16-s10-ap.476-swa.pt`` layout: ``cls_token``,
    ``patch_embed.*``, ``blocks.*``, ``head.*``, ...), bare or under
    ``"model"``/``"state_dict"``, optionally prefixed ``net.``.
    """

    name = "passt"
    sample_rate = 32000
    dim = 768
    max_window_s = 10.0
    min_window_s = 0.16  # one 16-frame patch column
    arch = "passt_s_swa_p16_128_ap476"

    def _build(self, cfg: dict[str, Any] | None) -> nn.Module:
        try:
            import hear21passt.models.passt as passt_mod
            from hear21passt.models.preprocess import AugmentMelSTFT
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise Sp4scError("PaSST needs the hear21passt package: pip install 'sp4sc[probes]'") from exc
        # Settings of hear21passt.base.get_basic_model (the PaSST-S front end).
        mel = AugmentMelSTFT(
            n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024, freqm=48, timem=192,
            htk=False, fmin=0.0, fmax=None, norm=1, fmin_aug_range=10, fmax_aug_range=2000,
        )
        net = passt_mod.get_model(
            arch=self.arch, pretrained=False, n_classes=527, in_channels=1,
            fstride=10, tstride=10, input_fdim=128, input_tdim=998,
        )
        passt_mod.first_RUN = False  # its forward prints shapes on the first call otherwise
        return _PasstNet(mel, net)

    def _forward(self, wav: torch.Tensor) -> torch.Tensor:
        seconds = wav.shape[1] / self.sample_rate
        if seconds > self.max_window_s + 1e-6:
            raise Sp4scError(f"passt: windows of {seconds:g} s are longer than PaSST-S accepts ({self.max_window_s:g} s); use --dt <= 10")
        return self.model(wav)  # (batch, 768)

    def _state_target(self) -> nn.Module:
        return self.model.net

    def _state_from_checkpoint(self, ckpt: dict, path: Path) -> dict[str, torch.Tensor]:
        return unwrap_state(ckpt, path, prefixes=("model.net.", "net."))


# --------------------------------------------------------------------------- BEATs
# Architecture of the published BEATs iter3 checkpoints (their "cfg" entry:
# microsoft/unilm beats, BEATs_iter3 / BEATs_iter3_plus_AS2M); used for random
# init so that cost figures match the real model. A loaded checkpoint's own cfg wins.
BEATS_ITER3_CFG: dict[str, Any] = {
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.05,
    "dropout_input": 0.0,
    "layer_norm_first": False,
    "conv_bias": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "relative_position_embedding": True,
    "num_buckets": 320,
    "max_distance": 800,
    "gru_rel_pos": True,
    "deep_norm": True,
    "input_patch_size": 16,
    "layer_wise_gradient_decay_ratio": 0.6,
    "embed_dim": 512,
    "finetuned_model": False,
}


class BeatsEncoder(EncoderBundle):
    """BEATs (Chen et al. 2023) through ``speechbrain.lobes.models.beats``.

    16 kHz, Kaldi 128-bin fbank (25 ms / 10 ms), 16 x 16 patches: 3 s give
    298 frames -> 18 x 8 = 144 patches of 768-d. The window embedding is the
    mean of the per-patch outputs.

    A checkpoint is the file the BEATs authors publish
    (``{"cfg": {...}, "model": state_dict}``, e.g. BEATs_iter3_plus_AS2M.pt):
    it is read here with ``weights_only=True`` (speechbrain's own loader would
    call ``torch.load`` itself) and loaded strictly.

    speechbrain 1.1.2's ``BEATs.forward(wav)`` without ``wav_lens`` raises
    UnboundLocalError (``padding_mask``); every call passes ``wav_lens``.
    """

    name = "beats"
    ignored_cfg_keys: list[str] = []
    sample_rate = 16000
    dim = 768
    max_window_s = None
    min_window_s = 0.185  # 17 fbank frames: one 16-frame patch row (+ the 25 ms window)

    def _build(self, cfg: dict[str, Any] | None) -> nn.Module:
        try:
            import speechbrain.lobes.models.beats as beats_mod
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise Sp4scError("BEATs needs the speechbrain package: pip install 'sp4sc[probes]'") from exc
        full_cfg = dict(BEATS_ITER3_CFG)
        if cfg is not None:
            full_cfg.update(cfg)
        self.dim = int(full_cfg["encoder_embed_dim"])
        # speechbrain's BEATs takes its cfg only from a checkpoint file it loads
        # itself; build it without a file and with our cfg by handing the
        # constructor a config factory for the duration of the call.
        original = beats_mod.BEATsConfig
        beats_mod.BEATsConfig = lambda _cfg=None: original(full_cfg)
        try:
            model = beats_mod.BEATs(ckp_path=None, freeze=True)
        finally:
            beats_mod.BEATsConfig = original
        model.preprocess = _float32_preprocess(model.preprocess)
        return model

    def _forward(self, wav: torch.Tensor) -> torch.Tensor:
        seconds = wav.shape[1] / self.sample_rate
        if seconds < self.min_window_s:
            raise Sp4scError(f"beats: windows of {seconds:g} s are shorter than one BEATs patch ({self.min_window_s} s)")
        lens = torch.ones(wav.shape[0], device=wav.device)  # speechbrain 1.1.2 needs wav_lens (see class doc)
        out = self.model(wav, wav_lens=lens)
        patches = out[0]  # (batch, n_patches, 768)
        return patches.mean(dim=1)  # (batch, 768)

    def patch_outputs(self, wav: torch.Tensor) -> torch.Tensor:
        """Per-patch outputs ``(batch, n_patches, 768)`` (for checks; eval, no grad)."""
        self._require_model()
        self.model.eval()
        with torch.inference_mode():
            return self.model(wav.to(self.device), wav_lens=torch.ones(wav.shape[0], device=self.device))[0].float()

    def _config_from_checkpoint(self, ckpt: dict, path: Path) -> dict[str, Any] | None:
        cfg = ckpt.get("cfg")
        if cfg is None:
            return None
        if not isinstance(cfg, dict) or not all(isinstance(k, str) for k in cfg):
            raise Sp4scError(f"{path}: 'cfg' entry is not a dict of settings; is it a BEATs checkpoint?")
        # Keys BEATs does not know would be ignored by its config class; we drop them
        # with a warning rather than refuse the file (published cfgs may carry training-only keys).
        unknown = sorted(set(cfg) - set(_beats_config_keys()))
        self.ignored_cfg_keys = unknown
        if unknown:
            from sp4sc.log import logger

            logger.warning(f"{path}: ignoring cfg keys BEATs does not use: {', '.join(unknown[:6])}")
        return {k: v for k, v in cfg.items() if k not in unknown}


def _float32_preprocess(preprocess: Callable) -> Callable:
    """Wrap BEATs' fbank front end so that it runs in float32 even under bf16 autocast."""

    def run(source: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with torch.autocast(source.device.type, enabled=False):
            return preprocess(source.float(), *args, **kwargs)

    return run


def _beats_config_keys() -> list[str]:
    import speechbrain.lobes.models.beats as beats_mod

    return list(beats_mod.BEATsConfig().__dict__)


# --------------------------------------------------------------------------- registry
def _efficientat(variant: str) -> Callable[[], EncoderBundle]:
    """Factory of ``efficientat_<variant>``; the module is imported on first use."""

    def make() -> EncoderBundle:
        from sp4sc.probes.efficientat import EfficientATEncoder

        return EfficientATEncoder(variant)

    return make


ENCODERS: dict[str, Callable[[], EncoderBundle]] = {
    "passt": PasstEncoder,
    "beats": BeatsEncoder,
    **{f"efficientat_{v}": _efficientat(v) for v in EFFICIENTAT_VARIANTS},
}


def register_encoder(name: str, factory: Callable[[], EncoderBundle]) -> None:
    """Add an encoder to the registry (tests register their fake encoder this way)."""
    ENCODERS[name] = factory


def create_encoder(name: str) -> EncoderBundle:
    """A new, unbuilt bundle of the registered encoder ``name``."""
    if name not in ENCODERS:
        raise Sp4scError(f"--encoder {name!r}: unknown encoder; choose one of {', '.join(sorted(ENCODERS))}")
    return ENCODERS[name]()


def load_encoder(
    name: str,
    *,
    ckpt: str | os.PathLike | None = None,
    random_init: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> EncoderBundle:
    """Build an encoder from a checkpoint or with random weights (exactly one of the two)."""
    if (ckpt is None) == (not random_init):
        raise Sp4scError("encoder weights: give exactly one of --ckpt PATH or --random-init")
    bundle = create_encoder(name)
    if random_init:
        return bundle.build(random_init=True, seed=seed, device=device)
    bundle.device = torch.device(device)
    return bundle.load_checkpoint(ckpt)
