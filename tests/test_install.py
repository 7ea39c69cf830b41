"""A broken install fails here first, loudly: every compiled dependency is imported AND exercised.

A wheel of one torch-family release next to another's (torchaudio 2.11.1 on torch 2.11.0) imports
fine and breaks only when its C++ extension loads; so each check runs real work, and its message
names the package and the fix.
"""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest

FIX = 'reinstall in a fresh venv through the lock file: pip install -c requirements-lock.txt -e ".[all]"'


def _fail(package: str, exc: BaseException) -> None:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    pytest.fail(f"{package} is broken in this install ({type(exc).__name__}: {first}); {FIX}", pytrace=False)


def test_torchaudio_kaldi_fbank_and_mel_banks():
    try:
        import torch
        import torchaudio
        from torchaudio.compliance import kaldi

        wave = torch.sin(torch.arange(16000, dtype=torch.float32) * 0.05).unsqueeze(0)  # (1, samples)
        feats = kaldi.fbank(wave, num_mel_bins=64, sample_frequency=16000)
        banks = torchaudio.functional.melscale_fbanks(513, 0.0, 8000.0, 64, 16000)
        spec = torchaudio.transforms.Spectrogram(n_fft=1024)(wave)
    except Exception as exc:  # noqa: BLE001
        _fail("torchaudio", exc)
    assert feats.shape == (98, 64) and torch.isfinite(feats).all()
    assert banks.shape == (513, 64) and float(banks.sum()) > 0
    assert spec.shape[1] == 513
    assert torch.__version__.split("+")[0].rsplit(".", 1)[0] == torchaudio.__version__.split("+")[0].rsplit(".", 1)[0], (
        f"torch {torch.__version__} and torchaudio {torchaudio.__version__} are from different releases; {FIX}")


def test_onnxruntime_runs_a_graph():
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper

        node = helper.make_node("Relu", ["x"], ["y"])
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        out = sess.run(None, {"x": np.array([-1.0, 2.0], dtype=np.float32)})[0]
    except Exception as exc:  # noqa: BLE001
        _fail("onnxruntime/onnx", exc)
    assert out.tolist() == [0.0, 2.0]


def test_soundfile_round_trip(tmp_path):
    try:
        import soundfile as sf

        x = (0.1 * np.sin(np.arange(4410) * 0.1)).astype(np.float32)
        sf.write(tmp_path / "a.wav", x, 44100)
        sf.write(tmp_path / "a.ogg", x, 44100, format="OGG", subtype="VORBIS")
        y, sr = sf.read(tmp_path / "a.wav", dtype="float32")
        z, _ = sf.read(tmp_path / "a.ogg", dtype="float32")
    except Exception as exc:  # noqa: BLE001
        _fail("soundfile (libsndfile)", exc)
    assert sr == 44100 and np.allclose(y, x, atol=1e-4) and z.shape[0] > 4000


def test_soxr_resamples():
    try:
        import soxr

        y = soxr.resample(np.ones(44100, dtype=np.float32), 44100, 32000)
    except Exception as exc:  # noqa: BLE001
        _fail("soxr", exc)
    assert abs(y.shape[0] - 32000) <= 1


@pytest.mark.parametrize("module", ["hear21passt", "speechbrain.lobes.models.beats", "torchvision"])
def test_probes_extra_imports(module):
    top = module.split(".")[0]
    if importlib.util.find_spec(top) is None:
        pytest.skip(f"{top} is not installed: the probes extra is absent (pip install -e '.[probes]')")
    try:
        importlib.import_module(module)
        if top == "torchvision":
            import torch
            import torchvision

            boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
            keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)  # its compiled operator
            assert keep.tolist() == [0]
    except Exception as exc:  # noqa: BLE001
        _fail(top, exc)


def test_doctor_reports_every_core_package(capsys):
    from sp4sc.cli import main

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in ("torch ", "torchaudio ", "pytorch-lightning ", "onnxruntime ", "numpy ", "cpu: ", "AVX-512",
                 "avx512_bf16", "AMX", "gpu: ", "extra [probes]"):
        assert name in out, name
    assert "BROKEN" not in out, out
