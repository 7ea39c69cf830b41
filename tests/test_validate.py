"""The submission validator: a valid package passes; one test per rule shows its violation is caught.

The packages here are written with sp4sc.challenge.submission's own writers from random
probabilities (no model needed); tests/test_submission.py checks packages that
`sp4sc submit` writes from a real model on the toy dataset.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from sp4sc.cli import main
from sp4sc.constants import SCENES
from sp4sc.challenge.submission import REPO_TEMPLATE, build_meta, load_template, meta_yaml_text, write_output_csv
from sp4sc.challenge.validate import HEADER, label_problems, validate_submission

LABEL = "Doe_ACME_task1a_1"
N = 6


def _fill_template() -> dict:
    t = load_template(REPO_TEMPLATE)
    a = t["submission"]["authors"][0]
    a.update(lastname="Doe", firstname="Jane", email="jane.doe@acme.example")
    a["affiliation"].update(abbreviation="ACME", institute="Acme Labs")
    return t


def write_package(root: Path, label: str = LABEL, n: int = N, seed: int = 0) -> Path:
    """A valid package with random probabilities and full development results."""
    pkg = root / label
    pkg.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    write_output_csv(pkg / f"{label}.output.csv", [f"{i}.wav" for i in range(n)], rng.random((n, 10)))
    from sp4sc.challenge.submission import results_block

    y = rng.integers(0, 10, 40)
    devs = [["a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"][i % 9] for i in range(40)]
    y[:10] = np.arange(10)  # every class present
    p = rng.random((40, 10))
    results = results_block(y, p / p.sum(1, keepdims=True), devs)
    meta = build_meta(_fill_template(), label=label, sample_rate=44100, results=results,
                      complexity={"total_parameters": 62474, "total_parameters_non_zero": 62474, "model_size": 122.01953125})
    (pkg / f"{label}.meta.yaml").write_text(meta_yaml_text(meta), encoding="utf-8")
    return pkg


def write_eval_root(root: Path, n: int = N) -> Path:
    ev = root / "eval"
    (ev / "evaluation_setup").mkdir(parents=True)
    (ev / "evaluation_setup" / "fold1_test.csv").write_text(
        "filename\n" + "".join(f"audio/{i}.wav\n" for i in range(n)), encoding="utf-8")
    return ev


# ---------------------------------------------------------------- mutation helpers

def _csv(pkg: Path) -> Path:
    return next(pkg.glob("*.output.csv"))


def _meta(pkg: Path) -> Path:
    return next(pkg.glob("*.meta.yaml"))


def edit_row(pkg: Path, lineno: int, fn) -> None:
    path = _csv(pkg)
    lines = path.read_text().split("\n")
    fields = lines[lineno - 1].split("\t")
    lines[lineno - 1] = "\t".join(fn(fields))
    path.write_text("\n".join(lines))


def edit_meta(pkg: Path, fn) -> None:
    path = _meta(pkg)
    meta = yaml.safe_load(path.read_text())
    fn(meta)
    path.write_text(yaml.safe_dump(meta, sort_keys=False))


def rename_package(pkg: Path, new_label: str) -> Path:
    new = pkg.with_name(new_label)
    pkg.rename(new)
    for f in list(new.iterdir()):
        f.rename(new / f.name.replace(LABEL, new_label))
    return new


def _set(fields, i, v):
    fields[i] = v
    return fields


def _swap_header(fields):
    fields[2], fields[3] = fields[3], fields[2]
    return fields


def _range_row(fields):
    fields[2:] = ["1.5", "-0.5"] + ["0.0"] * 8
    return fields


def _scale_row(fields):
    fields[2:] = [repr(float(v) * 0.9) for v in fields[2:]]
    return fields


def _two_corresponding(m):
    second = json.loads(json.dumps(m["submission"]["authors"][0]))
    m["submission"]["authors"].append(second)


def _blank_line(pkg):
    path = _csv(pkg)
    lines = path.read_text().split("\n")
    lines.insert(3, "")
    path.write_text("\n".join(lines))


def _comma_csv(pkg):
    path = _csv(pkg)
    path.write_text(path.read_text().replace("\t", ","))


# rule id -> (mutation(pkg) -> pkg, expected line in the output CSV or None)
MUTATIONS = {
    "label-format (3 parts)": ("label-format", lambda p: rename_package(p, "Doe_ACME_task1a"), None),
    "label-format (task1b)": ("label-format", lambda p: rename_package(p, "Doe_ACME_task1b_1"), None),
    "label-format (index 5)": ("label-format", lambda p: rename_package(p, "Doe_ACME_task1a_5"), None),
    "label-mismatch (file prefix)": (
        "label-mismatch", lambda p: (_csv(p).rename(p / "Roe_ACME_task1a_1.output.csv"), p)[1], None),
    "label-mismatch (meta label)": (
        "label-mismatch", lambda p: (edit_meta(p, lambda m: m["submission"].update(label="Doe_ACME_task1a_2")), p)[1], None),
    "output-missing": ("output-missing", lambda p: (_csv(p).unlink(), p)[1], None),
    "output-header (column order)": ("output-header", lambda p: (edit_row(p, 1, _swap_header), p)[1], 1),
    "output-delimiter": ("output-delimiter", lambda p: (_comma_csv(p), p)[1], 1),
    "output-fields": ("output-fields", lambda p: (edit_row(p, 3, lambda f: f[:-1]), p)[1], 3),
    "output-blank-line": ("output-blank-line", lambda p: (_blank_line(p), p)[1], 4),
    "filename-extension": ("filename-extension", lambda p: (edit_row(p, 2, lambda f: _set(f, 0, "0.mp3")), p)[1], 2),
    "filename-path": ("filename-path", lambda p: (edit_row(p, 3, lambda f: _set(f, 0, "audio/1.wav")), p)[1], 3),
    "filename-duplicate": ("filename-duplicate", lambda p: (edit_row(p, 4, lambda f: _set(f, 0, "0.wav")), p)[1], 4),
    "scene-label": ("scene-label", lambda p: (edit_row(p, 5, lambda f: _set(f, 1, "beach")), p)[1], 5),
    "prob-float": ("prob-float", lambda p: (edit_row(p, 2, lambda f: _set(f, 4, "abc")), p)[1], 2),
    "prob-float (nan)": ("prob-float", lambda p: (edit_row(p, 2, lambda f: _set(f, 4, "nan")), p)[1], 2),
    "prob-range": ("prob-range", lambda p: (edit_row(p, 6, _range_row), p)[1], 6),
    "prob-sum": ("prob-sum", lambda p: (edit_row(p, 7, _scale_row), p)[1], 7),
    "meta-missing-file": ("meta-missing-file", lambda p: (_meta(p).unlink(), p)[1], None),
    "meta-yaml": ("meta-yaml", lambda p: (_meta(p).write_text("submission:\n  label: [unclosed\n"), p)[1], None),
    "meta-missing (submission.name)": ("meta-missing", lambda p: (edit_meta(p, lambda m: m["submission"].pop("name")), p)[1], None),
    "meta-missing (system.complexity)": ("meta-missing", lambda p: (edit_meta(p, lambda m: m["system"].pop("complexity")), p)[1], None),
    "meta-missing (device s3)": (
        "meta-missing",
        lambda p: (edit_meta(p, lambda m: m["results"]["development_dataset"]["device_wise"].pop("s3")), p)[1], None),
    "meta-type (total_parameters text)": (
        "meta-type", lambda p: (edit_meta(p, lambda m: m["system"]["complexity"].update(total_parameters="62k")), p)[1], None),
    "meta-type (total_parameters float)": (
        "meta-type", lambda p: (edit_meta(p, lambda m: m["system"]["complexity"].update(total_parameters=62474.0)), p)[1], None),
    "meta-type (class-wise value)": (
        "meta-type",
        lambda p: (edit_meta(p, lambda m: m["results"]["development_dataset"]["class_wise"]["bus"].update(logloss="low")), p)[1],
        None),
    "meta-range (accuracy as %)": (
        "meta-range",
        lambda p: (edit_meta(p, lambda m: m["results"]["development_dataset"]["overall"].update(accuracy=150.0)), p)[1], None),
    "meta-corresponding": ("meta-corresponding", lambda p: (edit_meta(p, _two_corresponding), p)[1], None),
    "meta-abbreviation": (
        "meta-abbreviation", lambda p: (edit_meta(p, lambda m: m["submission"].update(abbreviation="WayTooLongName")), p)[1], None),
}


@pytest.fixture
def pkg(tmp_path) -> Path:
    return write_package(tmp_path)


def test_valid_package_passes(pkg, tmp_path):
    report = validate_submission(pkg, eval_root=write_eval_root(tmp_path))
    assert report.ok, [str(v) for v in report.violations]
    assert report.rows == N and report.warnings == []


@pytest.mark.parametrize("case", list(MUTATIONS), ids=list(MUTATIONS))
def test_each_rule_catches_its_violation(pkg, case):
    rule, mutate, line = MUTATIONS[case]
    pkg = mutate(pkg)
    report = validate_submission(pkg)
    assert not report.ok
    hits = [v for v in report.violations if v.rule == rule]
    assert hits, f"{case}: expected rule {rule}, got {[str(v) for v in report.violations]}"
    if line is not None:
        assert any(v.line == line for v in hits), [str(v) for v in hits]
        assert all(v.file.endswith(".output.csv") for v in hits)


def test_eval_root_requires_exactly_the_listed_files(tmp_path):
    pkg = write_package(tmp_path, n=N)
    ev = tmp_path / "ev"
    (ev / "evaluation_setup").mkdir(parents=True)
    # lists 0..4 and 99: 5.wav is extra (line 7 of the output), 99.wav is missing
    (ev / "evaluation_setup" / "fold1_test.csv").write_text(
        "filename\n" + "".join(f"audio/{i}.wav\n" for i in [0, 1, 2, 3, 4, 99]))
    report = validate_submission(pkg, eval_root=ev)
    extra = [v for v in report.violations if v.rule == "eval-extra"]
    missing = [v for v in report.violations if v.rule == "eval-missing"]
    assert [(v.line, "5.wav" in v.message) for v in extra] == [(7, True)]
    assert len(missing) == 1 and "99.wav" in missing[0].message


def test_every_violation_is_reported_not_only_the_first(pkg):
    edit_row(pkg, 2, lambda f: _set(f, 1, "beach"))
    edit_row(pkg, 4, lambda f: _set(f, 0, "x.mp3"))
    edit_meta(pkg, lambda m: m["system"]["complexity"].update(total_parameters="many"))
    rules = {(v.rule, v.line) for v in validate_submission(pkg).violations}
    assert {("scene-label", 2), ("filename-extension", 4)} <= rules
    assert any(r == "meta-type" for r, _ in rules)


def test_meta_violation_names_its_yaml_line(pkg):
    edit_meta(pkg, lambda m: m["system"]["complexity"].update(total_parameters="62k"))
    text = _meta(pkg).read_text().splitlines()
    want = next(i for i, ln in enumerate(text, 1) if ln.strip().startswith("total_parameters:"))
    (v,) = [v for v in validate_submission(pkg).violations if v.rule == "meta-type"]
    assert v.line == want and v.file.endswith(".meta.yaml")


def test_scene_label_not_argmax_is_a_warning_or_strict_violation(pkg):
    def wrong_label(f):
        probs = [float(x) for x in f[2:]]
        f[1] = SCENES[int(np.argmin(probs))]
        return f

    edit_row(pkg, 3, wrong_label)
    loose = validate_submission(pkg, rows=N)
    assert loose.ok and [w.rule for w in loose.warnings] == ["argmax"] and loose.warnings[0].line == 3
    strict = validate_submission(pkg, strict=True, rows=N)
    assert [v.rule for v in strict.violations] == ["argmax"]


def test_sum_tolerance_is_configurable(pkg):
    # 4-decimal rounding passes the default 1e-3 tolerance but not submit's 1e-6
    edit_row(pkg, 2, lambda f: f[:2] + [f"{float(v):.4f}" for v in f[2:]])
    total = sum(float(v) for v in _csv(pkg).read_text().split("\n")[1].split("\t")[2:])
    assert abs(total - 1) > 1e-6  # random probabilities: rounding moved the sum
    assert validate_submission(pkg, rows=N).ok
    assert [v.rule for v in validate_submission(pkg, sum_tol=1e-6, rows=N).violations] == ["prob-sum"]


def test_accuracy_as_fraction_warns(pkg):
    def to_fraction(m):
        dev = m["results"]["development_dataset"]
        for block in [dev["overall"], *dev["class_wise"].values(), *dev["device_wise"].values()]:
            block["accuracy"] = block["accuracy"] / 100

    edit_meta(pkg, to_fraction)
    report = validate_submission(pkg, rows=N)
    assert report.ok and [w.rule for w in report.warnings] == ["accuracy-fraction"]


def test_empty_results_warn(tmp_path):
    pkg = write_package(tmp_path)
    edit_meta(pkg, lambda m: m["results"]["development_dataset"]["overall"].update(logloss=None, accuracy=None))
    report = validate_submission(pkg, rows=N)
    assert report.ok and [w.rule for w in report.warnings] == ["results-partial"]


@pytest.mark.parametrize("label,ok", [
    ("Doe_ACME_task1a_1", True), ("Doe_ACME_task1a_4", True), ("Doe_ACME_task1a_0", False),
    ("Doe_ACME_task1a_x", False), ("Doe_task1a_1", False), ("Doe_ACME_task1a_1_x", False), ("_ACME_task1a_1", False),
])
def test_label_format(label, ok):
    assert (label_problems(label) == []) is ok


def test_header_constant_matches_issue():
    assert HEADER == ("filename", "scene_label", "airport", "bus", "metro", "metro_station", "park",
                      "public_square", "shopping_mall", "street_pedestrian", "street_traffic", "tram")


def test_cli_exit_codes_and_lines(pkg, tmp_path, capsys):
    assert main(["validate-submission", str(pkg), "--eval-root", str(write_eval_root(tmp_path))]) == 0
    assert "OK" in capsys.readouterr().out
    edit_row(pkg, 2, lambda f: _set(f, 1, "beach"))
    edit_row(pkg, 3, lambda f: _set(f, 0, "a.mp3"))
    assert main(["validate-submission", str(pkg), "--rows", str(N)]) == 4
    out = capsys.readouterr().out.strip().splitlines()
    assert any(":2: " in ln and "[scene-label]" in ln for ln in out)
    assert any(":3: " in ln and "[filename-extension]" in ln for ln in out)
    assert out[-1].startswith("INVALID") and "2 violation(s)" in out[-1]
    assert main(["validate-submission", str(pkg), "--json", "--rows", str(N)]) == 4
    data = json.loads(capsys.readouterr().out)
    assert data["valid"] is False and {v["rule"] for v in data["violations"]} == {"scene-label", "filename-extension"}


def test_cli_bad_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["validate-submission", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a folder" in err[0]
    pkg = write_package(tmp_path)
    assert main(["validate-submission", str(pkg), "--eval-root", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "--eval-root" in err and "none" in err
    ev = write_eval_root(tmp_path)
    with open(ev / "evaluation_setup" / "fold1_test.csv", "a") as fh:
        fh.write("audio/0.wav\n")  # a duplicate row in the evaluation list itself
    assert main(["validate-submission", str(pkg), "--eval-root", str(ev)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fold1_test.csv" in err[0] and "duplicate" in err[0].lower()


def test_copy_of_package_under_other_name_fails(pkg, tmp_path):
    other = tmp_path / "copy" / "Doe_ACME_task1a_2"
    shutil.copytree(pkg, other)
    rules = {v.rule for v in validate_submission(other).violations}
    assert {"label-mismatch", "output-missing", "meta-missing-file"} <= rules


# ---------------------------------------------------------------- official vs stricter rules


def _audio_prefix(fields):
    fields[0] = "audio/" + fields[0]
    return fields


def _reorder_columns(pkg):
    """Swap the airport and bus columns in the header and in every row: same content, another order."""
    path = _csv(pkg)
    lines = path.read_text().rstrip("\n").split("\n")
    out = []
    for ln in lines:
        f = ln.split("\t")
        f[2], f[3] = f[3], f[2]
        out.append("\t".join(f))
    path.write_text("\n".join(out) + "\n")


def _drop(*keys):
    def fn(m):
        node = m
        for k in keys[:-1]:
            node = node[k]
        node.pop(keys[-1])
    return fn


# what the organisers' DCASE 2021 task 1 validator accepts and sp4sc (by default) does not
OFFICIALLY_ACCEPTED = {
    "audio/ in file names": (lambda p: edit_row(p, 3, _audio_prefix), "filename-path"),
    "columns in another order": (_reorder_columns, "output-header"),
    "total_parameters: 62474.0": (
        lambda p: edit_meta(p, lambda m: m["system"]["complexity"].update(total_parameters=62474.0)), "meta-type"),
    "no model_size": (lambda p: edit_meta(p, _drop("system", "complexity", "model_size")), "meta-missing"),
    "no complexity_management": (
        lambda p: edit_meta(p, _drop("system", "description", "complexity_management")), "meta-missing"),
    "no affiliation.institute": (
        lambda p: edit_meta(p, lambda m: m["submission"]["authors"][0]["affiliation"].pop("institute")), "meta-missing"),
    "NaN probability": (lambda p: edit_row(p, 2, lambda f: _set(f, 4, "nan")), "prob-float"),
    "probabilities not summing to 1": (lambda p: edit_row(p, 7, _scale_row), "prob-sum"),
}


@pytest.mark.parametrize("case", list(OFFICIALLY_ACCEPTED), ids=list(OFFICIALLY_ACCEPTED))
def test_official_mode_accepts_what_the_organisers_tool_accepts(pkg, case):
    mutate, rule = OFFICIALLY_ACCEPTED[case]
    mutate(pkg)
    official = validate_submission(pkg, official=True, rows=N)
    assert official.ok, [str(v) for v in official.violations]
    assert official.warnings == [] and official.official_only
    strict = validate_submission(pkg, rows=N)
    assert [v.rule for v in strict.violations] == [rule] and strict.stricter_only == strict.violations
    assert "stricter than the official validator" in str(strict.violations[0])
    assert strict.stricter_reasons()[rule]


def test_columns_in_another_order_are_read_by_name(pkg):
    _reorder_columns(pkg)
    edit_row(pkg, 4, lambda f: _set(f, 2, "x"))  # now the bus column, by the header
    hits = [v for v in validate_submission(pkg, official=True, rows=N).violations]
    assert [(v.rule, v.line) for v in hits] == [("prob-float", 4)] and "bus='x'" in hits[0].message


@pytest.mark.parametrize("case", ["scene-label", "filename-duplicate", "label-format (task1b)", "meta-corresponding",
                                  "meta-abbreviation", "output-fields", "meta-type (total_parameters text)",
                                  "meta-missing (device s3)", "output-header (missing column)"])
def test_official_mode_still_rejects_the_official_rules(pkg, case):
    if case == "output-header (missing column)":
        rule = "output-header"
        edit_row(pkg, 1, lambda f: _set(f, 3, "buss"))
    else:
        key = next(k for k in MUTATIONS if k == case or k.startswith(case + " "))
        rule, mutate, _ = MUTATIONS[key]
        pkg = mutate(pkg)
    report = validate_submission(pkg, official=True, rows=N)
    assert rule in {v.rule for v in report.violations if v.official}, [str(v) for v in report.violations]
    assert all(v.official for v in report.violations)


def test_without_an_eval_root_the_evaluation_sets_7920_files_are_expected(tmp_path):
    from sp4sc.challenge.validate import EVAL_ROWS

    full = write_package(tmp_path / "full", n=EVAL_ROWS)
    assert validate_submission(full).ok and validate_submission(full, official=True).ok
    short = write_package(tmp_path / "short", n=EVAL_ROWS - 1)
    for official in (False, True):
        report = validate_submission(short, official=official)
        assert [v.rule for v in report.violations] == ["eval-count"] and report.violations[0].official
        assert "7,919 unique file names; expected 7,920" in report.violations[0].message
    small = write_package(tmp_path / "small")  # 6 rows: a test set, told so
    assert not validate_submission(small).ok and validate_submission(small, rows=N).ok
    edit_row(full, 5, lambda f: _set(f, 0, "7920.wav"))
    (v,) = validate_submission(full, official=True).violations
    assert (v.rule, v.line) == ("filename-index", 5) and "0.wav ... 7919.wav" in v.message


def test_eval_root_count_is_official_the_exact_list_stricter(tmp_path):
    pkg = write_package(tmp_path, n=N - 1)  # 0..4: one row short of the list 0..5
    report = validate_submission(pkg, eval_root=write_eval_root(tmp_path))
    assert {(v.rule, v.official) for v in report.violations} == {("eval-missing", False), ("eval-count", True)}
    assert [v.rule for v in validate_submission(pkg, eval_root=tmp_path / "eval", official=True).violations] == ["eval-count"]


def test_every_rule_in_the_source_is_classified():
    import ast

    from sp4sc.challenge import validate
    from sp4sc.challenge.validate import BOTH, OFFICIAL, RULES, STRICTER

    used = set()
    for node in ast.walk(ast.parse(Path(validate.__file__).read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("error", "warn") \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "col":
            rule = node.args[2]
            if isinstance(rule, ast.Constant):
                used.add(rule.value)
            else:
                assert isinstance(rule, ast.Name) and rule.id == "rule", ast.dump(rule)  # from label_checks
    used |= {rule for label in ("a_b_task1b_9", "_b.c_task1a_1") for rule, _ in validate.label_checks(label)}
    assert len(used) > 30 and used <= set(RULES), sorted(used - set(RULES))
    assert {scope for scope, _ in RULES.values()} == {OFFICIAL, STRICTER, BOTH}
    assert all(len(why) > 15 for _, why in RULES.values())
    assert all(len(why) > 40 for scope, why in RULES.values() if scope != OFFICIAL)  # a stricter rule says why


def test_cli_official_flag_and_stricter_marks(pkg, capsys):
    edit_row(pkg, 3, _audio_prefix)
    edit_row(pkg, 5, lambda f: _set(f, 1, "beach"))
    assert main(["validate-submission", str(pkg), "--rows", str(N)]) == 4
    out = capsys.readouterr().out.strip().splitlines()
    assert any(":3: " in ln and "[filename-path; stricter than the official validator]" in ln for ln in out)
    assert any(":5: " in ln and ln.endswith("[scene-label]") for ln in out)
    assert any(ln.startswith("stricter rule [filename-path]: ") for ln in out)
    assert "2 violation(s) (1 of them stricter than the official validator" in out[-1]
    assert main(["validate-submission", str(pkg), "--rows", str(N), "--official"]) == 4
    out = capsys.readouterr().out.strip().splitlines()
    assert [ln for ln in out if "[" in ln and not ln.startswith("INVALID")] == [ln for ln in out if "[scene-label]" in ln]
    assert "the organisers' rules only" in out[-1]
    edit_row(pkg, 5, lambda f: _set(f, 1, "bus"))
    edit_row(pkg, 5, lambda f: _set(f, 1, SCENES[int(np.argmax([float(x) for x in f[2:]]))]))
    assert main(["validate-submission", str(pkg), "--rows", str(N), "--official", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["valid"] and doc["mode"] == "official" and doc["expected_rows"] == N
    assert main(["validate-submission", str(pkg), "--official", "--strict"]) == 2
    assert "--official and --strict" in capsys.readouterr().err


def test_parameter_warning_follows_the_declared_weight_bits(pkg):
    # 65,536 parameters is the 2021 limit of 128 KB at 16 bits; an 8-bit package is held to its bytes alone
    edit_meta(pkg, lambda m: m["system"]["complexity"].update(total_parameters=111858, total_parameters_non_zero=111858,
                                                             model_size=120.1))
    warned = [w for w in validate_submission(pkg).warnings if "over the DCASE 2021 limit of 65536" in str(w)]
    assert len(warned) == 1
    edit_meta(pkg, lambda m: m.setdefault("sp4sc", {}).update(weight_bits=8))
    assert not [w for w in validate_submission(pkg).warnings if "over the DCASE 2021 limit of 65536" in str(w)]
