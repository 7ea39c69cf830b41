"""The tau2022 dataset (DCASE 2022-2025 Task 1): the real DCASE 2024 split files, the layouts, the datamodule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sp4sc.cli import main
from sp4sc.constants import SCENES
from sp4sc.data.index import load_index, parse_tau22_name, summarize, tau22_nesting
from sp4sc.errors import Sp4scError
from tau22_helpers import make_tau22
from conftest import shared_path

# Row counts of the published split files (README of ../shared/data/tau2022-splits, header excluded)
ROWS = {"split5": 6980, "split10": 13960, "split25": 34900, "split50": 69800, "test": 29680}


@pytest.fixture
def splits_only(tmp_path) -> Path:
    """A dataset root holding only a copy of the shared split_setup/ (never written into the repo)."""
    src = shared_path("data", "tau2022-splits", "split_setup")
    root = tmp_path / "tau22"
    shutil.copytree(src, root / "split_setup")
    return root


# ------------------------------------------------------------------ real split files


@pytest.mark.shared
def test_real_splits_counts_nesting_and_devices(splits_only):
    idx = load_index("tau2022", splits_only, check_audio=False)
    assert {k: len(v) for k, v in idx.splits.items()} == ROWS
    sets = {k: {c.path for c in v} for k, v in idx.splits.items()}
    assert sets["split5"] < sets["split10"] < sets["split25"] < sets["split50"]
    assert all(not (sets[s] & sets["test"]) for s in ("split5", "split10", "split25", "split50"))
    assert tau22_nesting(idx) == []
    train_devices = {c.device for s in ("split5", "split10", "split25", "split50") for c in idx.splits[s]}
    test_devices = {c.device for c in idx.splits["test"]}
    assert train_devices == {"a", "b", "c", "s1", "s2", "s3"}
    assert {"s4", "s5", "s6"} <= test_devices and not {"s4", "s5", "s6"} & train_devices
    first = idx.split("split5")[0]
    assert (first.path, first.scene, first.label, first.device, first.city, first.location) == (
        "audio/airport-lisbon-1000-40000-0-a.wav", "airport", 0, "a", "lisbon", "lisbon-1000")
    assert idx.classes == SCENES and len(idx.all_clips()) == 69800 + 29680
    with pytest.raises(Sp4scError) as err:
        idx.split("split100")
    msg = str(err.value)
    assert "split100.csv: not found" in msg and "--data.split_dir" in msg and "\n" not in msg


@pytest.mark.shared
def test_data_summary_on_split_setup_only(splits_only, capsys):
    assert main(["data", "summary", "--dataset", "tau2022", "--root", str(splits_only), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {k: v["n"] for k, v in out["splits"].items()} == ROWS
    assert out["structure_problems"] == [] and out["missing_splits"] == ["split100"]
    assert out["splits"]["test"]["by_device"] == {d: (3290 if d in ("b", "c") else 3300)
                                                 for d in ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")}
    assert out["splits"]["split5"]["by_device"]["a"] == 5080 and "s4" not in out["splits"]["split50"]["by_device"]
    assert out["splits"]["split5"]["by_scene"]["airport"] == 700
    assert main(["data", "summary", "--dataset", "tau2022", "--root", str(splits_only)]) == 0
    text = capsys.readouterr().out
    assert "audio not checked" in text and "each inside the next, none overlapping test" in text
    assert "absent: split100.csv" in text and "69800" in text and "29680" in text and "s6" in text


@pytest.mark.shared
def test_split_dir_option_and_datamodule_split(splits_only, tmp_path, capsys):
    moved = tmp_path / "elsewhere"
    shutil.move(str(splits_only / "split_setup"), str(moved))
    assert main(["data", "summary", "--dataset", "tau2022", "--root", str(splits_only), "--split-dir", str(moved),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["split25"]["n"] == 34900
    from sp4sc.data.datamodule import SceneDataModule

    dm = SceneDataModule("tau2022", str(splits_only), frontend="dcase2024", split=25, split_dir=str(moved))
    clips = dm.split_clips()
    assert len(clips["train"]) == 34900 and clips["val"] is clips["test"] and len(clips["val"]) == 29680
    dm = SceneDataModule("tau2022", str(splits_only), frontend="dcase2024", split=100, split_dir=str(moved))
    with pytest.raises(Sp4scError, match="split100.csv: not found"):
        dm.split_clips()


# ------------------------------------------------------------------ synthetic layouts


def test_name_parsing():
    assert parse_tau22_name("audio/street_traffic-milan-1166-44613-9-s3.wav") == \
        ("street_traffic", "milan", "milan-1166", "s3")
    assert parse_tau22_name("audio/airport-lisbon-1000-40000-a.wav") is None  # TAU2020 (10 s) naming
    assert parse_tau22_name("audio/12.wav") is None


def test_small_layout_and_errors(tmp_path):
    root = make_tau22(tmp_path / "d")
    idx = load_index("tau2022", root, check_audio=False)
    assert set(idx.splits) == {"split5", "split10", "split25", "split50", "test"}
    assert tau22_nesting(idx) == [] and summarize(idx)["missing_splits"] == ["split100"]
    with pytest.raises(Sp4scError, match="listed audio files are missing"):
        load_index("tau2022", root)
    # a label that contradicts the name
    p = root / "split_setup" / "test.csv"
    p.write_text(p.read_text().replace("\tairport\n", "\tbus\n", 1))
    with pytest.raises(Sp4scError, match=r"test.csv: line 2: .* labelled 'bus' but its name says 'airport'"):
        load_index("tau2022", root, check_audio=False)
    # a test file in a training split is reported by the structure check
    p.write_text("filename\tscene_label\naudio/airport-lisbon-1000-40000-0-a.wav\tairport\n")
    problems = tau22_nesting(load_index("tau2022", root, check_audio=False))
    assert any("shares 1 files with test" in x for x in problems)
    # nothing to read
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Sp4scError, match="no meta.csv and no split files"):
        load_index("tau2022", empty)
    with pytest.raises(Sp4scError, match="--split-dir: only the tau2022"):
        load_index("tau2020", root, split_dir="x")


def test_meta_csv_wins_when_present(tmp_path):
    root = make_tau22(tmp_path / "d")
    names = [line.split("\t") for s in ("split50", "test")
             for line in (root / "split_setup" / f"{s}.csv").read_text().splitlines()[1:]]
    # meta.csv as the official release writes it: identifier = <city>-<location id>, source_label = device
    rows = [f"{n}\t{s}\t{parse_tau22_name(n)[2]}\t{parse_tau22_name(n)[3]}" for n, s in names]
    (root / "meta.csv").write_text("filename\tscene_label\tidentifier\tsource_label\n" + "\n".join(rows) + "\n")
    idx = load_index("tau2022", root, check_audio=False)
    assert idx.catalog is not None and len(idx.catalog) == len(rows)
    c = idx.split("test")[0]
    assert (c.device, c.city, c.location) == ("a", "vienna", "vienna-2000")
    (root / "split_setup" / "split5.csv").write_text("filename\tscene_label\naudio/tram-x-1-1-0-a.wav\ttram\n")
    with pytest.raises(Sp4scError, match="is not listed in .*meta.csv"):
        load_index("tau2022", root, check_audio=False)


def test_datamodule_options_are_checked(tmp_path):
    from sp4sc.data.datamodule import SceneDataModule

    root = make_tau22(tmp_path / "d")
    with pytest.raises(Sp4scError, match=r"--data.split None: tau2022 trains on one of .*5, 10, 25, 50, 100"):
        SceneDataModule("tau2022", str(root))
    with pytest.raises(Sp4scError, match="only for dataset tau2022"):
        SceneDataModule("tau2020", str(root), split=5)
    dm = SceneDataModule("tau2022", str(root), frontend="dcase2024", split=10)
    assert len(dm.split_clips()["train"]) == 20 and dm.devices == ("a", "s4")


@pytest.mark.slow
def test_datamodule_reads_audio_from_root(tmp_path):
    """Training reads ROOT/<filename> (ROOT/audio/...): 1 s clips at the dcase2024 front end give 65 x 256 inputs."""
    from sp4sc.data.datamodule import SceneDataModule

    root = make_tau22(tmp_path / "d", seconds=1, audio=True, splits=(5, 10))
    dm = SceneDataModule("tau2022", str(root), frontend="dcase2024", split=5, batch_size=4,
                         cache_dir=str(tmp_path / "cache"), progress=False, cache_workers=0)
    dm.prepare_data()
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert tuple(batch["x"].shape) == (4, 1, 65, 256) and set(batch["device"]) <= {"a", "b"}


def test_train_devices_filter(tmp_path):
    from sp4sc.data.datamodule import SceneDataModule

    root = make_tau22(tmp_path / "d", train_devices=("a", "b", "c"))
    dm = SceneDataModule("tau2022", str(root), frontend="dcase2024", split=50, train_devices=["b"])
    clips = dm.split_clips()
    assert {c.device for c in clips["train"]} == {"b"} and len(clips["train"]) == 20
    assert {c.device for c in clips["val"]} == {"a", "s4"}  # validation keeps every device
    dm = SceneDataModule("tau2022", str(root), frontend="dcase2024", split=50, train_devices=["s9"])
    with pytest.raises(Sp4scError, match=r"--data.train_devices \['s9'\]: no training clip .* has a, b, c"):
        dm.split_clips()


@pytest.mark.slow
def test_device_fine_tuning_starts_from_the_general_weights(tmp_path, capsys):
    """A fit with InitWeights starts from the given model's weights (device-specific fine-tuning, DCASE 2025)."""
    import torch

    from sp4sc.frontend.features import frontend_preset
    from sp4sc.models import create_model
    from sp4sc.models.checkpoint import load_model, model_spec, save_model
    from sp4sc.training.init_weights import InitWeights

    root = make_tau22(tmp_path / "d", seconds=1, audio=True, splits=(5, 10))
    torch.manual_seed(3)
    general = create_model("sp4sc_w32", n_mels=256)
    with torch.no_grad():
        general.fc2.weight.fill_(0.25)  # a value a fresh init never has
    save_model(tmp_path / "general.pt", general, model_spec("sp4sc_w32", general.arch_kwargs,
                                                             frontend_preset("dcase2024"), SCENES))
    out = tmp_path / "run_b"
    argv = ["fit", "--config", "recipes/tau2022_sp4sc.yaml", "--data.root", str(root), "--data.split", "10",
            "--data.train_devices", "[b]", "--data.cache_dir", str(tmp_path / "cache"), "--data.num_workers", "0",
            "--data.batch_size", "4", "--data.progress", "false", "--model.lr", "1e-12", "--model.eta_min", "0",
            "--model.mixstyle_p", "0", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
            "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(out),
            "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.callbacks+=sp4sc.training.init_weights.InitWeights",
            "--trainer.callbacks.path", str(tmp_path / "general.pt")]
    assert main(argv) == 0, capsys.readouterr().err
    tuned = load_model(out / "checkpoints" / "last.ckpt")
    assert torch.allclose(tuned.model.fc2.weight, torch.full_like(tuned.model.fc2.weight, 0.25), atol=1e-6)
    # a model of another architecture is refused, naming both
    bad = create_model("sp4sc_w48", n_mels=256)
    save_model(tmp_path / "w48.pt", bad, model_spec("sp4sc_w48", bad.arch_kwargs, frontend_preset("dcase2024"), SCENES))
    argv[argv.index(str(tmp_path / "general.pt"))] = str(tmp_path / "w48.pt")
    assert main(argv + ["--trainer.default_root_dir", str(tmp_path / "run_bad")]) == 2
    assert "holds a 'sp4sc_w48' model but this run trains 'sp4sc_w32'" in capsys.readouterr().err
    with pytest.raises(Sp4scError, match="required"):
        InitWeights("")
