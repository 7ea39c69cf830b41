"""DCASE 2024 and 2025 Task 1 submission packages (TAU22, 1 s clips): write (``sp4sc submit --edition``) and validate.

Facts used (read from the organisers' public material, no code copied):

* **2024** -- the organisers' validator (toni-heittola/dcase2024_task1_submission_validator,
  ``main.py`` and ``validators.py``): a package folder ``task1/<label>/`` holds one system
  output per development-train split, ``<label>.output.split_{5,10,25,50,100}.csv``, and one
  ``<label>.meta.yaml``; the label is ``<Lastname>_<INST>_task1_<1-4>``. Each output is
  tab-separated with the header ``filename, scene_label`` and the ten scenes; file names are
  ``<n>.wav`` with n in 0 .. 135,729, 135,730 unique files (the TAU Urban Acoustic Scenes 2024
  Mobile evaluation set); each probability parses as a float; ``scene_label`` is a scene. The
  meta file needs ``submission`` (label, name, abbreviation <= 10 characters, authors with
  lastname, firstname, email, affiliation and exactly one ``corresponding: true``), ``system``
  (description with input_sampling_rate, acoustic_features, embeddings, data_augmentation,
  machine_learning_method, ensemble_method_subsystem_count, decision_making,
  external_data_usage, complexity_management, pipeline, framework; complexity with
  total_model_size, total_parameters (an integer), total_parameters_non_zero, memory_use, macs;
  energy_consumption with training, inference, baseline_inference; external_datasets;
  source_code) and ``results.development_dataset`` (overall, class_wise with the ten scenes,
  device_wise with a, b, c, s1-s6, each with accuracy and logloss). The baseline writes the file
  name without ``audio/`` (CPJKU/dcase2024_task1_baseline ``run_training.py::evaluate``) and reads
  the evaluation list from the evaluation folder's ``meta.csv`` (``dataset/dcase24.py``).
* **2025** -- the organisers' inference-package scripts (CPJKU dcase2025_task1_inference, as
  forked by participants: ``evaluate_submission.py``, ``test_complexity.py``, ``complexity.py``)
  and the meta template participants filled in: the evaluation list is
  ``evaluation_setup/fold1_test.csv`` with ``filename`` and ``device_id``; ``output.csv`` is
  tab-separated ``filename`` (as listed), ``scene_label`` and the class probabilities (softmax);
  ``complexity.json`` is ``{"per_device": {d: {"MACs", "Params"}}, "max_MACs", "max_Params"}``
  over devices a, b, c, s1-s10 (Params in bytes; each device's model <= 30 M MACs and <= 128,000
  bytes); ``test_accuracy.json`` is ``{"Test Accuracy": %}``. The meta file adds
  ``system.inference_code`` (required), ``description.device_information``,
  ``num_models_at_inference``, ``model_weight_sharing``; ``system.complexity`` reports the most
  complex device model (total_model_size in bytes, total_parameters, macs); results are
  ``development_dataset.device_specific`` and ``.general``, each with overall, class_wise and
  device_wise.

Device-aware inference (2025): :class:`DeviceModels` maps the device named in the
evaluation list (``device_id``) to a model: per-device fine-tuned weights (a model file
per device, ``--device-ckpt a=PATH``) or per-device heads (device models that share the
general model's backbone and differ in the classifier); every other device, seen or not,
runs the general model. Counting: each device's model counts whole, shared parts
included, and the limits hold for each (``complexity.json`` ``per_device``, as the
organisers' ``test_complexity.py``; the meta file reports the most complex model). The
package's total adds every device's parameters: ``total_parameters_all_models`` (one
count per model) and ``distinct_parameters_all_models`` (tensors equal in several
models, e.g. a shared backbone, counted once).

What is **ours** (not found in that material, so marked stricter or documented): the 2025
package names its output ``<label>.output.csv`` (the 2024 single-file convention) next to
``complexity.json``; the 2025 evaluation-set size is not published in that material, so rows are
checked against ``--eval-root`` only; probabilities summing to 1 and ``scene_label`` being the
argmax are sp4sc's checks.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sp4sc.constants import DEVICES, SCENES
from sp4sc.errors import Sp4scError

BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "int8": 1}  # the organisers' formula: parameters x bits / 8

EDITIONS = ("2024", "2025")
TASK = "task1"
SPLITS_2024 = (5, 10, 25, 50, 100)
EVAL_ROWS_2024 = 135_730  # validator: unique_file_count 135730, file index 0 .. 135729
HEADER: tuple[str, ...] = ("filename", "scene_label", *SCENES)
MAX_BYTES = 128_000  # CPJKU complexity.py / helpers/nessi.py: MAX_PARAMS_MEMORY
MAX_MACS = 30_000_000
# test_complexity.py checks these devices; the 25 % train split has a, b, c, s1-s3 (the others use the general model)
CHECK_DEVICES_2025: tuple[str, ...] = ("a", "b", "c", *(f"s{i}" for i in range(1, 11)))
SUM_TOL = 1e-3
STRICT_SUM_TOL = 1e-6

SUBMISSION_FIELDS = ("label", "name", "abbreviation", "authors")
AUTHOR_FIELDS = ("lastname", "firstname", "email", "affiliation")
DESCRIPTION_2024 = ("input_sampling_rate", "acoustic_features", "embeddings", "data_augmentation",
                    "machine_learning_method", "ensemble_method_subsystem_count", "decision_making",
                    "external_data_usage", "complexity_management", "pipeline", "framework")
DESCRIPTION_2025 = ("input_sampling_rate", "acoustic_features", "data_augmentation", "machine_learning_method",
                    "external_data_usage", "complexity_management", "pipeline", "framework", "device_information",
                    "num_models_at_inference", "model_weight_sharing")
COMPLEXITY_2024 = ("total_model_size", "total_parameters", "total_parameters_non_zero", "memory_use", "macs")
COMPLEXITY_2025 = ("total_model_size", "total_parameters", "macs")
ENERGY_2024 = ("training", "inference", "baseline_inference")
SYSTEM_2024 = ("description", "complexity", "energy_consumption", "external_datasets", "source_code")
SYSTEM_2025 = ("inference_code", "description", "complexity", "external_datasets")


def _check_edition(edition: str) -> str:
    edition = str(edition)
    if edition not in EDITIONS:
        raise Sp4scError(f"--edition {edition}: choose 2021 (Task 1A) or one of {', '.join(EDITIONS)} (Task 1, TAU22)")
    return edition


def label_problems(label: str) -> list[str]:
    """What is wrong with a 2022-2025 Task 1 label ``<Lastname>_<INST>_task1_<1-4>`` (empty when fine)."""
    parts = label.split("_")
    if len(parts) != 4:
        return [f"label {label!r} has {len(parts)} '_'-separated parts; expected 4: Lastname_INST_{TASK}_N"]
    problems = []
    if not re.fullmatch(r"[^\s/\\.]+", parts[0]) or not re.fullmatch(r"[^\s/\\.]+", parts[1]):
        problems.append(f"label {label!r}: the last name and institute parts must be non-empty, without spaces, dots or slashes")
    if parts[2] != TASK:
        problems.append(f"label {label!r}: third part is {parts[2]!r}; expected {TASK!r} (DCASE 2022-2025 Task 1 has no subtask letter)")
    if not (parts[3].isdigit() and 1 <= int(parts[3]) <= 4):
        problems.append(f"label {label!r}: submission index {parts[3]!r} must be 1, 2, 3 or 4")
    return problems


def output_files(edition: str, label: str) -> dict[str, str]:
    """Key (``split_5`` .. ``split_100`` for 2024, ``output`` for 2025) -> output file name."""
    if _check_edition(edition) == "2024":
        return {f"split_{p}": f"{label}.output.split_{p}.csv" for p in SPLITS_2024}
    return {"output": f"{label}.output.csv"}


# ----------------------------------------------------------------------------- evaluation list


def read_eval_list(eval_root: str | os.PathLike) -> list[tuple[str, str | None]]:
    """``(filename, device or None)`` of an evaluation folder, in file order.

    ``evaluation_setup/fold1_test.csv`` (filename, and ``device_id`` in the 2025 set) when
    present, else ``meta.csv`` (filename; the 2024 baseline's reader). Paths stay as listed.
    """
    from sp4sc.data.index import _check_duplicates, _read_table, _safe_relpath

    root = Path(eval_root).expanduser()
    if not root.is_dir():
        raise Sp4scError(f"--eval-root {root}: not a folder")
    path = root / "evaluation_setup" / "fold1_test.csv"
    if not path.is_file():
        path = root / "meta.csv"
    if not path.is_file():
        raise Sp4scError(f"--eval-root {root}: neither evaluation_setup/fold1_test.csv nor meta.csv; "
                         "point it at the TAU evaluation folder")
    rows = _read_table(path, ("filename",), "\t")
    names = [(ln, _safe_relpath(path, ln, r["filename"])) for ln, r in rows]
    _check_duplicates(path, names)
    return [(n, (r.get("device_id") or r.get("source_label") or None)) for (_, n), (_, r) in zip(names, rows)]


def output_name(edition: str, path: str) -> str:
    """The ``filename`` written for an evaluation file: 2024 drops ``audio/`` (as the baseline), 2025 keeps the listed path."""
    return path[len("audio/"):] if edition == "2024" and path.startswith("audio/") else path


# ----------------------------------------------------------------------------- device-aware models (2025)


@dataclass
class DeviceModels:
    """Models chosen by the device named in the file list (DCASE 2025 device-specific inference).

    Attributes:
        general: the model for every device without its own (also the unseen ones).
        per_device: device id -> its own model (per-device fine-tuned weights, or a model
            whose head differs); devices are matched case-insensitively.
    """

    general: Any  # sp4sc.models.checkpoint.LoadedModel
    per_device: dict[str, Any] = field(default_factory=dict)

    def for_device(self, device: str | None):
        """The model a file recorded with ``device`` runs on."""
        if device is not None and device.lower() in self.per_device:
            return self.per_device[device.lower()]
        return self.general

    @property
    def models(self) -> list[Any]:
        """Distinct models, the general one first."""
        out, seen = [], set()
        for m in [self.general, *self.per_device.values()]:
            if id(m) not in seen:
                seen.add(id(m))
                out.append(m)
        return out


def device_models(general, per_device: dict[str, Any] | None = None) -> DeviceModels:
    """Check and build :class:`DeviceModels` (device ids as the TAU lists write them, same classes everywhere)."""
    per = {}
    for d, m in (per_device or {}).items():
        key = str(d).strip().lower()
        if not re.fullmatch(r"[a-z][a-z0-9]*", key):
            raise Sp4scError(f"--device-ckpt {d}=...: {d!r} is not a device id such as a, b, c, s1")
        if list(m.classes) != list(general.classes):
            raise Sp4scError(f"--device-ckpt {d}=...: its classes {list(m.classes)} differ from the general model's")
        per[key] = m
    return DeviceModels(general, per)


def predict_by_device(models: DeviceModels, files: Sequence[str | os.PathLike], devices: Sequence[str | None],
                      predict_fn=None, **kwargs) -> np.ndarray:
    """(N, 10) probabilities in SCENES order, each file run on the model of its device.

    ``predict_fn(loaded, files, **kwargs)`` defaults to
    :func:`sp4sc.challenge.submission.predict` (the same clip-length rules as ``sp4sc infer``).
    """
    from sp4sc.challenge.submission import predict, reorder_columns

    if len(files) != len(devices):
        raise Sp4scError(f"{len(files)} files but {len(devices)} device ids")
    predict_fn = predict_fn or predict
    out = np.zeros((len(files), len(SCENES)), dtype=np.float64)
    for model in models.models:
        idx = [i for i, d in enumerate(devices) if models.for_device(d) is model]
        if idx:
            probs = np.asarray(predict_fn(model, [files[i] for i in idx], **kwargs), dtype=np.float64)
            out[idx] = reorder_columns(probs, model.classes)
    return out


# ----------------------------------------------------------------------------- complexity


def model_complexity(loaded, precision: str = "fp16", *, count_macs: bool = True) -> dict[str, Any]:
    """Parameters, bytes as stored at ``precision`` and NeSsi MACs per 1 s of one model.

    Parameters and bytes are of the BatchNorm-folded model (what is exported and shipped);
    MACs follow the DCASE 2022-2025 NeSsi convention on the model as trained
    (:func:`sp4sc.deploy.complexity.macs_nessi`), for a 1 s clip of its front end.
    """
    from sp4sc.deploy.complexity import complexity_report, nessi_counter

    if precision not in BYTES_PER_PARAM:
        raise Sp4scError(f"--precision {precision!r}: choose one of {', '.join(BYTES_PER_PARAM)}")
    report = complexity_report(loaded.model, loaded.frontend, duration=1.0, count_macs=False)
    macs = int(nessi_counter()(loaded.model, tuple(report["input_shape_1s"]))) if count_macs else None
    return {"model": report["model"], "params": int(report["params"]), "nonzero_params": int(report["nonzero_params"]),
            # the organisers' formula: parameters x bits per parameter / 8 (see complexity.apply_rules)
            "bytes": int(report["params"]) * BYTES_PER_PARAM[precision], "precision": precision, "macs": macs,
            "input_shape_1s": report["input_shape_1s"]}


def device_complexity(models: DeviceModels, precision: str = "fp16",
                      devices: Sequence[str] = CHECK_DEVICES_2025, *, count_macs: bool = True) -> dict[str, Any]:
    """The 2025 ``complexity.json`` (per device MACs and parameter bytes, their maxima) plus sp4sc's totals.

    Every device's model is counted whole: a device-specific model counts all its
    parameters, shared parts included, so ``max_Params`` is what one device runs.
    ``sp4sc.total_bytes_all_models`` adds the parameters of every distinct model stored
    (each device's weights count once): the memory of the whole package.
    """
    per_model = {id(m): model_complexity(m, precision, count_macs=count_macs) for m in models.models}
    per_device = {}
    for d in devices:
        c = per_model[id(models.for_device(d))]
        per_device[d] = {"MACs": c["macs"], "Params": c["bytes"]}
    extra = sorted(set(models.per_device) - set(devices))
    for d in extra:
        c = per_model[id(models.per_device[d])]
        per_device[d] = {"MACs": c["macs"], "Params": c["bytes"]}
    macs = [v["MACs"] for v in per_device.values() if v["MACs"] is not None]
    biggest = max(per_model.values(), key=lambda c: (c["bytes"], c["macs"] or 0))
    distinct = distinct_parameters(models.models)
    return {
        "per_device": per_device,
        "max_MACs": max(macs) if macs else None,
        "max_Params": max(v["Params"] for v in per_device.values()),
        "sp4sc": {
            "precision": precision,
            "mac_counter": "nessi",
            "models": len(per_model),
            "device_specific": sorted(models.per_device),
            "total_parameters_all_models": sum(c["params"] for c in per_model.values()),
            "total_bytes_all_models": sum(c["bytes"] for c in per_model.values()),
            # per-device heads: tensors equal in several models (a shared backbone) stored once
            "distinct_parameters_all_models": distinct,
            "distinct_bytes_all_models": distinct * BYTES_PER_PARAM[precision],
            "largest_model": biggest,
        },
    }


def distinct_parameters(models: Sequence[Any]) -> int:
    """Parameters of the folded ``models`` with every tensor that several of them hold identically counted once.

    A family of device models that differ only in their heads (a shared, frozen backbone
    fine-tuned per device at the classifier) then counts the backbone once and each head
    once; fully fine-tuned device models count whole, one each.
    """
    import hashlib

    from sp4sc.models.fold import fold_batchnorm

    seen: set[tuple[str, tuple[int, ...], str]] = set()
    total = 0
    for m in models:
        for name, p in fold_batchnorm(m.model).named_parameters():
            t = p.detach().cpu().contiguous()
            key = (name, tuple(t.shape), hashlib.sha1(t.numpy().tobytes()).hexdigest())
            if key not in seen:
                seen.add(key)
                total += t.numel()
    return total


# ----------------------------------------------------------------------------- meta


def _results(y, probs, devices) -> dict[str, Any]:
    from sp4sc.challenge.submission import results_block

    return results_block(y, probs, devices)["development_dataset"]


def build_meta(template: dict, *, edition: str, label: str, sample_rate: int, complexity: dict[str, Any],
               results: dict[str, Any] | None, n_models: int = 1, device_specific: Sequence[str] = (),
               provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """The meta dictionary of an edition: the hand-written template plus what sp4sc measures.

    Args:
        template: hand-written fields (authors, names, tags; ``system.inference_code`` for 2025).
        edition: "2024" or "2025".
        label: the submission label.
        sample_rate: the front end's rate in Hz.
        complexity: the most complex model's ``params``, ``nonzero_params``, ``bytes``, ``macs``.
        results: 2024: split key -> development results; 2025: ``{"device_specific": ..., "general": ...}``;
            None leaves the blocks empty.
        n_models: models used at inference (2025).
        device_specific: devices with their own model (2025).
        provenance: the ``sp4sc`` block (checkpoints, precision, totals).
    """
    from sp4sc.challenge.submission import empty_results, sampling_rate_text

    edition = _check_edition(edition)
    meta = copy.deepcopy(template)
    sub = meta.setdefault("submission", {})
    sub["label"] = label
    system = meta.setdefault("system", {})
    desc = system.setdefault("description", {})
    desc["input_sampling_rate"] = sampling_rate_text(sample_rate)
    desc.setdefault("pipeline", None)
    desc.setdefault("framework", "pytorch")
    for k in DESCRIPTION_2024 if edition == "2024" else DESCRIPTION_2025:
        desc.setdefault(k, None)
    system.setdefault("external_datasets", None)
    system.setdefault("source_code", None)
    if edition == "2024":
        system["complexity"] = {
            "total_model_size": complexity["bytes"],  # bytes of the parameters as stored
            "total_parameters": complexity["params"],
            "total_parameters_non_zero": complexity["nonzero_params"],
            "memory_use": complexity["bytes"],
            "macs": complexity["macs"],
        }
        energy = system.setdefault("energy_consumption", {})
        for k in ENERGY_2024:
            energy.setdefault(k, None)
        blank = empty_results()["development_dataset"]
        per_split = results or {}
        main = per_split.get("split_100") or (per_split[max(per_split, key=lambda k: int(k.split("_")[1]))]
                                              if per_split else blank)
        meta["results"] = {"development_dataset": main}
        if per_split:
            meta["results"]["development_dataset_per_split"] = per_split  # sp4sc: every split's system
    else:
        system.setdefault("inference_code", None)
        desc["num_models_at_inference"] = int(n_models)
        desc["model_weight_sharing"] = "fully device-specific" if device_specific else "fully shared"
        if device_specific and not desc.get("device_information"):
            desc["device_information"] = "per-device weights"
        system["complexity"] = {"total_model_size": complexity["bytes"], "total_parameters": complexity["params"],
                                "macs": complexity["macs"]}
        blank = empty_results()["development_dataset"]
        res = results or {}
        meta["results"] = {"development_dataset": {"device_specific": res.get("device_specific") or blank,
                                                   "general": res.get("general") or blank}}
    if provenance:
        meta["sp4sc"] = provenance
    return meta


def meta_yaml_text(meta: dict, edition: str) -> str:
    import yaml

    return (f"# DCASE {edition} Task 1 system meta information, written by `sp4sc submit --edition {edition}`.\n"
            + yaml.safe_dump(meta, sort_keys=False, default_flow_style=False, allow_unicode=True))


# ----------------------------------------------------------------------------- package writer


@dataclass
class EditionResult:
    """What :func:`make_submission_edition` wrote."""

    path: Path
    label: str
    edition: str
    rows: int
    files: list[str]
    complexity: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def write_package(target: Path, *, edition: str, label: str, outputs: dict[str, tuple[list[str], Any]],
                  meta: dict, extra_json: dict[str, Any] | None = None, eval_root=None, rows: int | None = None,
                  force: bool = False) -> "EditionReport":
    """Write ``<target>/`` atomically and validate it; nothing is kept when validation fails.

    Args:
        outputs: key of :func:`output_files` -> (file names as written, probabilities in SCENES order).
        extra_json: file name -> JSON-able content (``complexity.json``, ``test_accuracy.json``).
    """
    from sp4sc.challenge.submission import output_csv_text
    from sp4sc.fileio import atomic_dir, write_json, write_text

    names = output_files(edition, label)
    if set(outputs) != set(names):
        raise Sp4scError(f"edition {edition}: outputs {sorted(outputs)} but the package needs {sorted(names)}")
    if target.exists() and not force:
        raise Sp4scError(f"{target} already exists; pass --force to replace it")
    with atomic_dir(target, overwrite=force) as tmp:
        for key, (files, probs) in outputs.items():
            write_text(tmp / names[key], output_csv_text(files, probs))
        write_text(tmp / f"{label}.meta.yaml", meta_yaml_text(meta, edition))
        for fname, content in (extra_json or {}).items():
            write_json(tmp / fname, content)
        check = validate_edition(tmp, edition, eval_root=eval_root, rows=rows, sum_tol=STRICT_SUM_TOL, label=label)
        if not check.ok:
            shown = "; ".join(str(v).replace(str(tmp), str(target)) for v in check.violations[:3])
            raise Sp4scError(f"{target}: the written package fails validation, nothing was kept: {shown}")
    check.directory = str(target)
    return check


def edition_template(edition: str, out: str | os.PathLike | None = None) -> Path:
    """``<out>/meta_template_<edition>.yaml`` when it exists, else the repository's ``submissions/`` copy."""
    from sp4sc.challenge.submission import REPO_TEMPLATE

    name = f"meta_template_{_check_edition(edition)}.yaml"
    if out is not None and (Path(out) / name).is_file():
        return Path(out) / name
    return REPO_TEMPLATE.parent / name


def _parse_pairs(items: Sequence[str] | None, option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key or not value:
            raise Sp4scError(f"{option} {item!r}: expected KEY=PATH (e.g. {'5=runs/split5.ckpt' if 'split' in option else 'a=runs/a.ckpt'})")
        if key in out:
            raise Sp4scError(f"{option}: {key!r} given twice")
        out[key] = value
    return out


def _dev_clips(dev_root, split_dir=None):
    from sp4sc.data.index import load_index

    try:
        idx = load_index("tau2022", dev_root, check_audio=True, split_dir=split_dir)
        return idx, idx.split("test")
    except Sp4scError as exc:
        raise Sp4scError(f"--dev-root: {exc}") from exc


def make_submission_edition(
    edition: str,
    label: str,
    eval_root: str | os.PathLike,
    *,
    ckpt: str | os.PathLike | None = None,
    split_ckpts: Sequence[str] | None = None,
    device_ckpts: Sequence[str] | None = None,
    dev_root: str | os.PathLike | None = None,
    out: str | os.PathLike = "submissions",
    template: str | os.PathLike | dict | None = None,
    precision: str = "fp16",
    force: bool = False,
    no_budget: bool = False,
    batch_size: int = 16,
    rows: int | None = None,
    predict_kwargs: dict[str, Any] | None = None,
) -> EditionResult:
    """Write and validate a DCASE 2024 or 2025 Task 1 package ``<out>/<label>/``.

    2024: ``split_ckpts`` gives one model per development-train split (``5=PATH`` ..
    ``100=PATH``, all five). 2025: ``ckpt`` is the general model, ``device_ckpts``
    optional device-specific ones (``a=PATH``); each evaluation file runs on the model
    of the device its list names (``device_id``), the general one for the others.

    Every model must be within 128,000 bytes at ``precision`` and 30 M NeSsi MACs per
    1 s (per device for 2025) unless ``no_budget``.

    Raises:
        Sp4scError: bad arguments or inputs, or a package that fails validation.
        BudgetExceeded: a model is over the limits and ``no_budget`` is False.
    """
    from sp4sc.challenge.submission import load_template, predict, template_placeholders
    from sp4sc.errors import BudgetExceeded
    from sp4sc.models.checkpoint import load_model

    edition = _check_edition(edition)
    problems = label_problems(label)
    if problems:
        raise Sp4scError(f"--label: {problems[0]}")
    target = Path(out) / label
    if target.exists() and not force:
        raise Sp4scError(f"{target} already exists; pass --force to replace it")
    if isinstance(template, dict):
        tmpl = copy.deepcopy(template)
    else:
        tmpl = load_template(Path(template) if template is not None else edition_template(edition, out))
    warnings = [f"template: {f} still holds the template's example value; edit it before submitting"
                for f in template_placeholders(tmpl)]
    eval_list = read_eval_list(eval_root)
    eval_root_p = Path(eval_root).expanduser()
    missing = [n for n, _ in eval_list if not (eval_root_p / n).is_file()]
    if missing:
        raise Sp4scError(f"--eval-root {eval_root_p}: {len(missing)} listed audio files are missing (e.g. {missing[0]})")
    dev = _dev_clips(dev_root) if dev_root is not None else None
    if dev is None:
        warnings.append("no --dev-root: development results in the meta file are left empty")
    kw = dict(batch_size=batch_size, **(predict_kwargs or {}))
    import sp4sc

    provenance: dict[str, Any] = {"version": sp4sc.__version__, "edition": edition, "precision": precision,
                                  "mac_counter": "nessi (DCASE 2022-2025)"}
    files = [eval_root_p / n for n, _ in eval_list]
    written = [output_name(edition, n) for n, _ in eval_list]
    outputs: dict[str, tuple[list[str], Any]] = {}
    extra: dict[str, Any] = {}

    def over(c: dict[str, Any]) -> list[str]:
        o = []
        if c["bytes"] > MAX_BYTES:
            o.append(f"{c['bytes']:,} bytes at {precision} > {MAX_BYTES:,}")
        if c["macs"] is not None and c["macs"] > MAX_MACS:
            o.append(f"{c['macs']:,} MACs per 1 s > {MAX_MACS:,}")
        return o

    if edition == "2024":
        if ckpt is not None or device_ckpts:
            raise Sp4scError("--edition 2024: give one model per split with --split-ckpt 5=PATH ... 100=PATH "
                             "(--ckpt and --device-ckpt are for 2025)")
        pairs = _parse_pairs(split_ckpts, "--split-ckpt")
        wanted = [str(p) for p in SPLITS_2024]
        bad = sorted(set(pairs) - set(wanted))
        if bad or set(pairs) != set(wanted):
            raise Sp4scError(f"--split-ckpt: 2024 needs one model for each split {', '.join(wanted)} "
                             f"(missing: {', '.join(w for w in wanted if w not in pairs) or 'none'}; "
                             f"unknown: {', '.join(bad) or 'none'})")
        results: dict[str, Any] = {}
        cx_all = {}
        for p in SPLITS_2024:
            loaded = load_model(pairs[str(p)])
            c = model_complexity(loaded, precision)
            cx_all[f"split_{p}"] = c
            if over(c) and not no_budget:
                raise BudgetExceeded(f"--split-ckpt {p}={pairs[str(p)]}: over the DCASE 2024 limits: {'; '.join(over(c))}")
            deployed = _deployed(loaded, precision)
            probs = predict_by_device(DeviceModels(deployed), files, [None] * len(files), predict_fn=predict, **kw)
            outputs[f"split_{p}"] = (written, probs)
            if dev is not None:
                idx, clips = dev
                dprobs = predict_by_device(DeviceModels(deployed), [idx.root / c_.path for c_ in clips],
                                           [None] * len(clips), predict_fn=predict, **kw)
                results[f"split_{p}"] = _results([c_.label for c_ in clips], dprobs, [c_.device for c_ in clips])
        biggest = max(cx_all.values(), key=lambda c: (c["bytes"], c["macs"] or 0))
        provenance["checkpoints"] = {k: Path(v).name for k, v in pairs.items()}
        provenance["complexity_per_split"] = cx_all
        meta = build_meta(tmpl, edition=edition, label=label, sample_rate=loaded.frontend.sample_rate,
                          complexity=biggest, results=results or None, provenance=provenance)
        complexity = biggest
    else:
        if split_ckpts:
            raise Sp4scError("--split-ckpt: only for --edition 2024; 2025 trains on the 25 % split (--ckpt)")
        if ckpt is None:
            raise Sp4scError("--edition 2025: --ckpt (the general model) is required")
        general = load_model(ckpt)
        per = {d: load_model(p) for d, p in _parse_pairs(device_ckpts, "--device-ckpt").items()}
        models = device_models(general, per)
        cx = device_complexity(models, precision)
        bad = {d: v for d, v in cx["per_device"].items()
               if v["Params"] > MAX_BYTES or (v["MACs"] is not None and v["MACs"] > MAX_MACS)}
        if bad and not no_budget:
            raise BudgetExceeded(f"over the DCASE 2025 limits (each device's model <= {MAX_BYTES:,} bytes, "
                                 f"<= {MAX_MACS:,} MACs per 1 s): " + "; ".join(
                                     f"{d}: {v['Params']:,} bytes, {v['MACs']:,} MACs" for d, v in sorted(bad.items())))
        deployed = device_models(_deployed(general, precision),
                                 {d: _deployed(m, precision) for d, m in models.per_device.items()})
        probs = predict_by_device(deployed, files, [d for _, d in eval_list], predict_fn=predict, **kw)
        outputs["output"] = (written, probs)
        extra["complexity.json"] = cx
        results = None
        if dev is not None:
            idx, clips = dev
            paths = [idx.root / c_.path for c_ in clips]
            devs = [c_.device for c_ in clips]
            y = [c_.label for c_ in clips]
            spec = predict_by_device(deployed, paths, devs, predict_fn=predict, **kw)
            gen = spec if not deployed.per_device else predict_by_device(
                DeviceModels(deployed.general), paths, devs, predict_fn=predict, **kw)
            results = {"device_specific": _results(y, spec, devs), "general": _results(y, gen, devs)}
            extra["test_accuracy.json"] = {"Test Accuracy": round(float(np.mean(spec.argmax(1) == np.asarray(y))) * 100, 2)}
        provenance["checkpoints"] = {"general": Path(ckpt).name,
                                     **{d: Path(p).name for d, p in _parse_pairs(device_ckpts, "--device-ckpt").items()}}
        largest = cx["sp4sc"]["largest_model"]
        meta = build_meta(tmpl, edition=edition, label=label, sample_rate=general.frontend.sample_rate,
                          complexity=largest, results=results, n_models=len(models.models),
                          device_specific=sorted(models.per_device), provenance=provenance)
        if not (meta.get("system") or {}).get("inference_code"):
            warnings.append("system.inference_code is empty: DCASE 2025 requires the URL of your inference package")
        complexity = largest
    report = write_package(target, edition=edition, label=label, outputs=outputs, meta=meta, extra_json=extra,
                           eval_root=eval_root, rows=rows, force=force)
    warnings += [str(w) for w in report.warnings if w.rule not in ("results-empty",)]
    return EditionResult(path=target, label=label, edition=edition, rows=len(written),
                         files=sorted(p.name for p in target.iterdir()), complexity=complexity, warnings=warnings)


def _deployed(loaded, precision: str):
    """The folded model with its weights rounded to ``precision`` (what the meta file counts)."""
    from sp4sc.challenge.submission import quantise_weights
    from sp4sc.models.checkpoint import LoadedModel
    from sp4sc.models.fold import fold_batchnorm

    p = "fp16" if precision == "int8" else precision  # int8 storage is the user's own quantiser; run at fp16
    return LoadedModel(model=quantise_weights(fold_batchnorm(loaded.model), p), name=loaded.name,
                       model_kwargs=loaded.model_kwargs, frontend=loaded.frontend, classes=loaded.classes,
                       meta=loaded.meta)


# ----------------------------------------------------------------------------- validation


RULES: dict[str, tuple[bool, str]] = {
    # rule id -> (official, what it checks / why sp4sc is stricter)
    "files": (True, "the package holds the edition's output file(s) and <label>.meta.yaml"),
    "label": (True, "label <Lastname>_<INST>_task1_<1-4>, the same in the folder, file names and meta"),
    "output-header": (True, "tab-separated header filename, scene_label and the ten scenes"),
    "output-row": (True, "each row has 12 fields, a known scene_label, float probabilities, a .wav name, no duplicates"),
    "output-names": (True, "2024: <n>.wav with n in 0..135729; with --eval-root: exactly the listed files"),
    "output-count": (True, "2024: 135,730 unique files; with --eval-root or --rows: that number"),
    "meta-missing": (True, "the meta blocks and fields the organisers' validator (2024) or template (2025) requires"),
    "meta-type": (True, "total_parameters is an integer; results are numbers or null"),
    "complexity": (True, "2025: complexity.json per device, each <= 128,000 bytes and <= 30 M MACs per 1 s; "
                         "2024: the meta complexity within the same limits"),
    "prob-range": (False, "probabilities are finite, in [0, 1] and each row sums to 1: the log loss needs a distribution"),
    "argmax": (False, "scene_label is the class with the highest probability (a warning)"),
}


@dataclass
class EditionReport:
    """Result of :func:`validate_edition` (same interface as the 2021 report)."""

    directory: str
    label: str
    edition: str
    official_only: bool = False
    violations: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    rows: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def stricter_only(self) -> list:
        return [v for v in self.violations if not v.official]

    def stricter_reasons(self) -> dict[str, str]:
        return {v.rule: RULES[v.rule][1] for v in self.stricter_only}

    def to_dict(self) -> dict[str, Any]:
        return {"directory": self.directory, "label": self.label, "edition": self.edition, "valid": self.ok,
                "mode": "official" if self.official_only else "strict", "rows": self.rows,
                "violations": [dataclasses.asdict(v) for v in self.violations],
                "stricter_only": len(self.stricter_only), "stricter_reasons": self.stricter_reasons(),
                "warnings": [dataclasses.asdict(w) for w in self.warnings]}


def validate_edition(directory: str | os.PathLike, edition: str, *, eval_root=None, rows: int | None = None,
                     official: bool = False, sum_tol: float = SUM_TOL, strict: bool = False,
                     label: str | None = None) -> EditionReport:
    """Check a 2024 or 2025 package folder ``<label>/`` (every violation, with file and line).

    Args:
        directory: the package folder; its name is the label.
        edition: "2024" or "2025".
        eval_root: evaluation folder: the rows must be exactly its listed files.
        rows: without ``eval_root``, the number of files (2024 default: 135,730 named 0..135729.wav).
        official: only the organisers' rules (see :data:`RULES`).
        sum_tol: tolerance on each row's probability sum (stricter rule).
        strict: warnings count as violations.
        label: the label (default: the folder's name).
    """
    from sp4sc.challenge.validate import Violation

    edition = _check_edition(edition)
    d = Path(directory)
    if not d.is_dir():
        raise Sp4scError(f"{d}: not a folder; give the package folder <label>/")
    label = label or d.name
    rep = EditionReport(str(d), label, edition, official_only=official)

    def err(file, line, rule, msg, is_official=None):
        off = RULES[rule][0] if is_official is None else is_official
        if official and not off:
            return
        rep.violations.append(Violation(str(file), line, rule, msg, off))

    def warn(file, line, rule, msg):
        if official:
            return
        (rep.violations if strict else rep.warnings).append(Violation(str(file), line, rule, msg, False, not strict))

    for p in label_problems(label):
        err(d, None, "label", f"folder name: {p}")
    listed = None
    if eval_root is not None:
        listed = [output_name(edition, n) for n, _ in read_eval_list(eval_root)]
    expected_rows = len(listed) if listed is not None else (rows if rows is not None else
                                                            (EVAL_ROWS_2024 if edition == "2024" else None))
    for key, fname in output_files(edition, label).items():
        path = d / fname
        if not path.is_file():
            err(path, None, "files", f"missing {fname}" + (" (2024 needs one output per split)" if edition == "2024" else ""))
            continue
        rep.rows = max(rep.rows, _check_output(path, edition, listed, expected_rows, rows is None and listed is None,
                                               sum_tol, err, warn))
    meta_path = d / f"{label}.meta.yaml"
    if not meta_path.is_file():
        err(meta_path, None, "files", f"missing {meta_path.name}")
        meta = None
    else:
        meta = _check_meta(meta_path, edition, label, err)
    if edition == "2025":
        _check_complexity_json(d / "complexity.json", err)
    elif meta is not None:
        cx = (meta.get("system") or {}).get("complexity") or {}
        size, macs = cx.get("total_model_size"), cx.get("macs")
        if isinstance(size, (int, float)) and size > MAX_BYTES:
            err(meta_path, None, "complexity", f"system.complexity.total_model_size {size:,} > {MAX_BYTES:,} bytes")
        if isinstance(macs, (int, float)) and macs > MAX_MACS:
            err(meta_path, None, "complexity", f"system.complexity.macs {macs:,} > {MAX_MACS:,} per 1 s clip")
    return rep


def _check_output(path: Path, edition: str, listed, expected_rows, official_names: bool, sum_tol, err, warn) -> int:
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    if not lines:
        err(path, None, "output-header", "empty file; expected a header and one row per evaluation file")
        return 0
    header = lines[0].split("\t")
    if tuple(h.strip() for h in header) != HEADER:
        err(path, 1, "output-header", f"header {header} is not the tab-separated {list(HEADER)}")
        return 0
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) != len(HEADER):
            err(path, lineno, "output-row", f"{len(f)} fields, expected {len(HEADER)} (tab-separated)")
            continue
        name = f[0].strip()
        if name in seen:
            err(path, lineno, "output-row", f"duplicate file {name!r} (first on line {seen[name]})")
            continue
        seen[name] = lineno
        if not name.endswith(".wav"):
            err(path, lineno, "output-row", f"file {name!r} does not end in .wav")
        if edition == "2024" and official_names:
            stem = posix_stem(name)
            if not stem.isdigit() or not 0 <= int(stem) < EVAL_ROWS_2024:
                err(path, lineno, "output-names", f"file {name!r} is not <n>.wav with n in 0..{EVAL_ROWS_2024 - 1}")
        if f[1] not in SCENES:
            err(path, lineno, "output-row", f"scene_label {f[1]!r} is not one of the ten scenes")
        values = []
        for scene, v in zip(SCENES, f[2:]):
            try:
                values.append(float(v))
            except ValueError:
                err(path, lineno, "output-row", f"{scene}={v!r} is not a number")
                values = None
                break
        if values is None:
            continue
        if not all(math.isfinite(x) and 0.0 <= x <= 1.0 for x in values) or abs(sum(values) - 1.0) > sum_tol:
            err(path, lineno, "prob-range", f"probabilities must be finite, in [0, 1] and sum to 1 "
                                            f"(sum {sum(values):.6g}, tolerance {sum_tol:g})")
        elif f[1] in SCENES and values[SCENES.index(f[1])] < max(values):
            warn(path, lineno, "argmax", f"scene_label {f[1]!r} is not the most probable class "
                                         f"({SCENES[int(np.argmax(values))]!r})")
    if listed is not None:
        want = set(listed)
        extra = [n for n in seen if n not in want]
        lacking = [n for n in listed if n not in seen]
        if extra:
            err(path, seen[extra[0]], "output-names", f"{len(extra)} file(s) not in the evaluation list (e.g. {extra[0]!r})")
        if lacking:
            err(path, None, "output-count", f"{len(lacking)} listed evaluation file(s) missing (e.g. {lacking[0]!r})")
    elif expected_rows is not None and len(seen) != expected_rows:
        err(path, None, "output-count", f"{len(seen):,} unique files, expected {expected_rows:,}")
    return len(seen)


def posix_stem(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base[:-4] if base.endswith(".wav") else base


def _check_meta(path: Path, edition: str, label: str, err) -> dict | None:
    import yaml

    try:
        meta = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        err(path, None, "meta-type", f"not valid YAML ({str(exc).splitlines()[0]})")
        return None
    if not isinstance(meta, dict):
        err(path, None, "meta-type", "a meta file is a mapping with submission, system and results blocks")
        return None

    def need(block: Any, where: str, fields: Sequence[str]) -> dict:
        if not isinstance(block, dict):
            err(path, None, "meta-missing", f"'{where}' is missing or not a mapping")
            return {}
        for f in fields:
            if f not in block:
                err(path, None, "meta-missing", f"'{where}' has no '{f}'")
        return block

    sub = need(meta.get("submission"), "submission", SUBMISSION_FIELDS)
    if sub.get("label") != label:
        err(path, None, "label", f"submission.label {sub.get('label')!r} differs from the folder and file names ({label!r})")
    if isinstance(sub.get("abbreviation"), str) and len(sub["abbreviation"]) > 10:
        err(path, None, "meta-type", f"submission.abbreviation {sub['abbreviation']!r} is longer than 10 characters")
    authors = sub.get("authors")
    if isinstance(authors, list):
        for i, a in enumerate(authors):
            need(a, f"submission.authors[{i}]", AUTHOR_FIELDS)
        n_corr = sum(1 for a in authors if isinstance(a, dict) and a.get("corresponding"))
        if n_corr != 1:
            err(path, None, "meta-missing", f"{n_corr} authors are marked corresponding: true; exactly one must be")
    elif "authors" in sub:
        err(path, None, "meta-type", "submission.authors must be a list")
    system = need(meta.get("system"), "system", SYSTEM_2024 if edition == "2024" else SYSTEM_2025)
    need(system.get("description"), "system.description", DESCRIPTION_2024 if edition == "2024" else DESCRIPTION_2025)
    cx = need(system.get("complexity"), "system.complexity", COMPLEXITY_2024 if edition == "2024" else COMPLEXITY_2025)
    tp = cx.get("total_parameters")
    if "total_parameters" in cx and not (isinstance(tp, int) and not isinstance(tp, bool)):
        try:
            int(str(tp))
        except ValueError:
            err(path, None, "meta-type", f"system.complexity.total_parameters {tp!r} is not an integer")
    if edition == "2024":
        need(system.get("energy_consumption"), "system.energy_consumption", ENERGY_2024)
    results = need(meta.get("results"), "results", ("development_dataset",))
    devset = results.get("development_dataset")
    blocks = {"development_dataset": devset} if edition == "2024" else {
        f"development_dataset.{k}": (devset or {}).get(k) for k in ("device_specific", "general")}
    for where, block in blocks.items():
        b = need(block, f"results.{where}", ("overall", "class_wise", "device_wise"))
        need(b.get("overall"), f"results.{where}.overall", ("accuracy", "logloss"))
        need(b.get("class_wise"), f"results.{where}.class_wise", SCENES)
        need(b.get("device_wise"), f"results.{where}.device_wise", DEVICES)
    return meta


def _check_complexity_json(path: Path, err) -> None:
    if not path.is_file():
        err(path, None, "files", "missing complexity.json (test_complexity.py's per-device MACs and parameter bytes)")
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        err(path, None, "complexity", f"not valid JSON ({exc})")
        return
    per = data.get("per_device") if isinstance(data, dict) else None
    if not isinstance(per, dict):
        err(path, None, "complexity", "no 'per_device' mapping (device -> {MACs, Params})")
        return
    lacking = [d for d in CHECK_DEVICES_2025 if d not in per]
    if lacking:
        err(path, None, "complexity", f"per_device lacks {', '.join(lacking)} (test_complexity.py checks a, b, c, s1-s10)")
    for dev, v in per.items():
        if not isinstance(v, dict) or not isinstance(v.get("Params"), int) or not isinstance(v.get("MACs"), int):
            err(path, None, "complexity", f"per_device[{dev!r}] must hold integer MACs and Params")
            continue
        if v["Params"] > MAX_BYTES:
            err(path, None, "complexity", f"device {dev}: {v['Params']:,} parameter bytes > {MAX_BYTES:,}")
        if v["MACs"] > MAX_MACS:
            err(path, None, "complexity", f"device {dev}: {v['MACs']:,} MACs per 1 s > {MAX_MACS:,}")
    for key in ("max_MACs", "max_Params"):
        if key not in data:
            err(path, None, "complexity", f"no '{key}'")
