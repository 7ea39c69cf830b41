"""The torch-free edge runner: numpy front end == LogMel, same JSON as `sp4sc infer`, clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch

from sp4sc.deploy import onnx_export
from sp4sc.frontend.audio import load_audio
from sp4sc.models.checkpoint import load_model
from sp4sc.cli import main as cli_main
from sp4sc.frontend.features import PRESETS, LogMel, frontend_preset, mel_filterbank

ROOT = Path(__file__).resolve().parents[1]
EXPORT_DIR = ROOT / "export"
sys.path.insert(0, str(EXPORT_DIR))
import edge_frontend  # noqa: E402
import edge_infer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_onnx_export import SHAPES, make_model_file  # noqa: E402

# Runs export/edge_infer.py with torch, sp4sc and librosa made unimportable.
NO_TORCH = r"""
import importlib.abc, runpy, sys
BLOCKED = ("torch", "sp4sc", "librosa", "torchaudio")
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the edge runner must not import it")
        return None
sys.meta_path.insert(0, Blocker())
script = sys.argv[1]
sys.argv = sys.argv[1:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    leaked = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    if leaked:
        print("LEAKED " + " ".join(leaked), file=sys.stderr)
        sys.exit(99)
"""


def run_edge(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(EXPORT_DIR / "edge_infer.py"), *args],
        capture_output=True, text=True, env=env, cwd=str(ROOT.parent), timeout=120,
    )


def write_clips(folder: Path) -> list[str]:
    """Synthetic clips exercising the audio path: mono 16 kHz, stereo 48 kHz (resampled), short and long."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(1.4 * 16000)) / 16000
    clips = {
        "tone.wav": ((0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.size)), 16000, "PCM_16"),
        "stereo48k.wav": (0.1 * rng.standard_normal((int(0.8 * 48000), 2)), 48000, "PCM_24"),
        "short.flac": (0.05 * rng.standard_normal(3000), 16000, "PCM_16"),
    }
    paths = []
    for name, (x, sr, subtype) in clips.items():
        sf.write(folder / name, x.astype(np.float32), sr, subtype=subtype)
        paths.append(str(folder / name))
    return paths


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("edge")
    ckpt = make_model_file(base / "model.pt")
    out = base / "export"
    onnx_export.export_onnx(load_model(ckpt), out, waveform=True, parity_shapes=SHAPES)
    return ckpt, out


# ------------------------------------------------------------------ front end


def test_mel_filterbank_and_digest_equal_the_library():
    for name in sorted(PRESETS):
        cfg = frontend_preset(name)
        fb = edge_frontend.mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max)
        np.testing.assert_allclose(fb, mel_filterbank(cfg), rtol=1e-5, atol=1e-7)
        assert edge_frontend.frontend_digest(cfg.to_dict()) == cfg.digest()


@pytest.mark.parametrize("name", sorted(n for n, c in PRESETS.items() if c.style == "librosa"))
def test_edge_logmel_equals_library_to_001_db(name):
    cfg = frontend_preset(name, duration=1.5)
    rng = np.random.default_rng(1)
    n = cfg.n_samples
    # loud noise, a quiet tone, near-silence: the dB floor and quiet bins are where precision shows
    t = np.arange(n) / cfg.sample_rate
    wav = np.stack([
        0.5 * rng.standard_normal(n),
        1e-3 * np.sin(2 * np.pi * 1000 * t) + 1e-5 * rng.standard_normal(n),
        1e-7 * rng.standard_normal(n),
    ]).astype(np.float32)
    ours = edge_frontend.EdgeFrontEnd(cfg.to_dict())(wav)
    with torch.no_grad():
        ref = LogMel(cfg)(torch.from_numpy(wav)).numpy()
    assert ours.shape == ref.shape == (3, cfg.n_frames, cfg.n_mels)
    assert np.abs(ours - ref).max() <= 0.01


def test_edge_refuses_a_front_end_it_does_not_compute():
    # EfficientAT's log-mel (pre-emphasis, Kaldi mels, ln) is not the runner's Slaney/dB definition
    with pytest.raises(edge_frontend.EdgeError, match="style 'efficientat' is not supported by the edge runner"):
        edge_frontend.EdgeFrontEnd(frontend_preset("efficientat32k").to_dict())


