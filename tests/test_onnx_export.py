"""ONNX export: every registered model, parity at several shapes, budget, atomicity, fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from sp4sc.deploy import onnx_export
from sp4sc.models.checkpoint import load_model, model_spec, save_model
from sp4sc.cli import main as cli_main
from sp4sc.constants import SCENES
from sp4sc.errors import BudgetExceeded, Sp4scError
from sp4sc.frontend.features import LogMel, frontend_preset
from sp4sc.models.fold import fold_batchnorm
from sp4sc.models import create_model, list_models

# A small front end keeps every export fast: 16 kHz, 64 mels, 1 s -> 63 frames.
TINY = frontend_preset("demo", duration=1.0)
SHAPES = [(1, 32), (3, 40), (2, 63)]


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorms non-trivial statistics (as after training) so folding and parity mean something."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.running_mean.numel()
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    bn0 = getattr(model, "bn0", None)
    if isinstance(bn0, torch.nn.modules.batchnorm._BatchNorm):  # input BN over mel bins: dB-scale statistics
        bn0.running_mean.fill_(-45.0)
        bn0.running_var.fill_(100.0)
    return model.eval()


def make_model_file(path: Path, name: str = "sp4sc", cfg=TINY, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = randomise_bn(create_model(name, n_mels=cfg.n_mels, n_classes=len(SCENES)), seed)
    save_model(path, model, model_spec(name, model.arch_kwargs, cfg, SCENES))
    return path


@pytest.fixture(scope="module")
def sp4sc_file(tmp_path_factory) -> Path:
    return make_model_file(tmp_path_factory.mktemp("ckpt") / "sp4sc.pt")


@pytest.fixture(scope="module")
def full_export(sp4sc_file, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("exp") / "sp4sc"
    loaded = load_model(sp4sc_file)
    calib = onnx_export.parity_inputs(TINY.n_mels, [(16, TINY.n_frames)], seed=5, model=fold_batchnorm(loaded.model))[0]
    report = onnx_export.export_onnx(loaded, out, fp16=True, int8=True, waveform=True,
                                     parity_shapes=SHAPES, calib=calib)
    return out, report


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_exports_with_parity(name, tmp_path):
    ckpt = make_model_file(tmp_path / f"{name}.pt", name)
    loaded = load_model(ckpt)
    out = tmp_path / "out"
    report = onnx_export.export_onnx(loaded, out, no_budget=True, parity_shapes=SHAPES)
    assert sorted(p.name for p in out.iterdir()) == ["complexity.json", "frontend.json", "model.onnx", "parity.json"]
    fp32 = report["parity"]["variants"]["fp32"]
    assert fp32["passed"] and fp32["max_abs_prob"] <= 1e-5
    assert [r["shape"] for r in fp32["shapes"]] == [[b, 1, f, TINY.n_mels] for b, f in SHAPES]
    # the graph is well formed and its axes are dynamic: a shape not used at export time runs and agrees
    proto = onnx.load(out / "model.onnx")
    onnx.checker.check_model(proto, full_check=True)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[2].dim_param and dims[3].dim_value == TINY.n_mels
    x = onnx_export.parity_inputs(TINY.n_mels, [(5, 50)], seed=7)[0]
    logits, probs = onnx_export.ort_session(out / "model.onnx").run(None, {"logmel": x})
    with torch.no_grad():
        ref = torch.softmax(fold_batchnorm(loaded.model)(torch.from_numpy(x)).double(), -1).numpy()
    assert probs.shape == (5, len(SCENES))
    assert np.abs(probs - ref).max() <= 1e-5
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_variants_parity_and_files(full_export):
    out, report = full_export
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["model.onnx", "model_fp16.onnx", "model_int8.onnx", "model_waveform.onnx",
                            "model_waveform_int8.onnx", "frontend.json", "complexity.json", "parity.json"])
    parity = json.loads((out / "parity.json").read_text())
    v = parity["variants"]
    assert v["fp32"]["passed"] and v["fp32"]["max_abs_prob"] <= 1e-5
    assert v["fp16"]["passed"] and v["fp16"]["max_abs_prob"] <= 1e-2
    assert v["fp16"]["vs_fp32"]["max_abs_prob"] <= 1e-2 and v["fp16"]["vs_fp32"]["top1_agreement"] == 1.0
    assert v["waveform"]["passed"]
    assert v["int8"]["passed"] is None and v["int8"]["max_abs_prob"] < 0.1  # reported, not gated
    assert len(v["fp32"]["shapes"]) >= 3
    # fp16 weights really are float16, and the file is about half the fp32 one
    p16 = onnx.load(out / "model_fp16.onnx")
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in p16.graph.initializer)
    assert (out / "model_fp16.onnx").stat().st_size < 0.6 * (out / "model.onnx").stat().st_size
    assert report["complexity"]["params"] == json.loads((out / "complexity.json").read_text())["params"]


def test_waveform_variant_matches_logmel_front_end(full_export, sp4sc_file):
    out, _ = full_export
    sess = onnx_export.ort_session(out / "model_waveform.onnx")
    rng = np.random.default_rng(3)
    wav = (rng.standard_normal((2, TINY.n_samples)) * np.array([[0.3], [0.003]])).astype(np.float32)
    _, probs = sess.run(None, {"waveform": wav})
    loaded = load_model(sp4sc_file)
    with torch.no_grad():
        x = LogMel(TINY)(torch.from_numpy(wav)).unsqueeze(1)
        ref = torch.softmax(loaded.model(x).double(), -1).numpy()
    assert np.abs(probs - ref).max() <= 1e-4


def test_fingerprint_in_metadata_and_frontend_json(full_export):
    out, report = full_export
    front = json.loads((out / "frontend.json").read_text())
    assert front["frontend"] == TINY.to_dict() and front["classes"] == list(SCENES)
    assert front["frontend_digest"] == TINY.digest()
    for name in ("model.onnx", "model_fp16.onnx", "model_int8.onnx", "model_waveform.onnx"):
        meta = onnx_export.read_metadata(onnx.load(out / name))
        assert meta["fingerprint"] == front["fingerprint"] == report["fingerprint"]
        assert meta["frontend_digest"] == TINY.digest()
        assert json.loads(meta["classes"]) == list(SCENES)
        assert meta["over_budget"] == "false"
    assert onnx_export.read_metadata(onnx.load(out / "model_waveform.onnx"))["input"] == "waveform"


def test_fingerprint_changes_with_weights_frontend_and_classes(sp4sc_file):
    loaded = load_model(sp4sc_file)
    w = onnx_export.weights_hash(fold_batchnorm(loaded.model))
    base = onnx_export.export_fingerprint(w, TINY.digest(), SCENES, "sp4sc")
    other = load_model(make_model_file(sp4sc_file.parent / "other.pt", seed=1))
    assert onnx_export.weights_hash(fold_batchnorm(other.model)) != w
    assert onnx_export.export_fingerprint(w, TINY.replace(hop_length=128).digest(), SCENES, "sp4sc") != base
    assert onnx_export.export_fingerprint(w, TINY.digest(), list(SCENES)[::-1], "sp4sc") != base
    assert onnx_export.export_fingerprint(w, TINY.digest(), SCENES, "sp4sc") == base


def test_over_budget_refused_then_marked_with_no_budget(tmp_path):
    ckpt = make_model_file(tmp_path / "w96.pt", "sp4sc_w96")  # over the 2021 budget
    out = tmp_path / "out"
    with pytest.raises(BudgetExceeded, match="over the complexity budget"):
        onnx_export.export_onnx(load_model(ckpt), out, parity_shapes=SHAPES)
    assert not out.exists()
    report = onnx_export.export_onnx(load_model(ckpt), out, no_budget=True, parity_shapes=SHAPES)
    assert report["over_budget"] is True
    for name in ("complexity.json", "parity.json", "frontend.json"):
        assert json.loads((out / name).read_text())["over_budget"] is True, name
    comp = json.loads((out / "complexity.json").read_text())
    assert comp["budget"]["enforced"] is False and "--no-budget" in comp["budget"]["message"]
    assert onnx_export.read_metadata(onnx.load(out / "model.onnx"))["over_budget"] == "true"


def test_failure_mid_export_leaves_nothing(sp4sc_file, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_write = onnx_export._write_json

    def failing_write(path, obj):
        if Path(path).name == "parity.json":  # model.onnx and two JSON files already written in the temp folder
            raise OSError(28, "No space left on device")
        real_write(path, obj)

    monkeypatch.setattr(onnx_export, "_write_json", failing_write)
    with pytest.raises(Sp4scError, match="no space left"):
        onnx_export.export_onnx(load_model(sp4sc_file), out, parity_shapes=SHAPES)
    assert list(tmp_path.iterdir()) == []  # neither out nor a temporary folder


def test_parity_failure_is_an_error_and_writes_nothing(sp4sc_file, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "FP32_PROB_TOL", -1.0)
    with pytest.raises(Sp4scError, match="disagrees with torch"):
        onnx_export.export_onnx(load_model(sp4sc_file), tmp_path / "out", parity_shapes=SHAPES)
    assert list(tmp_path.iterdir()) == []


def test_parity_needs_three_shapes(sp4sc_file, tmp_path):
    with pytest.raises(Sp4scError, match="at least three"):
        onnx_export.export_onnx(load_model(sp4sc_file), tmp_path / "out", parity_shapes=SHAPES[:2])


def test_deployed_blocks_compute_the_folded_function():
    model = randomise_bn(create_model("sp4sc", n_mels=64))
    folded = fold_batchnorm(model)
    deployed = onnx_export.deploy_model(folded)
    assert any(isinstance(m, onnx_export.DeploySepBlock) for m in deployed.modules())
    x = torch.from_numpy(onnx_export.parity_inputs(64, [(2, 37)])[0])
    with torch.no_grad():
        a, b = folded(x), deployed(x)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_cli_export_existing_out_and_over_budget(sp4sc_file, tmp_path, capsys):
    out = tmp_path / "exp"
    cli_args = ["export", "--ckpt", str(sp4sc_file), "--out", str(out)]
    # the CLI uses the default parity shapes of the front end (63 frames here)
    assert cli_main(cli_args) == 0
    text = capsys.readouterr().out
    assert "parity fp32" in text and ": ok" in text and "model.onnx" in text
    assert cli_main(cli_args) == 2
    assert "already exists" in capsys.readouterr().err
    big = make_model_file(tmp_path / "w96.pt", "sp4sc_w96")
    assert cli_main(["export", "--ckpt", str(big), "--out", str(tmp_path / "big")]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "over the complexity budget" in err
    assert not (tmp_path / "big").exists()


@pytest.mark.slow
@pytest.mark.shared
def test_fp16_and_int8_on_real_esc10_with_sp4asc_weights(sp4asc_weights, esc10_root, tmp_path):
    """The variants' prediction change on real recordings (trained SP4ASC weights; ESC-10 audio, 5 s).

    There is no TAU audio here, so this measures agreement with the fp32 model on real
    audio, not accuracy on the task.
    """
    from sp4sc.frontend.audio import load_audio
    from sp4sc.deploy.sp4asc_import import write_converted

    ckpt = tmp_path / "sp4asc.pt"
    write_converted(sp4asc_weights / "cnn6_small_dropout_2_specAugment_128_2_32_2.pth", ckpt)
    loaded = load_model(ckpt)
    loaded.frontend = loaded.frontend.replace(duration=5.0)
    cfg = loaded.frontend
    out = tmp_path / "exp"
    files = sorted((esc10_root / "audio").glob("*.ogg"))[::25][:16]
    calib_files = sorted((esc10_root / "audio").glob("*.ogg"))[7::13][:32]  # other clips than the ones compared
    with torch.no_grad():
        calib = LogMel(cfg)(torch.from_numpy(np.stack([load_audio(f, cfg.sample_rate, cfg.duration)
                                                       for f in calib_files]))).unsqueeze(1).numpy()
    onnx_export.export_onnx(loaded, out, fp16=True, int8=True, parity_shapes=[(1, 64), (2, 48), (3, 32)], calib=calib)
    wav = np.stack([load_audio(f, cfg.sample_rate, cfg.duration) for f in files])
    with torch.no_grad():
        x = LogMel(cfg)(torch.from_numpy(wav)).unsqueeze(1)
        ref = torch.softmax(loaded.model(x).double(), -1).numpy()
    probs = {k: onnx_export.ort_session(out / onnx_export.FILES[k]).run(["probs"], {"logmel": x.numpy()})[0]
             for k in ("fp32", "fp16", "int8")}
    agree = {k: float(np.mean(p.argmax(1) == ref.argmax(1))) for k, p in probs.items()}
    mean_dp = {k: float(np.abs(p - ref).mean()) for k, p in probs.items()}
    assert np.abs(probs["fp32"] - ref).max() <= 1e-5
    assert agree["fp16"] >= 0.9 and mean_dp["fp16"] <= 1e-3
    assert agree["int8"] >= 0.75 and mean_dp["int8"] <= 0.05
    assert ref.max(1).mean() < 0.99  # the trained model is not saturated on these clips: the comparison means something
