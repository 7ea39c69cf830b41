"""CP-Mobile: the DCASE 2024 Task 1 baseline's structure and counts, variants, folding, export and the edge runner."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sp4sc.errors import Sp4scError
from sp4sc.models import create_model, model_entry
from sp4sc.models.cpmobile import CPMobile, make_divisible
from sp4sc.models.fold import fold_batchnorm

# Every convolution of CPJKU/dcase2024_task1_baseline models/baseline.py (get_model with
# run_training.py's defaults: base 32, multiplier 1.8, expansion 2.1, blocks (3, 2, 1),
# strides b2 (1, 1), b3 (1, 2), b4 (2, 1)), in order:
# (in, out, kernel, stride on (mel, time), groups, output (channels, mels, frames) for 256 x 65).
BASELINE_CONVS = [
    (1, 8, 3, (2, 2), 1, (8, 128, 33)),  # in_c[0]
    (8, 32, 3, (2, 2), 1, (32, 64, 17)),  # in_c[1]
    (32, 64, 1, (1, 1), 1, (64, 64, 17)), (64, 64, 3, (1, 1), 64, (64, 64, 17)), (64, 32, 1, (1, 1), 1, (32, 64, 17)),  # b1
    (32, 64, 1, (1, 1), 1, (64, 64, 17)), (64, 64, 3, (1, 1), 64, (64, 64, 17)), (64, 32, 1, (1, 1), 1, (32, 64, 17)),  # b2
    (32, 64, 1, (1, 1), 1, (64, 64, 17)), (64, 64, 3, (1, 2), 64, (64, 64, 9)), (64, 32, 1, (1, 1), 1, (32, 64, 9)),  # b3
    (32, 64, 1, (1, 1), 1, (64, 64, 9)), (64, 64, 3, (2, 1), 64, (64, 32, 9)), (64, 56, 1, (1, 1), 1, (56, 32, 9)),  # b4
    (56, 120, 1, (1, 1), 1, (120, 32, 9)), (120, 120, 3, (1, 1), 120, (120, 32, 9)), (120, 56, 1, (1, 1), 1, (56, 32, 9)),  # b5
    (56, 120, 1, (1, 1), 1, (120, 32, 9)), (120, 120, 3, (1, 1), 120, (120, 32, 9)), (120, 104, 1, (1, 1), 1, (104, 32, 9)),  # b6
    (104, 10, 1, (1, 1), 1, (10, 32, 9)),  # feed_forward[0]
]


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _convs_with_outputs(model: torch.nn.Module, x: torch.Tensor) -> list[tuple]:
    found = []

    def hook(mod, inputs, output):
        found.append((mod.in_channels, mod.out_channels, mod.kernel_size[0], tuple(mod.stride), mod.groups,
                      tuple(output.shape[1:]), mod.kernel_size, mod.padding, mod.bias is None))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return found


def test_baseline_has_61148_parameters_and_the_baselines_convolutions():
    m = create_model("cpmobile")
    assert _n_params(m) == 61_148
    assert model_entry("cpmobile").frontend == "dcase2024"
    convs = _convs_with_outputs(m, torch.randn(1, 1, 65, 256) * 10 - 40)
    assert [c[:6] for c in convs] == BASELINE_CONVS
    for _, _, k, _, _, _, kernel, padding, no_bias in convs:
        assert kernel == (k, k) and padding == ((k - 1) // 2,) * 2 and no_bias  # BN follows every conv
    # the baseline's state-dict names (torchvision Conv2dNormActivation: 0 = conv, 1 = BN)
    keys = set(m.state_dict())
    assert {"in_c.0.0.weight", "in_c.1.1.running_var", "stages.s1.b3.block.1.0.weight",
            "stages.s3.b6.block.2.1.bias", "feed_forward.0.weight", "feed_forward.1.num_batches_tracked"} <= keys
    assert not any(k.endswith(".0.bias") for k in keys)  # no conv bias before folding


def test_shortcuts_where_the_baseline_has_them():
    m = create_model("cpmobile")
    blocks = {name: b for stage in m.stages for name, b in stage.named_children()}
    assert list(blocks) == ["b1", "b2", "b3", "b4", "b5", "b6"]
    assert [b.use_shortcut for b in blocks.values()] == [True, True, True, False, True, False]
    pool = blocks["b3"].shortcut
    assert isinstance(pool, torch.nn.AvgPool2d) and pool.kernel_size == 3 and pool.stride == (1, 2)
    assert pool.padding == 1 and pool.count_include_pad
    assert isinstance(blocks["b1"].shortcut, torch.nn.Identity) and isinstance(blocks["b5"].shortcut, torch.nn.Identity)


def test_make_divisible_is_mobilenets_rounding():
    assert [make_divisible(v) for v in (32, 57.6, 103.68, 67.2, 117.6, 4, 13)] == [32, 56, 104, 64, 120, 8, 16]
    assert make_divisible(41.0) == 40 and make_divisible(36.0) == 40  # rounds half up, never 10 % down


def test_variants_fit_their_budgets():
    sizes = {n: _n_params(create_model(n)) for n in ("cpmobile_w16", "cpmobile_w24", "cpmobile", "cpmobile_128k")}
    assert sizes == {"cpmobile_w16": 18_624, "cpmobile_w24": 35_062, "cpmobile": 61_148, "cpmobile_128k": 126_940}
    # 50 classes (ESC-50) still fit the DCASE 2021 budget of 65,536 parameters, unfolded and folded
    m50 = create_model("cpmobile", n_classes=50, n_mels=128)
    assert _n_params(m50) == 65_388 <= 65_536
    assert _n_params(fold_batchnorm(m50)) == 63_994
    # 128 kB at int8 (the DCASE 2022-2025 limit, 128,000 bytes), folded or not
    assert 65_536 < _n_params(fold_batchnorm(create_model("cpmobile_128k"))) <= sizes["cpmobile_128k"] <= 128_000


def test_input_is_transposed_to_mel_time_and_any_length_works():
    torch.manual_seed(0)
    m = create_model("cpmobile", n_mels=64).eval()
    for frames in (1, 2, 7, 65):
        assert m(torch.randn(2, 1, frames, 64)).shape == (2, 10)
    # time strides act on the frame axis: b3 halves frames and keeps mel bins
    convs = _convs_with_outputs(m, torch.randn(1, 1, 65, 64))
    assert convs[9][5] == (64, 16, 9)
    with pytest.raises(Sp4scError, match=r"\(batch, 1, frames, 64\)"):
        m(torch.zeros(1, 1, 65, 256))
    with pytest.raises(Sp4scError, match="strides for unknown blocks"):
        CPMobile(strides={"b9": (2, 2)})


def test_fold_each_block_and_the_head_exactly():
    torch.manual_seed(0)
    m = create_model("cpmobile", n_mels=32).double()
    g = torch.Generator().manual_seed(3)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1)
            mod.running_var.copy_(torch.rand(n, generator=g, dtype=torch.float64) + 1e-4)
            mod.weight.data.copy_(torch.rand(n, generator=g, dtype=torch.float64) + 0.5)
            mod.bias.data.copy_(torch.rand(n, generator=g, dtype=torch.float64) - 0.5)
    m.eval()
    f = fold_batchnorm(m)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in f.modules())
    assert _n_params(f) == _n_params(m) - sum(x.num_features for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d))
    x = torch.randn(3, 1, 40, 32, dtype=torch.float64) * 15 - 40
    with torch.no_grad():
        torch.testing.assert_close(f(x), m(x), rtol=1e-9, atol=1e-9)
        # block by block: each block's fuse() leaves the block's function unchanged
        h = m.in_c(x.transpose(2, 3) * 0.1)
        for block, fblock in zip(m.blocks, f.blocks):
            torch.testing.assert_close(fblock(h), block(h), rtol=1e-9, atol=1e-9)
            h = block(h)
    with pytest.raises(Sp4scError, match="already folded"):
        f.fuse()


def test_edge_runner_equals_sp4sc_infer_for_cpmobile(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_edge import run_edge, write_clips
    from test_onnx_export import SHAPES, make_model_file

    from sp4sc.cli import main as cli_main
    from sp4sc.deploy import onnx_export
    from sp4sc.models.checkpoint import load_model

    ckpt = make_model_file(tmp_path / "cpm.pt", "cpmobile")
    out = tmp_path / "export"
    report = onnx_export.export_onnx(load_model(ckpt), out, waveform=True, fp16=True, parity_shapes=SHAPES)
    assert report["parity"]["variants"]["fp32"]["passed"] and report["parity"]["variants"]["fp32"]["max_abs_prob"] <= 1e-5
    assert report["parity"]["variants"]["fp16"]["passed"]
    files = write_clips(tmp_path / "clips")
    assert cli_main(["infer", "--ckpt", str(ckpt), "--json", "--pad", "silence", *files]) == 0
    ref = json.loads(capsys.readouterr().out)
    for model in ("model.onnx", "model_waveform.onnx"):
        res = run_edge("--model", str(out / model), "--json", "--pad", "silence", *files)
        assert res.returncode == 0, res.stderr
        assert np.abs(np.array(json.loads(res.stdout)["probs"]) - np.array(ref["probs"])).max() <= 1e-4, model


# CPJKU/dcase2024_task1_baseline README, "Baseline Complexity": (layer, input shape, params, MACs), one row per
# Conv2dNormActivation (conv + BN [+ ReLU]) and per head layer; totals 61,148 and 29,419,156.
README_TABLE = [
    ("in_c.0", [1, 1, 256, 65], 88, 304_144),
    ("in_c.1", [1, 8, 128, 33], 2_368, 2_506_816),
    *[row for b in ("b1", "b2") for row in (
        (f"stages.s1.{b}.block.0", [1, 32, 64, 17], 2_176, 2_228_352),
        (f"stages.s1.{b}.block.1", [1, 64, 64, 17], 704, 626_816),
        (f"stages.s1.{b}.block.2", [1, 64, 64, 17], 2_112, 2_228_288))],
    ("stages.s1.b3.block.0", [1, 32, 64, 17], 2_176, 2_228_352),
    ("stages.s1.b3.block.1", [1, 64, 64, 17], 704, 331_904),
    ("stages.s1.b3.block.2", [1, 64, 64, 9], 2_112, 1_179_712),
    ("stages.s2.b4.block.0", [1, 32, 64, 9], 2_176, 1_179_776),
    ("stages.s2.b4.block.1", [1, 64, 64, 9], 704, 166_016),
    ("stages.s2.b4.block.2", [1, 64, 32, 9], 3_696, 1_032_304),
    ("stages.s2.b5.block.0", [1, 56, 32, 9], 6_960, 1_935_600),
    ("stages.s2.b5.block.1", [1, 120, 32, 9], 1_320, 311_280),
    ("stages.s2.b5.block.2", [1, 120, 32, 9], 6_832, 1_935_472),
    ("stages.s3.b6.block.0", [1, 56, 32, 9], 6_960, 1_935_600),
    ("stages.s3.b6.block.1", [1, 120, 32, 9], 1_320, 311_280),
    ("stages.s3.b6.block.2", [1, 120, 32, 9], 12_688, 3_594_448),
    ("feed_forward.0", [1, 104, 32, 9], 1_040, 299_520),
    ("feed_forward.1", [1, 10, 32, 9], 20, 20),
]


def test_nessi_table_equals_the_baseline_readme():
    from sp4sc.deploy.complexity import macs_nessi, macs_torchinfo, nessi_table

    m = create_model("cpmobile")
    rows = nessi_table(m, (1, 1, 65, 256))
    grouped: dict[str, list] = {}
    for row in rows:  # conv + BN of one Conv2dNormActivation -> one README row
        key = row["name"] if row["name"].startswith("feed_forward") else row["name"].rsplit(".", 1)[0]
        g = grouped.setdefault(key, [row["input_shape"], 0, 0])
        g[1] += row["params"]
        g[2] += row["macs"]
    assert [(k, *v) for k, v in grouped.items()] == README_TABLE
    assert sum(r[2] for r in README_TABLE) == 61_148 and sum(r[3] for r in README_TABLE) == 29_419_156
    assert macs_nessi(m, (1, 1, 65, 256)) == 29_419_156
    # NeSsi is torchinfo's mult-add count of the unfolded model (the baseline calls torchinfo.summary)
    assert macs_torchinfo(m, (1, 1, 65, 256)) == 29_419_156
    # a depthwise conv is charged its 3x3 weights per channel and output position, BN 2 x channels (README example)
    b3 = [r for r in rows if r["name"].startswith("stages.s1.b3.block.1.")]
    assert [(r["type"], r["macs"]) for r in b3] == [("Conv2d", 1 * 64 * 3 * 3 * 64 * 9), ("BatchNorm2d", 128)]


def test_complexity_command_prints_both_totals(capsys):
    from sp4sc.cli import main as cli_main

    assert cli_main(["complexity", "--model", "cpmobile", "--duration", "1"]) == 0
    out = capsys.readouterr().out
    assert "unfolded            61,148 parameters" in out
    nessi = [ln for ln in out.splitlines() if "NeSsi (DCASE 2022-2025) 29,419,156" in ln]
    assert len(nessi) == 1 and "unfolded model" in nessi[0]
    assert "thop 29,437,770" in out and "torchinfo 30,216,768" in out and "folded model" in out  # labelled beside it
    assert cli_main(["complexity", "--model", "cpmobile", "--duration", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["params_unfolded"], report["macs_nessi"], report["macs_1s_nessi"]) == (61_148, 29_419_156, 29_419_156)
    assert report["input_shape"] == [1, 1, 65, 256] and report["nessi_model"] == "unfolded"


def test_submission_package_for_cpmobile_passes_the_validator(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import yaml
    from test_onnx_export import make_model_file
    from test_submission import LABEL, small_eval_root

    from sp4sc.challenge.submission import REPO_TEMPLATE
    from sp4sc.challenge.validate import validate_submission
    from sp4sc.cli import main as cli_main
    from sp4sc.data.toy import ensure_toy_dataset

    toy = ensure_toy_dataset(n_per_class_device=2, duration=2.0)  # the shared cache copy
    evaluation = small_eval_root(toy, tmp_path / "eval")
    t = yaml.safe_load(REPO_TEMPLATE.read_text())
    a = t["submission"]["authors"][0]
    a.update(lastname="Doe", firstname="Jane", email="jane.doe@acme.example")
    a["affiliation"].update(abbreviation="ACME", institute="Acme Labs")
    template = tmp_path / "meta_template.yaml"
    template.write_text(yaml.safe_dump(t, sort_keys=False))
    ckpt = make_model_file(tmp_path / "cpm.pt", "cpmobile")
    out = tmp_path / "subs"
    assert cli_main(["submit", "--ckpt", str(ckpt), "--eval-root", str(evaluation), "--label", LABEL,
                     "--out", str(out), "--template", str(template)]) == 0
    report = validate_submission(out / LABEL, eval_root=evaluation)
    assert report.ok, report
    meta = yaml.safe_load((out / LABEL / f"{LABEL}.meta.yaml").read_text())
    assert "cpmobile" in json.dumps(meta)
