"""``sp4sc complexity --rules dcase2021|dcase2024|dcase2025``: each edition's limits and counting, exit 3 when over."""

from __future__ import annotations

import json

import pytest

from sp4sc.cli import main
from sp4sc.deploy import complexity as cx
from sp4sc.errors import Sp4scError


def _needs_nessi():
    if getattr(cx, "macs_nessi", None) is None:
        pytest.fail("sp4sc.deploy.complexity.macs_nessi is missing: the DCASE 2022-2025 rules cannot count MACs")


def test_rules_table():
    r24, r25, r21 = cx.RULES["dcase2024"], cx.RULES["dcase2025"], cx.RULES["dcase2021"]
    # 128 kB as the organisers' checker has it (MAX_PARAMS_MEMORY = 128_000), 30 M MACs per 1 s, NeSsi counting
    assert (r24.max_bytes, r24.max_macs_per_s, r24.mac_counter, r24.max_params) == (128_000, 30_000_000, "nessi", None)
    assert r25.per_device and not r24.per_device and r25.max_bytes == 128_000
    assert (r21.max_params, r21.max_bytes, r21.max_macs_per_s) == (65_536, 131_072, None)
    with pytest.raises(Sp4scError, match="--rules 'dcase2023': unknown"):
        cx.edition_rules("dcase2023")


def test_apply_rules_with_a_stand_in_counter(monkeypatch):
    """The verdict logic alone: bytes at the chosen precision and the MAC count against the limits."""
    from sp4sc.frontend.features import frontend_preset
    from sp4sc.models import create_model

    model = create_model("sp4sc")
    report = cx.complexity_report(model, frontend_preset("dcase2024"), count_macs=False)
    monkeypatch.setattr(cx, "macs_nessi", lambda m, shape: 31_000_000, raising=False)
    v = cx.apply_rules(report, model, cx.RULES["dcase2024"])
    assert v["bytes"] == 62_474 * 2 and not v["within"] and v["over"] == [
        "31,000,000 MACs per 1 s clip (nessi) > limit 30,000,000"]
    monkeypatch.setattr(cx, "macs_nessi", lambda m, shape: 29_000_000, raising=False)
    v = cx.apply_rules(report, model, cx.RULES["dcase2024"], precision="fp32")
    assert v["bytes"] == 62_474 * 4 and v["over"] == ["249,896 bytes at fp32 > limit 128,000"]
    v = cx.apply_rules(report, model, cx.RULES["dcase2024"], precision="int8")
    assert v["within"] and v["macs_1s"] == 29_000_000
    assert "29,000,000 MACs <= 30,000,000? (96.7 % of the limit) ok" in cx.format_rules(v)


def test_cpmobile_passes_dcase2024(capsys):
    _needs_nessi()
    assert main(["complexity", "--rules", "dcase2024", "--model", "cpmobile", "--duration", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rules"]["within"] and out["rules"]["edition"] == "dcase2024"
    # the DCASE 2024 baseline's published figure (README "Baseline Complexity": 29,419,156 MACs, NeSsi)
    assert out["macs_1s_nessi"] == 29_419_156
    assert out["rules"]["bytes"] <= 128_000


def test_sp4sc_at_the_2024_front_end_states_macs_against_30m(capsys):
    _needs_nessi()
    code = main(["complexity", "--rules", "dcase2024", "--model", "sp4sc", "--frontend", "dcase2024", "--duration", "1"])
    out = capsys.readouterr().out
    assert "MACs 1 s (nessi)" in out and "<= 30,000,000?" in out and "% of the limit" in out
    assert "rules               dcase2024" in out and "bytes (fp16)        124,948 bytes <= 128,000?" in out
    assert code == (0 if "verdict             within" in out else 3)


def test_over_the_limit_exits_3(capsys):
    _needs_nessi()
    code = main(["complexity", "--rules", "dcase2025", "--model", "cpmobile", "--duration", "1", "--max-macs", "1M"])
    captured = capsys.readouterr()
    assert code == 3 and "over the dcase2025 limits" in captured.err and "MACs per 1 s clip (nessi)" in captured.err
    assert main(["complexity", "--rules", "dcase2024", "--model", "cpmobile", "--precision", "fp32"]) == 3
    assert "bytes at fp32 > limit 128,000" in capsys.readouterr().err


def test_dcase2021_is_unchanged(capsys):
    assert main(["complexity", "--model", "sp4sc", "--no-macs"]) == 0
    assert "within (65,536 params, 131,072 bytes at fp16)" in capsys.readouterr().out
    assert main(["complexity", "--rules", "dcase2021", "--model", "cnn6", "--no-macs"]) == 3
    # --precision int8 under dcase2021: the byte limit applies to the bytes as an int8 export stores them (issue 30)
    assert main(["complexity", "--model", "sp4sc", "--no-macs", "--precision", "int8"]) == 0
    assert "131,072 bytes at int8" in capsys.readouterr().out


@pytest.mark.parametrize("recipe, macs", [("tau2022_sp4sc", 19_429_002), ("tau2022_cpmobile", 29_419_156)])
def test_tau2022_recipes_fit_the_2024_limits(recipe, macs, capsys):
    _needs_nessi()
    assert main(["complexity", "--rules", "dcase2024", "--config", f"recipes/{recipe}.yaml", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["frontend"] == "dcase2024" and out["input_shape_1s"] == [1, 1, 65, 256]
    assert out["macs_1s_nessi"] == macs and out["rules"]["within"]
