"""`sp4sc submit` end to end on the toy dataset with a tiny real model.

The model is a registered SP4SC variant at the demo front end (64 mels, 16 kHz),
saved with sp4sc.models.checkpoint.save_model; the evaluation and development folders
are the toy dataset (TAU layout), so the whole pipeline runs: index, audio,
log-mel, fold, complexity, fp16 weights, ONNX export, writer, validator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sp4sc.cli import main
from sp4sc.constants import SCENES
from sp4sc.errors import Sp4scError
from sp4sc.challenge.validate import validate_submission

LABEL = "Doe_ACME_task1a_1"


def tiny_model_file(path: Path, name: str = "sp4sc_w32", seed: int = 0) -> Path:
    """A small real model (random weights, non-trivial BatchNorm statistics) saved as a model file."""
    from sp4sc.models.checkpoint import model_spec, save_model
    from sp4sc.frontend.features import frontend_preset
    from sp4sc.models import create_model

    torch.manual_seed(seed)
    cfg = frontend_preset("demo")
    model = create_model(name, n_mels=cfg.n_mels, n_classes=len(SCENES))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        # log-mel dB inputs are large and negative: a realistic input BN keeps the logits sane
        model.bn0.running_mean.fill_(-60.0)
        model.bn0.running_var.fill_(400.0)
        model.fc2.weight.mul_(30.0)  # confident, varied outputs (random init is close to uniform)
    model.eval()
    save_model(path, model, model_spec(model.arch_name, model.arch_kwargs, cfg, SCENES))
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    from sp4sc.data.toy import ensure_toy_dataset

    return ensure_toy_dataset(n_per_class_device=2, duration=2.0)  # the shared cache copy


@pytest.fixture(scope="module")
def small_eval(toy, tmp_path_factory) -> Path:
    """An evaluation folder listing 6 of the toy clips (fast runs of the write/failure paths)."""
    return small_eval_root(toy, tmp_path_factory.mktemp("small_eval"))


def small_eval_root(toy: Path, root: Path, n: int = 6) -> Path:
    from sp4sc.data.index import load_index

    clips = load_index("tau2021eval", toy).split("test")[:n]
    (root / "evaluation_setup").mkdir(parents=True)
    (root / "evaluation_setup" / "fold1_test.csv").write_text("filename\n" + "".join(f"{c.path}\n" for c in clips))
    (root / "audio").symlink_to(toy / "audio", target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    from sp4sc.challenge.submission import REPO_TEMPLATE

    t = yaml.safe_load(REPO_TEMPLATE.read_text())
    a = t["submission"]["authors"][0]
    a.update(lastname="Doe", firstname="Jane", email="jane.doe@acme.example")
    a["affiliation"].update(abbreviation="ACME", institute="Acme Labs")
    path = tmp_path_factory.mktemp("tmpl") / "meta_template.yaml"
    path.write_text(yaml.safe_dump(t, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def package(tmp_path_factory, toy, ckpt, template):
    """One full package written through the CLI (eval + dev + export), shared by the read-only tests."""
    out = tmp_path_factory.mktemp("subs")
    argv = ["submit", "--ckpt", str(ckpt), "--eval-root", str(toy), "--dev-root", str(toy), "--label", LABEL,
            "--out", str(out), "--template", str(template)]
    assert main(argv) == 0
    return out / LABEL


def _rows(pkg: Path):
    lines = (pkg / f"{LABEL}.output.csv").read_text().splitlines()
    return lines[0].split("\t"), [ln.split("\t") for ln in lines[1:]]


def test_generated_package_passes_validator(package, toy):
    report = validate_submission(package, eval_root=toy, sum_tol=1e-6)
    assert report.ok, [str(v) for v in report.violations]
    # the toy set has devices a, b, c only: s1-s6 results stay empty (a warning, not a violation)
    assert [w.rule for w in report.warnings] == ["results-partial"]
    names = {p.name for p in package.iterdir()}
    assert {f"{LABEL}.output.csv", f"{LABEL}.meta.yaml", "model.onnx", "complexity.json"} <= names
    assert not [n for n in names if n.startswith(".")], names  # no temporary leftovers
    assert main(["validate-submission", str(package), "--eval-root", str(toy)]) == 0


def test_output_rows_are_the_eval_files_with_exact_probabilities(package, toy, ckpt):
    from sp4sc.models.checkpoint import load_model
    from sp4sc.data.index import load_index
    from sp4sc.challenge.submission import normalise_probs, predict

    header, rows = _rows(package)
    clips = load_index("tau2021eval", toy).split("test")
    assert [r[0] for r in rows] == [Path(c.path).name for c in clips]
    assert all("/" not in r[0] for r in rows)
    probs = np.array([[float(v) for v in r[2:]] for r in rows])
    assert np.all(np.abs(probs.sum(1) - 1) <= 1e-6)
    assert [r[1] for r in rows] == [SCENES[i] for i in probs.argmax(1)]
    # the file holds exactly the normalised float64 probabilities of the folded fp16-weight model
    loaded = load_model(ckpt)
    want = normalise_probs(predict(deployed_model(ckpt), [toy / c.path for c in clips]))
    assert np.array_equal(probs, want)
    # and that model is the unfolded one within float16 rounding
    plain = predict(loaded, [toy / c.path for c in clips])
    assert np.abs(plain - want).max() < 1e-2


def test_meta_has_dcase_structure_complexity_and_dev_results(package, toy, ckpt):
    from sp4sc.models.checkpoint import load_model
    from sp4sc.deploy.complexity import complexity_report
    from sp4sc.models.fold import fold_batchnorm

    meta = yaml.safe_load((package / f"{LABEL}.meta.yaml").read_text())
    assert meta["submission"]["label"] == LABEL and meta["submission"]["authors"][0]["lastname"] == "Doe"
    desc = meta["system"]["description"]
    assert desc["input_sampling_rate"] == "16kHz"
    loaded = load_model(ckpt)
    folded = fold_batchnorm(loaded.model)
    n_params = sum(p.numel() for p in folded.parameters())
    cx = meta["system"]["complexity"]
    assert cx["total_parameters"] == n_params
    assert isinstance(cx["total_parameters"], int) and cx["total_parameters_non_zero"] <= n_params
    assert cx["model_size"] == pytest.approx(n_params * 2 / 1024)
    report = complexity_report(folded, loaded.frontend)
    assert report  # the counter the meta file is filled from runs on the folded model
    dev = meta["results"]["development_dataset"]
    assert 0 <= dev["overall"]["accuracy"] <= 100 and dev["overall"]["logloss"] > 0
    assert set(dev["class_wise"]) == set(SCENES)
    assert all(isinstance(v["logloss"], float) for v in dev["class_wise"].values())
    assert meta["sp4sc"]["budget"].startswith("within") and meta["sp4sc"]["tta"] == 0


def deployed_model(ckpt):
    """The model make_submission predicts with: folded, weights rounded to float16."""
    from sp4sc.models.checkpoint import LoadedModel, load_model
    from sp4sc.models.fold import fold_batchnorm
    from sp4sc.challenge.submission import quantise_weights

    loaded = load_model(ckpt)
    return LoadedModel(quantise_weights(fold_batchnorm(loaded.model), "fp16"), loaded.name, loaded.model_kwargs,
                       loaded.frontend, loaded.classes, loaded.meta)


def test_dev_results_match_metrics_on_the_evaluate_split(package, toy, ckpt):
    from sklearn.metrics import log_loss  # an independent implementation of the DCASE log loss

    from sp4sc.data.index import load_index
    from sp4sc.challenge.submission import normalise_probs, predict

    def macro_accuracy(y, p):
        return float(np.mean([(p[y == k].argmax(1) == k).mean() for k in np.unique(y)]))

    dev = yaml.safe_load((package / f"{LABEL}.meta.yaml").read_text())["results"]["development_dataset"]
    clips = load_index("tau2020", toy).split("evaluate")
    probs = normalise_probs(predict(deployed_model(ckpt), [toy / c.path for c in clips]))
    y = np.array([SCENES.index(c.scene) for c in clips])
    assert dev["overall"]["logloss"] == pytest.approx(log_loss(y, probs, labels=range(10)), rel=1e-9)
    assert dev["overall"]["accuracy"] == pytest.approx(100 * macro_accuracy(y, probs), rel=1e-12)
    devices = np.array([c.device for c in clips])
    for d in sorted(set(devices)):
        sel = devices == d
        assert dev["device_wise"][d]["logloss"] == pytest.approx(log_loss(y[sel], probs[sel], labels=range(10)), rel=1e-9)
        assert dev["device_wise"][d]["accuracy"] == pytest.approx(100 * macro_accuracy(y[sel], probs[sel]), rel=1e-12)
    for d in ("s1", "s4", "s6"):  # not in the toy set
        assert dev["device_wise"][d] == {"logloss": None, "accuracy": None}
    for k, s in enumerate(SCENES):
        sel = y == k
        if sel.any():
            assert dev["class_wise"][s]["accuracy"] == pytest.approx(100 * float((probs[sel].argmax(1) == k).mean()))


def test_refuses_to_overwrite_without_force(package, toy, ckpt, template, capsys):
    before = (package / f"{LABEL}.output.csv").read_bytes()
    argv = ["submit", "--ckpt", str(ckpt), "--eval-root", str(toy), "--label", LABEL,
            "--out", str(package.parent), "--template", str(template)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0] and "--force" in err[0]
    assert (package / f"{LABEL}.output.csv").read_bytes() == before


def test_force_replaces_and_failure_keeps_old_package(tmp_path, small_eval, ckpt, template, monkeypatch):
    import sp4sc.challenge.submission as submission

    out = tmp_path / "subs"
    kw = dict(out=out, template=template, export=False)
    first = submission.make_submission(ckpt, small_eval, LABEL, **kw)
    old_meta = (first.path / f"{LABEL}.meta.yaml").read_text()
    assert "tta: 0" in old_meta
    # a failure half-way through a --force rewrite leaves the old package untouched
    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(submission, "meta_yaml_text", boom)
    with pytest.raises(RuntimeError):
        submission.make_submission(ckpt, small_eval, LABEL, force=True, tta=2, **kw)
    assert (first.path / f"{LABEL}.meta.yaml").read_text() == old_meta
    assert sorted(p.name for p in out.iterdir()) == [LABEL]
    monkeypatch.undo()
    second = submission.make_submission(ckpt, small_eval, LABEL, force=True, tta=2, **kw)
    assert "tta: 2" in (second.path / f"{LABEL}.meta.yaml").read_text()
    assert sorted(p.name for p in out.iterdir()) == [LABEL]


def test_failure_half_way_leaves_nothing(tmp_path, small_eval, ckpt, template, monkeypatch):
    import sp4sc.challenge.submission as submission

    out = tmp_path / "subs"
    seen = []

    def write_then_fail_export(loaded, pkg, **k):
        seen.append(sorted(p.name for p in pkg.iterdir()))  # the CSV and meta are already written
        raise RuntimeError("export crashed")

    monkeypatch.setattr(submission, "_export", write_then_fail_export)
    with pytest.raises(RuntimeError, match="export crashed"):
        submission.make_submission(ckpt, small_eval, LABEL, out=out, template=template)
    assert seen == [[f"{LABEL}.meta.yaml", f"{LABEL}.output.csv"]]
    assert not out.exists() or list(out.iterdir()) == []


def test_invalid_package_is_not_kept(tmp_path, small_eval, ckpt, template, monkeypatch):
    import sp4sc.challenge.submission as submission

    real = submission.output_csv_text
    monkeypatch.setattr(submission, "output_csv_text", lambda names, p: real(names, p).replace("airport", "airports", 1))
    out = tmp_path / "subs"
    with pytest.raises(Sp4scError, match="fails validation.*output-header"):
        submission.make_submission(ckpt, small_eval, LABEL, out=out, template=template, export=False)
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.slow
def test_over_budget_refused_unless_no_budget(tmp_path, small_eval, template, capsys, monkeypatch):
    import sp4sc.challenge.submission as submission

    exported = []
    monkeypatch.setattr(submission, "_export", lambda loaded, pkg, **k: exported.append(k))  # export's own tests cover it
    big = tiny_model_file(tmp_path / "big.pt", name="sp4sc_w96")
    out = tmp_path / "subs"
    argv = ["submit", "--ckpt", str(big), "--eval-root", str(small_eval), "--label", LABEL, "--out", str(out),
            "--template", str(template)]
    assert main(argv) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert not (out / LABEL).exists()
    assert main(argv + ["--no-budget"]) == 0
    assert exported == [{"no_budget": True, "fp16": True}]  # the export is told too
    stdout = capsys.readouterr().out
    assert "WARNING" in stdout and "--no-budget" in stdout
    meta = yaml.safe_load((out / LABEL / f"{LABEL}.meta.yaml").read_text())
    assert "--no-budget" in meta["system"]["description"]["complexity_management"]
    assert meta["sp4sc"]["budget"].startswith("EXCEEDED")
    assert meta["system"]["complexity"]["total_parameters"] > 65536
    report = validate_submission(out / LABEL, eval_root=small_eval)
    assert report.ok and "budget" in {w.rule for w in report.warnings}


def test_bad_arguments_are_one_line_errors(tmp_path, small_eval, ckpt, capsys):
    base = ["submit", "--ckpt", str(ckpt), "--eval-root", str(small_eval), "--out", str(tmp_path)]
    assert main(base + ["--label", "Doe_ACME_task1b_1"]) == 2
    assert "task1a" in capsys.readouterr().err
    assert main(base + ["--label", LABEL, "--tta", "-1"]) == 2
    capsys.readouterr()
    assert main(base + ["--label", LABEL, "--template", str(tmp_path / "none.yaml")]) == 2
    assert "template" in capsys.readouterr().err
    assert main(base + ["--label", LABEL, "--dev-root", str(tmp_path / "nodev")]) == 2
    err = capsys.readouterr().err
    assert "--dev-root" in err and "nodev" in err
    assert main(["submit", "--ckpt", str(tmp_path / "no.pt"), "--eval-root", str(small_eval), "--label", LABEL,
                 "--out", str(tmp_path)]) == 2
    assert list(tmp_path.iterdir()) == []


def test_unedited_template_is_warned_about(tmp_path, small_eval, ckpt):
    from sp4sc.challenge.submission import REPO_TEMPLATE, make_submission

    res = make_submission(ckpt, small_eval, LABEL, out=tmp_path, template=REPO_TEMPLATE, export=False)
    assert any("lastname" in w for w in res.warnings)
    assert any("--dev-root" in w for w in res.warnings)


def test_demo_step_writes_a_valid_toy_package(tmp_path, toy, ckpt, monkeypatch):
    import sp4sc.commands.demo_steps as demo_steps
    import sp4sc.challenge.submission as submission

    monkeypatch.setattr(submission, "_export", lambda *a, **k: None)  # ONNX export is covered above
    lines = []
    res = demo_steps.write_demo_submission(ckpt, toy, tmp_path / "submissions", echo=lines.append)
    assert res.path == tmp_path / "submissions" / demo_steps.DEMO_LABEL
    assert validate_submission(res.path, eval_root=toy).ok
    assert [w.rsplit("[", 1)[1] for w in res.warnings] == ["results-partial]"]  # toy: devices a, b, c only
    assert res.results is not None
    assert "written and validated" in lines[0]


def test_demo_meta_data_augmentation_comes_from_the_recipe(tmp_path, toy, ckpt, monkeypatch):
    import yaml

    import sp4sc.commands.demo_steps as demo_steps
    import sp4sc.challenge.submission as submission

    text = demo_steps.data_augmentation_text
    demo = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml").read_text())["model"]
    assert text(demo) == "SpecAugment"  # the demo recipe: SpecAugment, no mixup
    assert text({"spec_augment": [128, 2, 16, 2], "mixup_alpha": 0.2}) == "SpecAugment, mixup"
    assert text({"mixup_alpha": 0.0}) is None and text({}) is None
    monkeypatch.setattr(submission, "_export", lambda *a, **k: None)
    res = demo_steps.write_demo_submission(ckpt, toy, tmp_path, data_augmentation=text(demo), echo=lambda s: None)
    meta = yaml.safe_load((res.path / f"{res.label}.meta.yaml").read_text())
    assert meta["system"]["description"]["data_augmentation"] == "SpecAugment"


def test_meta_declares_a_distillation_teacher():
    from sp4sc.challenge.submission import build_meta

    prov = {"distillation": {"kd_lambda": 0.9, "teacher": {"encoder": "efficientat_mn04", "dt": 5.0}}}
    meta = build_meta({"system": {"description": {}}}, label="Doe_X_task1a_1", complexity={}, sample_rate=44100,
                      results=None, provenance=prov)
    assert "knowledge distillation" in meta["system"]["description"]["external_data_usage"]
    assert "efficientat_mn04" in meta["system"]["description"]["external_data_usage"]
    assert meta["system"]["external_datasets"][0]["name"].startswith("AudioSet")
    plain = build_meta({"system": {"description": {}}}, label="Doe_X_task1a_1", complexity={}, sample_rate=44100,
                       results=None, provenance={"model": "sp4sc"})
    assert plain["system"]["external_datasets"] == "" and not plain["system"]["description"].get("external_data_usage")
