"""``sp4sc submit --edition 2024|2025`` and ``validate-submission --edition``: toy packages, device-aware inference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from sp4sc.challenge import editions as ed
from sp4sc.cli import main
from sp4sc.constants import SCENES
from sp4sc.errors import Sp4scError
from tau22_helpers import make_tau22, make_tau22_eval
from test_submission import tiny_model_file

LABEL = "Doe_ACME_task1_1"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("tau22")
    dev = make_tau22(base / "dev", train_devices=("a",), test_devices=("a", "b", "s4"), seconds=1, audio=True,
                     splits=(5,))
    ev = make_tau22_eval(base / "eval", devices=("a", "b", "s7", "unknown"), per_device=2)
    return dev, ev


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {k: tiny_model_file(d / f"{k}.pt", seed=i) for i, k in enumerate(("general", "a", "b", "s5", "s10"))}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    from sp4sc.challenge.submission import REPO_TEMPLATE

    t = yaml.safe_load(REPO_TEMPLATE.read_text())
    a = t["submission"]["authors"][0]
    a.update(lastname="Doe", firstname="Jane", email="jane.doe@acme.example")
    a["affiliation"].update(abbreviation="ACME", institute="Acme Labs")
    t["system"]["inference_code"] = "https://example.org/doe_acme_task1"
    path = tmp_path_factory.mktemp("tmpl") / "meta_template.yaml"
    path.write_text(yaml.safe_dump(t, sort_keys=False))
    return path


def _split_args(models):
    return [x for p, k in zip((5, 10, 25, 50, 100), ("general", "a", "b", "s5", "s10"))
            for x in ("--split-ckpt", f"{p}={models[k]}")]


def _rows(path: Path):
    lines = path.read_text().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


@pytest.fixture(scope="module")
def pkg2024(tmp_path_factory, data, models, template):
    dev, ev = data
    out = tmp_path_factory.mktemp("subs24")
    argv = ["submit", "--edition", "2024", *_split_args(models), "--eval-root", str(ev), "--dev-root", str(dev),
            "--label", LABEL, "--out", str(out), "--template", str(template)]
    assert main(argv) == 0
    return out / LABEL


@pytest.fixture(scope="module")
def pkg2025(tmp_path_factory, data, models, template):
    dev, ev = data
    out = tmp_path_factory.mktemp("subs25")
    argv = ["submit", "--edition", "2025", "--ckpt", str(models["general"]), "--device-ckpt", f"a={models['a']}",
            "--device-ckpt", f"b={models['b']}", "--eval-root", str(ev), "--dev-root", str(dev),
            "--label", LABEL, "--out", str(out), "--template", str(template)]
    assert main(argv) == 0
    return out / LABEL


def test_2024_package_has_one_output_per_split_and_validates(pkg2024, data, capsys):
    _, ev = data
    names = sorted(p.name for p in pkg2024.iterdir())
    assert names == sorted([f"{LABEL}.output.split_{p}.csv" for p in (5, 10, 25, 50, 100)] + [f"{LABEL}.meta.yaml"])
    header, rows = _rows(pkg2024 / f"{LABEL}.output.split_25.csv")
    assert header == ["filename", "scene_label", *SCENES]
    assert [r[0] for r in rows] == [f"{i}.wav" for i in range(8)]  # the listed audio/<n>.wav without audio/
    # the splits' systems differ (different models), each row a distribution
    a = np.array([[float(v) for v in r[2:]] for r in rows])
    b = np.array([[float(v) for v in r[2:]] for r in _rows(pkg2024 / f"{LABEL}.output.split_5.csv")[1]])
    assert np.allclose(a.sum(1), 1) and not np.allclose(a, b)
    meta = yaml.safe_load((pkg2024 / f"{LABEL}.meta.yaml").read_text())
    cx = meta["system"]["complexity"]
    assert set(cx) == {"total_model_size", "total_parameters", "total_parameters_non_zero", "memory_use", "macs"}
    assert cx["total_model_size"] == 2 * cx["total_parameters"] and cx["macs"] > 0
    assert set(meta["system"]["energy_consumption"]) == {"training", "inference", "baseline_inference"}
    assert set(meta["results"]["development_dataset_per_split"]) == {f"split_{p}" for p in (5, 10, 25, 50, 100)}
    assert meta["results"]["development_dataset"] == meta["results"]["development_dataset_per_split"]["split_100"]
    assert meta["results"]["development_dataset"]["device_wise"]["s4"]["accuracy"] is not None
    assert main(["validate-submission", str(pkg2024), "--edition", "2024", "--eval-root", str(ev)]) == 0
    assert "valid DCASE 2024 Task 1 package" in capsys.readouterr().out
    # without the evaluation folder, the official check wants the 135,730 files of the 2024 evaluation set
    assert main(["validate-submission", str(pkg2024), "--edition", "2024", "--official"]) == 4
    out = capsys.readouterr().out
    assert "8 unique files, expected 135,730" in out and "[output-count]" in out
    assert main(["validate-submission", str(pkg2024), "--edition", "2024", "--rows", "8", "--official"]) == 0


def test_2025_package_device_specific(pkg2025, data, models, capsys):
    _, ev = data
    names = sorted(p.name for p in pkg2025.iterdir())
    assert names == sorted([f"{LABEL}.output.csv", f"{LABEL}.meta.yaml", "complexity.json", "test_accuracy.json"])
    header, rows = _rows(pkg2025 / f"{LABEL}.output.csv")
    assert [r[0] for r in rows] == [f"audio/{i}.wav" for i in range(8)]  # as listed in fold1_test.csv
    cx = json.loads((pkg2025 / "complexity.json").read_text())
    assert set(cx["per_device"]) == set(ed.CHECK_DEVICES_2025)
    assert cx["max_Params"] == max(v["Params"] for v in cx["per_device"].values()) <= 128_000
    assert cx["sp4sc"]["models"] == 3 and cx["sp4sc"]["device_specific"] == ["a", "b"]
    # every device's weights count in the package total: three models of the same size
    assert cx["sp4sc"]["total_bytes_all_models"] == 3 * cx["per_device"]["a"]["Params"]
    meta = yaml.safe_load((pkg2025 / f"{LABEL}.meta.yaml").read_text())
    d = meta["system"]["description"]
    assert d["num_models_at_inference"] == 3 and d["model_weight_sharing"] == "fully device-specific"
    assert meta["system"]["inference_code"] == "https://example.org/doe_acme_task1"
    res = meta["results"]["development_dataset"]
    assert set(res) == {"device_specific", "general"} and res["general"]["overall"]["accuracy"] is not None
    assert "Test Accuracy" in json.loads((pkg2025 / "test_accuracy.json").read_text())
    assert main(["validate-submission", str(pkg2025), "--edition", "2025", "--eval-root", str(ev), "--official"]) == 0
    capsys.readouterr()


def test_2025_rows_come_from_the_device_model(pkg2025, data, models):
    """Device a's files carry model a's probabilities, b's model b's, the others (s7, unknown) the general model's."""
    from sp4sc.challenge.submission import predict, reorder_columns
    from sp4sc.challenge.editions import _deployed
    from sp4sc.models.checkpoint import load_model

    _, ev = data
    lst = ed.read_eval_list(ev)
    _, rows = _rows(pkg2025 / f"{LABEL}.output.csv")
    got = np.array([[float(v) for v in r[2:]] for r in rows])
    for key, devs in (("a", {"a"}), ("b", {"b"}), ("general", {"s7", "unknown"})):
        m = _deployed(load_model(models[key]), "fp16")
        idx = [i for i, (_, dv) in enumerate(lst) if dv in devs]
        want = reorder_columns(predict(m, [ev / lst[i][0] for i in idx]), m.classes)
        assert np.allclose(got[idx], want / want.sum(1, keepdims=True), atol=1e-6), key


