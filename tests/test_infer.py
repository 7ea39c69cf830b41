"""`sp4sc infer` and predict_files: probabilities, batch-size invariance, seeded TTA, JSON, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sp4sc.frontend.audio import load_audio
from sp4sc.models.checkpoint import load_model
from sp4sc.cli import main as cli_main
from sp4sc.constants import SCENES
from sp4sc.errors import Sp4scError
from sp4sc.frontend.features import LogMel
from sp4sc.deploy.infer import predict_files, result_json, tta_spec_augment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_onnx_export import TINY, make_model_file  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("infer")
    ckpt = make_model_file(base / "m.pt")
    rng = np.random.default_rng(0)
    files = []
    for i in range(5):
        sr = 16000 if i % 2 == 0 else 22050
        x = rng.standard_normal(int(sr * (0.6 + 0.2 * i))) * (0.02 * (i + 1))
        path = base / f"clip{i}.wav"
        sf.write(path, x.astype(np.float32), sr, subtype="PCM_16")
        files.append(str(path))
    return ckpt, files


def test_probs_equal_front_end_plus_model(setup):
    ckpt, files = setup
    loaded = load_model(ckpt)
    probs = predict_files(loaded, files, batch_size=2, pad="silence", crop=True)  # the trained length
    assert probs.shape == (len(files), len(SCENES)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    wav = np.stack([load_audio(f, TINY.sample_rate, TINY.duration) for f in files])
    with torch.no_grad():
        ref = torch.softmax(loaded.model(LogMel(TINY)(torch.from_numpy(wav)).unsqueeze(1)), -1).numpy()
    assert np.abs(probs - ref).max() <= 1e-5
    assert len({tuple(np.round(r, 6)) for r in probs}) == len(files)  # different clips, different outputs


def test_batch_size_does_not_change_results(setup):
    ckpt, files = setup
    loaded = load_model(ckpt)
    a = predict_files(loaded, files, batch_size=1)
    b = predict_files(loaded, files, batch_size=16)
    assert np.abs(a - b).max() <= 1e-5


def test_tta_seeded_and_batch_independent(setup):
    ckpt, files = setup
    loaded = load_model(ckpt)
    fit = {"pad": "silence", "crop": True}  # the trained length: the silent tail makes the stripes' effect large
    plain = predict_files(loaded, files, **fit)
    t1 = predict_files(loaded, files, tta=2, seed=0, batch_size=2, **fit)
    t2 = predict_files(loaded, files, tta=2, seed=0, batch_size=5, **fit)
    t3 = predict_files(loaded, files, tta=2, seed=1, batch_size=5, **fit)
    own1 = predict_files(loaded, files, tta=2, seed=0, batch_size=2)  # own lengths: batches group equal lengths
    own2 = predict_files(loaded, files, tta=2, seed=0, batch_size=5)
    np.testing.assert_allclose(own1, own2, atol=1e-6)
    np.testing.assert_allclose(t1, t2, atol=1e-6)
    assert np.abs(t1 - plain).max() > 1e-4  # the stripes change something
    assert np.abs(t1 - t3).max() > 1e-6  # and depend on the seed
    np.testing.assert_allclose(t1.sum(1), 1.0, atol=1e-5)
    assert not loaded.model.training


def test_tta_spec_augment_scales_to_front_end(setup):
    ckpt, _ = setup
    aug = tta_spec_augment(load_model(ckpt))
    # SP4ASC's 128/431 frames and 32/256 mels, at 63 frames x 64 mels
    assert (aug.time_width, aug.time_stripes, aug.freq_width, aug.freq_stripes) == (19, 2, 8, 2)
    assert tta_spec_augment(load_model(ckpt), [10, 1, 5, 1]).time_width == 10


def test_cli_json_and_table(setup, capsys):
    ckpt, files = setup
    assert cli_main(["infer", "--ckpt", str(ckpt), "--json", "--batch-size", "3", *files]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"classes", "files", "probs"}
    assert doc["classes"] == list(SCENES) and doc["files"] == files
    expected = predict_files(load_model(ckpt), files)
    assert np.abs(np.array(doc["probs"]) - expected).max() <= 1e-6
    assert json.loads(json.dumps(result_json(SCENES, files, expected)))["probs"][0] == [float(v) for v in expected[0]]
    assert cli_main(["infer", "--ckpt", str(ckpt), files[0]]) == 0
    line = capsys.readouterr().out.strip()
    name, scene, p = line.split("\t")
    assert name == files[0] and scene in SCENES and 0 < float(p) <= 1


def test_errors_are_one_line(setup, tmp_path, capsys):
    ckpt, files = setup
    assert cli_main(["infer", "--ckpt", str(ckpt), files[0], str(tmp_path / "missing.wav")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.wav" in err
    assert cli_main(["infer", "--ckpt", str(tmp_path / "none.pt"), files[0]]) == 2
    assert "none.pt" in capsys.readouterr().err
    with pytest.raises(Sp4scError, match="batch-size"):
        predict_files(load_model(ckpt), files, batch_size=0)


# ------------------------------------------------------------------ clip length


def _own_length_reference(loaded, path, fit=lambda x: x):
    wav = fit(load_audio(path, TINY.sample_rate, None))
    with torch.no_grad():
        return torch.softmax(loaded.model(LogMel(TINY)(torch.from_numpy(wav[None])).unsqueeze(1)).double(), -1)[0].numpy()


def test_default_is_each_clips_own_length_said_once(setup, caplog):
    ckpt, files = setup  # 0.6 ... 1.4 s clips; the model was trained on 1 s
    loaded = load_model(ckpt)
    with caplog.at_level("INFO", logger="sp4sc"):
        probs = predict_files(loaded, files, batch_size=3)
    ref = np.stack([_own_length_reference(loaded, f) for f in files])
    assert np.abs(probs - ref).max() <= 1e-5
    padded = predict_files(loaded, files, batch_size=3, pad="silence", crop=True)
    assert np.abs(probs - padded).max() > 1e-3  # own length is not the padded/cropped answer
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("clip length:")]
    assert len(notes) == 2  # one line per run, not one per clip
    assert "4 of 5 clips ran at their own length (0.60-1.40 s), not the model's trained 1 s" in notes[0]
    assert "--pad silence|repeat" in notes[0] and "--crop" in notes[0]
    assert "padded 2 of 5 clips to the model's trained 1 s with silence" in notes[1]
    assert "cropped 2 of 5 clips to their first 1 s" in notes[1]


def test_pad_repeat_and_crop(setup, caplog):
    from sp4sc.frontend.audio import fit_clip

    ckpt, files = setup
    loaded = load_model(ckpt)
    n = TINY.n_samples
    with caplog.at_level("INFO", logger="sp4sc"):
        probs = predict_files(loaded, files, pad="repeat")
    short = load_audio(files[0], TINY.sample_rate, None)  # 0.6 s
    tiled = fit_clip(short, n, pad="repeat")
    assert tiled.shape == (n,) and np.array_equal(tiled[: short.size], short) and np.array_equal(tiled[short.size :], short[: n - short.size])
    ref0 = _own_length_reference(loaded, files[0], lambda x: fit_clip(x, n, pad="repeat"))
    assert np.abs(probs[0] - ref0).max() <= 1e-5
    ref4 = _own_length_reference(loaded, files[4])  # 1.4 s: no --crop, so its own length
    assert np.abs(probs[4] - ref4).max() <= 1e-5
    note = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("clip length:"))
    assert "by repeating the clip (--pad repeat)" in note and "2 of 5 clips ran at their own length" in note
    cropped = predict_files(loaded, files[4:], crop=True)
    assert np.abs(cropped[0] - _own_length_reference(loaded, files[4], lambda x: x[:n])).max() <= 1e-5
    assert np.array_equal(fit_clip(short, n), short)  # default: untouched
    with pytest.raises(Sp4scError, match="--pad 'zeros'"):
        fit_clip(short, n, pad="zeros")


def test_too_short_clip_names_the_file_and_the_fix(setup, tmp_path, capsys):
    ckpt, _ = setup
    tiny = tmp_path / "blip.wav"
    sf.write(tiny, np.full(2000, 0.1, dtype=np.float32), TINY.sample_rate)  # 0.125 s: fewer frames than the model needs
    assert cli_main(["infer", "--ckpt", str(ckpt), str(tiny)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "blip.wav" in err[0] and "--pad silence or --pad repeat" in err[0]
    assert cli_main(["infer", "--ckpt", str(ckpt), "--pad", "silence", "--json", str(tiny)]) == 0
    assert len(json.loads(capsys.readouterr().out)["probs"]) == 1


def test_submit_takes_the_same_clip_length_options():
    import argparse

    from sp4sc.commands import infer as infer_cmd
    from sp4sc.commands import submit as submit_cmd

    def options(mod):
        p = argparse.ArgumentParser()
        mod.add_arguments(p)
        return {a.dest: (a.choices, a.default, a.help) for a in p._actions if a.dest in ("pad", "crop")}

    assert options(infer_cmd) == options(submit_cmd) and set(options(infer_cmd)) == {"pad", "crop"}
