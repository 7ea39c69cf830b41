"""The steps of ``sp4sc demo`` after training: fold, budget, export, parity, edge runner, submission.

Each is ``step_x(ctx)`` as :mod:`sp4sc.commands.demo` describes: it reads what it
needs from the shared ``ctx`` (``model_file`` from the "evaluate" step,
``toy_root``, ``out``, ...), reports with ``ctx["echo"]`` and adds rows to
``ctx["summary"]``. They drive the library the way the commands do
(``sp4sc complexity``, ``export``, ``infer``, ``submit``, the edge runner); the
library modules know nothing of the demo.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sp4sc.errors import Sp4scError
from sp4sc.deploy.onnx_graph import FILES

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_LABEL = "Demo_SP4SC_task1a_1"


def step_fold(ctx: dict) -> None:
    """Fold BatchNorm of the trained model; check folded == unfolded on toy log-mels."""
    from sp4sc.models.checkpoint import load_model
    from sp4sc.models.fold import fold_batchnorm

    loaded = load_model(ctx["model_file"])
    folded = fold_batchnorm(loaded.model)
    cfg = loaded.frontend
    x = torch.from_numpy(_demo_features(ctx, loaded, n=4))  # (4, 1, frames, mels)
    with torch.no_grad():
        a, b = loaded.model(x).double(), folded(x).double()
    rel = float((a - b).abs().max() / max(1.0, float(a.abs().max())))
    ctx["loaded"], ctx["folded"] = loaded, folded
    ctx["echo"](f"folded {loaded.name}: no BatchNorm left; folded vs unfolded logits on {x.shape[0]} toy clips "
                f"({cfg.n_frames} frames x {cfg.n_mels} mels): max relative difference {rel:.1e}")
    if rel > 1e-5:
        raise Sp4scError(f"folding changed the model's output (relative {rel:.1e} > 1e-5); report this as a bug")
    ctx["summary"].append(("fold: max rel. logit change", f"{rel:.1e}"))


def step_budget(ctx: dict) -> None:
    """Count parameters, bytes and MACs of the folded model; check the DCASE 2021 budget."""
    from sp4sc.models.checkpoint import load_model
    from sp4sc.deploy.complexity import check_budget, complexity_report, format_report

    loaded = ctx.get("loaded") or load_model(ctx["model_file"])
    report = complexity_report(loaded.model, loaded.frontend)
    for line in format_report(report).splitlines():
        ctx["echo"](line)
    check_budget(report)  # BudgetExceeded stops the demo: over budget is an error
    ctx["complexity"] = report
    ctx["echo"]("within the DCASE 2021 budget (65,536 parameters, 128 KB at fp16)")
    ctx["summary"].append(("parameters (folded)", f"{report['params']:,}"))
    ctx["summary"].append(("bytes at fp16 (folded)", f"{report['bytes_fp16']:,} ({report['kb_fp16']} KB)"))
    if report.get("macs_thop") is not None:
        ctx["summary"].append((f"MACs per {report['duration']:g} s clip (thop / torchinfo)",
                               f"{report['macs_thop']:,} / {report['macs_torchinfo']:,}"))


def step_export(ctx: dict) -> None:
    """Export to ONNX (fp32 + fp16) with the parity check, into <out>/export."""
    from sp4sc.models.checkpoint import load_model
    from sp4sc.deploy.onnx_export import export_onnx

    loaded = ctx.get("loaded") or load_model(ctx["model_file"])
    out = Path(ctx["out"]) / "export"
    report = export_onnx(loaded, out, fp16=True, overwrite=True)
    ctx["export"] = report
    ctx["export_dir"] = out
    for key, name in report["files"].items():
        ctx["echo"](f"wrote {out / name} ({report['file_bytes'][key]:,} bytes)")
    ctx["echo"](f"fingerprint {report['fingerprint']} (ONNX metadata and frontend.json)")
    ctx["summary"].append(("ONNX export", f"{out} ({', '.join(report['files'].values())})"))


def step_parity(ctx: dict) -> None:
    """Report the export's parity check: ONNX Runtime vs torch at three (batch, frames) shapes."""
    report = ctx.get("export")
    if report is None:
        ctx["echo"]("no export in this run (step skipped); nothing to compare")
        return
    for name, v in report["parity"]["variants"].items():
        shapes = ", ".join("x".join(str(d) for d in r["shape"]) for r in v["shapes"])
        ctx["echo"](f"{name}: max |dprob| {v['max_abs_prob']:.1e} (tolerance {v['prob_tolerance']:g}) "
                    f"at inputs {shapes}: {'ok' if v['passed'] else 'FAILED'}")
        ctx["summary"].append((f"parity ONNX {name} (max |dprob|)", f"{v['max_abs_prob']:.1e}"))


