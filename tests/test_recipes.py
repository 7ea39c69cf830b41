"""Every recipe parses and runs --trainer.fast_dev_run on a tiny toy dataset; usage errors are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sp4sc.cli import main
from sp4sc.commands.lightning import expand_configs
from sp4sc.frontend.features import PRESETS

RECIPES = sorted(p for p in (Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from sp4sc.data.toy import ensure_toy_dataset

    base = tmp_path_factory.mktemp("recipes")
    root = ensure_toy_dataset(base / "toy", n_per_class_device=2, duration=1.0)
    return root, base / "cache"


def _tiny(root, cache, out):
    # tiny toy (60 clips of 1 s), small batches, nothing written outside tmp
    return ["--data.dataset", "toy", "--data.root", str(root), "--data.cache_dir", str(cache),
            "--data.toy_n_per_class_device", "2", "--data.toy_duration", "1.0", "--data.duration", "1.0",
            "--data.batch_size", "4", "--data.num_workers", "0", "--data.progress", "false",
            "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu", "--trainer.devices", "1"]


def test_recipes_exist_and_keep_the_shared_layout():
    names = {p.stem for p in RECIPES}
    assert {"cnn6", "sp4sc", "sp4sc_mixup", "sp4sc_focal", "esc10_sp4sc", "esc10_cnn6", "demo"} <= names
    for path in RECIPES:
        cfg = yaml.safe_load(path.read_text())
        # the layout `sp4sc complexity --config` reads
        assert isinstance(cfg["model"]["backbone"], str), path
        assert isinstance(cfg["model"].get("backbone_kwargs", {}), dict), path
        assert cfg["data"]["frontend"] in PRESETS, path
        assert "root" not in cfg["data"], f"{path}: the data root comes from --data.root"
        args = expand_configs(["--config", str(path)])
        assert args[-1] == str(path) and any(a.endswith("base/trainer.yaml") for a in args), path


def test_sp4asc_settings():
    cfg = yaml.safe_load((RECIPES[0].parent / "sp4sc.yaml").read_text())
    m, d = cfg["model"], cfg["data"]
    assert (d["batch_size"], m["lr"], m["weight_decay"], m["eta_min"], cfg["trainer"]["max_epochs"]) == \
        (32, 1e-3, 1e-5, 1e-5, 200)
    assert m["backbone_kwargs"]["dropout"] == 0.2 and m["spec_augment"] == [128, 2, 32, 2]
    mix = yaml.safe_load((RECIPES[0].parent / "sp4sc_mixup.yaml").read_text())["model"]
    assert mix["spec_augment"] == [128, 2, 16, 2] and mix["mixup_alpha"] == 0.2
    assert yaml.safe_load((RECIPES[0].parent / "sp4sc_focal.yaml").read_text())["model"]["loss"] == "focal"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_fast_dev_run(recipe, toy, tmp_path, capsys):
    root, cache = toy
    extra = []
    if "kd_teacher" in (yaml.safe_load(recipe.read_text()).get("model") or {}):
        # distillation recipes: the real teacher architecture with random weights (no checkpoint needed)
        extra = ["--model.kd_teacher.random_init", "true", "--model.kd_teacher.device", "cpu",
                 "--model.kd_teacher.cache_dir", str(tmp_path / "kd")]
    if "split" in (yaml.safe_load(recipe.read_text()).get("data") or {}):
        extra += ["--data.split", "null"]  # tau2022 recipes: the toy dataset has no DCASE 2024 splits
    rc = main(["fit", "--config", str(recipe), *_tiny(root, cache, tmp_path), "--trainer.fast_dev_run", "true", *extra])
    assert rc == 0, capsys.readouterr().err


@pytest.mark.parametrize("extra, needle", [
    (["--model.no_such_key", "1"], "model.no_such_key"),
    (["--model.lr", "abc"], "model.lr"),
    (["--data.dataset", "tau2020", "--data.root", "/no/such/folder"], "--data.root /no/such/folder"),
])
def test_usage_errors_are_one_line(extra, needle, tmp_path, capsys):
    rc = main(["fit", "--config", str(RECIPES[0].parent / "demo.yaml"), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error:") and needle in err and "Traceback" not in err
    assert len(err.splitlines()) == 1, err


def test_missing_recipe_is_named(capsys):
    assert main(["fit", "--config", "recipes/nope.yaml"]) == 2
    assert "recipes/nope.yaml" in capsys.readouterr().err
