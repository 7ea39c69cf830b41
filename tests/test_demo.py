"""`sp4sc demo` end to end at tiny settings: every step runs, the summary and the model file are usable."""

from __future__ import annotations

import json

import pytest

from sp4sc.cli import main


@pytest.mark.slow
def test_demo_smoke(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SP4SC_CACHE", str(tmp_path / "cache"))  # toy data and features stay in tmp
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--toy-n", "2", "--duration", "1.0", "--epochs", "2",
               "--set", "data.batch_size=8", "--set", "trainer.enable_progress_bar=false"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-2000:]
    for label in ("accuracy (class-averaged, DCASE)", "log loss", "accuracy, device a", "parameters", "time: total"):
        assert label in captured.out
    summary = json.loads((out / "summary.json").read_text())
    from sp4sc.commands.demo import STEPS

    assert list(summary["times_s"]) == [name for name, _, _ in STEPS]  # every step ran, in order
    assert {"data", "cache", "train", "evaluate", "submit"} <= set(summary["times_s"])
    res = summary["results"]
    assert set(res["device_wise"]) == {"a", "b", "c"} and len(res["class_wise"]) == 10
    assert 0.0 <= res["overall"]["accuracy"] <= 1.0 and res["overall"]["logloss"] > 0
    assert (out / "checkpoints" / "best.ckpt").exists() and (out / "checkpoints" / "last.ckpt").exists()

    from sp4sc.models.checkpoint import load_model

    loaded = load_model(out / "model.pt")
    assert loaded.name == "sp4sc" and loaded.frontend.name == "demo" and len(loaded.classes) == 10
    assert sum(p.numel() for p in loaded.model.parameters()) == summary["params"]
    assert any((out / "submissions").iterdir())


def test_demo_rejects_unknown_steps(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--skip", "nope"]) == 2
    assert "--skip" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--skip", "train"]) == 2