def step_edge(ctx: dict) -> None:
    """Run the torch-free edge runner on two toy evaluation clips; compare with sp4sc infer."""
    import subprocess
    import sys

    from sp4sc.deploy.infer import predict_files

    out = ctx.get("export_dir")
    script = REPO_ROOT / "export" / "edge_infer.py"
    if out is None or not script.exists():
        ctx["echo"]("skipped: " + ("no export in this run" if out is None else f"{script} not found (not a checkout)"))
        return
    files = _demo_clips(ctx, 2)
    cmd = [sys.executable, str(script), "--model", str(out / FILES["fp32"]), "--json", *files]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise Sp4scError(f"edge runner failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
    edge = json.loads(res.stdout)
    probs = np.asarray(edge["probs"])
    ref = predict_files(ctx.get("loaded") or _load(ctx), files)
    diff = float(np.abs(probs - ref).max())
    ctx["echo"](f"$ python export/edge_infer.py --model {out / FILES['fp32']} --json <2 clips>")
    for f, row in zip(edge["files"], probs):
        k = int(row.argmax())
        ctx["echo"](f"  {Path(f).name}: {edge['classes'][k]} ({row[k]:.3f})")
    ctx["echo"](f"edge runner (numpy + ONNX Runtime, no torch) vs sp4sc infer: max |dprob| {diff:.1e}")
    if diff > 1e-4:
        raise Sp4scError(f"edge runner and sp4sc infer disagree (max |dprob| {diff:.1e} > 1e-4)")
    ctx["summary"].append(("edge runner vs sp4sc infer (max |dprob|)", f"{diff:.1e}"))


def data_augmentation_text(hparams: dict[str, Any]) -> str | None:
    """The meta file's ``data_augmentation`` for a recipe's model settings (None when it uses none).

    SpecAugment when ``spec_augment`` is set, mixup when ``mixup_alpha`` > 0: what
    :class:`sp4sc.training.lit.SceneClassifier` applies during training.
    """
    used = []
    if hparams.get("spec_augment"):
        used.append("SpecAugment")
    if float(hparams.get("mixup_alpha") or 0.0) > 0:
        used.append("mixup")
    return ", ".join(used) or None


def demo_template(data_augmentation: str | None) -> dict:
    """The repository's meta template with the demo's author, and the recipe's augmentation."""
    from sp4sc.challenge.submission import REPO_TEMPLATE, load_template

    tmpl = load_template(REPO_TEMPLATE)
    sub = tmpl.setdefault("submission", {})
    sub["name"] = "sp4sc demo on the toy dataset"
    sub["abbreviation"] = "sp4scdemo"
    sub["authors"] = [{
        "lastname": "Demo", "firstname": "Sp4sc", "email": "demo@sp4sc.invalid", "corresponding": True,
        "affiliation": {"abbreviation": "SP4SC", "institute": "sp4sc demo", "location": "nowhere"},
    }]
    desc = tmpl.setdefault("system", {}).setdefault("description", {})
    desc["data_augmentation"] = data_augmentation
    return tmpl


def write_demo_submission(ckpt, toy_root, out, *, data_augmentation: str | None = None,
                          tta: int = 0, seed: int = 0, echo=print):
    """Write and validate a package for the toy evaluation split; returns the :class:`~sp4sc.challenge.submission.SubmitResult`.

    The toy dataset has the TAU layout, so its ``fold1_test.csv`` is the
    evaluation list and its ``fold1_evaluate.csv`` the development split.
    Reruns replace the previous demo package.

    Args:
        ckpt: the model file or checkpoint the demo trained.
        toy_root: the toy dataset folder (:func:`sp4sc.data.toy.ensure_toy_dataset`).
        out: the folder receiving ``<label>/`` (e.g. the demo's ``submissions/``).
        data_augmentation: the meta file's ``data_augmentation`` (:func:`data_augmentation_text`).
        tta: test-time augmentation passes.
        seed: TTA seed.
        echo: where the summary lines go.
    """
    from sp4sc.challenge.submission import make_submission
    from sp4sc.challenge.validate import validate_submission

    res = make_submission(ckpt, toy_root, DEMO_LABEL, dev_root=toy_root, out=out, tta=tta, seed=seed,
                          force=True, template=demo_template(data_augmentation), no_budget=False)
    report = validate_submission(res.path, eval_root=toy_root)
    if not report.ok:  # make_submission already validated it; this re-reads the renamed folder
        raise Sp4scError(f"{res.path}: demo package fails validation: {report.violations[0]}")
    cx = res.complexity
    echo(f"submission: {res.path}/ ({res.rows} toy evaluation rows) written and validated "
         f"(`sp4sc validate-submission {res.path} --eval-root {toy_root}`; the toy list replaces "
         f"the 7,920 files of the real evaluation set)")
    echo(f"  {cx['total_parameters']:,} parameters, {cx['model_size']:.2f} KB at fp16; "
         f"data_augmentation: {data_augmentation or 'none'} (from the recipe)")
    if res.results is not None:
        o = res.results["development_dataset"]["overall"]
        echo(f"  toy development split: accuracy {o['accuracy']:.1f} %, log loss {o['logloss']:.3f}")
    return res


def step_submit(ctx: dict) -> None:
    """Write and validate a DCASE package for the toy evaluation split, meta filled from the recipe."""
    cli = ctx.get("cli")
    hparams = dict(getattr(getattr(cli, "model", None), "hparams", {}) or {})
    res = write_demo_submission(ctx["model_file"], ctx["toy_root"], Path(ctx["out"]) / "submissions",
                                data_augmentation=data_augmentation_text(hparams), echo=ctx["echo"])
    ctx["summary"].append(("submission package", f"{res.path} (validated)"))


def _load(ctx: dict):
    from sp4sc.models.checkpoint import load_model

    ctx["loaded"] = load_model(ctx["model_file"])
    return ctx["loaded"]


def _demo_clips(ctx: dict, n: int) -> list[str]:
    """The first ``n`` clips of the toy evaluation split (absolute paths)."""
    from sp4sc.data.index import load_index

    index = load_index("tau2020", ctx["toy_root"], check_audio=False)
    clips = index.split("test")[:n]
    return [str(Path(index.root) / c.path) for c in clips]


def _demo_features(ctx: dict, loaded, n: int) -> np.ndarray:
    """Log-mels ``(n, 1, frames, mels)`` of the first toy evaluation clips."""
    from sp4sc.frontend.audio import load_audio
    from sp4sc.frontend.features import LogMel

    cfg = loaded.frontend
    wav = np.stack([load_audio(f, cfg.sample_rate, cfg.duration) for f in _demo_clips(ctx, n)])
    with torch.no_grad():
        return LogMel(cfg)(torch.from_numpy(wav)).unsqueeze(1).numpy()
