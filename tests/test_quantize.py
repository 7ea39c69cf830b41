"""Static int8 export (issue 30): calibration choice, QDQ graphs for every family, refusal, edge runner, bytes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from sp4sc.cli import main as cli_main
from sp4sc.data.index import Clip
from sp4sc.deploy import onnx_export, quantize
from sp4sc.errors import Sp4scError
from sp4sc.models import list_models
from sp4sc.models.checkpoint import load_model
from sp4sc.models.fold import fold_batchnorm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cv import make_esc_toy  # noqa: E402
from test_edge import run_edge  # noqa: E402
from test_onnx_export import SHAPES, TINY, make_model_file  # noqa: E402


def _clips(per_class=(7, 3, 12), order=None):
    clips = [Clip(path=f"audio/{k}-{i}.wav", scene=f"c{k}", label=k) for k, n in enumerate(per_class) for i in range(n)]
    return [clips[i] for i in order] if order is not None else clips


def test_calibration_choice_is_balanced_and_deterministic():
    clips = _clips()
    chosen = quantize.calibration_clips(clips, 9)
    counts = np.bincount([c.label for c in chosen], minlength=3)
    assert counts.tolist() == [3, 3, 3]
    # the order the metadata lists clips in does not matter; the seed does
    shuffled = _clips(order=np.random.default_rng(0).permutation(len(clips)))
    assert [c.path for c in quantize.calibration_clips(shuffled, 9)] == [c.path for c in chosen]
    assert [c.path for c in quantize.calibration_clips(clips, 9, seed=1)] != [c.path for c in chosen]
    # a class with fewer clips gives all it has; the others fill up the rest
    more = quantize.calibration_clips(clips, 16)
    assert np.bincount([c.label for c in more], minlength=3).tolist() == [7, 3, 6]
    assert len(quantize.calibration_clips(clips, 1000)) == len(clips)
    with pytest.raises(Sp4scError, match="--calib: must be at least 1"):
        quantize.calibration_clips(clips, 0)


def _calib(loaded, n=12, seed=5):
    return onnx_export.parity_inputs(TINY.n_mels, [(n, TINY.n_frames)], seed=seed, model=fold_batchnorm(loaded.model))[0]


def test_quantisation_is_deterministic(tmp_path):
    loaded = load_model(make_model_file(tmp_path / "m.pt"))
    proto = onnx_export.to_onnx(onnx_export.deploy_model(fold_batchnorm(loaded.model)), TINY.n_mels, 32)
    a = quantize.quantize_static_int8(proto, _calib(loaded)).SerializeToString()
    b = quantize.quantize_static_int8(proto, _calib(loaded)).SerializeToString()
    c = quantize.quantize_static_int8(proto, _calib(loaded, seed=6)).SerializeToString()
    assert a == b and a != c


@pytest.mark.parametrize("name", list_models())
def test_every_family_exports_static_int8(name, tmp_path):
    loaded = load_model(make_model_file(tmp_path / f"{name}.pt", name))
    calib = _calib(loaded)
    report = onnx_export.export_onnx(loaded, tmp_path / "out", int8=True, no_budget=True, parity_shapes=SHAPES,
                                     calib=calib, eval_set=(calib[:6], None))
    proto = onnx.load(tmp_path / "out" / "model_int8.onnx")
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ
    # 2x2 stride-2 average pools became depthwise convs (other pools, e.g. CP-Mobile's, stay)
    pools = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
             for n in proto.graph.node if n.op_type == "AveragePool"]
    assert not [p for p in pools if list(p.get("kernel_shape", [])) == [2, 2] and list(p.get("strides", [])) == [2, 2]]
    weights = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer]
    conv_w = [w for w in weights if w.dtype == np.int8 and w.ndim == 4]
    assert conv_w and all(w.dtype == np.int8 for w in conv_w)
    # per-channel scales: a conv weight's DequantizeLinear has one scale per output channel
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    per_channel = [inits[n.input[1]].size for n in proto.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4]
    assert per_channel and all(s > 1 for s in per_channel)
    meta = onnx_export.read_metadata(proto)
    assert meta["precision"] == "int8" and meta["quantization"] == "static-qdq" and meta["calibration_clips"] == "12"
    v = report["parity"]["variants"]["int8"]
    assert v["passed"] is None and v["mean_abs_prob"] < 0.05  # random weights: near-uniform probs, top-1 is noise
    assert v["clips"]["clips"] == 6 and "accuracy_int8" not in v["clips"]
    # what the file stores: every conv / linear weight int8 (SP4SC's plus kernels with their zeros, the pools'
    # 1/4 kernels: at least the model's count), every bias int32 (exactly the model's)
    stored, rule = v["stored_bytes"], report["complexity"]["int8_bytes"]
    assert stored["int8_weights"] >= rule["int8_weights"] and stored["int32_biases"] == rule["int32_biases"]
    # the logits are float all the way from the last layer (a float-output linear layer or float pooling):
    # not rounded to int8 steps
    producers = {o: n for n in proto.graph.node for o in n.output}
    last = producers["logits"]
    while last.op_type in ("Cast", "Identity"):
        last = producers[last.input[0]]
    assert last.op_type != "DequantizeLinear"


def test_int8_export_refused_without_calibration(tmp_path, capsys):
    ckpt = make_model_file(tmp_path / "m.pt")
    with pytest.raises(Sp4scError, match="needs calibration data"):
        onnx_export.export_onnx(load_model(ckpt), tmp_path / "x", int8=True)
    assert cli_main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "out"), "--int8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--int8: static int8 quantisation needs calibration data" in err
    assert "--calib-data" in err and not (tmp_path / "out").exists()


def test_cli_int8_on_esc_layout_and_edge_runner(tmp_path, capsys):
    """`sp4sc export --int8 --calib-data` on an ESC-layout folder; the edge runner (no torch) runs the int8 file."""
    data = make_esc_toy(tmp_path / "esc", folds=3, per_class=3)
    ckpt = make_model_file(tmp_path / "m.pt", cfg=TINY.replace(duration=0.5))
    out = tmp_path / "out"
    assert cli_main(["export", "--ckpt", str(ckpt), "--out", str(out), "--int8", "--calib-data", str(data),
                     "--calib-dataset", "esc", "--calib-fold", "2", "--calib", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    v = report["parity"]["variants"]["int8"]
    assert v["calibration_clips"] == 5 and v["clips"]["clips"] == 6  # fold 2: 2 classes x 3 clips
    files = [str(p) for p in sorted((data / "audio").glob("2-*.wav"))]
    res = run_edge("--model", str(out / "model_int8.onnx"), "--json", *files)
    assert res.returncode == 0, res.stderr
    probs8 = np.array(json.loads(res.stdout)["probs"])
    res32 = run_edge("--model", str(out / "model.onnx"), "--json", *files)
    probs32 = np.array(json.loads(res32.stdout)["probs"])
    assert probs8.shape == probs32.shape == (6, 10)
    np.testing.assert_allclose(probs8.sum(1), 1.0, atol=1e-4)
    assert np.abs(probs8 - probs32).mean() < 0.05 and not np.array_equal(probs8, probs32)  # quantised, and close
    # `sp4sc infer --onnx` runs the same int8 file (library front end): the same probabilities to front-end rounding
    assert cli_main(["infer", "--onnx", str(out / "model_int8.onnx"), "--json", *files]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["files"] == files and len(doc["classes"]) == 10
    assert np.abs(np.array(doc["probs"]) - probs8).max() < 2e-3


def test_untrained_model_with_equal_biases_is_quantised_everywhere():
    """The exporter shares equal initializers (an untrained model's zero biases); every conv is still int8."""
    from sp4sc.models import create_model

    torch.manual_seed(0)
    folded = fold_batchnorm(create_model("sp4sc_w32", n_mels=TINY.n_mels).eval())  # fresh BN: all-zero biases
    proto = onnx_export.to_onnx(onnx_export.deploy_model(folded), TINY.n_mels, 32)
    calib = onnx_export.parity_inputs(TINY.n_mels, [(8, 63)], model=folded)[0]
    q = quantize.quantize_static_int8(proto, calib)
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert len(convs) >= 8 and all(producers.get(n.input[1]) == "DequantizeLinear" for n in convs)
    assert all(producers.get(n.input[2]) == "DequantizeLinear" for n in convs if len(n.input) > 2)


@pytest.mark.parametrize("name", ["cnn6", "sp4sc"])
def test_int8_graph_forms_are_the_same_function(name, tmp_path):
    loaded = load_model(make_model_file(tmp_path / "m.pt", name))
    proto = onnx_export.to_onnx(onnx_export.deploy_model(fold_batchnorm(loaded.model)), TINY.n_mels, 32)
    swapped = quantize.first_conv_as_taps(quantize.pool_as_depthwise(proto))
    ops = [n.op_type for n in swapped.graph.node]
    assert "AveragePool" not in ops  # pools as depthwise convs
    # SP4SC's merged first block: a plus-shaped 5x5 kernel, 5 distinct taps; CNN6's dense 5x5 stays a conv
    assert ops.count("Slice") == {"sp4sc": 5, "cnn6": 0}[name]
    x = onnx_export.parity_inputs(TINY.n_mels, [(2, 45)], seed=3)[0]
    a = onnx_export.ort_session(proto).run(["logits"], {"logmel": x})[0]
    b = onnx_export.ort_session(swapped).run(["logits"], {"logmel": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_complexity_max_bytes_applies_to_int8_as_stored(capsys):
    # SP4SC: 62,474 parameters; stored at int8 with int32 biases and per-channel scales: 71,696 bytes
    assert cli_main(["complexity", "--model", "sp4sc", "--no-macs", "--precision", "int8", "--max-bytes", "72000"]) == 0
    assert "71,696 (70.0 KB as stored" in capsys.readouterr().out
    assert cli_main(["complexity", "--model", "sp4sc", "--no-macs", "--precision", "int8", "--max-bytes", "70000"]) == 3
    assert "71,696 bytes at int8 (70.0 KB) > limit 70,000" in capsys.readouterr().err


def test_submit_int8_ships_the_int8_model_and_states_the_bit_width(tmp_path, capsys):
    import yaml

    from test_submission import small_eval_root, tiny_model_file

    from sp4sc.data.toy import ensure_toy_dataset
    from sp4sc.deploy.complexity import complexity_report
    from sp4sc.deploy.onnx_infer import predict_files_onnx

    toy = ensure_toy_dataset(n_per_class_device=2, duration=2.0)
    ev = small_eval_root(toy, tmp_path / "eval")
    ckpt = tiny_model_file(tmp_path / "tiny.pt")
    argv = ["submit", "--ckpt", str(ckpt), "--eval-root", str(ev), "--label", "Doe_ACME_task1a_1", "--out",
            str(tmp_path / "subs"), "--precision", "int8", "--no-budget"]
    # int8 without calibration data: one line naming the fix
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--precision int8: static int8 quantisation needs calibration data" in err
    assert cli_main(argv + ["--dev-root", str(toy)]) == 0
    pkg = tmp_path / "subs" / "Doe_ACME_task1a_1"
    assert (pkg / "model_int8.onnx").is_file()
    meta = yaml.safe_load((pkg / "Doe_ACME_task1a_1.meta.yaml").read_text())
    text = json.dumps(meta)
    assert '"weight_bits": 8' in text and "static int8" in text
    loaded = load_model(ckpt)
    stored = complexity_report(loaded.model, loaded.frontend, count_macs=False)["bytes_int8"]
    assert abs(meta["system"]["complexity"]["model_size"] - stored / 1024) < 0.01
    # the rows are the int8 model's predictions
    rows = [line.split("\t") for line in (pkg / "Doe_ACME_task1a_1.output.csv").read_text().splitlines()[1:]]
    from sp4sc.data.index import load_index

    files = [str(ev / c.path) for c in load_index("tau2021eval", ev).split("test")]
    probs, classes = predict_files_onnx(pkg / "model_int8.onnx", files)
    assert [r[1] for r in rows] == [classes[k] for k in probs.argmax(1)]


def test_bench_infer_reports_int8_against_fp32_per_thread_count():
    from sp4sc.benchmarks.infer import format_table, run_bench

    res = run_bench("sp4sc_w32", "demo", repeats=1, threads=(1, 2), batches=(1,), unfolded=False, dynamic=True)
    rows = {(r["name"], r["threads"]): r for r in res["rows"]}
    for t in (1, 2):
        assert rows[("model: ONNX Runtime fp32", t)]["vs_fp32"] == 1.0
        for p in ("fp16", "int8", "int8-dynamic"):
            r = rows[(f"model: ONNX Runtime {p}", t)]
            assert r["vs_fp32"] == pytest.approx(r["ms_per_clip"] / rows[("model: ONNX Runtime fp32", t)]["ms_per_clip"])
        assert rows[("end to end: numpy front end + ONNX Runtime int8", t)]["vs_fp32"] > 0
    assert set(res["goal"]["int8_vs_fp32_by_threads"]) == {1, 2}
    table = format_table(res)
    assert "goal: static int8 model <= 0.5x fp32:" in table and "x at 2 threads" in table
    assert f"{rows[('model: ONNX Runtime int8', 1)]['vs_fp32']:.2f}x" in table


def test_bench_infer_without_batch_one_says_the_goals_are_not_checked():
    """The goals are batch-1 latencies: a --batch 2 run prints its rows and says so, instead of failing."""
    from sp4sc.benchmarks.infer import format_table, run_bench

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        res = run_bench("sp4sc_w32", "demo", repeats=1, threads=(1,), batches=(2,), unfolded=False, dynamic=False)
        # the bench sets torch's threads per row and gives the caller's back (a later in-process training
        # would otherwise run on 1 thread and sum in another order)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert res["rows"] and {r["batch"] for r in res["rows"]} == {2}
    assert res["goal"]["model_ms_batch1"] is None and not res["goal"]["int8_within_goal"]
    table = format_table(res)
    assert "model: ONNX Runtime int8" in table
    assert "goals (stated at batch 1) not checked" in table and "goal: static int8" not in table


def test_bench_infer_profile_splits_the_time_per_operator(capsys):
    """--profile: ONNX Runtime's per-node kernel times of the fp32 and the int8 graph, per operator type."""
    assert cli_main(["bench", "infer", "--profile", "--model", "sp4sc_w32", "--frontend", "demo",
                     "--threads", "1", "--repeats", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["precisions"]) == {"fp32", "int8"} and res["threads"] == 1
    for precision, p in res["precisions"].items():
        ops = {op for op, _, _ in p["by_op"]}
        assert ("QLinearConv" in ops) == (precision == "int8"), ops
        assert p["kernel_ms_per_call"] > 0
        assert sum(ms for _, ms, _ in p["by_op"]) == pytest.approx(p["kernel_ms_per_call"])
        assert sum(share for _, _, share in p["by_op"]) == pytest.approx(1.0)
        times = [ms for _, _, ms, _ in p["top_nodes"]]
        assert times == sorted(times, reverse=True) and len(times) <= 8
    from sp4sc.benchmarks.infer import format_profile

    table = format_profile(res)
    assert "int8: kernels" in table and "QLinearConv" in table and "slowest nodes" in table


def test_edge_front_end_threads_give_the_same_log_mels():
    """The frames split over worker threads (edge runner's --threads) compute what one thread does."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))
    import edge_frontend

    from sp4sc.frontend.features import frontend_preset

    cfg = frontend_preset("sp4asc", duration=5.0)  # 216 frames: 3 runs of 72
    wav = (0.1 * np.random.default_rng(2).standard_normal((2, cfg.n_samples))).astype(np.float32)
    one = edge_frontend.EdgeFrontEnd(cfg.to_dict(), workers=1)(wav)
    three = edge_frontend.EdgeFrontEnd(cfg.to_dict(), workers=3)
    assert three.workers == 3
    np.testing.assert_allclose(three(wav), one, rtol=0, atol=1e-4)
    assert three._pool is not None  # the threaded path ran


def test_int8_export_is_held_to_the_byte_limit_at_int8():
    # DCASE counts parameter bytes as stored: sp4sc_w84 (about 1.7x SP4SC's parameters) is over the
    # 65,536-parameter / 128 KB-at-fp16 limit, yet fits 128 KB at int8; sp4sc_w96 does not fit even at int8
    import tempfile

    from sp4sc.errors import BudgetExceeded

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wide = load_model(make_model_file(tmp / "w84.pt", "sp4sc_w84"))
        with pytest.raises(BudgetExceeded, match="parameters > limit 65,536"):
            onnx_export.export_onnx(wide, tmp / "fp", parity_shapes=SHAPES)
        calib = _calib(wide)
        report = onnx_export.export_onnx(wide, tmp / "q", int8=True, parity_shapes=SHAPES, calib=calib)
        assert report["over_budget"] is False and report["budget"]["precision"] == "int8"
        assert 65_536 < report["complexity"]["params"] and report["complexity"]["bytes_int8"] <= 131_072
        assert report["complexity"]["bytes_fp16"] > 131_072
        wider = load_model(make_model_file(tmp / "w96.pt", "sp4sc_w96"))
        with pytest.raises(BudgetExceeded, match="bytes at int8"):
            onnx_export.export_onnx(wider, tmp / "q96", int8=True, parity_shapes=SHAPES, calib=_calib(wider))
