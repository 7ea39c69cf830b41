"""`sp4sc data summary`, `sp4sc cache` and the features benchmark, in-process."""

from __future__ import annotations

import argparse
import json

import pytest

from sp4sc.cli import main
from sp4sc.data.toy import ensure_toy_dataset


@pytest.mark.shared
def test_summary_json_on_real_metadata(tau_meta_root, capsys):
    assert main(["data", "summary", "--dataset", "tau2020", "--root", str(tau_meta_root),
                 "--skip-audio-check", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"dataset", "total", "splits"}
    assert out["dataset"] == "tau2020" and out["total"] == 23035
    assert list(out["splits"]) == ["train", "evaluate", "test"]
    train = out["splits"]["train"]
    assert set(train) == {"n", "by_device", "by_scene", "by_city"}
    assert train["n"] == 13962 and train["by_device"]["a"] == 10215 and "s4" not in train["by_device"]
    assert out["splits"]["test"]["by_device"]["s6"] == 330
    assert sum(train["by_scene"].values()) == 13962 and sum(train["by_city"].values()) == 13962


@pytest.mark.shared
def test_summary_table_and_missing_audio(tau_meta_root, capsys):
    assert main(["data", "summary", "--dataset", "tau2020", "--root", str(tau_meta_root), "--skip-audio-check"]) == 0
    out = capsys.readouterr().out
    assert "13962" in out and "street_traffic" in out and "lisbon" in out
    assert main(["data", "summary", "--dataset", "tau2020", "--root", str(tau_meta_root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "23035 listed audio files are missing" in err and err.count("\n") == 1


@pytest.mark.shared
def test_summary_esc10(esc10_root, capsys):
    assert main(["data", "summary", "--dataset", "esc", "--root", str(esc10_root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"] == 400 and [s["n"] for s in out["splits"].values()] == [80] * 5


def test_cache_command_reads_recipe(tmp_path, capsys):
    root = ensure_toy_dataset(tmp_path / "toy", n_per_class_device=2, duration=0.25)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "data.yaml").write_text("data:\n  dataset: toy\n  num_workers: 0\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("# bases: base/data.yaml\nmodel:\n  backbone: sp4sc\ndata:\n  class_path: "
                      "sp4sc.data.datamodule.SceneDataModule\n  init_args:\n    frontend: demo\n"
                      "    toy_n_per_class_device: 2\n    toy_duration: 0.25\n")
    code = main(["cache", "--config", str(recipe), "--data.root", str(root), "--data.cache_dir", str(tmp_path / "c"),
                 "--data.cache_workers", "0", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "60 clips x 16 frames x 64 mels" in captured.out
    assert len(list((tmp_path / "c").glob("demo-*/*/manifest.json"))) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  datset: toy\n")
    assert main(["cache", "--config", str(bad)]) == 2
    assert "data.datset: unknown key" in capsys.readouterr().err
    assert main(["cache", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_features_benchmark_runs(capsys):
    from sp4sc.benchmarks import features

    parser = argparse.ArgumentParser()
    features.add_arguments(parser)
    assert features.run(parser.parse_args(["--clips", "2", "--json", "--workers", "0"])) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["clips"] == 2 and out["clips_per_s"] > 0 and out["frontend"] == "sp4asc"
    assert "cores" in out["machine"] and out["machine_line"].startswith("machine: ")
