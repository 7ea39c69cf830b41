"""EfficientAT MobileNets (our own code): parity with the released mn04_as, strict loading, widths,
and `sp4sc probe embed` (window counts, JSON, .npz, tags, bad input).

Parity rows need ../shared/weights/efficientat (the official mn04_as_mAP_432.pt, four 5 s clips
and the reference outputs computed with the original EfficientAT code); they skip without it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sp4sc.cli import main
from sp4sc.errors import Sp4scError
from sp4sc.probes import BUILTIN_ENCODERS, EFFICIENTAT_VARIANTS
from sp4sc.probes.efficientat import WIDTHS, EfficientATEncoder, embedding_dim, kaldi_mel_banks, n_frames
from sp4sc.probes.encoders import ENCODERS, load_encoder
from conftest import shared_path

CKPT_NAME = "mn04_as_mAP_432.pt"


@pytest.fixture(scope="module")
def weights_dir():
    return shared_path("weights", "efficientat")


@pytest.fixture(scope="module")
def mn04(weights_dir):
    return load_encoder("efficientat_mn04", ckpt=weights_dir / CKPT_NAME)


@pytest.fixture(scope="module")
def reference(weights_dir):
    return json.loads((weights_dir / "reference.json").read_text())


@pytest.fixture(scope="module")
def ref_wavs(weights_dir, reference):
    from sp4sc.frontend.audio import load_audio

    # The files hold 160,032 samples (5.001 s); the reference was computed on the first
    # 160,000 (its log-mels have 500 frames = 1 + 159,999 // 320), so crop to 5 s.
    clips = [load_audio(weights_dir / "inputs_32k" / c, 32000, duration=5.0) for c in reference["clips"]]
    return torch.from_numpy(np.stack(clips))  # (4, 160000)


@pytest.fixture(scope="module")
def mn04_random():
    return EfficientATEncoder("mn04").build(random_init=True, seed=0)


# ----------------------------------------------------------------------------- parity
@pytest.mark.shared
def test_reference_logits_and_embeddings(mn04, ref_wavs, reference):
    emb, logits = mn04.embed_with_logits(ref_wavs)
    assert emb.shape == (4, 384) and logits.shape == (4, 527)
    torch.testing.assert_close(logits, torch.tensor(reference["logits"]), rtol=0, atol=1e-4)
    torch.testing.assert_close(emb, torch.tensor(reference["embedding"]), rtol=0, atol=1e-4)
    # embed() gives the same vectors, one clip at a time too (no batch coupling in eval mode)
    torch.testing.assert_close(mn04.embed(ref_wavs[:1]), emb[:1], rtol=0, atol=1e-5)


@pytest.mark.shared
def test_reference_logmel(mn04, ref_wavs, reference):
    with torch.inference_mode():
        mel = mn04.model.mel(ref_wavs)  # (4, 128, frames)
    assert [list(mel[i : i + 1].shape) for i in range(4)] == reference["logmel_shape"]
    assert mel.shape[-1] == n_frames(ref_wavs.shape[1])
    np.testing.assert_allclose(mel.mean(dim=(1, 2)).numpy(), reference["logmel_mean"], atol=1e-4)
    np.testing.assert_allclose(mel.std(dim=(1, 2)).numpy(), reference["logmel_std"], atol=1e-4)


def test_mel_banks_equal_torchaudio_kaldi():
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    theirs, _ = kaldi.get_mel_banks(128, 1024, 32000.0, 0.0, 15000.0, 100.0, -500.0, 1.0)
    ours = kaldi_mel_banks(128, 1024, 32000, 0.0, 15000.0)
    assert ours.shape == theirs.shape == (128, 512)
    torch.testing.assert_close(ours, theirs.float(), rtol=0, atol=5e-5)  # theirs in float32, ours float64 -> 32


# ----------------------------------------------------------------------------- loading
@pytest.mark.shared
def test_checkpoint_keys_equal_ours(weights_dir, mn04_random):
    state = torch.load(weights_dir / CKPT_NAME, map_location="cpu", weights_only=True)
    own = mn04_random.model.net.state_dict()
    assert list(state) == list(own)  # same names, same order
    assert len(state) == 312 and sum(v.numel() for v in state.values()) == 993_485
    assert all(state[k].shape == own[k].shape for k in own)


def test_wrong_keys_fail_naming_them(mn04_random, tmp_path):
    state = dict(mn04_random.model.net.state_dict())
    state["features.0.0.wieght"] = state.pop("features.0.0.weight")
    state["extra.bias"] = torch.zeros(3)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(Sp4scError) as err:
        EfficientATEncoder("mn04").load_checkpoint(bad)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg
    assert "missing keys features.0.0.weight" in msg
    assert "features.0.0.wieght" in msg and "extra.bias" in msg


def test_wrong_width_fails_naming_the_right_encoder(mn04_random, tmp_path):
    path = tmp_path / "mn04.pt"
    torch.save(mn04_random.model.net.state_dict(), path)
    with pytest.raises(Sp4scError, match="try --encoder efficientat_mn04"):
        EfficientATEncoder("mn10").load_checkpoint(path)
    # the same file loads into the right width, under a "model" entry and a "net." prefix too
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": {f"net.{k}": v for k, v in mn04_random.model.net.state_dict().items()}}, wrapped)
    loaded = EfficientATEncoder("mn04").load_checkpoint(wrapped)
    assert not loaded.random_init and not loaded.model.training
    wav = 0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded.embed(wav), mn04_random.embed(wav))


def test_registry_has_every_width():
    assert tuple(WIDTHS) == EFFICIENTAT_VARIANTS
    assert set(BUILTIN_ENCODERS) <= set(ENCODERS)
    for v in EFFICIENTAT_VARIANTS:
        bundle = ENCODERS[f"efficientat_{v}"]()
        assert bundle.name == f"efficientat_{v}" and bundle.dim == embedding_dim(WIDTHS[v])
        assert bundle.sample_rate == 32000 and bundle.n_logits == 527 and bundle.model is None


@pytest.mark.parametrize("variant, dim", [("mn01", 96), ("mn02", 192), ("mn04", 384), ("mn05", 480), ("mn10", 960)])
@pytest.mark.parametrize("batch, seconds", [(1, 0.5), (3, 1.3)])
def test_random_init_widths_shapes(variant, dim, batch, seconds):
    bundle = EfficientATEncoder(variant).build(random_init=True, seed=0)
    assert bundle.random_init and bundle.identity == "random-init-seed0"
    assert not bundle.model.training and not any(p.requires_grad for p in bundle.model.parameters())
    wav = 0.1 * torch.randn(batch, int(seconds * 32000), generator=torch.Generator().manual_seed(0))
    emb, logits = bundle.embed_with_logits(wav)
    assert emb.shape == (batch, dim) and logits.shape == (batch, 527)
    assert emb.dtype == logits.dtype == torch.float32 and torch.isfinite(emb).all() and torch.isfinite(logits).all()
    assert bundle.model.net.classifier[2].in_features == dim


def test_cpu_slices_equal_one_batch(mn04_random, monkeypatch):
    wav = 0.1 * torch.randn(5, 8000, generator=torch.Generator().manual_seed(2))
    whole_emb, whole_logits = mn04_random.embed_with_logits(wav)
    monkeypatch.setattr(mn04_random, "cpu_slice_samples", 16000)  # slices of 2 windows: 2 + 2 + 1
    emb, logits = mn04_random.embed_with_logits(wav)
    torch.testing.assert_close(emb, whole_emb, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits, whole_logits, rtol=0, atol=1e-6)


def test_too_short_window_refused(mn04_random):
    with pytest.raises(Sp4scError, match="too short"):
        mn04_random.embed(torch.zeros(1, 400))


# ----------------------------------------------------------------------------- probe embed
@pytest.fixture(scope="module")
def wav10(tmp_path_factory):
    """A 10 s and a 2.5 s noise file at 44.1 kHz (resampled to 32 kHz by the command)."""
    from sp4sc.frontend.audio import write_wav

    folder = tmp_path_factory.mktemp("embed")
    rng = np.random.default_rng(0)
    paths = []
    for name, seconds in (("ten.wav", 10.0), ("short.wav", 2.5)):
        write_wav(folder / name, (0.1 * rng.standard_normal(int(seconds * 44100))).astype(np.float32), 44100)
        paths.append(str(folder / name))
    return paths


# (dt, hop) -> windows of the 10 s and the 2.5 s file (the rule of sp4sc.probes.windows)
WINDOWS = {
    (1.0, None): [10, 3],  # 2.5 s: 2 whole windows + a 0.5 s tail (half a window: kept)
    (3.0, None): [3, 1],  # 10 s: the 1 s tail is dropped; 2.5 s: one padded window
    (10.0, None): [1, 1],
    (2.0, 1.0): [10, 2],  # starts 0..8 whole; the window at 9 s holds half a window: kept
}


@pytest.mark.parametrize("dt, hop", sorted(WINDOWS, key=str))
def test_probe_embed_window_counts_and_json(dt, hop, wav10, capsys):
    argv = ["probe", "embed", "--encoder", "efficientat_mn04", "--random-init", "--dt", str(dt), "--json", *wav10]
    if hop is not None:
        argv += ["--hop", str(hop)]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["encoder"] == "efficientat_mn04" and doc["dt"] == dt and doc["hop"] == (hop or dt)
    assert doc["files"] == wav10 and doc["random_init"] is True and "RANDOM-INIT" in doc["note"]
    assert doc["windows"] == WINDOWS[(dt, hop)]
    assert [len(e) for e in doc["embeddings"]] == WINDOWS[(dt, hop)]
    assert all(len(w) == 384 for e in doc["embeddings"] for w in e)
    assert "tags" not in doc


def test_probe_embed_npz_matches_json(wav10, tmp_path, capsys):
    out = tmp_path / "sub" / "emb.npz"
    argv = ["probe", "embed", "--encoder", "efficientat_mn04", "--random-init", "--dt", "2", "--json",
            "--out", str(out), *wav10]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [p.name for p in out.parent.iterdir()] == ["emb.npz"]  # no temporary left behind
    with np.load(out) as z:  # no pickle needed
        assert z["counts"].tolist() == [5, 1] and z["files"].tolist() == wav10
        assert z["embeddings"].shape == (6, 384) and z["embeddings"].dtype == np.float32
        assert z["logits"].shape == (6, 527)
        assert z["window_start_s"].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 0.0]
        assert str(z["encoder"]) == "efficientat_mn04" and str(z["weights"]) == "random-init-seed0"
        assert float(z["dt"]) == 2.0 and float(z["hop"]) == 2.0 and int(z["sample_rate"]) == 32000
        per_file = np.split(z["embeddings"], np.cumsum(z["counts"])[:-1])
    for got, want in zip(per_file, doc["embeddings"]):
        np.testing.assert_allclose(got, np.asarray(want, dtype=np.float32), rtol=0, atol=1e-6)


@pytest.mark.shared
def test_probe_embed_tags_real_weights(weights_dir, reference, tmp_path, capsys):
    files = [str(weights_dir / "inputs_32k" / c) for c in reference["clips"]]
    out = tmp_path / "tags.npz"
    argv = ["probe", "embed", "--encoder", "efficientat_mn04", "--ckpt", str(weights_dir / CKPT_NAME),
            "--dt", "5", "--tags", "3", "--json", "--out", str(out), *files]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["windows"] == [1, 1, 1, 1] and doc["random_init"] is False and "note" not in doc
    assert doc["weights"].startswith("sha256:899a8c62")
    tags = doc["tags"]
    assert [len(t) for t in tags] == [3, 3, 3, 3]
    assert all(t[0]["prob"] >= t[1]["prob"] >= t[2]["prob"] for t in tags)
    # one 5 s window per clip: the tag is the reference logits' top class
    for t, logits in zip(tags, reference["logits"]):
        assert t[0]["index"] == int(np.argmax(logits))
        assert t[0]["prob"] == pytest.approx(1 / (1 + np.exp(-max(logits))), abs=1e-4)
    assert tags[0][0]["label"] == "Animal" and "Dog" in [t["label"] for t in tags[0]]  # ESC-10 class 0: dog
    # the embedding of the single window is the reference embedding of the clip
    np.testing.assert_allclose(np.asarray(doc["embeddings"][0][0]), reference["embedding"][0], atol=1e-4)
    with np.load(out) as z:
        assert z["tag_labels"][0].tolist() == [t["label"] for t in tags[0]] and z["tag_index"].shape == (4, 3)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--random-init", "/nonexistent/a.wav"], "/nonexistent/a.wav: audio file not found"),
        (["--random-init", "--out", "x.txt", "F"], "--out x.txt: must end in .npz"),
        (["--random-init", "--dt", "0.01", "F"], "--dt 0.01: efficientat_mn04 needs windows of at least"),
        (["--random-init", "--hop", "0", "F"], "--hop 0: must be positive"),
        (["--random-init", "--tags", "3", "F"], "--labels"),
        (["--random-init", "--tags", "600", "--labels", "x.csv", "F"], "--tags 600: choose K between 1 and 527"),
        (["--ckpt", "/nonexistent/x.pt", "F"], "checkpoint not found"),
        (["--random-init", "--tags", "2", "--labels", "LABELS", "F"], "LABELS"),
    ],
)
def test_probe_embed_bad_input_one_line(extra, message, wav10, tmp_path, capsys):
    bad_labels = tmp_path / "labels.csv"
    bad_labels.write_text("index,mid,display_name\n0,/m/x,Speech\n")
    extra = [wav10[1] if a == "F" else str(bad_labels) if a == "LABELS" else a for a in extra]
    message = message.replace("LABELS", str(bad_labels))
    out = tmp_path / "keep.npz"
    assert main(["probe", "embed", "--encoder", "efficientat_mn04", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_probe_embed_tags_need_an_audioset_head(wav10, capsys):
    argv = ["probe", "embed", "--encoder", "passt", "--random-init", "--tags", "2", wav10[1]]
    assert main(argv) == 2  # refused before the 86 M-parameter PaSST is built
    assert "no AudioSet head" in capsys.readouterr().err


# ----------------------------------------------------------------------------- sweep
@pytest.mark.slow
@pytest.mark.shared
def test_sweep_accepts_efficientat(weights_dir, esc10_root, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = [
        "probe", "sweep", "--encoder", "efficientat_mn04", "--ckpt", str(weights_dir / CKPT_NAME),
        "--dataset", "esc", "--root", str(esc10_root), "--dt", "1", "5", "--max-clips", "20",
        "--seeds", "1", "--epochs", "3", "--no-cache", "--cost-windows", "2", "--device", "cpu",
        "--out", str(out), "--json",
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["encoder"] == "efficientat_mn04" and result["random_init"] is False
    assert result["encoder_params"] == 983_599  # parameters; the 993,485 stored values include BN statistics
    assert [c["dt"] for c in result["cost"]] == [1.0, 5.0]
    assert all(c["windows_per_s"] > 0 and c["gflops_per_window"] > 0 for c in result["cost"])
    assert (out / "results.json").exists() and (out / "table.md").exists()
