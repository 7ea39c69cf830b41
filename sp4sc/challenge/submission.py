"""Write a DCASE 2021 Task 1A submission package (``sp4sc submit``).

The package ``<out>/<label>/`` holds

* ``<label>.output.csv``: tab-separated, header ``filename, scene_label`` and
  the ten scenes (:data:`sp4sc.constants.SCENES` order), one row per evaluation
  file (bare name, no ``audio/``), ``scene_label`` the argmax, probabilities
  normalised in float64 to sum to 1 and written with Python's shortest
  round-trip ``repr`` (17 significant digits at most), so reading the file back
  gives the very floats the log loss was computed from;
* ``<label>.meta.yaml``: the DCASE 2021 Task 1A meta structure: hand-written
  fields from the template (``submissions/meta_template.yaml``), complexity of
  the BatchNorm-folded model (:mod:`sp4sc.deploy.complexity`), development results on
  the fold1 ``evaluate`` split when a development folder is given;
* the exported ONNX model and ``complexity.json`` (:mod:`sp4sc.deploy.onnx_export`).

Predictions come from the folded model with its weights rounded to float16
and back (``precision="fp16"``, the default), i.e. the model whose size the meta
file reports -- what SP4ASC did for its DCASE 2021 entry (facts read from
valeoai/SP4ASC ``sp4asc/testing.py``; no code copied). With ``precision="int8"`` they
come from the static int8 ONNX model the package ships (``model_int8.onnx``, calibrated
on the development set's training clips, :mod:`sp4sc.deploy.quantize`), ``model_size`` is
its bytes as stored, and the meta file's ``sp4sc`` block states ``weight_bits: 8`` and
the quantisation (every package states its ``weight_bits``).

Clip length is :func:`sp4sc.deploy.infer.predict_files`'s, with the same ``pad`` / ``crop``
options as ``sp4sc infer`` and the edge runner: each clip at its own length by
default (the TAU evaluation clips are all 10 s, the trained length).

Test-time augmentation (``tta=N``) is SP4ASC's: SpecAugment stays active at
test time and the softmax of N augmented passes is averaged; the stripes come
from a generator seeded with ``seed``, so a rerun writes the same file.

Everything is written into a temporary folder beside the target, validated by
:func:`sp4sc.challenge.validate.validate_submission`, and renamed into place
(:func:`sp4sc.fileio.atomic_dir`): a failure leaves no package behind.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sp4sc.constants import DEVICES, SCENES
from sp4sc.errors import BudgetExceeded, Sp4scError
from sp4sc.fileio import to_plain
from sp4sc.log import logger
from sp4sc.challenge.validate import HEADER, META_SUFFIX, OUTPUT_SUFFIX, STRICT_SUM_TOL, label_problems, validate_submission

PRECISIONS = {"fp32": 4, "fp16": 2, "int8": 1}
WEIGHT_BITS = {"fp32": 32, "fp16": 16, "int8": 8}
TEMPLATE_NAME = "meta_template.yaml"
REPO_TEMPLATE = Path(__file__).resolve().parents[2] / "submissions" / TEMPLATE_NAME


# ----------------------------------------------------------------------------- output csv


def normalise_probs(probs: Any) -> np.ndarray:
    """Rows of non-negative finite scores -> float64 rows summing to 1 (to ~1e-16).

    Raises:
        Sp4scError: NaN/inf, negative values, a row summing to 0, wrong shape.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise Sp4scError(f"probabilities: expected (files, classes), got shape {p.shape}")
    if not np.isfinite(p).all():
        raise Sp4scError("probabilities: NaN or inf in the model output; check the model and the audio")
    if (p < 0).any():
        raise Sp4scError("probabilities: negative values; expected softmax outputs")
    sums = p.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise Sp4scError("probabilities: a row sums to 0")
    return p / sums


def format_prob(value: float) -> str:
    """Shortest text that reads back as exactly ``value`` (float64)."""
    return repr(float(value))