def test_edge_logmel_on_real_esc10_clips(esc10_root):
    cfg = frontend_preset("sp4asc", duration=5.0)
    files = sorted((esc10_root / "audio").glob("*.ogg"))[:3]
    fe = edge_frontend.EdgeFrontEnd(cfg.to_dict())
    logmel = LogMel(cfg)
    for f in files:
        wav_edge = edge_frontend.load_audio(f, cfg.sample_rate, cfg.duration)
        wav_lib = load_audio(f, cfg.sample_rate, cfg.duration)
        np.testing.assert_array_equal(wav_edge, wav_lib)
        with torch.no_grad():
            ref = logmel(torch.from_numpy(wav_lib[None])).numpy()
        assert np.abs(fe(wav_edge[None]) - ref).max() <= 0.01, f.name


def test_edge_audio_loading_equals_library(tmp_path):
    for path in write_clips(tmp_path):
        for sr, dur in ((16000, 1.0), (22050, None)):
            a = edge_frontend.load_audio(path, sr, dur)
            b = load_audio(path, sr, dur)
            assert a.dtype == b.dtype == np.float32
            np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ the runner without torch


def test_edge_runner_without_torch_equals_sp4sc_infer(export_dir, tmp_path, capsys):
    ckpt, out = export_dir
    files = write_clips(tmp_path / "clips")
    assert cli_main(["infer", "--ckpt", str(ckpt), "--json", "--pad", "silence", *files]) == 0
    ref = json.loads(capsys.readouterr().out)
    for model in ("model.onnx", "model_waveform.onnx"):
        res = run_edge("--model", str(out / model), "--json", "--batch-size", "2", "--pad", "silence", *files)
        assert res.returncode == 0, res.stderr
        got = json.loads(res.stdout)
        assert got["classes"] == ref["classes"] and got["files"] == ref["files"] == files
        assert np.abs(np.array(got["probs"]) - np.array(ref["probs"])).max() <= 1e-4, model
    table = run_edge("--model", str(out / "model.onnx"), files[0])
    assert table.returncode == 0 and table.stdout.startswith(files[0] + "\t")


@pytest.mark.parametrize("options", [[], ["--pad", "repeat"], ["--pad", "repeat", "--crop"]], ids=["own", "repeat", "crop"])
def test_edge_runner_clip_length_equals_sp4sc_infer(export_dir, tmp_path, capsys, options):
    ckpt, out = export_dir
    files = write_clips(tmp_path / "clips")  # 1.4 s, 0.8 s and 0.19 s; trained on 1 s
    usable = files[:2] if not options else files  # own length: the 0.19 s clip is too short for the model
    assert cli_main(["infer", "--ckpt", str(ckpt), "--json", *options, *usable]) == 0
    cap = capsys.readouterr()
    ref = json.loads(cap.out)
    res = run_edge("--model", str(out / "model.onnx"), "--json", *options, *usable)
    assert res.returncode == 0, res.stderr
    assert np.abs(np.array(json.loads(res.stdout)["probs"]) - np.array(ref["probs"])).max() <= 1e-4
    lib_note = [ln.split("clip length: ", 1)[1] for ln in cap.err.splitlines() if "clip length: " in ln]
    edge_note = [ln.split("clip length: ", 1)[1] for ln in res.stderr.splitlines() if "clip length: " in ln]
    assert len(lib_note) == 1 and lib_note == edge_note  # one line per run, the same words


def test_edge_too_short_clip_is_one_line_naming_the_fix(export_dir, tmp_path, edge):
    _, out = export_dir
    short = write_clips(tmp_path / "c")[2]  # 0.19 s
    one_line_error(edge("--model", str(out / "model.onnx"), short), "short.flac", "--pad silence or --pad repeat")
    assert edge("--model", str(out / "model.onnx"), "--pad", "silence", short).returncode == 0


def test_fit_clip_twins_agree():
    from sp4sc.frontend.audio import ClipLengths, fit_clip

    x = np.arange(1, 8, dtype=np.float32)
    for n in (3, 7, 16):
        for pad in (None, "silence", "repeat"):
            for crop in (False, True):
                np.testing.assert_array_equal(edge_frontend.fit_clip(x, n, pad, crop), fit_clip(x, n, pad=pad, crop=crop))
    for pad, crop in ((None, False), ("repeat", False), ("silence", True)):
        a, b = ClipLengths(16000, 16000, pad, crop), edge_frontend.ClipLengths(16000, 16000, pad, crop)
        for n_in in (8000, 16000, 24000):
            n_out = fit_clip(np.zeros(n_in, np.float32), 16000, pad=pad, crop=crop).shape[0]
            a.add(n_in, n_out)
            b.add(n_in, n_out)
        assert a.note() == b.note() and a.note()


