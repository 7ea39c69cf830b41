"""The LightningModule: a backbone from the model registry, trained as a scene classifier.

:class:`SceneClassifier` takes the backbone either as a registry name plus
keyword arguments (what LightningCLI recipes use: ``model.backbone: sp4sc``,
``model.backbone_kwargs: {dropout: 0.2}``) or as an ``nn.Module`` built in
Python. The label count and the number of mel bins come from the data: when
the backbone is named, it is built in :meth:`setup` with ``n_classes`` =
``datamodule.num_classes`` and ``n_mels`` = the front end's, unless the
recipe sets them (then they must agree). Training options follow SP4ASC:
cross-entropy or focal loss, mixup, SpecAugment stripes, AdamW with cosine
annealing per epoch down to ``eta_min``.

Validation and test share one evaluation step; their bookkeeping (accuracy,
class-averaged accuracy, DCASE log loss, class- and device-wise figures synced
across DDP ranks, the confusion figure for TensorBoard, the reports) lives in
:class:`sp4sc.metrics.StageEvaluation`. The last report of each stage is
:attr:`SceneClassifier.reports` (plain dicts, see
:func:`sp4sc.metrics.dcase_results`). How the model trains on a CPU (CPU path,
torch.compile, bf16) is chosen by :mod:`sp4sc.training.cpu_training` when fitting starts.

Checkpoints carry ``checkpoint["sp4sc"]`` (:func:`sp4sc.models.checkpoint.model_spec`),
so :func:`sp4sc.models.checkpoint.load_model` rebuilds the backbone from a Lightning
checkpoint (state-dict keys ``backbone.*``), and every entry is a plain type:
``torch.load(path, weights_only=True)`` reads them.

Knowledge distillation (Hinton, Vinyals and Dean, 2015): with ``kd_teacher``
set, a frozen encoder + linear probe (:mod:`sp4sc.probes.teacher`, fitted on the
run's training clips only) gives logits for every training clip, computed once
before training and cached on disk; the training loss becomes
:func:`distillation_loss`. The teacher's logits are a plain attribute, never in
the state dict or the exported model: a distilled student saves, loads, folds,
exports and submits like any other.

Feature distillation (``kd_embed_weight`` > 0, after FitNets, Romero et al.
2015, at the clip level): a training-only linear head maps the student's clip
embedding (the input of its classifier) to the teacher's standardised clip
embedding, and its mean-squared error joins the loss. The head lives in the
Lightning checkpoint (so a fold resumes) but never in the backbone: the exported
model, its parameter count and its MACs are those of the plain student.

Repeatability: with ``seed_everything`` set, each training epoch reseeds
torch's generator from (seed, epoch, rank) and augmentation draws come from a
generator seeded by (seed, global step, rank), so a run resumed from an
epoch-end checkpoint continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence, Union

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from sp4sc.constants import DEVICES
from sp4sc.data.augment import SpecAugment, freq_mixstyle, mixup, mixup_draw, random_crop, roll_time
from sp4sc.errors import Sp4scError
from sp4sc.metrics import StageEvaluation

LOSSES = ("ce", "focal")
STAGES = ("val", "test")
# Keys of arch_kwargs that change how a model trains, not what it computes.
TRAINING_ONLY_KWARGS = ("fast",)


def _batch_index(batch: dict[str, Any]) -> Any:
    """The training clips' rows of a batch (what the teacher's targets are looked up by)."""
    index = batch.get("index")
    if index is None:
        raise Sp4scError("--model.kd_teacher: training batches carry no 'index' (use SceneDataModule)")
    return index


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


PRECISE_BN_MAX_BATCHES = 200  # ample for a population estimate (Wu & Johnson 2021 use a few hundred batches)


@torch.no_grad()
def recompute_bn_statistics(model: nn.Module, batches, forward: Optional[Callable] = None,
                            max_batches: int = PRECISE_BN_MAX_BATCHES) -> int:
    """Precise BatchNorm: re-estimate every BatchNorm's running statistics as plain averages over ``batches``.

    During training a BatchNorm layer keeps an exponential moving average (momentum 0.1) of the
    statistics of the last few dozen augmented batches, taken while the weights were still moving;
    on a small dataset that estimate swings from epoch to epoch, and so does the evaluation of
    the same weights. Here the weights are frozen and each layer's running mean and variance
    become the average over the given batches (``momentum=None``), as in "Rethinking 'Batch' in
    BatchNorm" (Wu & Johnson, 2021). Only the BatchNorm layers run in training mode: dropout and
    everything else stay in evaluation mode, so no other layer changes what the statistics see.
    The weights are untouched; the modes and momenta are restored afterwards.

    Args:
        model: the module whose BatchNorm layers to update.
        batches: an iterable of inputs, each passed to ``forward`` (dicts with ``"x"`` are unpacked).
        forward: ``x -> output`` (default: ``model``).
        max_batches: stop after this many batches.

    Returns:
        the number of clips the statistics were averaged over (0 when ``model`` has no BatchNorm).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    forward = forward or model
    clips = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches seen
            m.train()
        for i, batch in enumerate(batches):
            if i >= max_batches:
                break
            x = batch["x"] if isinstance(batch, dict) else batch
            forward(x)
            clips += x.shape[0]
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        for m, training in modes.items():
            m.train(training)
    return clips


def _seed() -> int:
    """The seed given to ``seed_everything`` (LightningCLI's ``seed_everything``), else 0."""
    try:
        return int(os.environ.get("PL_GLOBAL_SEED", "0"))
    except ValueError:
        return 0


