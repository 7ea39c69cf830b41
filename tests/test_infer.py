"""`sp4sc infer` and predict_files: probabilities, batch-size invariance, seeded TTA, JSON, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sp4sc.audio import load_audio
from sp4sc.checkpoint import load_model
from sp4sc.cli import main as cli_main
from sp4sc.constants import SCENES
from sp4sc.errors import Sp4scError
from sp4sc.features import LogMel
from sp4sc.infer import predict_files, result_json, tta_spec_augment

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
    probs = predict_files(loaded, files, batch_size=2)
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
    plain = predict_files(loaded, files)
    t1 = predict_files(loaded, files, tta=2, seed=0, batch_size=2)
    t2 = predict_files(loaded, files, tta=2, seed=0, batch_size=5)
    t3 = predict_files(loaded, files, tta=2, seed=1, batch_size=5)
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