def test_the_shim_really_blocks_torch(tmp_path):
    script = tmp_path / "uses_torch.py"
    script.write_text("import torch\n")
    res = subprocess.run([sys.executable, "-c", NO_TORCH, str(script)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "torch is blocked" in res.stderr


@pytest.fixture
def edge(capsys):
    """Run edge_infer.main in-process (the error paths; the no-torch run is a subprocess above)."""

    def run(*args: str):
        code = edge_infer.main(list(args))
        cap = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, cap.out, cap.err)

    return run


def one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_edge_errors_missing_audio_and_model(export_dir, tmp_path, edge):
    _, out = export_dir
    one_line_error(edge("--model", str(out / "model.onnx"), str(tmp_path / "nope.wav")), "nope.wav", "not found")
    one_line_error(edge("--model", str(tmp_path / "none.onnx"), "x.wav"), "none.onnx", "not found")
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    one_line_error(edge("--model", str(bad), "x.wav"), "bad.onnx", "not a loadable ONNX model")
    text = tmp_path / "text.wav"
    text.write_text("hello")
    one_line_error(edge("--model", str(out / "model.onnx"), str(text)), "text.wav", "not a readable audio file")


def _foreign_onnx(path: Path, input_shape: list, meta: dict | None) -> None:
    """A tiny ONNX model (probs = softmax of a mean) with a chosen input shape and metadata."""
    from onnx import TensorProto, helper

    axes = list(range(1, len(input_shape)))
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=axes, keepdims=0) if len(axes) else helper.make_node("Identity", ["x"], ["m"]),
        helper.make_node("Unsqueeze", ["m", "ax"], ["m2"]),
        helper.make_node("Tile", ["m2", "reps"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "foreign", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]),
         helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        initializer=[helper.make_tensor("ax", TensorProto.INT64, [1], [1]),
                     helper.make_tensor("reps", TensorProto.INT64, [2], [1, 10])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if meta:
        onnx_export.set_metadata(model, meta)
    onnx.save(model, path)


def test_edge_errors_wrong_rank_mel_count_foreign_model(export_dir, tmp_path, edge):
    _, out = export_dir
    front = json.loads((out / "frontend.json").read_text())
    meta = onnx_export.read_metadata(onnx.load(out / "model.onnx"))
    wav = write_clips(tmp_path / "c")[0]

    folder = tmp_path / "rank3"
    folder.mkdir()
    shutil.copy(out / "frontend.json", folder / "frontend.json")
    _foreign_onnx(folder / "model.onnx", ["batch", "frames", 64], meta)
    one_line_error(edge("--model", str(folder / "model.onnx"), wav), "rank 3", "(batch, 1, frames, mels)")

    folder = tmp_path / "mels"
    folder.mkdir()
    shutil.copy(out / "frontend.json", folder / "frontend.json")
    _foreign_onnx(folder / "model.onnx", ["batch", 1, "frames", 128], meta)
    one_line_error(edge("--model", str(folder / "model.onnx"), wav), "expects 128 mel bands", "gives 64")

    folder = tmp_path / "plain"
    folder.mkdir()
    shutil.copy(out / "frontend.json", folder / "frontend.json")
    _foreign_onnx(folder / "model.onnx", ["batch", 1, "frames", 64], None)
    one_line_error(edge("--model", str(folder / "model.onnx"), wav), "not an sp4sc export")

    assert front["frontend"]["n_mels"] == 64


def test_edge_refuses_a_model_from_another_export(export_dir, tmp_path, edge):
    _, out = export_dir
    wav = write_clips(tmp_path / "c")[0]
    other = tmp_path / "other"
    onnx_export.export_onnx(load_model(make_model_file(tmp_path / "o.pt", seed=5)), other, parity_shapes=SHAPES)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(other / "model.onnx", mixed / "model.onnx")
    shutil.copy(out / "frontend.json", mixed / "frontend.json")
    one_line_error(edge("--model", str(mixed / "model.onnx"), wav), "another export", "fingerprint")

    # frontend.json edited by hand (same fingerprint, different settings)
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    front = json.loads((edited / "frontend.json").read_text())
    front["frontend"]["f_max"] = 7000.0
    (edited / "frontend.json").write_text(json.dumps(front))
    one_line_error(edge("--model", str(edited / "model.onnx"), wav), "do not match", "edited")

    missing = tmp_path / "alone"
    missing.mkdir()
    shutil.copy(out / "model.onnx", missing / "model.onnx")
    one_line_error(edge("--model", str(missing / "model.onnx"), wav), "frontend.json", "not found")
