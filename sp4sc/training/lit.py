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

Knowledge distillation (``kd_teacher``, ``kd_lambda``, ``kd_temperature``) lives in
:mod:`sp4sc.training.distill`: the classifier asks a :class:`~sp4sc.training.distill.Distillation`
for the teacher's targets of a batch and for the loss, and mixes the targets as mixup mixes the
labels. Precise BatchNorm is :mod:`sp4sc.training.precise_bn`.

Repeatability (:mod:`sp4sc.training.seeding`): every random draw of training is a
function of (seed, epoch or step, rank), so a run resumed from an epoch-end
checkpoint continues exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from sp4sc.constants import DEVICES
from sp4sc.data.augment import SpecAugment, freq_mixstyle, mixup, roll_time
from sp4sc.errors import Sp4scError
from sp4sc.metrics import StageEvaluation
from sp4sc.training.distill import Distillation
from sp4sc.training.precise_bn import recompute_from_training_clips
from sp4sc.training.seeding import global_seed, reseed_epoch, step_generator

LOSSES = ("ce", "focal")
STAGES = ("val", "test")
# Keys of arch_kwargs that change how a model trains, not what it computes.
TRAINING_ONLY_KWARGS = ("fast",)


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
        kd_teacher: the distillation teacher (:mod:`sp4sc.training.distill`), keys of
            :class:`sp4sc.probes.teacher.TeacherConfig`: ``encoder``, ``ckpt`` (a local checkpoint;
            or ``random_init: true`` for pipeline checks), ``dt``, ``hop``, ``probe``, ``seed``,
            ``device``, ``batch_size``, ``cache_dir``, ``cross_fit`` (k >= 2: out-of-fold targets),
            ``finetuned``. One key from the command line: ``--model.kd_teacher.ckpt PATH``. None:
            no teacher.
        kd_lambda: weight λ of the distillation term (the labels get 1 - λ), in [0, 1]; 0 trains
            on the labels alone (exactly the plain fit, even with a teacher).
        kd_temperature: softmax temperature T of teacher and student in the distillation term
            (> 0; the term is scaled by T²).
        precise_bn: in the last epoch, before its validation (or at its end when
            ``check_val_every_n_epoch`` skips it), re-estimate every BatchNorm's
            running statistics as plain averages over the training clips, without augmentation
            (:func:`recompute_bn_statistics`; weights untouched, so training is unchanged). The
            saved last checkpoint, what is evaluated, exported and folded, holds them. Without it
            the statistics are a moving average of the last augmented batches, which on a small
            dataset makes the score of the final weights swing by several points from epoch to epoch.
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
        self.distill = Distillation.from_options(kd_teacher, kd_lambda, kd_temperature)  # None: no teacher
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
        if self.distill is not None:
            self.hparams["kd_teacher"] = self.distill.config.to_dict()  # plain types: weights_only loads it
        self.precise_bn_clips = 0  # clips the last precise-BN pass averaged over
        self._precise_bn_epoch: int | None = None  # the epoch it ran in (once per fit)

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
        self.evaluation.configure(len(classes), devices, known=DEVICES)

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
            if self.distill is not None and stage == "fit":
                raise Sp4scError("--model.kd_teacher needs a SceneDataModule: the teacher reads the training "
                                 "clips' audio")
            if self.classes is None:
                raise Sp4scError("SceneClassifier needs a SceneDataModule (for the classes and the front end)")
            return
        self.configure_data(dm.classes, getattr(dm, "frontend_cfg", None), getattr(dm, "devices", ()) or ())
        if self.distill is not None and stage == "fit":
            self.distill.setup(dm)

    def prepare_data(self) -> None:
        # Once per node, before setup() runs on every rank: the teacher logits are computed here into
        # their cache, so that DDP ranks only read them in setup().
        trainer = self._trainer
        if self.distill is None or trainer is None or trainer.datamodule is None or trainer.state.fn != "fit":
            return
        self.distill.prepare(trainer.datamodule)

    def _roll_frames(self) -> int:
        """Largest ``roll_sec`` shift in whole frames of the front end."""
        if self.frontend_cfg is None:
            raise Sp4scError("--model.roll_sec needs the front end's frame rate (train through a SceneDataModule)")
        return int(round(self.hparams["roll_sec"] * self.frontend_cfg.sample_rate / self.frontend_cfg.hop_length))

    # ----------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, 1, frames, mels) -> (batch, classes)
        if self.backbone is None:
            raise Sp4scError("the backbone is not built yet: call configure_data() or run it through a Trainer")
        if self.hparams.get("channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # logits: (batch, classes); target: (batch, classes) soft or one-hot
        logp = F.log_softmax(logits.float(), dim=1)
        if self.hparams["loss"] == "focal":
            weight = (1.0 - logp.exp()).pow(self.hparams["focal_gamma"])
            return -(target * weight * logp).sum(dim=1).mean()
        return -(target * logp).sum(dim=1).mean()

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader if self._trainer is not None else None
        reseed_epoch(loader, self.current_epoch, self.global_rank, self._first_train_epoch)
        self._first_train_epoch = False

    def on_train_start(self) -> None:
        self._first_train_epoch = True
        self._precise_bn_epoch = None

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
        return self.train_setup

    def _train_forward(self, x: torch.Tensor) -> Any:
        """The training forward: compiled and under bf16 autocast where :meth:`setup_cpu_training` chose so.

        Logits ``(batch, classes)``.
        """
        return self(x) if self._cpu is None else self._cpu.forward(self, x)

    def _precise_bn_at_last_epoch(self) -> None:
        """Precise BN once in the last epoch of a fit: before its validation, or at its end when it has none."""
        trainer = self._trainer
        if (not self.hparams.get("precise_bn") or trainer is None or trainer.sanity_checking
                or trainer.state.fn != "fit" or trainer.max_epochs is None
                or trainer.current_epoch != trainer.max_epochs - 1 or self._precise_bn_epoch == trainer.current_epoch):
            return
        self.precise_bn_clips = recompute_from_training_clips(self, trainer.train_dataloader, global_seed(),
                                                              trainer.current_epoch)
        self._precise_bn_epoch = trainer.current_epoch

    def on_validation_epoch_start(self) -> None:
        self._precise_bn_at_last_epoch()

    def on_train_epoch_end(self) -> None:
        # after the epoch's validation and before the checkpoints are written (Lightning runs them last), so
        # the last epoch's checkpoint holds the statistics also when --trainer.check_val_every_n_epoch skips it
        self._precise_bn_at_last_epoch()
        opt = self.optimizers()
        if not isinstance(opt, list):
            self.log("train/lr", float(opt.param_groups[0]["lr"]))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x, y = batch["x"], batch["y"]  # (batch, 1, frames, mels), (batch,)
        target = F.one_hot(y, len(self.classes)).float()  # (batch, classes)
        g = step_generator(self.global_step, self.global_rank)  # augmentation draws: repeatable, resumable
        if self.hparams.get("roll_sec", 0.0) > 0:
            x = roll_time(x, self._roll_frames(), g)  # (batch, 1, frames, mels)
        teacher = None if self.distill is None else self.distill.targets(batch)  # (batch, classes)
        if self.hparams["mixup_alpha"] > 0:  # one permutation and weight for inputs, labels and teacher targets
            parts = [target] if teacher is None else [target, teacher]
            x, mixed = mixup(x, torch.cat(parts, dim=1), self.hparams["mixup_alpha"], g)
            target, teacher = mixed[:, : target.shape[1]], None if teacher is None else mixed[:, target.shape[1] :]
        if self.spec_augment is not None:  # after mixup, as SP4ASC (mixup on inputs, SpecAugment in the net)
            x = self.spec_augment(x, generator=g)
        if self.hparams.get("mixstyle_p", 0.0) > 0:  # after masking, as the DCASE 2024 baseline
            x = freq_mixstyle(x, self.hparams["mixstyle_p"], self.hparams["mixstyle_alpha"], g)
        logits = self._train_forward(x)
        loss = self._loss(logits, target) if teacher is None else self.distill.loss(logits, target, teacher, self._loss)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=y.shape[0])
        return loss

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
        opt = torch.optim.AdamW(self.backbone.parameters(), lr=h["lr"], weight_decay=h["weight_decay"])
        t_max = h.get("cosine_epochs") or self.trainer.max_epochs
        if t_max is None or t_max < 1:
            raise Sp4scError("the cosine schedule needs --trainer.max_epochs or --model.cosine_epochs")
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(t_max), eta_min=h["eta_min"])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # ------------------------------------------------------------- checkpoints

    def model_spec(self) -> dict[str, Any]:
        """The ``"sp4sc"`` entry that lets :func:`sp4sc.models.checkpoint.load_model` rebuild the backbone."""
        from sp4sc.models.checkpoint import model_spec, plain_types

        if self.classes is None or self.frontend_cfg is None:
            raise Sp4scError("the model has no classes/front end yet (train or load it with its data first)")
        spec = model_spec(self.arch_name, self.arch_kwargs, self.frontend_cfg, self.classes,
                          devices=list(self.device_names),
                          spec_augment=list(self.hparams.get("spec_augment") or []) or None,
                          spec_augment_fill=self.hparams.get("spec_augment_fill", "mean"))
        if self.distill is not None:  # provenance only: load_model ignores it
            spec["distillation"] = self.distill.provenance()
        return plain_types(spec)

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
