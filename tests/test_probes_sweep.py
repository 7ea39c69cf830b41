"""`sp4sc probe sweep` end to end on tiny toy data with the fake encoder (seconds), and its errors."""

from __future__ import annotations

import json

import pytest

from sp4sc.cli import main
from sp4sc.probes.encoders import ENCODERS, register_encoder
from sp4sc.probes.fake import FakeEncoder
from sp4sc.probes.probe import AGGREGATIONS


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    from sp4sc.data.toy import ensure_toy_dataset

    # 60 clips of 2.5 s: at δt = 1 the 0.5 s tail (half a window) is kept, at δt = 2 it is dropped
    return ensure_toy_dataset(tmp_path_factory.mktemp("toy") / "toy", n_per_class_device=2, duration=2.5)


@pytest.fixture(autouse=True)
def fake_registered():
    register_encoder(FakeEncoder.name, FakeEncoder)
    yield
    ENCODERS.pop(FakeEncoder.name, None)


def test_sweep_end_to_end_fake_encoder(toy_root, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "probe", "sweep", "--encoder", "fake-test", "--random-init", "--dataset", "toy", "--root", str(toy_root),
        "--dt", "1", "2", "--seeds", "3", "--epochs", "3", "--out", str(out),
        "--cache-dir", str(tmp_path / "cache"), "--json", "--cost-windows", "2",
    ]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    result = json.loads((out / "results.json").read_text())
    assert printed["rows"] == result["rows"]
    # the schema
    assert result["encoder"] == "fake-test" and result["random_init"] is True
    assert {(r["dt"], r["aggregation"]) for r in result["rows"]} == {(d, a) for d in (1.0, 2.0) for a in AGGREGATIONS}
    for r in result["rows"]:
        assert {"dt", "aggregation", "accuracy", "logloss", "std"} <= set(r)
        assert 0.0 <= r["accuracy"] <= 1.0 and r["std"] >= 0.0 and r["seeds"] == 3
        assert len(r["per_seed"]) == 3
        if r["aggregation"] == "majority-vote":
            assert r["logloss"] is None
        else:
            assert r["logloss"] > 0
    # 2.5 s clips: 3 windows at δt = 1, 1 at δt = 2
    assert {r["dt"]: r["windows_per_eval_clip"] for r in result["rows"]} == {1.0: 3.0, 2.0: 1.0}
    assert [c["dt"] for c in result["cost"]] == [1.0, 2.0]
    for c in result["cost"]:
        assert {"dt", "windows_per_s", "peak_mib", "gflops_per_window"} <= set(c)
        assert c["windows_per_s"] > 0 and c["peak_mib"] > 0 and c["gflops_per_window"] > 0
    assert result["clips"]["train"] + result["clips"]["eval"] == 60 and result["clips"]["eval"] > 0
    # random init is said everywhere
    assert "RANDOM-INIT" in result["note"]
    table = (out / "table.md").read_text()
    assert "RANDOM-INIT" in table and "| 2 | majority-vote |" in table
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the probe rows of the comparison count the encoder's parameters
    probe_rows = [c for c in result["compare"] if c["kind"] == "probe"]
    assert len(probe_rows) == 2 and all("random-init" in c["name"] for c in probe_rows)
    assert all(c["params"] > 16 * 16 for c in probe_rows)

    # a second run (one seed) reads every embedding from the cache and gives seed 0's figures again,
    # with an SP4SC model file in the comparison table
    ckpt = _sp4sc_model_file(tmp_path / "sp4sc_demo.pt")
    argv[argv.index("--seeds") + 1] = "1"
    assert main(argv + ["--compare", str(ckpt)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert all(c["extract"]["cached"] == 60 and c["extract"]["computed"] == 0 for c in again["cost"])
    assert [r["accuracy"] for r in again["rows"]] == [r["per_seed"][0]["accuracy"] for r in result["rows"]]
    cnn = [c for c in again["compare"] if c["kind"] == "checkpoint"]
    assert len(cnn) == 1 and cnn[0]["eval_clips"] == result["clips"]["eval"]
    assert 0 <= cnn[0]["accuracy"] <= 1 and cnn[0]["logloss"] > 0
    assert 50_000 < cnn[0]["params"] < 65_536 and cnn[0]["macs_per_clip"] > 1e6
    assert "sp4sc" in (out / "table.md").read_text()


def _sp4sc_model_file(path):
    import torch

    from sp4sc.models.checkpoint import model_spec, save_model
    from sp4sc.constants import SCENES
    from sp4sc.frontend.features import frontend_preset
    from sp4sc.models import create_model

    torch.manual_seed(0)
    model = create_model("sp4sc", n_classes=10, n_mels=64).eval()
    save_model(path, model, model_spec("sp4sc", model.arch_kwargs, frontend_preset("demo"), SCENES))
    return path


@pytest.mark.slow
@pytest.mark.shared
def test_sweep_esc_kfold_fake_encoder(esc10_root, tmp_path, capsys):
    argv = [
        "probe", "sweep", "--encoder", "fake-test", "--random-init", "--dataset", "esc", "--root", str(esc10_root),
        "--dt", "1", "5", "--seeds", "2", "--epochs", "2", "--max-clips", "50", "--aggregation", "mean-embedding",
        "--out", str(tmp_path / "out"), "--no-cache", "--json", "--cost-windows", "1",
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    # ESC-10 has 5 official folds: every fold is held out once, the clips once each
    assert result["splits"]["folds"] == 5 and result["clips"]["eval"] == 50
    assert [r["dt"] for r in result["rows"]] == [1.0, 5.0]
    # ESC-10 clips are 3.6-7.2 s: several windows at 1 s, exactly one at 5 s (tail < 2.5 s or padded clip)
    rows = {r["dt"]: r for r in result["rows"]}
    assert rows[1.0]["windows_per_eval_clip"] > 3 and rows[5.0]["windows_per_eval_clip"] == 1.0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--random-init", "--ckpt", "x.pt"], "not allowed with"),  # argparse: mutually exclusive
        (["--random-init", "--dt", "0"], "--dt"),
        (["--random-init", "--seeds", "0"], "--seeds"),
        (["--ckpt", "/nonexistent/x.pt"], "checkpoint not found"),
    ],
)
def test_sweep_bad_input_one_line(extra, message, toy_root, tmp_path, capsys):
    argv = ["probe", "sweep", "--encoder", "fake-test", "--dataset", "toy", "--root", str(toy_root),
            "--out", str(tmp_path / "o"), "--no-cache", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_sweep_refuses_windows_longer_than_passt(tmp_path, capsys):
    # checked before the 86 M-parameter model is built or any data read
    argv = ["probe", "sweep", "--encoder", "passt", "--random-init", "--dataset", "tau2020",
            "--root", str(tmp_path / "nowhere"), "--dt", "12"]
    assert main(argv) == 2
    assert "up to 10 s" in capsys.readouterr().err


def test_sweep_unknown_encoder(tmp_path, capsys):
    argv = ["probe", "sweep", "--encoder", "wav2vec", "--random-init", "--dataset", "toy", "--root", str(tmp_path)]
    assert main(argv) == 2
    assert "--encoder" in capsys.readouterr().err


def test_bench_extractor_vs_raw_fake_encoder(capsys):
    argv = ["probe", "bench", "--encoder", "fake-test", "--random-init", "--dt", "0.5", "1", "--clips", "3",
            "--clip-seconds", "2", "--batch-size", "4", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["random_init"] is True and [r["dt"] for r in result["rows"]] == [0.5, 1.0]
    for r in result["rows"]:
        assert r["raw_windows_per_s"] > 0 and r["extractor_windows_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["extractor_windows_per_s"] / r["raw_windows_per_s"])
    # 3 clips of 2 s: 4 windows each at 0.5 s, 2 at 1 s
    assert [r["extractor_windows"] for r in result["rows"]] == [12, 6]
    assert result["machine"].startswith("machine:")


def test_compare_row_from_a_cv_folder(tmp_path):
    from types import SimpleNamespace

    from sp4sc.constants import SCENES
    from sp4sc.probes.sweep import compare_cv

    cv = tmp_path / "cv"
    _sp4sc_model_file((cv / "fold1" / "checkpoints").mkdir(parents=True) or cv / "fold1" / "checkpoints" / "last.ckpt")
    folds = [{"fold": 1, "accuracy": 0.8, "class_avg_accuracy": 0.8, "logloss": 0.6, "epochs": 40, "wall_s": 10},
             {"fold": 2, "accuracy": 0.9, "class_avg_accuracy": 0.9, "logloss": 0.4, "epochs": 40, "wall_s": 10}]
    (cv / "cv.json").write_text(json.dumps({
        "recipe": "recipes/esc10_sp4sc.yaml", "folds": folds, "classes": list(SCENES),
        "mean": {"class_avg_accuracy": 0.85, "logloss": 0.5}, "std": {"class_avg_accuracy": 0.0707, "logloss": 0.14}}))
    row = compare_cv(cv, SimpleNamespace(classes=list(SCENES)))
    assert row["kind"] == "cv" and row["accuracy"] == 0.85 and row["accuracy_std"] == 0.0707
    assert row["logloss"] == 0.5 and row["folds"] == [1, 2] and "2-fold cv" in row["name"]
    assert 50_000 < row["params"] < 65_536 and row["macs_per_clip"] > 1e6
    with pytest.raises(Exception, match="not the dataset's"):
        compare_cv(cv, SimpleNamespace(classes=["a", "b"]))
    # a cross-validation stopped after 2 of 5 folds says so in its row
    summary = json.loads((cv / "cv.json").read_text())
    (cv / "cv.json").write_text(json.dumps({**summary, "complete": False, "folds_to_do": [3, 4, 5]}))
    row = compare_cv(cv, SimpleNamespace(classes=list(SCENES)))
    assert "2 of 5 folds done" in row["name"] and "2-fold cv" not in row["name"]


def test_compare_row_from_a_one_fold_cv_has_no_spread(tmp_path):
    from types import SimpleNamespace

    from sp4sc.constants import SCENES
    from sp4sc.probes.sweep import compare_cv, format_tables

    cv = tmp_path / "cv"
    _sp4sc_model_file((cv / "fold1" / "checkpoints").mkdir(parents=True) or cv / "fold1" / "checkpoints" / "last.ckpt")
    folds = [{"fold": 1, "accuracy": 0.8, "class_avg_accuracy": 0.8, "logloss": 0.6, "epochs": 40, "wall_s": 10}]
    (cv / "cv.json").write_text(json.dumps({
        "recipe": "recipes/esc10_sp4sc.yaml", "folds": folds, "classes": list(SCENES), "complete": True,
        "mean": {"class_avg_accuracy": 0.8, "logloss": 0.6}, "std": {"class_avg_accuracy": None, "logloss": None}}))
    row = compare_cv(cv, SimpleNamespace(classes=list(SCENES)))
    assert row["accuracy_std"] is None and "cv, 1 fold" in row["name"]
    table = format_tables({"random_init": False, "encoder": "e", "dataset": "d", "splits": {"eval": "x"},
                           "seeds": 1, "rows": [], "cost": [], "device": "cpu", "compare": [row], "machine": "m"})
    assert f"| {row['name']} | 80.0 | 0.600 |" in table


def test_fit_progress_line_has_elapsed_and_eta():
    from sp4sc.probes.sweep import FitProgress

    now = iter([100.0, 100.0, 112.0, 130.0])  # start, then folds done at +12 s and +30 s
    p = FitProgress(1.0, 5, 3, 2, clock=lambda: next(now))
    p.start()
    assert p.line(0, 1600, 400) == ("probes dt=1 s: fold 1/5 done (3 seeds, 2 aggregations; 1,600 train / 400 eval "
                                    "clips) in 0:00:12, elapsed 0:00:12, eta 0:00:48")
    assert p.line(1, 1600, 400).endswith("fold 2/5 done (3 seeds, 2 aggregations; 1,600 train / 400 eval clips) "
                                         "in 0:00:18, elapsed 0:00:30, eta 0:00:45")


def test_sweep_reports_each_dt_and_fold_in_a_piped_log(toy_root, tmp_path):
    """stderr is a pipe here (as in `sp4sc probe sweep ... 2>&1 | tee log`): one line per (dt, fold) still."""
    import subprocess
    import sys

    code = ("import sys; from sp4sc.probes.encoders import register_encoder; from sp4sc.probes.fake import FakeEncoder; "
            "register_encoder(FakeEncoder.name, FakeEncoder); from sp4sc.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = ["probe", "sweep", "--encoder", "fake-test", "--random-init", "--dataset", "toy", "--root", str(toy_root),
            "--dt", "1", "2", "--seeds", "2", "--epochs", "1", "--out", str(tmp_path / "out"), "--no-cache",
            "--cost-windows", "1"]
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("INFO: probes dt=")]
    done = [ln for ln in lines if " done (" in ln]
    assert [ln.split(":")[1].split(" s")[0].strip() for ln in done] == ["probes dt=1", "probes dt=2"]
    for ln in done:
        assert "fold 1/1 done (2 seeds" in ln and "elapsed 0:" in ln and "eta 0:00:00" in ln
    # each dt's lines come after its embedding and before its accuracy lines
    order = proc.stderr.splitlines()
    first_fit = order.index(done[0])
    assert any("accuracy" in ln for ln in order[first_fit:]) and not any("accuracy" in ln for ln in order[:first_fit])