def reorder_columns(probs: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Columns in the model's class order -> columns in DCASE :data:`SCENES` order."""
    classes = list(classes)
    if classes == list(SCENES):
        return probs
    if sorted(classes) != sorted(SCENES):
        raise Sp4scError(
            f"model classes {classes} are not the 10 DCASE Task 1A scenes; "
            "a submission needs a model trained on TAU Urban Acoustic Scenes"
        )
    return probs[:, [classes.index(s) for s in SCENES]]


def output_csv_text(names: Sequence[str], probs: Any) -> str:
    """The text of ``<label>.output.csv`` for bare file ``names`` and (N, 10) probabilities in SCENES order."""
    p = normalise_probs(probs)
    if p.shape != (len(names), len(SCENES)):
        raise Sp4scError(f"probabilities: shape {p.shape}, expected ({len(names)}, {len(SCENES)})")
    lines = ["\t".join(HEADER)]
    for name, row in zip(names, p):
        lines.append("\t".join([name, SCENES[int(np.argmax(row))], *(format_prob(v) for v in row)]))
    return "\n".join(lines) + "\n"


def write_output_csv(path: str | os.PathLike, names: Sequence[str], probs: Any) -> None:
    """Write ``<label>.output.csv`` atomically (see :func:`output_csv_text`)."""
    from sp4sc.fileio import write_text

    write_text(path, output_csv_text(names, probs))


def bare_name(path: str) -> str:
    """``audio/12.wav`` -> ``12.wav``."""
    return str(path).replace("\\", "/").rsplit("/", 1)[-1]


# ----------------------------------------------------------------------------- meta yaml


def default_template(out: str | os.PathLike | None = None) -> Path:
    """``<out>/meta_template.yaml`` when it exists, else the repository's copy."""
    if out is not None and (Path(out) / TEMPLATE_NAME).is_file():
        return Path(out) / TEMPLATE_NAME
    return REPO_TEMPLATE


def load_template(path: str | os.PathLike) -> dict:
    """Read the hand-written meta template (a YAML mapping)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise Sp4scError(f"{path}: meta template not found; pass --template PATH (start from submissions/{TEMPLATE_NAME})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise Sp4scError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)}); fix the template") from exc
    except UnicodeDecodeError as exc:
        raise Sp4scError(f"{path}: not UTF-8 text") from exc
    if not isinstance(data, dict):
        raise Sp4scError(f"{path}: a meta template is a YAML mapping with 'submission' and 'system' blocks")
    return data


def complexity_fields(report: dict, precision: str = "fp16") -> dict[str, Any]:
    """``system.complexity`` of the meta file from :func:`sp4sc.deploy.complexity.complexity_report`.

    ``model_size`` is in KB of 1024 bytes at ``precision`` (DCASE 2021: 128 KB
    = 131,072 bytes at float16), as SP4ASC reported 62,474 params = 122.02 KB.
    """
    params = _first_int(report, ("params", "parameters", "total_parameters", "n_params"))
    nonzero = _first_int(report, ("nonzero", "non_zero", "params_nonzero", "nonzero_params", "total_parameters_non_zero"))
    if params is None:
        raise Sp4scError(f"complexity report has no parameter count (keys: {sorted(report)})")
    if nonzero is None:
        nonzero = params
    nbytes = None
    byte_block = report.get("bytes")
    if isinstance(byte_block, dict):
        nbytes = byte_block.get(precision)
    if nbytes is None:
        nbytes = report.get(f"bytes_{precision}")
    if nbytes is None:
        nbytes = params * PRECISIONS[precision]
    return {
        "total_parameters": int(params),
        "total_parameters_non_zero": int(nonzero),
        "model_size": float(nbytes) / 1024.0,
    }


def _first_int(report: dict, keys: Sequence[str]) -> int | None:
    for k in keys:
        v = report.get(k)
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return int(v)
    return None


def sampling_rate_text(rate: int) -> str:
    """44100 -> '44.1kHz' (the DCASE tag style)."""
    return f"{rate / 1000:g}kHz"


def empty_results() -> dict[str, Any]:
    """The DCASE results block with every value null."""
    blank = {"logloss": None, "accuracy": None}
    return {
        "development_dataset": {
            "overall": dict(blank),
            "class_wise": {s: dict(blank) for s in SCENES},
            "device_wise": {d: dict(blank) for d in DEVICES},
        }
    }


def results_block(y_true: Sequence[int], probs: Any, devices: Sequence[str | None]) -> dict[str, Any]:
    """DCASE results (accuracy in %, log loss) from probabilities in SCENES order.

    The DCASE 2021 Task 1A baseline's conventions (as :func:`sp4sc.metrics.dcase_results`
    documents them; computed here with numpy to keep ``submit`` free of torchmetrics):
    log loss is the mean over clips of ``-log p(true)`` with probabilities clipped
    to ``[eps, 1 - eps]`` (float64 machine epsilon, as scikit-learn), overall and
    within each class or device; accuracy is the class-wise average (the mean
    over scenes of each scene's recall), also within each device. Classes or
    devices absent from the split are left null.
    """
    p = normalise_probs(probs)
    y = np.asarray(y_true, dtype=np.int64)
    if p.shape != (len(y), len(SCENES)):
        raise Sp4scError(f"development results: probabilities of shape {p.shape} for {len(y)} clips")
    eps = float(np.finfo(np.float64).eps)
    nll = -np.log(np.clip(p[np.arange(len(y)), y], eps, 1.0 - eps))
    pred = p.argmax(axis=1)

    def macro_acc(sel: np.ndarray) -> float:
        recalls = [float((pred[sel & (y == k)] == k).mean()) for k in range(len(SCENES)) if (sel & (y == k)).any()]
        return 100.0 * float(np.mean(recalls))

    everything = np.ones(len(y), dtype=bool)
    out = empty_results()
    dev = out["development_dataset"]
    dev["overall"] = {"logloss": float(nll.mean()), "accuracy": macro_acc(everything)}
    for k, scene in enumerate(SCENES):
        sel = y == k
        if sel.any():
            dev["class_wise"][scene] = {"logloss": float(nll[sel].mean()), "accuracy": 100.0 * float((pred[sel] == k).mean())}
    names = np.asarray(["" if d is None else str(d) for d in devices])
    for d in dict.fromkeys(names.tolist()):
        if d not in dev["device_wise"]:
            logger.warning(f"development split has device {d!r}, which is not a DCASE device; left out of device_wise")
            continue
        sel = names == d
        dev["device_wise"][d] = {"logloss": float(nll[sel].mean()), "accuracy": macro_acc(sel)}
    return out


def build_meta(
    template: dict,
    *,
    label: str,
    complexity: dict[str, Any],
    sample_rate: int,
    results: dict[str, Any] | None,
    tta: int = 0,
    over_budget: str | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The meta dictionary: the template plus the fields sp4sc measures.

    Args:
        template: hand-written fields (see ``submissions/meta_template.yaml``).
        label: the submission label.
        complexity: from :func:`complexity_fields`.
        sample_rate: the front end's rate in Hz.
        results: from :func:`results_block`, or None (left empty).
        tta: number of test-time augmentation passes (0: none).
        over_budget: a note when the model is over budget (``--no-budget``).
        provenance: extra ``sp4sc`` block (checkpoint, model, seed, ...).
    """
    meta = copy.deepcopy(template)
    sub = meta.setdefault("submission", {})
    if not isinstance(sub, dict):
        raise Sp4scError("meta template: 'submission' must be a mapping")
    sub["label"] = label
    system = meta.setdefault("system", {})
    if not isinstance(system, dict):
        raise Sp4scError("meta template: 'system' must be a mapping")
    desc = system.setdefault("description", {})
    if not isinstance(desc, dict):
        raise Sp4scError("meta template: 'system.description' must be a mapping")
    desc["input_sampling_rate"] = sampling_rate_text(sample_rate)
    if tta > 0:
        desc["ensemble_method_subsystem_count"] = int(tta)
        desc["decision_making"] = "average"
    if over_budget:
        prev = desc.get("complexity_management")
        desc["complexity_management"] = f"{prev}; {over_budget}" if prev else over_budget
    system["complexity"] = dict(complexity)
    system.setdefault("external_datasets", "")
    teacher = ((provenance or {}).get("distillation") or {}).get("teacher") or {}
    if teacher.get("encoder"):
        # DCASE asks for every external resource: a distilled student learnt from a pre-trained teacher
        usage = f"knowledge distillation from a frozen pre-trained {teacher['encoder']} + linear probe (teacher)"
        desc["external_data_usage"] = usage if not desc.get("external_data_usage") else \
            f"{desc['external_data_usage']}; {usage}"
        if str(teacher["encoder"]).startswith("efficientat") and not system.get("external_datasets"):
            system["external_datasets"] = [{"name": "AudioSet (through the EfficientAT teacher's pre-training)",
                                            "url": "https://research.google.com/audioset/",
                                            "total_audio_length": 347387}]  # minutes: 2,084,320 clips of 10 s
    system.setdefault("source_code", "")
    meta["results"] = results if results is not None else empty_results()
    if provenance:
        meta["sp4sc"] = provenance
    return meta


def meta_yaml_text(meta: dict) -> str:
    """YAML text of the meta dictionary (block style, key order kept)."""
    import yaml

    return "# DCASE 2021 Task 1A system meta information, written by `sp4sc submit`.\n" + yaml.safe_dump(
        meta, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def template_placeholders(template: dict) -> list[str]:
    """Hand-written fields still holding the template's example values."""
    found = []
    authors = (template.get("submission") or {}).get("authors") or []
    for i, a in enumerate(authors if isinstance(authors, list) else []):
        if isinstance(a, dict):
            if a.get("lastname") == "Lastname":
                found.append(f"submission.authors[{i}].lastname")
            if str(a.get("email", "")).endswith("@example.org"):
                found.append(f"submission.authors[{i}].email")
    return found


# ----------------------------------------------------------------------------- prediction


def quantise_weights(model, precision: str):
    """A copy of ``model`` whose float weights are rounded to ``precision`` and back to float32."""
    import torch

    if precision not in PRECISIONS:
        raise Sp4scError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    out = copy.deepcopy(model).eval()
    if precision == "fp16":
        with torch.no_grad():
            for t in list(out.parameters()) + list(out.buffers()):
                if t.is_floating_point():
                    t.copy_(t.to(torch.float16).to(t.dtype))
    return out


def predict(loaded, files: Sequence[str | os.PathLike], *, tta: int = 0, seed: int = 0, batch_size: int = 16,
            pad: str | None = None, crop: bool = False) -> np.ndarray:
    """(N, C) probabilities in the model's class order, via :func:`sp4sc.deploy.infer.predict_files` (same clip length rules);
    ``loaded`` a path: an exported int8 ONNX model, run by :func:`sp4sc.deploy.onnx_infer.predict_files_onnx`."""
    from sp4sc.deploy.infer import predict_files
    from sp4sc.deploy.onnx_infer import predict_files_onnx

    if isinstance(loaded, Path):
        if tta:
            raise Sp4scError("--tta: test-time augmentation runs the torch model; not with --precision int8")
        return predict_files_onnx(loaded, [str(f) for f in files], batch_size=batch_size, pad=pad, crop=crop)[0]

    return np.asarray(predict_files(loaded, [str(f) for f in files], tta=tta, seed=seed, batch_size=batch_size,
                                    pad=pad, crop=crop))


# ----------------------------------------------------------------------------- package


@dataclass
class SubmitResult:
    """What :func:`make_submission` wrote."""

    path: Path
    label: str
    rows: int
    complexity: dict[str, Any]
    results: dict[str, Any] | None
    over_budget: str | None
    warnings: list[str] = field(default_factory=list)


def _export(loaded, pkg: Path, *, no_budget: bool, fp16: bool = True, calib=None) -> None:
    """Export the ONNX model(s), complexity.json, frontend.json and parity.json into the package folder
    (with ``calib``, also the static int8 model, :mod:`sp4sc.deploy.quantize`)."""
    from sp4sc.deploy.onnx_export import export_onnx

    scratch = pkg / ".onnx_export"
    export_onnx(loaded, scratch, no_budget=no_budget, fp16=fp16, int8=calib is not None, calib=calib)
    for item in sorted(scratch.iterdir()):
        shutil.move(str(item), str(pkg / item.name))
    shutil.rmtree(scratch, ignore_errors=True)


def make_submission(
    ckpt: str | os.PathLike,
    eval_root: str | os.PathLike,
    label: str,
    *,
    dev_root: str | os.PathLike | None = None,
    out: str | os.PathLike = "submissions",
    tta: int = 0,
    seed: int = 0,
    force: bool = False,
    no_budget: bool = False,
    template: str | os.PathLike | dict | None = None,
    precision: str = "fp16",
    batch_size: int = 16,
    export: bool = True,
    pad: str | None = None,
    crop: bool = False,
) -> SubmitResult:
    """Write and validate ``<out>/<label>/`` (see the module docstring).

    Raises:
        Sp4scError: bad label, existing package without ``force``, unreadable
            inputs, or a package that fails validation (nothing is left behind).
        BudgetExceeded: the folded model is over budget and ``no_budget`` is False.
    """
    from sp4sc.models.checkpoint import LoadedModel, load_model
    from sp4sc.deploy.complexity import check_budget, complexity_report
    from sp4sc.fileio import atomic_dir, write_json, write_text
    from sp4sc.models.fold import fold_batchnorm

    problems = label_problems(label)
    if problems:
        raise Sp4scError(f"--label: {problems[0]}")
    if tta < 0:
        raise Sp4scError(f"--tta {tta}: must be 0 (off) or a positive number of passes")
    if precision not in PRECISIONS:
        raise Sp4scError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    target = Path(out) / label
    if target.exists() and not force:
        raise Sp4scError(f"{target} already exists; pass --force to replace it")
    if isinstance(template, dict):
        template_path, tmpl = Path("<template>"), copy.deepcopy(template)
    else:
        template_path = Path(template) if template is not None else default_template(out)
        tmpl = load_template(template_path)
    warnings: list[str] = []
    for field_name in template_placeholders(tmpl):
        warnings.append(f"{template_path}: {field_name} still holds the template's example value; edit it before submitting")

    loaded = load_model(ckpt)
    folded = fold_batchnorm(loaded.model)
    report = complexity_report(folded, loaded.frontend)
    over_budget = None
    try:  # int8: 128 KB as the int8 model stores them (no parameter limit: it is the fp16 equivalent of the bytes)
        check_budget(report, **({"precision": "int8", "max_params": None} if precision == "int8" else {}))
    except BudgetExceeded as exc:
        if not no_budget:
            raise
        over_budget = f"over the DCASE 2021 complexity budget, written with --no-budget ({exc})"
        warnings.append(f"model is {over_budget}")
    cx = complexity_fields(report, precision)

    calib = int8_dir = None
    if precision == "int8":  # predictions come from the static int8 ONNX model that the package ships
        import tempfile

        calib = _int8_calibration(ckpt, dev_root, loaded)
        int8_dir = tempfile.TemporaryDirectory(prefix="sp4sc-int8-")  # removed when this function returns
        _export(loaded, Path(int8_dir.name), no_budget=True, fp16=False, calib=calib)
    deployed = Path(int8_dir.name) / "model_int8.onnx" if int8_dir is not None else LoadedModel(
        model=quantise_weights(folded, precision),
        name=loaded.name,
        model_kwargs=loaded.model_kwargs,
        frontend=loaded.frontend,
        classes=loaded.classes,
        meta=loaded.meta,
    )

    # read both file lists (and check their audio exists) before any inference
    eval_index = _index("tau2021eval", eval_root, "--eval-root")
    eval_clips = eval_index.split("test")
    if not eval_clips:
        raise Sp4scError(f"{eval_root}: evaluation_setup/fold1_test.csv lists no files")
    dev_index = dev_clips = None
    if dev_root is not None:
        dev_index = _index("tau2020", dev_root, "--dev-root")
        dev_clips = dev_index.split("evaluate")
        if not dev_clips:
            raise Sp4scError(f"{dev_root}: evaluation_setup/fold1_evaluate.csv lists no files")
        unknown = sorted({c.scene for c in dev_clips if c.scene not in SCENES})
        if unknown:
            raise Sp4scError(f"{dev_root}: fold1_evaluate.csv has scene labels {unknown} outside the 10 DCASE scenes")

    names = [bare_name(c.path) for c in eval_clips]
    eval_probs = reorder_columns(
        predict(deployed, [Path(eval_index.root) / c.path for c in eval_clips], tta=tta, seed=seed,
                batch_size=batch_size, pad=pad, crop=crop),
        loaded.classes,
    )
    results = None
    if dev_clips is not None:
        dev_probs = reorder_columns(
            predict(deployed, [Path(dev_index.root) / c.path for c in dev_clips], tta=tta, seed=seed,
                    batch_size=batch_size, pad=pad, crop=crop),
            loaded.classes,
        )
        results = results_block([SCENES.index(c.scene) for c in dev_clips], dev_probs, [c.device for c in dev_clips])
    else:
        warnings.append("no --dev-root: development results in the meta file are left empty (the organisers highly recommend them)")

    import sp4sc

    provenance = {
        "version": sp4sc.__version__,
        "checkpoint": Path(ckpt).name,
        "model": loaded.name,
        "frontend": getattr(loaded.frontend, "name", None),
        "precision": precision,
        "weight_bits": WEIGHT_BITS[precision],  # the bit width of the stored weights (int8: static QDQ model_int8.onnx)
        "tta": int(tta),
        "seed": int(seed),
        "clip_length": {"pad": pad, "crop": bool(crop)},  # None/False: each clip at its own length
        "budget": "EXCEEDED (--no-budget)" if over_budget else "within the DCASE 2021 limits",
    }
    for key in ("macs_thop", "macs_torchinfo", "input_shape"):
        if report.get(key) is not None:
            provenance[key] = to_plain(report[key])
    distillation = (loaded.meta or {}).get("distillation")
    if distillation:
        provenance["distillation"] = to_plain(distillation)
    if calib is not None:
        provenance["quantization"] = (f"static int8: per-channel int8 weights, int32 biases, int8 activations, "
                                      f"calibrated on {len(calib)} training clips (ONNX QDQ, model_int8.onnx)")
    meta = build_meta(
        tmpl,
        label=label,
        complexity=cx,
        sample_rate=loaded.frontend.sample_rate,
        results=results,
        tta=tta,
        over_budget=over_budget,
        provenance=provenance,
    )

    with atomic_dir(target, overwrite=force) as tmp:
        write_output_csv(tmp / f"{label}{OUTPUT_SUFFIX}", names, eval_probs)
        write_text(tmp / f"{label}{META_SUFFIX}", meta_yaml_text(meta))
        if export:
            _export(loaded, tmp, no_budget=no_budget, fp16=precision == "fp16",
                    **({"calib": calib} if calib is not None else {}))
        if not (tmp / "complexity.json").exists():
            write_json(tmp / "complexity.json", to_plain(report))
        check = validate_submission(tmp, eval_root=eval_root, label=label, sum_tol=STRICT_SUM_TOL)
        if not check.ok:
            shown = "; ".join(str(v).replace(str(tmp), str(target)) for v in check.violations[:3])
            more = f" (and {len(check.violations) - 3} more)" if len(check.violations) > 3 else ""
            raise Sp4scError(f"{target}: the written package fails validation, nothing was kept: {shown}{more}")
        for w in check.warnings:
            if w.rule not in ("results-empty", "budget"):
                warnings.append(str(w).replace(str(tmp), str(target)))
    return SubmitResult(path=target, label=label, rows=len(names), complexity=cx, results=results,
                        over_budget=over_budget, warnings=warnings)


def _int8_calibration(ckpt, dev_root, loaded) -> np.ndarray:
    """Calibration log-mels for ``--precision int8``: training clips of ``dev_root`` (TAU2020 fold1 train),
    else of the data the checkpoint records; none is a one-line error."""
    from sp4sc.deploy.quantize import (
        CALIB_DEFAULT, calibration_clips, clip_features, data_from_checkpoint, require_calibration, split_clips,
    )

    data = {"dataset": "tau2020", "root": dev_root} if dev_root is not None else data_from_checkpoint(ckpt)
    if not data:
        require_calibration(None, "--precision int8")
    index, train = split_clips(data["dataset"], data["root"], part="train",
                               **{k: data.get(k) for k in ("fold", "split", "split_dir")})
    return clip_features(index, calibration_clips(train, CALIB_DEFAULT), loaded.frontend)


def _index(dataset: str, root, option: str):
    """:func:`sp4sc.data.index.load_index` with the command-line option named in its errors."""
    from sp4sc.data.index import load_index

    try:
        return load_index(dataset, root)
    except Sp4scError as exc:
        raise Sp4scError(f"{option}: {exc}") from exc
