"""SP4ASC import: strict conversion of the three official checkpoints, same function as SP4ASC's pipeline,
folding with eps (ours) vs SP4ASC's eps-less merge, and the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sp4sc.models.checkpoint import load_model
from sp4sc.cli import main
from sp4sc.constants import SCENES
from sp4sc.errors import Sp4scError
from sp4sc.frontend.features import LogMel, frontend_preset
from sp4sc.models.fold import fold_batchnorm
from sp4sc.models import create_model
from sp4sc.deploy.sp4asc_import import convert_sp4asc, key_map, read_sp4asc

pytestmark = pytest.mark.shared


def _checkpoints(root: Path) -> list[Path]:
    paths = sorted(root.glob("*.pth"))
    assert len(paths) == 3, f"expected the three official SP4ASC checkpoints in {root}"
    return paths


@pytest.fixture(scope="module")
def esc10_waves() -> torch.Tensor:
    """Three real ESC-10 clips (44.1 kHz, like TAU), padded/cropped to 5 s, as SP4ASC would read them."""
    import soundfile as sf

    from conftest import shared_path  # module-scoped, so the function-scoped esc10_root fixture cannot be used

    root = shared_path("data", "esc10", "audio")
    cfg = frontend_preset("sp4asc", duration=5.0)
    waves = []
    for path in sorted(root.glob("*.ogg"))[::50][:3]:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
        assert sr == cfg.sample_rate
        wav = wav.mean(axis=1)
        waves.append(np.pad(wav, (0, max(0, cfg.n_samples - len(wav))))[: cfg.n_samples])
    return torch.from_numpy(np.stack(waves))


@pytest.fixture(scope="module")
def ours_logmel(esc10_waves) -> torch.Tensor:
    with torch.no_grad():
        return LogMel(frontend_preset("sp4asc", duration=5.0))(esc10_waves).unsqueeze(1)  # (3, 1, 216, 256)


def sp4asc_logmel(wav: torch.Tensor) -> torch.Tensor:
    """SP4ASC's front end computed their way (torchlibrosa, facts in sp4sc/sp4asc_import.py):
    float32 DFT matmul of reflect-padded frames with a periodic Hann window, power, librosa's
    float32 Slaney mel matrix, 10*log10(max(., 1e-10)), no top_db."""
    import librosa

    n_fft, hop = 2048, 1024
    window = librosa.filters.get_window("hann", n_fft, fftbins=True)
    k = np.arange(n_fft)[:, None] * np.arange(n_fft // 2 + 1)[None, :]
    w_re = torch.tensor(np.cos(2 * np.pi * k / n_fft) * window[:, None], dtype=torch.float32)
    w_im = torch.tensor(-np.sin(2 * np.pi * k / n_fft) * window[:, None], dtype=torch.float32)
    mel = torch.tensor(librosa.filters.mel(sr=44100, n_fft=n_fft, n_mels=256, fmin=0, fmax=22050).T)
    padded = torch.nn.functional.pad(wav[:, None, :], (n_fft // 2, n_fft // 2), mode="reflect")[:, 0]
    frames = padded.unfold(1, n_fft, hop)  # (batch, frames, n_fft)
    power = (frames @ w_re) ** 2 + (frames @ w_im) ** 2  # (batch, frames, n_fft // 2 + 1)
    return (10 * torch.log10(torch.clamp(power @ mel, min=1e-10))).unsqueeze(1)  # (batch, 1, frames, mels)


def sp4asc_merge(model) -> torch.nn.Module:
    """SP4ASC's merge_conv_bn, done their way: scale = gamma / sqrt(running_var), eps dropped."""
    merged = create_model("sp4sc", folded=True).eval()
    with torch.no_grad():
        for blk, out in zip(model.blocks, merged.blocks):
            bn = blk.bn
            scale = bn.weight / torch.sqrt(bn.running_var)
            out.ch_conv1.weight.copy_(blk.ch_conv1.weight)
            out.sp_conv1.weight.copy_(blk.sp_conv1.weight * scale.view(-1, 1, 1, 1))
            out.sp_conv2.weight.copy_(blk.sp_conv2.weight * scale.view(-1, 1, 1, 1))
            out.sp_conv2.bias.copy_(bn.bias - scale * bn.running_mean)
        scale = model.bn0.weight / torch.sqrt(model.bn0.running_var)
        merged.bn0.weight.copy_(scale)
        merged.bn0.bias.copy_(model.bn0.bias - scale * model.bn0.running_mean)
        merged.fc1.load_state_dict(model.fc1.state_dict())
        merged.fc2.load_state_dict(model.fc2.state_dict())
    return merged


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_conversion_is_strict_and_exact(sp4asc_weights, tmp_path, capsys):
    for path in _checkpoints(sp4asc_weights):
        src = read_sp4asc(path)
        assert set(src["net"]) == set(key_map())  # every key of theirs is in the explicit map, and back
        out = tmp_path / (path.stem + ".pt")
        assert main(["convert-sp4asc", str(path), str(out), "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["state_dict_values"] == 64_335 and summary["epoch"] == 200
        loaded = load_model(out)
        assert loaded.name == "sp4sc" and loaded.frontend == frontend_preset("sp4asc")
        assert loaded.classes == list(SCENES)
        assert loaded.meta["source"]["checkpoint"] == path.name
        assert loaded.meta["source"]["config"]["net"] == "Cnn6_60k"
        for key, value in src["net"].items():
            assert torch.equal(loaded.model.state_dict()[key], value), key


@pytest.mark.slow
def test_same_function_as_sp4asc_pipeline_and_eps_matters(sp4asc_weights, esc10_waves, ours_logmel):
    theirs_logmel = sp4asc_logmel(esc10_waves)
    assert ours_logmel.shape == theirs_logmel.shape == (3, 1, 216, 256)
    loud = theirs_logmel > -60  # float32 DFT rounding dominates only on near-silent bins
    assert (ours_logmel - theirs_logmel)[loud].abs().max() < 0.02  # dB
    eps_less_gaps = {}
    for path in _checkpoints(sp4asc_weights):
        model, _ = convert_sp4asc(path)
        with torch.no_grad():
            y = model(ours_logmel)
            y_their_front_end = model(theirs_logmel)
            y_folded = fold_batchnorm(model)(ours_logmel)
            y_eps_less = sp4asc_merge(model)(ours_logmel)
        assert torch.isfinite(y).all()
        p = torch.softmax(y, dim=1)
        # our front end + model == their front end + model
        assert (torch.softmax(y_their_front_end, dim=1) - p).abs().max() < 1e-4
        # our fold keeps eps: same function to 1e-5
        assert _rel(y_folded, y) < 1e-5
        # their eps-less merge is not the same function
        assert _rel(y_eps_less, y) > 1e-4
        eps_less_gaps[path.name] = float((torch.softmax(y_eps_less, dim=1) - p).abs().max())
    # conv1.bn.running_var goes down to 9e-11 in the cross-entropy model: probabilities move by >1 point
    assert eps_less_gaps["cnn6_small_dropout_2_specAugment_128_2_32_2.pth"] > 0.01


def test_converted_model_file_works_with_complexity(sp4asc_weights, tmp_path, capsys):
    path = _checkpoints(sp4asc_weights)[0]
    out = tmp_path / "m.pt"
    assert main(["convert-sp4asc", str(path), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["complexity", "--ckpt", str(out), "--no-macs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 62_474
    # the output exists: refused without --force, nothing changed
    before = out.read_bytes()
    assert main(["convert-sp4asc", str(path), str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["convert-sp4asc", str(path), str(out), "--force"]) == 0


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_bad_checkpoints_are_one_line_errors(sp4asc_weights, tmp_path, capsys):
    good = torch.load(_checkpoints(sp4asc_weights)[0], map_location="cpu", weights_only=True)
    cases = {}
    missing = dict(good, net={k: v for k, v in good["net"].items() if k != "conv3.sp_conv2.weight"})
    cases["missing"] = (missing, "missing keys conv3.sp_conv2.weight")
    extra = dict(good, net=dict(good["net"], **{"conv5.ch_conv1.weight": torch.zeros(1)}))
    cases["extra"] = (extra, "not in SP4ASC's Cnn6_60k: conv5.ch_conv1.weight")
    other = dict(good, config=dict(good["config"], net="Cnn14"))
    cases["other"] = (other, "'Cnn14' is not supported")
    cases["plain"] = ({"weights": torch.zeros(3)}, "not an SP4ASC checkpoint")
    cases["evil"] = ({"net": _Evil()}, "refused")
    for name, (obj, message) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path)
        assert main(["convert-sp4asc", str(path), str(tmp_path / f"{name}.pt")]) == 2, name
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and "code ran" not in err, (name, err)
        assert not (tmp_path / f"{name}.pt").exists()
    out = tmp_path / "ok.pt"
    assert main(["convert-sp4asc", str(_checkpoints(sp4asc_weights)[0]), str(out)]) == 0
    with pytest.raises(Sp4scError, match="already an sp4sc model file"):
        read_sp4asc(out)
    trunc = tmp_path / "trunc.pth"
    buf = io.BytesIO()
    torch.save(good, buf)
    trunc.write_bytes(buf.getvalue()[:1000])
    assert main(["convert-sp4asc", str(trunc), str(tmp_path / "t.pt")]) == 2
    assert "corrupt" in capsys.readouterr().err