def _plain(obj: Any) -> Any:
    """``obj`` with str subclasses (e.g. ``torch.__version__``, a TorchVersion) made plain,
    so ``torch.load(weights_only=True)`` accepts the checkpoint."""
    if isinstance(obj, dict):
        return {_plain(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj) if type(obj) in (list, tuple) else [_plain(v) for v in obj]
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    return obj


class SceneClassifier(pl.LightningModule):
    """Acoustic scene classifier around a registry backbone.

    Args:
        backbone: registry name (:func:`sp4sc.models.list_models`) or a built ``nn.Module``
            with ``arch_name`` and ``arch_kwargs`` attributes.
        backbone_kwargs: options of the registry model (``dropout``, channel widths...);
            ``n_classes`` and ``n_mels`` default to the data's.
        num_classes: label count; None takes it from the DataModule.
        loss: ``"ce"`` (cross-entropy on soft targets) or ``"focal"``.
        focal_gamma: focal-loss exponent (SP4ASC used 1).
        mixup_alpha: Beta(alpha, alpha) mixup; 0 disables it.
        spec_augment: ``[time width, time stripes, freq width, freq stripes]``; None or [] disables it.
        spec_augment_fill: ``"mean"`` (each example's per-mel mean) or ``"zero"``.
        mixstyle_p: Frequency-MixStyle (:func:`sp4sc.data.augment.freq_mixstyle`): probability that a
            training batch gets each clip's per-frequency statistics mixed with another clip's
            (the DCASE 2024 baseline: 0.4); 0 (default) turns it off.
        mixstyle_alpha: Beta(alpha, alpha) of the MixStyle weights (the baseline: 0.3).
        roll_sec: roll each training clip circularly along time by a uniform shift of up to this many
            seconds, in whole frames (:func:`sp4sc.data.augment.roll_time`; the baseline rolls its
            waveforms by up to 0.1 s); 0 (default) turns it off.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        eta_min: learning rate reached at the end of the cosine schedule.
        cosine_epochs: length of the cosine schedule in epochs (None: ``trainer.max_epochs``).
        fast_path: use the backbone's training fast path (SP4SC: one plus-shaped depthwise conv),
            the same function and parameters.
        channels_last: channels-last memory format for backbone and inputs (GPU speed).
        log_confusion: add a confusion-matrix figure to TensorBoard after validate/test.
        cpu_path: when training on a CPU, use the backbone's CPU training path
            (:mod:`sp4sc.models.cpu_ops` for SP4SC; same function and parameters).
            None: on whenever the training device is a CPU.
        compile_backbone: ``torch.compile`` the backbone's training forward on a CPU (fuses
            BatchNorm, ReLU and pooling passes). None: on when a C++ compiler is found and
            ``SP4SC_COMPILE`` is not ``0``; a failed compile falls back to eager with a notice.
        cpu_bf16: bf16 autocast for the training forward on a CPU (fp32 master weights).
            None: on when the CPU has native bf16 (avx512_bf16 or AMX); asked for on a CPU
            without it, it switches itself off with a notice.
        kd_teacher: the distillation teacher, keys of :class:`sp4sc.probes.teacher.TeacherConfig`:
            ``encoder`` (e.g. ``efficientat_mn04``), ``ckpt`` (a local checkpoint; or
            ``random_init: true`` for pipeline checks), ``dt`` (window length, s; the probe reads
            the mean window embedding), ``hop``, ``probe`` (``{epochs, lr, weight_decay, hidden,
            batch_size}``), ``seed``, ``device``, ``batch_size``, ``cache_dir``, ``cross_fit`` (k >= 2:
            out-of-fold targets for the training clips, each from a probe fitted on the other inner
            folds; 0: in-sample). Set one key from
            the command line with ``--model.kd_teacher.ckpt PATH``. Its probe is fitted on the
            training clips only; its logits are computed once before training and cached.
            ``online: true`` runs the encoder on every batch instead, on the waveforms mixed as
            mixup mixes the student's inputs (:class:`sp4sc.probes.teacher.OnlineTeacher`).
            None: no teacher.
        kd_lambda: weight λ of the distillation term (the labels get 1 - λ), in [0, 1]; 0 trains
            on the labels alone (exactly the plain fit, even with a teacher).
        kd_temperature: softmax temperature T of teacher and student in the distillation term
            (> 0; the term is scaled by T²).
        kd_embed_weight: weight β of the feature-distillation term, added to the loss:
            β · MSE(head(student clip embedding), teacher clip embedding), the teacher's embedding
            (mean over its windows) standardised per dimension over the training clips
            (:func:`sp4sc.probes.teacher.teacher_embeddings`) and mixed by mixup like the labels;
            the head is a training-only ``nn.Linear`` (backbone ``feature_dim`` -> encoder ``dim``).
            0 (default): no head, no term. Needs ``kd_teacher``; not with ``online`` or ``train_crop``.
        precise_bn: before the validation of the last epoch, re-estimate every BatchNorm's
            running statistics as plain averages over the training clips, without augmentation
            (:func:`recompute_bn_statistics`; weights untouched, so training is unchanged). The
            saved last checkpoint, what is evaluated, exported and folded, holds them. Without it
            the statistics are a moving average of the last augmented batches, which on a small
            dataset makes the score of the final weights swing by several points from epoch to epoch.
        train_crop: train on a random crop of this many seconds of each clip, a new offset per
            clip and step (validation and test see whole clips). With a teacher, each crop gets
            its own teacher target: the probe on the mean embedding of the teacher windows
            inside the crop (needs ``train_crop >= dt + hop`` of the teacher). None: whole clips.
        qat: quantisation-aware training (:mod:`sp4sc.training.qat`): the backbone is folded and
            trains with int8 fake quantisation of weights (per channel) and activations; a short
            fine-tune from ``qat_from``, exported with ``sp4sc export --int8``.
        qat_from: model file or checkpoint of the recipe's model to start QAT from (needs ``qat``).
    """

    def __init__(
        self,
        backbone: Union[str, nn.Module] = "sp4sc",
        backbone_kwargs: Optional[dict[str, Any]] = None,
        num_classes: Optional[int] = None,
        loss: str = "ce",
        focal_gamma: float = 1.0,
        mixup_alpha: float = 0.0,
        spec_augment: Optional[list[int]] = None,
        spec_augment_fill: str = "mean",
        mixstyle_p: float = 0.0,
        mixstyle_alpha: float = 0.3,
        roll_sec: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        eta_min: float = 1e-5,
        cosine_epochs: Optional[int] = None,
        fast_path: bool = False,
        channels_last: bool = False,
        log_confusion: bool = True,
        cpu_path: Optional[bool] = None,
        compile_backbone: Optional[bool] = None,
        cpu_bf16: Optional[bool] = None,
        kd_teacher: Optional[dict[str, Any]] = None,
        kd_lambda: float = 0.0,
        kd_temperature: float = 1.0,
        kd_embed_weight: float = 0.0,
        train_crop: Optional[float] = None,
        precise_bn: bool = False,
        qat: bool = False,
        qat_from: Optional[str] = None,
    ):
        super().__init__()
        if loss not in LOSSES:
            raise Sp4scError(f"--model.loss {loss!r}: choose one of {list(LOSSES)}")
        if mixup_alpha < 0:
            raise Sp4scError(f"--model.mixup_alpha {mixup_alpha}: must be >= 0 (0 disables mixup)")
        if not 0.0 <= mixstyle_p <= 1.0 or (mixstyle_p > 0 and not mixstyle_alpha > 0):
            raise Sp4scError(f"--model.mixstyle_p {mixstyle_p} / --model.mixstyle_alpha {mixstyle_alpha}: need "
                             "0 <= p <= 1 (0 turns Frequency-MixStyle off) and alpha > 0")
        if not roll_sec >= 0:
            raise Sp4scError(f"--model.roll_sec {roll_sec}: must be >= 0 seconds (0 turns time rolling off)")
        if lr <= 0 or eta_min < 0 or weight_decay < 0:
            raise Sp4scError("--model.lr must be > 0, --model.eta_min and --model.weight_decay >= 0")
        if not 0.0 <= kd_lambda <= 1.0:
            raise Sp4scError(f"--model.kd_lambda {kd_lambda}: must be in [0, 1] (the weight of the distillation "
                             "term; 0 trains on the labels alone)")
        if not kd_temperature > 0:
            raise Sp4scError(f"--model.kd_temperature {kd_temperature}: must be > 0 (1 = the teacher's own "
                             "probabilities; higher values soften them)")
        if train_crop is not None and not train_crop > 0:
            raise Sp4scError(f"--model.train_crop {train_crop}: give the crop length in seconds (> 0), or null "
                             "for whole clips")
        if not kd_embed_weight >= 0:
            raise Sp4scError(f"--model.kd_embed_weight {kd_embed_weight}: must be >= 0 (0 turns feature "
                             "distillation off)")
        if kd_embed_weight > 0 and kd_teacher is None:
            raise Sp4scError(f"--model.kd_embed_weight {kd_embed_weight}: needs a teacher; set --model.kd_teacher "
                             "(e.g. recipes/esc10_sp4sc_kd.yaml) or --model.kd_embed_weight 0")
        if kd_lambda > 0 and kd_teacher is None:
            raise Sp4scError(f"--model.kd_lambda {kd_lambda}: needs a teacher; set --model.kd_teacher "
                             "(e.g. recipes/esc10_sp4sc_kd.yaml) or --model.kd_lambda 0")
        self.kd_config = None
        if kd_teacher is not None:
            from sp4sc.probes.teacher import TeacherConfig

            if not isinstance(kd_teacher, (dict, TeacherConfig)):
                raise Sp4scError(f"--model.kd_teacher: expected a mapping of teacher settings, got {kd_teacher!r}")
            self.kd_config = (kd_teacher if isinstance(kd_teacher, TeacherConfig)
                              else TeacherConfig.from_dict(kd_teacher))
            hop = self.kd_config.dt if self.kd_config.hop is None else self.kd_config.hop
            if kd_embed_weight > 0 and (self.kd_config.online or train_crop is not None):
                raise Sp4scError(f"--model.kd_embed_weight {kd_embed_weight:g}: feature distillation reads the cached "
                                 "clip embeddings of whole clips; drop --model.kd_teacher.online / "
                                 "--model.train_crop, or set --model.kd_embed_weight 0")
            if train_crop is not None and self.kd_config.online:
                raise Sp4scError(f"--model.train_crop {train_crop:g} with --model.kd_teacher.online true: the online "
                                 "teacher labels whole clips; drop one of the two")
            if train_crop is not None and train_crop < self.kd_config.dt + hop - 1e-9:
                raise Sp4scError(f"--model.train_crop {train_crop:g}: shorter than the teacher's window plus its hop "
                                 f"({self.kd_config.dt:g} + {hop:g} s), so a crop may hold no whole window; use a "
                                 "longer crop or a shorter --model.kd_teacher.dt / .hop")
        self.spec_augment = SpecAugment.from_list(spec_augment, fill=spec_augment_fill)
        kwargs = dict(backbone_kwargs or {})
        if isinstance(backbone, nn.Module):
            name = getattr(backbone, "arch_name", None) or type(backbone).__name__
            kwargs = dict(getattr(backbone, "arch_kwargs", kwargs))
            self.save_hyperparameters(ignore=["backbone", "backbone_kwargs"])
            self.hparams["backbone"] = name
            self.hparams["backbone_kwargs"] = kwargs
            self.backbone: Optional[nn.Module] = backbone
            self._prepare_backbone()
        else:
            if not isinstance(backbone, str):
                raise Sp4scError(f"--model.backbone: expected a model name, got {type(backbone).__name__}")
            self.save_hyperparameters()
            self.backbone = None
        self.arch_name: str = self.hparams["backbone"]
        self.classes: Optional[list[str]] = None
        self.frontend_cfg = None
        self.evaluation = StageEvaluation(STAGES)  # metrics, reports and figures of val/test
        self._cpu = None  # sp4sc.training.cpu_training.CpuTraining, chosen when fitting starts
        self.train_setup: dict[str, Any] = {}
        if self.kd_config is not None:
            self.hparams["kd_teacher"] = self.kd_config.to_dict()  # plain types: weights_only loads it
        # teacher logits of the training clips (n_train, classes): set in setup("fit"), a plain
        # attribute kept out of the state dict, the checkpoints and the exported model
        self.kd_logits: Optional[torch.Tensor] = None
        self.kd_windows = None  # sp4sc.probes.teacher.TeacherWindows: labels the crops of train_crop
        self.kd_online = None  # sp4sc.probes.teacher.OnlineTeacher: labels every mixed batch (kd_teacher.online)
        self.kd_info: dict[str, Any] = {}
        # feature distillation: the training-only head (a submodule, built with the backbone) and the
        # teacher's standardised clip embeddings of the training clips (a plain attribute, set in setup("fit"))
        self.kd_embed_head: Optional[nn.Linear] = None
        self.kd_embeddings: Optional[torch.Tensor] = None
        self.precise_bn_clips = 0  # clips the last precise-BN pass averaged over

    # ------------------------------------------------------------------ build

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        """The backbone's rebuild arguments (training-only switches set to their defaults)."""
        kw = dict(getattr(self.backbone, "arch_kwargs", None) or self.hparams.get("backbone_kwargs") or {})
        for key in TRAINING_ONLY_KWARGS:
            if key in kw:
                kw[key] = False
        return kw

    def configure_data(self, classes: Sequence[str], frontend_cfg: Any = None, devices: Sequence[str] = ()) -> None:
        """Take the label set, front end and device names from the data; build the backbone if named."""
        classes = [str(c) for c in classes]
        if self.hparams.get("num_classes") not in (None, len(classes)):
            raise Sp4scError(f"--model.num_classes {self.hparams['num_classes']} but the data has "
                             f"{len(classes)} classes; remove num_classes to take it from the data")
        if self.classes is not None and self.classes != classes:
            raise Sp4scError(f"the data's classes {classes} differ from the model's {self.classes}")
        self.classes = classes
        self.hparams["num_classes"] = len(classes)
        if frontend_cfg is not None:
            self.frontend_cfg = frontend_cfg
        if self.backbone is None:
            kwargs = dict(self.hparams.get("backbone_kwargs") or {})
            kwargs.setdefault("n_classes", len(classes))
            if frontend_cfg is not None:
                kwargs.setdefault("n_mels", frontend_cfg.n_mels)
            if kwargs["n_classes"] != len(classes):
                raise Sp4scError(f"--model.backbone_kwargs.n_classes {kwargs['n_classes']} but the data has "
                                 f"{len(classes)} classes; remove it to take the count from the data")
            if frontend_cfg is not None and kwargs.get("n_mels") != frontend_cfg.n_mels:
                raise Sp4scError(f"--model.backbone_kwargs.n_mels {kwargs.get('n_mels')} but the front end "
                                 f"{frontend_cfg.name!r} has {frontend_cfg.n_mels} mel bins")
            from sp4sc.models import create_model

            self.backbone = create_model(self.hparams["backbone"], **kwargs)
            self._prepare_backbone()
        else:
            n = (getattr(self.backbone, "arch_kwargs", None) or {}).get("n_classes")
            if n is not None and n != len(classes):
                raise Sp4scError(f"the backbone predicts {n} classes but the data has {len(classes)}; "
                                 "set n_classes from the data (leave backbone_kwargs.n_classes out)")
        self._build_embed_head()
        self.evaluation.configure(len(classes), devices, known=DEVICES)

    def _build_embed_head(self) -> None:
        """The feature-distillation head (``kd_embed_weight`` > 0), once the backbone exists.

        Built in every stage, so a checkpoint that holds it loads strictly for validate and test
        too; initialised from its own generator, so the backbone's weights and the batches drawn
        are those of the same run without it.
        """
        if self.hparams.get("kd_embed_weight", 0.0) <= 0 or self.kd_embed_head is not None or self.backbone is None:
            return
        if not hasattr(self.backbone, "logits_and_features"):
            raise Sp4scError(f"--model.kd_embed_weight: backbone {self.arch_name!r} has no logits_and_features(); "
                             "feature distillation needs a registry CNN (sp4sc, cnn6, ...)")
        from sp4sc.probes.encoders import create_encoder

        dim = int(create_encoder(self.kd_config.encoder).dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed() + 7919)
            self.kd_embed_head = nn.Linear(int(self.backbone.feature_dim), dim)

    def _prepare_backbone(self) -> None:
        if self.hparams.get("fast_path"):
            if not hasattr(self.backbone, "set_fast"):
                raise Sp4scError(f"--model.fast_path: backbone {self.hparams['backbone']!r} has no fast path")
            self.backbone.set_fast(True)
        if self.hparams.get("channels_last"):
            self.backbone.to(memory_format=torch.channels_last)
        if self.hparams.get("qat_from") and not self.hparams.get("qat"):
            raise Sp4scError("--model.qat_from: only with --model.qat true (quantisation-aware fine-tuning)")
        if self.hparams.get("qat"):
            from sp4sc.training.qat import prepare_qat

            self.backbone = prepare_qat(self.backbone, self.hparams.get("qat_from"))

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None:
            if self.kd_config is not None and stage == "fit":
                raise Sp4scError("--model.kd_teacher needs a SceneDataModule: the teacher reads the training "
                                 "clips' audio")
            if self.classes is None:
                raise Sp4scError("SceneClassifier needs a SceneDataModule (for the classes and the front end)")
            return
        self.configure_data(dm.classes, getattr(dm, "frontend_cfg", None), getattr(dm, "devices", ()) or ())
        if self.kd_config is not None and stage == "fit":
            self._setup_teacher(dm)

    def prepare_data(self) -> None:
        # Once per node, before setup() runs on every rank: the teacher logits are computed here into
        # their cache, so that DDP ranks only read them in setup().
        trainer = self._trainer
        if self.kd_config is None or trainer is None or trainer.datamodule is None or trainer.state.fn != "fit":
            return
        self._compute_teacher(trainer.datamodule)

    # ------------------------------------------------------------ distillation

    def _compute_teacher(self, dm: Any):
        from sp4sc.probes.teacher import compute_teacher

        if not all(hasattr(dm, a) for a in ("clips", "index", "classes")):
            raise Sp4scError("--model.kd_teacher needs a SceneDataModule: the teacher reads the training clips' audio")
        return compute_teacher(dm, self.kd_config, stages=("train", "val"))

    def _setup_teacher(self, dm: Any) -> None:
        """Teacher logits of the training clips (from the cache once prepare_data has run)."""
        from sp4sc.log import logger

        out = self._compute_teacher(dm)
        self.kd_logits = out.logits["train"]  # (n_train, classes), rows in batch["index"] order
        cfg = self.kd_config
        temperature = self.hparams["kd_temperature"]
        # mean top probability at T per stage: a teacher that has memorised its training clips is
        # more confident on them than on the validation clips it never saw
        confidence = {s: float(torch.softmax(t / temperature, dim=1).max(dim=1).values.mean())
                      for s, t in out.logits.items() if t.shape[0]}
        self.kd_info = {
            "encoder": cfg.encoder, "weights": out.key.weights, "dt": cfg.dt, "hop": out.key.hop,
            "fit_clips": len(out.fit_clips), "cross_fit": cfg.cross_fit,
            "accuracy": dict(out.accuracy), "top_probability": confidence,
            "cache": None if out.folder is None else str(out.folder),
        }
        if self.kd_embed_head is not None:
            from sp4sc.probes.teacher import teacher_embeddings

            self.kd_embeddings = teacher_embeddings(dm, cfg)  # (n_train, dim)
            if self.kd_embeddings.shape != (self.kd_logits.shape[0], self.kd_embed_head.out_features):
                raise Sp4scError(f"--model.kd_embed_weight: the teacher's embeddings are {tuple(self.kd_embeddings.shape)}, "
                                 f"expected ({self.kd_logits.shape[0]}, {self.kd_embed_head.out_features}); delete the "
                                 f"teacher cache {out.folder} and retry")
            self.kd_info["embed"] = {"weight": self.hparams["kd_embed_weight"],
                                     "dim": int(self.kd_embeddings.shape[1])}
        if cfg.online:
            from sp4sc.probes.teacher import online_teacher

            self.kd_online = online_teacher(dm, cfg)
            self.kd_info["online"] = True
        if self.hparams.get("train_crop") is not None:
            from sp4sc.probes.teacher import teacher_windows

            self.kd_windows = teacher_windows(dm, cfg)
            windows = int(torch.isfinite(self.kd_windows.starts).sum(dim=1).max())
            self.kd_info["crops"] = {"train_crop": self.hparams["train_crop"], "windows_per_clip": windows}
            logger.info(f"distillation teacher on crops of {self.hparams['train_crop']:g} s: each crop's target is the "
                        f"probe on the mean of the windows inside it ({windows} windows of {cfg.dt:g} s per clip)")
        acc = ", ".join(f"{s} {100 * a:.1f} %" for s, a in out.accuracy.items())
        conf = ", ".join(f"{s} {p:.3f}" for s, p in confidence.items())
        logger.info(f"distillation teacher {cfg.encoder} ({out.key.weights[:19]}) + probe on the mean embedding at "
                    f"dt={cfg.dt:g} s, fitted on {len(out.fit_clips)} training clips"
                    + (f" (training-clip targets out-of-fold over {cfg.cross_fit} inner folds)" if cfg.cross_fit else "")
                    + f": accuracy {acc}; "
                    f"mean top probability at T={temperature:g}: {conf}; "
                    f"kd_lambda {self.hparams['kd_lambda']}, temperature {temperature}")

    def _crop_frames(self, frames: int) -> Optional[int]:
        """Frames of a ``train_crop`` crop, or None (no crop set, or clips no longer than the crop)."""
        seconds = self.hparams.get("train_crop")
        if seconds is None:
            return None
        n = max(1, int(round(seconds / self._frame_seconds())))
        return n if n < frames else None

    def _roll_frames(self) -> int:
        """Largest ``roll_sec`` shift in whole frames of the front end."""
        if self.frontend_cfg is None:
            raise Sp4scError("--model.roll_sec needs the front end's frame rate (train through a SceneDataModule)")
        return int(round(self.hparams["roll_sec"] * self.frontend_cfg.sample_rate / self.frontend_cfg.hop_length))

    def _frame_seconds(self) -> float:
        """Seconds between two log-mel frames of the front end."""
        if self.frontend_cfg is None:
            raise Sp4scError("--model.train_crop needs the front end's frame rate (train through a SceneDataModule)")
        return self.frontend_cfg.hop_length / self.frontend_cfg.sample_rate

    def _teacher_probs(self, batch: dict[str, Any], offsets: Optional[torch.Tensor] = None,
                       crop: int = 0) -> Optional[torch.Tensor]:
        """The teacher's probabilities at temperature T for the clips (or crops) of a training batch, or None.

        Args:
            batch: the training batch (its ``index`` names the training clips).
            offsets: ``(batch,)`` first frame of each crop, or None for whole clips.
            crop: crop length in frames (with ``offsets``).
        """
        if self.kd_config is None:
            return None
        if offsets is not None:
            if self.kd_windows is None:
                raise Sp4scError("--model.train_crop with a teacher: no teacher windows; train through a Trainer "
                                 "with a SceneDataModule (they are loaded in setup)")
            x = batch["x"]
            if self.kd_windows.embeddings.device != x.device:
                self.kd_windows.to(x.device)
            frame_s = self._frame_seconds()
            begin = offsets.to(device=x.device, dtype=torch.float64) * frame_s
            index = torch.as_tensor(batch["index"], device=x.device).long()
            t = self.kd_windows.crop_logits(index, begin, begin + crop * frame_s, tolerance_s=frame_s / 2)
            return torch.softmax(t / self.hparams["kd_temperature"], dim=1)
        if self.kd_logits is None:
            raise Sp4scError("--model.kd_teacher: no teacher logits; train through a Trainer with a "
                             "SceneDataModule (they are computed in setup)")
        index = _batch_index(batch)
        x = batch["x"]
        if self.kd_logits.device != x.device:
            self.kd_logits = self.kd_logits.to(x.device)
        index = torch.as_tensor(index, device=x.device).long()
        t = self.kd_logits.index_select(0, index)  # (batch, classes)
        return torch.softmax(t / self.hparams["kd_temperature"], dim=1)

    # ----------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, 1, frames, mels) -> (batch, classes)
        if self.backbone is None:
            raise Sp4scError("the backbone is not built yet: call configure_data() or run it through a Trainer")
        if self.hparams.get("channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def _generator(self) -> torch.Generator:
        """Augmentation randomness as a function of (seed, step, rank): repeatable and resumable."""
        g = torch.Generator()
        g.manual_seed((_seed() * 1_000_003 + self.global_step) * 64 + self.global_rank)
        return g

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # logits: (batch, classes); target: (batch, classes) soft or one-hot
        logp = F.log_softmax(logits.float(), dim=1)
        if self.hparams["loss"] == "focal":
            weight = (1.0 - logp.exp()).pow(self.hparams["focal_gamma"])
            return -(target * weight * logp).sum(dim=1).mean()
        return -(target * logp).sum(dim=1).mean()

    def on_train_epoch_start(self) -> None:
        # dropout and anything else on torch's global generator: a function of (seed, epoch, rank)
        torch.manual_seed((_seed() * 1_000_003 + self.current_epoch) * 64 + self.global_rank)
        # A shuffle drawn from a generator owned by the loader continues from wherever the previous
        # epoch left it, which a resumed run cannot know: restart it from (seed, epoch) instead.
        # With single-process loading the permutation is drawn lazily at the first batch, after
        # this hook; creating the loader iterator draws one number from the same generator (torch's
        # worker base seed), which happens after this hook in later epochs but before it in the
        # first epoch a process runs (fresh start or resume): burn that draw here to line them up.
        loader = self.trainer.train_dataloader if self._trainer is not None else None
        generator = getattr(getattr(loader, "sampler", None), "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(_seed() * 1_000_003 + self.current_epoch)
            if self._first_train_epoch:
                torch.empty((), dtype=torch.int64).random_(generator=generator)
        self._first_train_epoch = False

    def on_train_start(self) -> None:
        self._first_train_epoch = True

    def on_fit_start(self) -> None:
        self.setup_cpu_training()

    def setup_cpu_training(self) -> dict[str, Any]:
        """Choose the CPU training path, torch.compile and bf16 autocast for this run (:mod:`sp4sc.training.cpu_training`).

        Returns (and keeps in :attr:`train_setup`) what was chosen, for logs and benchmarks.
        """
        from sp4sc.training.cpu_training import CpuTraining, choose

        h = self.hparams
        # QAT: the plain forward only (the CPU path's kernels read raw weights, compile and bf16 alter the fake quant)
        off = h.get("qat") or None
        self._cpu = CpuTraining(setup={"device": self.device.type}) if self.backbone is None else choose(
            self.backbone, self.device.type, False if off else h.get("cpu_path"),
            False if off else h.get("compile_backbone"), False if off else h.get("cpu_bf16"), name=self.arch_name)
        self.train_setup = self._cpu.setup
        if self.kd_embed_head is not None and self._cpu.compiled is not None:
            self._cpu.compiled = torch.compile(self.backbone.logits_and_features, dynamic=False)
        return self.train_setup

    def _logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.hparams.get("channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone.logits_and_features(x)

    def _train_forward(self, x: torch.Tensor) -> Any:
        """The training forward: compiled and under bf16 autocast where :meth:`setup_cpu_training` chose so.

        Logits ``(batch, classes)``; with feature distillation, ``(logits, features)``.
        """
        eager = self._logits_and_features if self.kd_embed_head is not None else self
        return eager(x) if self._cpu is None else self._cpu.forward(eager, x)

    def on_validation_epoch_start(self) -> None:
        trainer = self._trainer
        if (not self.hparams.get("precise_bn") or trainer is None or trainer.sanity_checking
                or trainer.state.fn != "fit" or trainer.max_epochs is None
                or trainer.current_epoch != trainer.max_epochs - 1):
            return
        self.precise_bn_clips = self._recompute_bn_from_training_clips(trainer)

    def _recompute_bn_from_training_clips(self, trainer: pl.Trainer) -> int:
        """:func:`recompute_bn_statistics` over the training clips, in a fixed shuffled order, unaugmented."""
        from torch.utils.data import DataLoader

        from sp4sc.log import logger

        loader = trainer.train_dataloader
        if not isinstance(loader, DataLoader):
            raise Sp4scError("--model.precise_bn needs one training DataLoader (got "
                             f"{type(loader).__name__}); turn it off with --model.precise_bn false")
        # shuffled (batches mixing classes, as in training), from its own generator: the training
        # shuffle is not touched
        batches = DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=True,
                             generator=torch.Generator().manual_seed(_seed()), collate_fn=loader.collate_fn,
                             num_workers=0)

        def forward(x: torch.Tensor) -> torch.Tensor:
            return self(x.to(self.device))

        clips = recompute_bn_statistics(self, batches, forward)
        logger.info("precise BN: BatchNorm statistics re-estimated over %d training clips (epoch %d)",
                    clips, trainer.current_epoch + 1)
        return clips

    def on_train_epoch_end(self) -> None:
        opt = self.optimizers()
        if not isinstance(opt, list):
            self.log("train/lr", float(opt.param_groups[0]["lr"]))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x, y = batch["x"], batch["y"]  # (batch, 1, frames, mels), (batch,)
        target = F.one_hot(y, len(self.classes)).float()  # (batch, classes)
        g = self._generator()
        crop, offsets = self._crop_frames(x.shape[2]), None
        if crop is not None:
            x, offsets = random_crop(x, crop, g)  # (batch, 1, crop, mels), (batch,)
        if self.hparams.get("roll_sec", 0.0) > 0:  # within the crop: teacher targets of the crop still hold
            x = roll_time(x, self._roll_frames(), g)  # (batch, 1, frames, mels)
        embedding = None
        if self.kd_config is not None and self.kd_config.online:
            x, target, teacher = self._online_mixup(batch, x, target, g)
        else:
            x, target, teacher, embedding = self._mixup(batch, x, target, g, offsets, crop or 0)
        if self.spec_augment is not None:  # after mixup, as SP4ASC (mixup on inputs, SpecAugment in the net)
            x = self.spec_augment(x, generator=g)
        if self.hparams.get("mixstyle_p", 0.0) > 0:  # after masking, as the DCASE 2024 baseline
            x = freq_mixstyle(x, self.hparams["mixstyle_p"], self.hparams["mixstyle_alpha"], g)
        out = self._train_forward(x)
        logits, features = out if self.kd_embed_head is not None else (out, None)
        if teacher is None:
            loss = self._loss(logits, target)
        else:
            loss = distillation_loss(logits, target, teacher, self.hparams["kd_lambda"],
                                     self.hparams["kd_temperature"], label_loss=self._loss)
        if features is not None:
            embed_loss = F.mse_loss(self.kd_embed_head(features.float()), embedding)
            self.log("train/embed_loss", embed_loss, on_step=False, on_epoch=True, batch_size=y.shape[0])
            loss = loss + self.hparams["kd_embed_weight"] * embed_loss
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=y.shape[0])
        return loss

    def _online_mixup(self, batch: dict[str, Any], x: torch.Tensor, target: torch.Tensor,
                      g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mixup of inputs and labels, and the online teacher's probabilities for the mixed clips."""
        if self.kd_online is None:
            raise Sp4scError("--model.kd_teacher.online: no online teacher; train through a Trainer with a "
                             "SceneDataModule (it is built in setup)")
        index = _batch_index(batch)
        perm, lam = None, 1.0
        if self.hparams["mixup_alpha"] > 0:
            perm, lam = mixup_draw(x.shape[0], self.hparams["mixup_alpha"], g)  # mixup()'s draw, same stream
            p = perm.to(x.device)
            x = x * lam + x[p] * (1.0 - lam)
            target = target * lam + target[p] * (1.0 - lam)
        t = self.kd_online.logits(torch.as_tensor(index), perm, lam).to(x.device)  # (batch, classes)
        return x, target, torch.softmax(t / self.hparams["kd_temperature"], dim=1)

    def _teacher_embeddings(self, batch: dict[str, Any], x: torch.Tensor) -> Optional[torch.Tensor]:
        """The teacher's standardised clip embeddings ``(batch, dim)`` of a training batch, or None."""
        if self.kd_embed_head is None:
            return None
        if self.kd_embeddings is None:
            raise Sp4scError("--model.kd_embed_weight: no teacher embeddings; train through a Trainer with a "
                             "SceneDataModule (they are loaded in setup)")
        if self.kd_embeddings.device != x.device:
            self.kd_embeddings = self.kd_embeddings.to(x.device)
        return self.kd_embeddings.index_select(0, torch.as_tensor(_batch_index(batch), device=x.device).long())

    def _mixup(self, batch: dict[str, Any], x: torch.Tensor, target: torch.Tensor, g: torch.Generator,
               offsets: Optional[torch.Tensor], crop: int
               ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Mixup of inputs, labels, the cached teacher's probabilities and its clip embeddings.

        Returns ``(x, target, teacher, embedding)``; teacher is None without a teacher, embedding
        None without feature distillation. One permutation and weight for all of them.
        """
        teacher = self._teacher_probs(batch, offsets, crop)  # (batch, classes) or None
        embedding = self._teacher_embeddings(batch, x)  # (batch, dim) or None
        if self.hparams["mixup_alpha"] > 0:
            parts = [t for t in (target, teacher, embedding) if t is not None]
            x, mixed = mixup(x, torch.cat(parts, dim=1), self.hparams["mixup_alpha"], g)
            pieces = iter(mixed.split([t.shape[1] for t in parts], dim=1))
            target = next(pieces)
            teacher = None if teacher is None else next(pieces)
            embedding = None if embedding is None else next(pieces)
        return x, target, teacher, embedding

    # ------------------------------------------------------------- evaluation

    def _eval_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        """The one evaluation step shared by validation and test."""
        x, y = batch["x"], batch["y"]
        logits = self(x)  # (batch, classes)
        loss = F.cross_entropy(logits.float(), y)
        self.evaluation.update(stage, logits, y, batch)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=y.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self.evaluation.finish(self, "val", self.classes, self.hparams.get("log_confusion", True))

    def on_test_epoch_end(self) -> None:
        self.evaluation.finish(self, "test", self.classes, self.hparams.get("log_confusion", True))

    @property
    def reports(self) -> dict[str, dict[str, Any]]:
        """The last report of each evaluated stage (:func:`sp4sc.metrics.dcase_results` layout + ``confusion``)."""
        return self.evaluation.reports

    @property
    def device_names(self) -> list[str]:
        return self.evaluation.device_names

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        probs = torch.softmax(self(batch["x"]).float(), dim=1)  # (batch, classes)
        return {"probs": probs, "index": batch.get("index", torch.arange(probs.shape[0]))}

    # -------------------------------------------------------------- optimizer

    def configure_optimizers(self):
        h = self.hparams
        params = list(self.backbone.parameters())
        if self.kd_embed_head is not None:
            params += list(self.kd_embed_head.parameters())
        opt = torch.optim.AdamW(params, lr=h["lr"], weight_decay=h["weight_decay"])
        t_max = h.get("cosine_epochs") or self.trainer.max_epochs
        if t_max is None or t_max < 1:
            raise Sp4scError("the cosine schedule needs --trainer.max_epochs or --model.cosine_epochs")
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(t_max), eta_min=h["eta_min"])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # ------------------------------------------------------------- checkpoints

    def model_spec(self) -> dict[str, Any]:
        """The ``"sp4sc"`` entry that lets :func:`sp4sc.models.checkpoint.load_model` rebuild the backbone."""
        from sp4sc.models.checkpoint import model_spec

        if self.classes is None or self.frontend_cfg is None:
            raise Sp4scError("the model has no classes/front end yet (train or load it with its data first)")
        spec = model_spec(self.arch_name, self.arch_kwargs, self.frontend_cfg, self.classes,
                          devices=list(self.device_names),
                          spec_augment=list(self.hparams.get("spec_augment") or []) or None,
                          spec_augment_fill=self.hparams.get("spec_augment_fill", "mean"))
        if self.kd_config is not None:  # provenance only: load_model ignores it
            spec["distillation"] = {"kd_lambda": self.hparams["kd_lambda"],
                                    "kd_temperature": self.hparams["kd_temperature"],
                                    "kd_embed_weight": self.hparams.get("kd_embed_weight", 0.0),
                                    "teacher": {k: v for k, v in self.kd_info.items() if k != "cache"}
                                    or {"encoder": self.kd_config.encoder, "dt": self.kd_config.dt}}
        return _plain(spec)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sp4sc"] = self.model_spec()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        spec = checkpoint.get("sp4sc")
        if not isinstance(spec, dict):
            return
        from sp4sc.frontend.features import FrontEndConfig

        if self.backbone is None:  # load_from_checkpoint outside a Trainer: rebuild as saved
            from sp4sc.models import create_model

            kwargs = dict(spec.get("model_kwargs", {}))
            if self.hparams.get("fast_path") and "fast" in kwargs:
                kwargs["fast"] = True
            self.backbone = create_model(spec["model"], **kwargs)
            self._prepare_backbone()
        frontend = FrontEndConfig.from_dict(spec["frontend"])
        self.configure_data(spec["classes"], frontend if self.frontend_cfg is None else self.frontend_cfg,
                            spec.get("devices", ()))