def test_device_models_plumbing():
    class M:
        def __init__(self, tag):
            self.tag, self.classes = tag, list(SCENES)

    g, a = M("g"), M("a")
    dm = ed.device_models(g, {"A": a})
    assert dm.for_device("a") is a and dm.for_device("A") is a and dm.for_device("s9") is g and dm.for_device(None) is g
    assert dm.models == [g, a]

    def fake_predict(model, files, **kw):
        p = np.full((len(files), 10), 0.01)
        p[:, 0 if model.tag == "g" else 1] = 0.91
        return p

    probs = ed.predict_by_device(dm, ["x", "y", "z"], ["a", "s4", None], predict_fn=fake_predict)
    assert probs.argmax(1).tolist() == [1, 0, 0]
    with pytest.raises(Sp4scError, match="is not a device id"):
        ed.device_models(g, {"a b": a})
    bad = M("x")
    bad.classes = list(reversed(SCENES))
    with pytest.raises(Sp4scError, match="differ from the general model"):
        ed.device_models(g, {"b": bad})


def test_validator_catches_broken_packages(pkg2025, pkg2024, data, tmp_path, capsys):
    import shutil

    _, ev = data
    broken = tmp_path / LABEL
    shutil.copytree(pkg2025, broken)
    out = broken / f"{LABEL}.output.csv"
    lines = out.read_text().splitlines()
    f = lines[1].split("\t")
    f[2] = "0.9"  # row no longer sums to 1
    lines[1] = "\t".join(f)
    out.write_text("\n".join(lines[:-1]) + "\n")  # and the last file is missing
    cx = json.loads((broken / "complexity.json").read_text())
    cx["per_device"]["s3"]["MACs"] = 31_000_000
    (broken / "complexity.json").write_text(json.dumps(cx))
    meta = yaml.safe_load((broken / f"{LABEL}.meta.yaml").read_text())
    del meta["system"]["inference_code"]
    (broken / f"{LABEL}.meta.yaml").write_text(yaml.safe_dump(meta))
    rep = ed.validate_edition(broken, "2025", eval_root=ev)
    rules = sorted({v.rule for v in rep.violations})
    assert rules == ["complexity", "meta-missing", "output-count", "prob-range"]
    assert not next(v for v in rep.violations if v.rule == "prob-range").official
    official = ed.validate_edition(broken, "2025", eval_root=ev, official=True)
    assert "prob-range" not in {v.rule for v in official.violations} and not official.ok
    assert main(["validate-submission", str(broken), "--edition", "2025", "--eval-root", str(ev)]) == 4
    text = capsys.readouterr().out
    assert "device s3: 31,000,000 MACs per 1 s > 30,000,000" in text and "'system' has no 'inference_code'" in text
    # a 2024 package lacking a split and with a wrong label in its meta
    b24 = tmp_path / "b24" / LABEL
    shutil.copytree(pkg2024, b24)
    (b24 / f"{LABEL}.output.split_50.csv").unlink()
    m = yaml.safe_load((b24 / f"{LABEL}.meta.yaml").read_text())
    m["submission"]["label"] = "Doe_ACME_task1a_1"
    (b24 / f"{LABEL}.meta.yaml").write_text(yaml.safe_dump(m))
    rep = ed.validate_edition(b24, "2024", eval_root=ev)
    msgs = [str(v) for v in rep.violations]
    assert any("missing Doe_ACME_task1_1.output.split_50.csv" in s for s in msgs)
    assert any("submission.label 'Doe_ACME_task1a_1' differs" in s for s in msgs)


