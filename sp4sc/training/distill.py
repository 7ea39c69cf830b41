"""Knowledge distillation for :class:`~sp4sc.training.lit.SceneClassifier`: the teacher's targets and the loss.

Hinton, Vinyals and Dean (2015): the student is trained on

    λ T² KL(softmax(t / T) || softmax(s / T)) + (1 - λ) CE(labels, s)

where ``t`` are the teacher's logits for the clip. The teacher
(:mod:`sp4sc.probes.teacher`) is a frozen encoder + linear probe fitted on the
run's training clips only, or a fine-tuned network from an inner
cross-validation; its logits for every training clip are computed once, before
training, and cached on disk. With ``cross_fit: k`` the training clips' targets
are out-of-fold, so no target comes from a teacher that saw that clip with its
label.

The classifier talks to distillation through :class:`Distillation` alone:

    kd = Distillation.from_options(kd_teacher, kd_lambda, kd_temperature)  # None without a teacher
    kd.prepare(datamodule)        # prepare_data(): compute and cache the targets, once per node
    kd.setup(datamodule)          # setup("fit"): read the training clips' logits
    p = kd.targets(batch)         # (batch, classes) teacher probabilities at T, mixed by mixup like the labels
    loss = kd.loss(logits, target, p, label_loss)

The teacher's logits are a plain attribute, never in the state dict or the
exported model: a distilled student saves, loads, folds, exports and submits
like any other.

What was removed, and why (README, Experiment log): teacher-labelled crops
(``train_crop``), an online teacher that labels every mixed batch
(``kd_teacher.online``) and feature distillation with a training-only head
(``kd_embed_weight``) each measured no gain over the cached targets on ESC-10
(5 folds or paired single folds), so only the cached targets remain.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from sp4sc.errors import Sp4scError


def distillation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    teacher_probs: torch.Tensor,
    kd_lambda: float,
    temperature: float,
    label_loss: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """Hinton's distillation loss: ``λ T² KL(p_t || softmax(s / T)) + (1 - λ) CE(target, s)``.

    Args:
        logits: student logits ``s`` ``(batch, classes)``.
        target: label targets ``(batch, classes)``, one-hot or mixed by mixup.
        teacher_probs: teacher probabilities at temperature T, ``softmax(t / T)`` ``(batch, classes)``
            (mixed by mixup like the labels).
        kd_lambda: weight λ of the distillation term, in [0, 1].
        temperature: T; the T² factor keeps the gradient scale of the soft term independent of T.
        label_loss: ``(logits, target) -> loss`` for the label term (default: soft-target cross-entropy).

    Returns:
        the scalar loss; the KL term is averaged over the batch (``batchmean``).
    """
    s = logits.float()
    if label_loss is None:
        label = -(target * F.log_softmax(s, dim=1)).sum(dim=1).mean()
    else:
        label = label_loss(s, target)
    log_q = F.log_softmax(s / temperature, dim=1)  # (batch, classes)
    kl = F.kl_div(log_q, teacher_probs.float(), reduction="batchmean")  # sum_c p (log p - log q), batch mean
    return kd_lambda * temperature**2 * kl + (1.0 - kd_lambda) * label


class Distillation:
    """The teacher of one run and its loss (see the module docstring).

    Args:
        config: the teacher (:class:`sp4sc.probes.teacher.TeacherConfig`).
        kd_lambda: weight λ of the distillation term, in [0, 1]; 0 trains on the labels alone.
        temperature: T (> 0).

    Attributes:
        logits: teacher logits of the training clips ``(n_train, classes)``, rows in ``batch["index"]``
            order (set by :meth:`setup`).
        info: what the teacher is and how it scores (encoder, weights, δt, accuracy and mean top
            probability per stage, cache folder), for logs and the checkpoint's provenance.
    """

    def __init__(self, config: Any, kd_lambda: float, temperature: float):
        self.config = config
        self.kd_lambda = float(kd_lambda)
        self.temperature = float(temperature)
        self.logits: Optional[torch.Tensor] = None
        self.info: dict[str, Any] = {}

    @classmethod
    def from_options(cls, kd_teacher: Any, kd_lambda: float, kd_temperature: float) -> Optional["Distillation"]:
        """Check the classifier's ``kd_*`` options; the distillation they ask for, or None (no teacher)."""
        if not 0.0 <= kd_lambda <= 1.0:
            raise Sp4scError(f"--model.kd_lambda {kd_lambda}: must be in [0, 1] (the weight of the distillation "
                             "term; 0 trains on the labels alone)")
        if not kd_temperature > 0:
            raise Sp4scError(f"--model.kd_temperature {kd_temperature}: must be > 0 (1 = the teacher's own "
                             "probabilities; higher values soften them)")
        if kd_teacher is None:
            if kd_lambda > 0:
                raise Sp4scError(f"--model.kd_lambda {kd_lambda}: needs a teacher; set --model.kd_teacher "
                                 "(e.g. recipes/esc50_sp4sc_kd.yaml) or --model.kd_lambda 0")
            return None
        from sp4sc.probes.teacher import TeacherConfig

        if not isinstance(kd_teacher, (dict, TeacherConfig)):
            raise Sp4scError(f"--model.kd_teacher: expected a mapping of teacher settings, got {kd_teacher!r}")
        config = kd_teacher if isinstance(kd_teacher, TeacherConfig) else TeacherConfig.from_dict(kd_teacher)
        return cls(config, kd_lambda, kd_temperature)

    # ------------------------------------------------------------ the teacher

    def prepare(self, datamodule: Any):
        """Compute the teacher's logits of the training and validation clips into their cache (or read it)."""
        from sp4sc.probes.teacher import compute_teacher

        if not all(hasattr(datamodule, a) for a in ("clips", "index", "classes")):
            raise Sp4scError("--model.kd_teacher needs a SceneDataModule: the teacher reads the training clips' audio")
        return compute_teacher(datamodule, self.config, stages=("train", "val"))

    def setup(self, datamodule: Any) -> None:
        """Read the training clips' teacher logits (from the cache once :meth:`prepare` has run) and log the teacher."""
        from sp4sc.log import logger

        out = self.prepare(datamodule)
        self.logits = out.logits["train"]  # (n_train, classes)
        cfg, temperature = self.config, self.temperature
        # mean top probability at T per stage: a teacher that has memorised its training clips is
        # more confident on them than on the validation clips it never saw
        confidence = {s: float(torch.softmax(t / temperature, dim=1).max(dim=1).values.mean())
                      for s, t in out.logits.items() if t.shape[0]}
        self.info = {
            "encoder": cfg.encoder, "weights": out.key.weights, "dt": cfg.dt, "hop": out.key.hop,
            "fit_clips": len(out.fit_clips), "cross_fit": cfg.cross_fit,
            "accuracy": dict(out.accuracy), "top_probability": confidence,
            "cache": None if out.folder is None else str(out.folder),
        }
        acc = ", ".join(f"{s} {100 * a:.1f} %" for s, a in out.accuracy.items())
        conf = ", ".join(f"{s} {p:.3f}" for s, p in confidence.items())
        logger.info(f"distillation teacher {cfg.encoder} ({out.key.weights[:19]}) + probe on the mean embedding at "
                    f"dt={cfg.dt:g} s, fitted on {len(out.fit_clips)} training clips"
                    + (f" (training-clip targets out-of-fold over {cfg.cross_fit} inner folds)" if cfg.cross_fit else "")
                    + f": accuracy {acc}; mean top probability at T={temperature:g}: {conf}; "
                    f"kd_lambda {self.kd_lambda}, temperature {temperature}")

    # ------------------------------------------------------------- training

    def targets(self, batch: dict[str, Any]) -> torch.Tensor:
        """The teacher's probabilities at temperature T ``(batch, classes)`` for the clips of a training batch."""
        if self.logits is None:
            raise Sp4scError("--model.kd_teacher: no teacher logits; train through a Trainer with a "
                             "SceneDataModule (they are computed in setup)")
        index = batch.get("index")
        if index is None:
            raise Sp4scError("--model.kd_teacher: training batches carry no 'index' (use SceneDataModule)")
        device = batch["x"].device
        if self.logits.device != device:
            self.logits = self.logits.to(device)
        t = self.logits.index_select(0, torch.as_tensor(index, device=device).long())  # (batch, classes)
        return torch.softmax(t / self.temperature, dim=1)

    def loss(self, logits: torch.Tensor, target: torch.Tensor, teacher_probs: torch.Tensor,
             label_loss: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """:func:`distillation_loss` with this run's λ and T."""
        return distillation_loss(logits, target, teacher_probs, self.kd_lambda, self.temperature, label_loss)

    def provenance(self) -> dict[str, Any]:
        """The checkpoint's ``distillation`` entry (provenance only: loading a model ignores it)."""
        teacher = {k: v for k, v in self.info.items() if k != "cache"}
        return {"kd_lambda": self.kd_lambda, "kd_temperature": self.temperature,
                "teacher": teacher or {"encoder": self.config.encoder, "dt": self.config.dt}}


__all__ = ["Distillation", "distillation_loss"]
