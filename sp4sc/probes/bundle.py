"""The base class of every frozen-encoder bundle (:class:`EncoderBundle`) and its helpers.

Kept apart from the registry (:mod:`sp4sc.probes.encoders`) so that the encoder
families (:mod:`sp4sc.probes.efficientat`, ...) import the base class without
importing the registry that imports them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from sp4sc.errors import Sp4scError
from sp4sc.models.checkpoint import check_state_dict, read_checkpoint, unwrap_state


class EncoderBundle:
    """Base class of an encoder bundle.

    Subclasses set :attr:`name`, :attr:`sample_rate`, :attr:`dim`,
    :attr:`max_window_s` and implement :meth:`_build`, :meth:`_forward` and
    :meth:`_state_target`.

    Attributes:
        name: registry name (``"passt"``, ``"beats"``).
        sample_rate: rate the waveforms given to :meth:`embed` must have, Hz.
        dim: embedding size.
        max_window_s: longest window the network accepts, seconds (None: no limit).
        min_window_s: shortest window the network accepts, seconds.
        n_logits: outputs of the encoder's own classification head (0: none; see
            :meth:`embed_with_logits`).
        label_set: what those outputs are (``"audioset"``: AudioSet's 527 classes in
            ``class_labels_indices.csv`` order), or None.
        random_init: True when built with random weights and no checkpoint loaded.
        checkpoint: path of the loaded checkpoint, or None.
        checkpoint_sha256: content hash of the loaded checkpoint, or None.
    """

    name: str = ""
    sample_rate: int = 16000
    dim: int = 0
    max_window_s: float | None = None
    min_window_s: float = 0.0
    n_logits: int = 0
    label_set: str | None = None

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.device = torch.device("cpu")
        self.random_init = True
        self.seed = 0
        self.checkpoint: str | None = None
        self.checkpoint_sha256: str | None = None

    # -- building and loading -------------------------------------------------
    def build(self, random_init: bool = True, *, seed: int = 0, device: str | torch.device = "cpu") -> "EncoderBundle":
        """Build the network with random weights (seeded) in eval mode.

        Args:
            random_init: mark the bundle as random-init; pass False only when a
                checkpoint is loaded right after (:meth:`load_checkpoint` does).
            seed: seed of the random weights.
            device: where the network runs.
        """
        self.seed = int(seed)
        with _quiet(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = self._build(None)
        self.model = model.eval().requires_grad_(False)
        self.random_init = bool(random_init)
        self.checkpoint = None
        self.checkpoint_sha256 = None
        self.to(device)
        return self

    def load_checkpoint(self, path: str | os.PathLike) -> "EncoderBundle":
        """Load a local checkpoint strictly (``weights_only=True``); name mismatching keys.

        Builds the network first when needed (for BEATs the checkpoint's own
        ``cfg`` decides the architecture).
        """
        path = Path(path)
        ckpt = read_checkpoint(path)
        cfg = self._config_from_checkpoint(ckpt, path)
        device = self.device
        if self.model is None or cfg is not None:
            with _quiet():
                self.model = self._build(cfg).eval().requires_grad_(False)
        state = self._state_from_checkpoint(ckpt, path)
        check_state_dict(self._state_target(), state, str(path))
        self.model.eval().requires_grad_(False)
        self.random_init = False
        self.checkpoint = str(path)
        self.checkpoint_sha256 = file_sha256(path)
        self.to(device)
        return self

    def to(self, device: str | torch.device) -> "EncoderBundle":
        """Move the network to ``device``."""
        self.device = torch.device(device)
        if self.model is not None:
            self.model.to(self.device)
        return self

    @property
    def identity(self) -> str:
        """What the weights are: ``sha256:<hash>`` of the checkpoint or ``random-init-seed<N>``."""
        if self.random_init or self.checkpoint_sha256 is None:
            return f"random-init-seed{self.seed}"
        return f"sha256:{self.checkpoint_sha256}"

    def n_parameters(self) -> int:
        """Stored parameters of the network (the DCASE meta counts them with the probe)."""
        self._require_model()
        return sum(p.numel() for p in self.model.parameters())

    # -- embedding ---------------------------------------------------------------
    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """Embed a batch of windows.

        Args:
            wav: float waveforms ``(batch, samples)`` at :attr:`sample_rate`.

        Returns:
            float32 ``(batch, dim)`` on :attr:`device`, one embedding per window.
        """
        return self._run(self._forward, wav).float()  # (batch, dim)

    def embed_with_logits(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and the encoder's own classification logits of a batch of windows.

        Args:
            wav: float waveforms ``(batch, samples)`` at :attr:`sample_rate`.

        Returns:
            float32 embeddings ``(batch, dim)`` and logits ``(batch, n_logits)`` on :attr:`device`.

        Raises:
            Sp4scError: the encoder has no classification head (``n_logits == 0``).
        """
        if not self.n_logits:
            raise Sp4scError(f"{self.name}: has no classification head (no logits or tags); use an AudioSet-trained encoder such as efficientat_mn04")
        logits, emb = self._run(self._forward_logits, wav)  # (batch, n_logits), (batch, dim)
        return emb.float(), logits.float()

    def _run(self, fn: Callable, wav: torch.Tensor):
        """Run ``fn(wav)`` in eval mode, without autograd, with bf16 autocast on a GPU."""
        self._require_model()
        if wav.ndim != 2:
            raise Sp4scError(f"{self.name}: expected waveforms (batch, samples), got shape {tuple(wav.shape)}")
        wav = wav.to(self.device, dtype=torch.float32, non_blocking=True)
        self.model.eval()
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(wav)

    # -- to implement ------------------------------------------------------------
    def _build(self, cfg: dict[str, Any] | None) -> nn.Module:
        raise NotImplementedError

    def _forward(self, wav: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _forward_logits(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (batch, n_logits), embeddings (batch, dim))``; only for encoders with a head."""
        raise NotImplementedError

    def _state_target(self) -> nn.Module:
        """The module whose state dict a checkpoint holds."""
        return self.model

    def _config_from_checkpoint(self, ckpt: dict, path: Path) -> dict[str, Any] | None:
        return None

    def _state_from_checkpoint(self, ckpt: dict, path: Path) -> dict[str, torch.Tensor]:
        return unwrap_state(ckpt, path)

    def _require_model(self) -> None:
        if self.model is None:
            raise Sp4scError(f"encoder {self.name}: not built; call build() or load_checkpoint() first")


@contextlib.contextmanager
def _quiet():
    """Silence the prints and warnings third-party builders emit (hear21passt prints the whole model)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()