def test_submit_arguments_are_checked(data, models, tmp_path, capsys):
    _, ev = data
    base = ["submit", "--edition", "2024", "--eval-root", str(ev), "--out", str(tmp_path)]
    assert main(base + ["--label", LABEL, "--split-ckpt", f"5={models['a']}"]) == 2
    assert "2024 needs one model for each split 5, 10, 25, 50, 100 (missing: 10, 25, 50, 100" in capsys.readouterr().err
    assert main(base + ["--label", "Doe_ACME_task1a_1", *_split_args(models)]) == 2
    assert "expected 'task1'" in capsys.readouterr().err
    assert main(["submit", "--edition", "2025", "--eval-root", str(ev), "--out", str(tmp_path), "--label", LABEL,
                 "--ckpt", str(models["a"]), "--device-ckpt", "a"]) == 2
    assert "expected KEY=PATH" in capsys.readouterr().err
    assert main(["submit", "--edition", "2025", "--eval-root", str(ev), "--out", str(tmp_path), "--label", LABEL,
                 "--ckpt", str(models["a"]), "--split-ckpt", f"5={models['a']}"]) == 2
    assert "only for --edition 2024" in capsys.readouterr().err
    assert not (tmp_path / LABEL).exists()


def test_over_budget_model_is_refused(data, tmp_path, monkeypatch, template, models, capsys):
    from sp4sc.deploy import complexity as cx

    _, ev = data
    monkeypatch.setattr(cx, "macs_nessi", lambda m, shape: 40_000_000)
    argv = ["submit", "--edition", "2025", "--eval-root", str(ev), "--out", str(tmp_path), "--label", LABEL,
            "--ckpt", str(models["a"]), "--template", str(template)]
    assert main(argv) == 3
    assert "over the DCASE 2025 limits" in capsys.readouterr().err and not (tmp_path / LABEL).exists()


def test_device_counting_whole_models_and_shared_heads(models, tmp_path):
    """Each device's model counts whole (the organisers' per-device check); a head-only fine-tuned
    device model shares the backbone tensors, so the package's distinct parameters add only its head."""
    import torch

    from sp4sc.models.checkpoint import load_model, model_spec, save_model

    general = load_model(models["general"])
    head_only = load_model(models["general"])
    with torch.no_grad():
        head_only.model.fc2.weight.add_(0.5)  # fine-tuned classifier only
    path = tmp_path / "head_a.pt"
    save_model(path, head_only.model, model_spec(head_only.name, head_only.model_kwargs, head_only.frontend,
                                                 head_only.classes))
    dm = ed.device_models(general, {"a": load_model(path), "b": load_model(models["b"])})
    cx = ed.device_complexity(dm)
    one = cx["per_device"]["s4"]["Params"] // 2  # parameters of one model (fp16: 2 bytes each)
    assert cx["per_device"]["a"]["Params"] == cx["per_device"]["b"]["Params"] == 2 * one == cx["max_Params"]
    assert cx["sp4sc"]["total_parameters_all_models"] == 3 * one
    head = head_only.model.fc2.weight.numel()
    # the head-only model adds its head to what the general and b models hold (tensors equal in
    # both, e.g. zero-initialised biases, are stored once there too)
    assert cx["sp4sc"]["distinct_parameters_all_models"] == ed.distinct_parameters([general, dm.per_device["b"]]) + head
    assert ed.distinct_parameters([general, dm.per_device["a"]]) == one + head
    assert cx["per_device"]["a"]["MACs"] == cx["per_device"]["s10"]["MACs"] > 0


def test_eval_list_layouts(tmp_path):
    """2025: evaluation_setup/fold1_test.csv with device_id; 2024: the evaluation folder's meta.csv (baseline reader)."""
    e24 = tmp_path / "e24"
    e24.mkdir()
    (e24 / "meta.csv").write_text("filename\naudio/0.wav\naudio/1.wav\n")
    assert ed.read_eval_list(e24) == [("audio/0.wav", None), ("audio/1.wav", None)]
    assert ed.output_name("2024", "audio/1.wav") == "1.wav" and ed.output_name("2025", "audio/1.wav") == "audio/1.wav"
    e25 = make_tau22_eval(tmp_path / "e25", devices=("a", "s8"), per_device=1, audio=False)
    assert ed.read_eval_list(e25) == [("audio/0.wav", "a"), ("audio/1.wav", "s8")]
    (e24 / "meta.csv").write_text("filename\naudio/0.wav\naudio/0.wav\n")
    with pytest.raises(Sp4scError, match="duplicate filename 'audio/0.wav'"):
        ed.read_eval_list(e24)
    with pytest.raises(Sp4scError, match="neither evaluation_setup/fold1_test.csv nor meta.csv"):
        ed.read_eval_list(tmp_path)
    assert ed.label_problems("Doe_ACME_task1_1") == [] and ed.label_problems("Doe_ACME_task1_5")


@pytest.mark.parametrize("edition", ["2024", "2025"])
def test_repository_templates_give_the_required_fields(edition):
    """The shipped templates hold every hand-written field the edition's validator requires."""
    tmpl = yaml.safe_load(ed.edition_template(edition).read_text())
    meta = ed.build_meta(tmpl, edition=edition, label=LABEL, sample_rate=32000,
                         complexity={"params": 100, "nonzero_params": 90, "bytes": 200, "macs": 1000}, results=None)
    seen = []
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"{LABEL}.meta.yaml"
        p.write_text(ed.meta_yaml_text(meta, edition))
        ed._check_meta(p, edition, LABEL, lambda *a, **k: seen.append(a))
    assert seen == []
    assert meta["system"]["description"]["input_sampling_rate"] == "32kHz"
