"""Check a DCASE 2021 Task 1A submission package: the organisers' rules, and sp4sc's stricter ones.

A package is a folder ``<label>/`` holding ``<label>.output.csv`` (the system
output) and ``<label>.meta.yaml`` (the system description); ``sp4sc submit``
also puts the exported ONNX model and ``complexity.json`` beside them, which
the rules allow in our folder (zip only the two challenge files).

Every rule has an id (shown as ``[rule]`` after each violation) and is one of

* **official**: what the organisers' DCASE 2021 Task 1 submission validator
  (Toni Heittola, ``dcase2021_task1_submission_validator``, task A settings)
  rejects; facts read from its source, no code copied;
* **stricter**: sp4sc's own, with the reason in :data:`RULES`. The official tool
  accepts these, but they break the scoring or the package's consistency.

Some ids hold both (e.g. ``prob-float``: a value that is not a number is
official, NaN or inf is stricter); each :class:`Violation` says which
(``official``). ``validate_submission(..., official=True)`` (``sp4sc
validate-submission --official``) applies the official rules only; the default
applies both and marks the stricter-only violations.

Row count: the official tool expects the 7,920 files of the TAU Urban Acoustic
Scenes 2021 Mobile evaluation set for task 1A, named ``0.wav`` ... ``7919.wav``.
Without an evaluation folder that is what is checked (``rows`` changes the
count, e.g. for a small test set); with ``eval_root`` the rows must be exactly
the files of its ``evaluation_setup/fold1_test.csv``.

Every violation is reported with its file and line, not only the first.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sp4sc.constants import BUDGET_BYTES, BUDGET_PARAMS, DEVICES, SCENES
from sp4sc.errors import Sp4scError

TASK = "task1a"
HEADER: tuple[str, ...] = ("filename", "scene_label", *SCENES)
EVAL_ROWS = 7920  # TAU Urban Acoustic Scenes 2021 Mobile, evaluation set: 0.wav ... 7919.wav
SUM_TOL = 1e-3
STRICT_SUM_TOL = 1e-6
MAX_ABBREVIATION = 10
_TAB = "\t"
OUTPUT_SUFFIX = ".output.csv"
META_SUFFIX = ".meta.yaml"

# Required meta fields (DCASE 2021 Task 1A template and validator).
SUBMISSION_FIELDS = ("label", "name", "abbreviation", "authors")
AUTHOR_FIELDS = ("lastname", "firstname", "email", "affiliation")
AFFILIATION_FIELDS = ("abbreviation", "institute")  # stricter: the official tool checks affiliation is present only
SYSTEM_FIELDS = ("description", "complexity", "external_datasets", "source_code")
DESCRIPTION_FIELDS = (
    "input_sampling_rate",
    "acoustic_features",
    "embeddings",
    "data_augmentation",
    "machine_learning_method",
    "ensemble_method_subsystem_count",
    "decision_making",
    "external_data_usage",
    "complexity_management",
)
COMPLEXITY_FIELDS = ("total_parameters", "total_parameters_non_zero", "model_size")
EXTERNAL_DATASET_FIELDS = ("name", "url", "total_audio_length")
RESULT_BLOCKS = ("overall", "class_wise", "device_wise")
METRICS = ("logloss", "accuracy")
# Required by sp4sc only (the official tool requires the others above):
STRICTER_FIELDS = {
    ("system", "description", "complexity_management"),
    ("system", "complexity", "total_parameters_non_zero"),
    ("system", "complexity", "model_size"),
}

OFFICIAL, STRICTER, BOTH = "official", "stricter", "official and stricter"

# rule id -> (scope, what the organisers' tool checks and/or why sp4sc is stricter)
RULES: dict[str, tuple[str, str]] = {
    "label-format": (OFFICIAL, "label Lastname_INST_task1a_N: four '_'-separated parts, the third 'task1a', N in 1..4"),
    "label-chars": (STRICTER, "an empty part, a space, dot or slash in the label breaks the file and folder names "
                              "built from it (the organisers' tool splits file names on '.')"),
    "label-mismatch": (OFFICIAL, "both file names start with submission.label (sp4sc: and the folder's name)"),
    "output-missing": (OFFICIAL, "the system output file exists"),
    "output-read": (OFFICIAL, "the system output can be read"),
    "output-encoding": (OFFICIAL, "the system output is UTF-8 text"),
    "output-bom": (OFFICIAL, "no byte-order mark: the organisers' reader takes it as part of 'filename' and rejects the header"),
    "output-empty": (OFFICIAL, "a header and data rows"),
    "output-delimiter": (OFFICIAL, "tab-separated fields"),
    "output-header": (BOTH, "official: the header names filename, scene_label and the ten scenes; stricter: in the "
                            "DCASE column order (readers that take columns by position, e.g. a spreadsheet check, "
                            "misread another order; sp4sc reads them by name)"),
    "output-blank-line": (OFFICIAL, "no blank line among the rows (the organisers' tool stops on one)"),
    "output-fields": (OFFICIAL, "12 tab-separated fields per row"),
    "filename-path": (STRICTER, "bare file names, as in the organisers' example output; their tool strips folders "
                                "such as 'audio/' itself, other readers do not"),
    "filename-extension": (OFFICIAL, "file names end in .wav"),
    "filename-duplicate": (OFFICIAL, "each file once (compared without folders)"),
    "filename-index": (OFFICIAL, "evaluation set file names are <n>.wav with n in 0..7919"),
    "eval-count": (OFFICIAL, "one row per evaluation file: 7,920 unique file names for task 1A (or --rows, or the "
                             "length of --eval-root's list)"),
    "eval-extra": (STRICTER, "with --eval-root: every row is a file of its fold1_test.csv (the organisers check the "
                             "count and index range only)"),
    "eval-missing": (STRICTER, "with --eval-root: every file of its fold1_test.csv has a row"),
    "scene-label": (OFFICIAL, "scene_label is one of the ten scenes"),
    "prob-float": (BOTH, "official: each probability parses as a number; stricter: it is finite (NaN and inf parse, "
                         "but make the log loss NaN or infinite)"),
    "prob-range": (STRICTER, "probabilities lie in [0, 1]: the log loss is only defined for probabilities"),
    "prob-sum": (STRICTER, "each row sums to 1 (within --sum-tol): scores that are not a distribution give a "
                           "log loss that depends on how the scorer renormalises"),
    "argmax": (STRICTER, "scene_label is the most probable class: accuracy is scored on scene_label and log loss "
                         "on the probabilities, so a disagreement is a bug somewhere (warning unless --strict)"),
    "meta-missing-file": (OFFICIAL, "the meta information file exists"),
    "meta-read": (OFFICIAL, "the meta file can be read"),
    "meta-encoding": (OFFICIAL, "the meta file is UTF-8 text"),
    "meta-yaml": (OFFICIAL, "the meta file is valid YAML"),
    "meta-structure": (OFFICIAL, "the meta file is a mapping with submission, system and results"),
    "meta-missing": (BOTH, "official: the blocks and fields of the DCASE 2021 task 1A template (system.complexity "
                           "needs total_parameters only); stricter: affiliation.abbreviation and .institute (the "
                           "results pages list them), description.complexity_management, "
                           "complexity.total_parameters_non_zero and model_size (the 2021 budget is 128 KB; the "
                           "template asks for them)"),
    "meta-type": (BOTH, "official: total_parameters converts to an integer (62474.0 and '62474' do); stricter: "
                        "total_parameters is a YAML integer, the other fields have the template's types "
                        "(text, numbers, lists), results are numbers"),
    "meta-corresponding": (OFFICIAL, "exactly one corresponding author"),
    "meta-abbreviation": (OFFICIAL, "submission.abbreviation has at most 10 characters"),
    "meta-range": (STRICTER, "accuracy is a percentage in [0, 100] and log loss is not negative"),
    "meta-key": (STRICTER, "class_wise / device_wise name only the ten scenes / nine devices (a typo would leave "
                           "the real key without results)"),
    "budget": (STRICTER, "warning: over the DCASE 2021 complexity budget (65,536 parameters, 128 KB)"),
    "accuracy-fraction": (STRICTER, "warning: accuracies look like fractions, DCASE reports percent"),
    "results-empty": (STRICTER, "warning: no development results (the organisers highly recommend them)"),
    "results-partial": (STRICTER, "warning: some development results are empty"),
}


@dataclass(frozen=True)
class Violation:
    """One broken rule, located in a file (and a line where one applies).

    ``official`` is True when the organisers' validator rejects it too, False
    when only sp4sc's stricter rules do (see :data:`RULES`); ``warning`` marks
    sp4sc's advice (always stricter, so not tagged as such).
    """

    file: str
    line: int | None
    rule: str
    message: str
    official: bool = True
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        tag = self.rule if self.official or self.warning else f"{self.rule}; stricter than the official validator"
        return f"{where}: {self.message} [{tag}]"


@dataclass
class Report:
    """Result of :func:`validate_submission`."""

    directory: str
    label: str
    violations: list[Violation] = field(default_factory=list)
    warnings: list[Violation] = field(default_factory=list)
    rows: int = 0
    expected_rows: int | None = None
    official_only: bool = False

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def stricter_only(self) -> list[Violation]:
        """Violations the organisers' validator would accept."""
        return [v for v in self.violations if not v.official]

    def stricter_reasons(self) -> dict[str, str]:
        """Rule id -> why sp4sc is stricter, for each stricter-only violation found."""
        return {v.rule: RULES[v.rule][1] for v in self.stricter_only}

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "label": self.label,
            "valid": self.ok,
            "mode": "official" if self.official_only else "strict",
            "rows": self.rows,
            "expected_rows": self.expected_rows,
            "violations": [dataclasses.asdict(v) for v in self.violations],
            "stricter_only": len(self.stricter_only),
            "stricter_reasons": self.stricter_reasons(),
            "warnings": [dataclasses.asdict(w) for w in self.warnings],
        }


class _Collector:
    def __init__(self, report: Report, strict: bool, official_only: bool = False) -> None:
        self.report = report
        self.strict = strict
        self.official_only = official_only

    def error(self, file: str, line: int | None, rule: str, message: str, official: bool | None = None) -> None:
        """Record a violation; ``official`` defaults to the rule's scope (required for mixed rules)."""
        scope = RULES[rule][0]
        if official is None:
            if scope == BOTH:
                raise AssertionError(f"rule {rule} is official and stricter: say which")
            official = scope == OFFICIAL
        if self.official_only and not official:
            return
        self.report.violations.append(Violation(file, line, rule, message, official))

    def warn(self, file: str, line: int | None, rule: str, message: str) -> None:
        """sp4sc's advice: a warning, or a stricter-only violation with ``strict``; dropped in official mode."""
        if self.official_only:
            return
        if self.strict:
            self.report.violations.append(Violation(file, line, rule, message, False))
        else:
            self.report.warnings.append(Violation(file, line, rule, message, False, warning=True))


# ----------------------------------------------------------------------------- label


def label_checks(label: str) -> list[tuple[str, str]]:
    """``(rule, message)`` for each problem of a submission label (empty when it is well formed)."""
    parts = label.split("_")
    if len(parts) != 4:
        return [("label-format", f"label {label!r} has {len(parts)} '_'-separated parts; expected 4: Lastname_INST_{TASK}_N")]
    problems = []
    lastname, inst, task, index = parts
    for name, value in (("last name", lastname), ("institute abbreviation", inst)):
        if not value:
            problems.append(("label-chars", f"label {label!r}: the {name} part is empty"))
        elif any(c.isspace() or c in "/\\." for c in value):
            problems.append(("label-chars", f"label {label!r}: the {name} part {value!r} has spaces, dots or slashes"))
    if task != TASK:
        problems.append(("label-format", f"label {label!r}: third part is {task!r}; expected {TASK!r}"))
    if not (index.isdigit() and 1 <= int(index) <= 4):
        problems.append(("label-format", f"label {label!r}: submission index {index!r} must be 1, 2, 3 or 4"))
    return problems


def label_problems(label: str) -> list[str]:
    """What is wrong with a submission label (empty when it is well formed)."""
    return [message for _, message in label_checks(label)]


# ----------------------------------------------------------------------------- eval list


def eval_file_names(eval_root: str | os.PathLike) -> list[str]:
    """Bare file names listed in ``<eval_root>/evaluation_setup/fold1_test.csv``.

    Read with :func:`sp4sc.data.index.load_index` (``"tau2021eval"``, audio not
    required), the reader ``sp4sc submit`` uses, so both agree on the list and a
    malformed list (no ``filename`` column, commas, duplicates, paths leaving the
    folder) is one error naming the file and line.
    """
    from sp4sc.data.index import load_index

    try:
        index = load_index("tau2021eval", eval_root, check_audio=False)
    except Sp4scError as exc:
        raise Sp4scError(f"--eval-root: {exc}") from exc
    names: list[str] = []
    first: dict[str, str] = {}
    for c in index.split("test"):
        bare = c.path.replace("\\", "/").rsplit("/", 1)[-1]
        if bare in first:  # two folders with the same file name: the output (bare names) cannot tell them apart
            raise Sp4scError(f"{Path(eval_root) / 'evaluation_setup' / 'fold1_test.csv'}: duplicate file name {bare!r} "
                             f"({first[bare]} and {c.path}); the output lists bare names, so they must be unique")
        first[bare] = c.path
        names.append(bare)
    return names


# ----------------------------------------------------------------------------- output csv


def _parse_prob(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value


def check_output(
    path: Path,
    col: _Collector,
    *,
    expected: list[str] | None = None,
    sum_tol: float = SUM_TOL,
    rows: int | None = EVAL_ROWS,
) -> int:
    """Check ``<label>.output.csv``; returns the number of data rows.

    Args:
        path: the output file.
        col: where violations go.
        expected: the bare file names of the evaluation list (``eval_root``), or None.
        sum_tol: tolerance on each row's probability sum.
        rows: without ``expected``, the number of unique files the output must list
            (:data:`EVAL_ROWS`: the TAU 2021 evaluation set, whose names are also
            checked to be ``0.wav`` ... ``7919.wav``); None: no count check.
    """
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        col.error(name, None, "output-read", f"cannot read ({exc.strerror})")
        return 0
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        col.error(name, None, "output-encoding", f"not UTF-8 text (byte {exc.start}); write it as UTF-8")
        return 0
    if text.startswith("\ufeff"):
        col.error(name, 1, "output-bom", "starts with a byte-order mark, which readers take as part of 'filename'; "
                                        "save the file as UTF-8 without BOM")
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    if not lines:
        col.error(name, None, "output-empty", "file is empty; expected a header and one row per evaluation file")
        return 0

    header = [h.strip() for h in lines[0].split("\t")]
    # column of each scene's probability: by name when the header names them all, else by position
    columns = {scene: 2 + k for k, scene in enumerate(SCENES)}
    if len(header) == 1 and ("," in lines[0] or ";" in lines[0]):
        col.error(name, 1, "output-delimiter", "header is not tab-separated (found ',' or ';'); use tabs")
    elif sorted(header) != sorted(HEADER):
        missing = [h for h in HEADER if h not in header]
        extra = [h for h in header if h not in HEADER or header.count(h) > 1]
        what = "; ".join(p for p in (f"missing {missing}" if missing else "",
                                     f"unknown or repeated {sorted(set(extra))}" if extra else "") if p)
        col.error(name, 1, "output-header", f"header is {lines[0]!r} ({what}); expected {_TAB.join(HEADER)!r} "
                                            "(tab-separated)", official=True)
    elif tuple(header) != HEADER:
        col.error(name, 1, "output-header", f"header is {lines[0]!r}; expected this order: {_TAB.join(HEADER)!r}",
                  official=False)
        columns = {scene: header.index(scene) for scene in SCENES}
    name_col = header.index("filename") if "filename" in header and header.count("filename") == 1 else 0
    scene_col = header.index("scene_label") if "scene_label" in header and header.count("scene_label") == 1 else 1

    seen: dict[str, int] = {}
    n_rows = 0
    eval_set = expected is None and rows == EVAL_ROWS
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            col.error(name, lineno, "output-blank-line", "blank line inside the file; remove it")
            continue
        n_rows += 1
        fields = line.split("\t")
        if len(fields) != len(HEADER):
            col.error(name, lineno, "output-fields", f"{len(fields)} tab-separated fields; expected {len(HEADER)}")
            if len(fields) <= max(name_col, scene_col):
                continue
        filename, scene = fields[name_col], fields[scene_col]
        if "/" in filename or "\\" in filename:
            col.error(name, lineno, "filename-path", f"file name {filename!r} has a folder part; write the bare name (no 'audio/')")
        bare = filename.replace("\\", "/").rsplit("/", 1)[-1]
        stem = bare[: -len(".wav")]
        if not bare.endswith(".wav"):
            col.error(name, lineno, "filename-extension", f"file name {filename!r} does not end in '.wav'")
        elif eval_set and not (stem.isdigit() and 0 <= int(stem) < EVAL_ROWS):
            col.error(name, lineno, "filename-index",
                      f"file name {filename!r} is not one of the evaluation set's 0.wav ... {EVAL_ROWS - 1}.wav "
                      "(pass --eval-root, or --rows for another set)")
        if bare in seen:
            col.error(name, lineno, "filename-duplicate", f"file {bare!r} already on line {seen[bare]}")
        else:
            seen[bare] = lineno
        if scene not in SCENES:
            col.error(name, lineno, "scene-label", f"scene label {scene!r} is not one of the 10 classes")
        probs: list[float] | None = []
        for scene_name in SCENES:
            k = columns[scene_name]
            if k >= len(fields):
                probs = None
                continue
            text_value = fields[k]
            value = _parse_prob(text_value)
            if value is None:
                col.error(name, lineno, "prob-float", f"{scene_name}={text_value!r} is not a number", official=True)
                probs = None
                continue
            if not math.isfinite(value):
                col.error(name, lineno, "prob-float", f"{scene_name}={text_value!r} is not a finite number",
                          official=False)
                probs = None
                continue
            if not 0.0 <= value <= 1.0:
                col.error(name, lineno, "prob-range", f"{scene_name}={text_value} is outside [0, 1]")
            if probs is not None:
                probs.append(value)
        if probs is not None and len(probs) == len(SCENES):
            total = math.fsum(probs)
            if abs(total - 1.0) > sum_tol:
                col.error(name, lineno, "prob-sum", f"probabilities sum to {total!r}; must be 1 within {sum_tol:g}")
            if scene in SCENES:
                top = max(probs)
                if probs[SCENES.index(scene)] < top:
                    col.warn(
                        name, lineno, "argmax",
                        f"scene_label {scene!r} is not the most probable class ({SCENES[probs.index(top)]!r}, {top:.6g})",
                    )
    if n_rows == 0:
        col.error(name, None, "output-empty", "no data rows; expected one row per evaluation file")

    if expected is not None:
        expected_set = set(expected)
        for bare, lineno in seen.items():
            if bare not in expected_set:
                col.error(name, lineno, "eval-extra", f"file {bare!r} is not in the evaluation list fold1_test.csv")
        missing = [f for f in expected if f not in seen]
        for f in missing:
            col.error(name, None, "eval-missing", f"evaluation file {f!r} has no row")
        rows = len(expected_set)
    if rows is not None and n_rows and len(seen) != rows:
        which = ("the TAU 2021 evaluation set for task 1A (--rows N for another set, --eval-root for an exact list)"
                 if expected is None and rows == EVAL_ROWS else
                 "the evaluation list fold1_test.csv" if expected is not None else "--rows")
        col.error(name, None, "eval-count", f"{len(seen):,} unique file names; expected {rows:,}, the files of {which}")
    return n_rows


# ----------------------------------------------------------------------------- meta yaml


def _yaml_lines(text: str) -> dict[tuple, int]:
    """Map each key path of a YAML document to its 1-based line."""
    import yaml

    lines: dict[tuple, int] = {}

    def walk(node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (key.value,)
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                sub = path + (i,)
                lines[sub] = item.start_mark.line + 1
                walk(item, sub)

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        lines[()] = root.start_mark.line + 1
        walk(root, ())
    return lines


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _converts_to_int(v: Any) -> bool:
    """What the organisers' tool asks of total_parameters: ``int(v)`` works."""
    if v is None:
        return False
    try:
        int(v)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _is_text(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def check_meta(path: Path, col: _Collector, *, label: str) -> dict | None:
    """Check ``<label>.meta.yaml``; returns the parsed meta (None when unreadable)."""
    import yaml

    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        col.error(name, None, "meta-encoding", "not UTF-8 text")
        return None
    except OSError as exc:
        col.error(name, None, "meta-read", f"cannot read ({exc.strerror})")
        return None
    try:
        meta = yaml.safe_load(text)
        lines = _yaml_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        col.error(name, mark.line + 1 if mark else None, "meta-yaml", f"not valid YAML: {problem}")
        return None
    if not isinstance(meta, dict):
        col.error(name, 1, "meta-structure", "top level must be a mapping with 'submission', 'system' and 'results'")
        return None

    def line(*keys) -> int | None:
        keys = tuple(keys)
        while keys and keys not in lines:
            keys = keys[:-1]
        return lines.get(keys)

    def dotted(keys) -> str:
        return ".".join(str(k) for k in keys)

    def need_mapping(parent: dict, keys: tuple, required: tuple[str, ...]) -> dict | None:
        value = parent.get(keys[-1]) if isinstance(parent, dict) else None
        if keys[-1] not in parent:
            col.error(name, line(*keys[:-1]) if len(keys) > 1 else None, "meta-missing", f"'{dotted(keys)}' block is missing",
                      official=keys not in STRICTER_FIELDS)
            return None
        if not isinstance(value, dict):
            col.error(name, line(*keys), "meta-type", f"'{dotted(keys)}' must be a mapping", official=True)
            return None
        for f in required:
            if f not in value:
                col.error(name, line(*keys), "meta-missing", f"'{dotted(keys)}' has no required field '{f}'",
                          official=keys + (f,) not in STRICTER_FIELDS)
        return value

    # submission
    sub = need_mapping(meta, ("submission",), SUBMISSION_FIELDS)
    if sub is not None:
        for f in ("label", "name", "abbreviation"):
            if f in sub and not _is_text(sub[f]):
                col.error(name, line("submission", f), "meta-type", f"'submission.{f}' must be non-empty text",
                          official=False)
        if isinstance(sub.get("label"), str):
            for rule, problem in label_checks(sub["label"]):
                col.error(name, line("submission", "label"), rule, problem)
            if sub["label"] != label:
                col.error(name, line("submission", "label"), "label-mismatch",
                          f"submission.label {sub['label']!r} differs from the package label {label!r}")
        if isinstance(sub.get("abbreviation"), str) and len(sub["abbreviation"]) > MAX_ABBREVIATION:
            col.error(name, line("submission", "abbreviation"), "meta-abbreviation",
                      f"abbreviation {sub['abbreviation']!r} is longer than {MAX_ABBREVIATION} characters")
        authors = sub.get("authors")
        if "authors" in sub:
            if not isinstance(authors, list) or not authors:
                col.error(name, line("submission", "authors"), "meta-type", "'submission.authors' must be a non-empty list",
                          official=True)  # the official tool then finds no corresponding author
            else:
                corresponding = 0
                for i, author in enumerate(authors):
                    where = line("submission", "authors", i)
                    if not isinstance(author, dict):
                        col.error(name, where, "meta-type", f"'submission.authors[{i}]' must be a mapping", official=True)
                        continue
                    for f in AUTHOR_FIELDS:
                        if f not in author:
                            col.error(name, where, "meta-missing", f"'submission.authors[{i}]' has no required field '{f}'",
                                      official=True)
                    for f in ("lastname", "firstname", "email"):
                        if f in author and not _is_text(author[f]):
                            col.error(name, line("submission", "authors", i, f), "meta-type",
                                      f"'submission.authors[{i}].{f}' must be non-empty text", official=False)
                    aff = author.get("affiliation")
                    if "affiliation" in author:
                        if not isinstance(aff, dict):
                            col.error(name, line("submission", "authors", i, "affiliation"), "meta-type",
                                      f"'submission.authors[{i}].affiliation' must be a mapping (abbreviation, institute, ...)",
                                      official=False)
                        else:
                            for f in AFFILIATION_FIELDS:
                                if not _is_text(aff.get(f)):
                                    col.error(name, line("submission", "authors", i, "affiliation"), "meta-missing",
                                              f"'submission.authors[{i}].affiliation.{f}' must be non-empty text",
                                              official=False)
                    if author.get("corresponding") is True:
                        corresponding += 1
                if corresponding != 1:
                    col.error(name, line("submission", "authors"), "meta-corresponding",
                              f"exactly one author must have 'corresponding: true' (found {corresponding})")

    # system
    system = need_mapping(meta, ("system",), SYSTEM_FIELDS)
    if system is not None:
        desc = need_mapping(system, ("system", "description"), DESCRIPTION_FIELDS) if "description" in system else None
        if desc is not None:
            count = desc.get("ensemble_method_subsystem_count")
            if count is not None and not (_is_int(count) and count >= 1):
                col.error(name, line("system", "description", "ensemble_method_subsystem_count"), "meta-type",
                          "'system.description.ensemble_method_subsystem_count' must be a positive integer or null",
                          official=False)
            for f in DESCRIPTION_FIELDS:
                v = desc.get(f)
                if isinstance(v, (dict, list)):
                    col.error(name, line("system", "description", f), "meta-type",
                              f"'system.description.{f}' must be text, a number or null", official=False)
        cx = need_mapping(system, ("system", "complexity"), COMPLEXITY_FIELDS) if "complexity" in system else None
        if cx is not None:
            for f in ("total_parameters", "total_parameters_non_zero"):
                if f in cx and not (_is_int(cx[f]) and cx[f] >= 0):
                    # the organisers' tool only asks int(total_parameters) to work (62474.0 and '62474' do)
                    col.error(name, line("system", "complexity", f), "meta-type",
                              f"'system.complexity.{f}' must be a non-negative integer (got {cx[f]!r})",
                              official=f == "total_parameters" and not _converts_to_int(cx[f]))
            if "model_size" in cx and not (_is_number(cx["model_size"]) and cx["model_size"] >= 0):
                col.error(name, line("system", "complexity", "model_size"), "meta-type",
                          f"'system.complexity.model_size' must be a non-negative number of KB (got {cx['model_size']!r})",
                          official=False)
            if _is_int(cx.get("total_parameters")) and _is_int(cx.get("total_parameters_non_zero")):
                if cx["total_parameters_non_zero"] > cx["total_parameters"]:
                    col.error(name, line("system", "complexity", "total_parameters_non_zero"), "meta-type",
                              "'total_parameters_non_zero' exceeds 'total_parameters'", official=False)
            # 65,536 parameters is 128 KB at 16 bits; a package that declares 8-bit weights is held to the bytes alone
            bits = meta["sp4sc"].get("weight_bits") if isinstance(meta.get("sp4sc"), dict) else None
            if _is_int(cx.get("total_parameters")) and cx["total_parameters"] > BUDGET_PARAMS and bits != 8:
                col.warn(name, line("system", "complexity", "total_parameters"), "budget",
                         f"{cx['total_parameters']} parameters: over the DCASE 2021 limit of {BUDGET_PARAMS}")
            if _is_number(cx.get("model_size")) and cx["model_size"] > BUDGET_BYTES / 1024:
                col.warn(name, line("system", "complexity", "model_size"), "budget",
                         f"model size {cx['model_size']} KB: over the DCASE 2021 limit of {BUDGET_BYTES / 1024:g} KB")
        ext = system.get("external_datasets")
        if ext not in (None, "") and not isinstance(ext, list):
            col.error(name, line("system", "external_datasets"), "meta-type",
                      "'system.external_datasets' must be a list of {name, url, total_audio_length} (or empty)",
                      official=False)
        elif isinstance(ext, list):
            for i, item in enumerate(ext):
                missing = [f for f in EXTERNAL_DATASET_FIELDS if not isinstance(item, dict) or f not in item]
                if missing:
                    col.error(name, line("system", "external_datasets", i), "meta-missing",
                              f"'system.external_datasets[{i}]' has no field(s) {', '.join(missing)}", official=True)
        src = system.get("source_code")
        if src is not None and not isinstance(src, str):
            col.error(name, line("system", "source_code"), "meta-type", "'system.source_code' must be a URL text (or empty)",
                      official=False)

    # results
    results = need_mapping(meta, ("results",), ("development_dataset",))
    if results is not None and "development_dataset" in results:
        dev = need_mapping(results, ("results", "development_dataset"), RESULT_BLOCKS)
        if dev is not None:
            empty = 0
            total = 0
            accuracies: list[float] = []

            def metric_block(keys: tuple, block) -> None:
                nonlocal empty, total
                if not isinstance(block, dict):
                    col.error(name, line(*keys), "meta-type", f"'{dotted(keys)}' must map logloss and accuracy",
                              official=True)
                    return
                for m in METRICS:
                    if m not in block:
                        col.error(name, line(*keys), "meta-missing", f"'{dotted(keys)}' has no '{m}'", official=True)
                        continue
                    v = block[m]
                    total += 1
                    if v is None:
                        empty += 1
                    elif not _is_number(v):
                        # the organisers' tool prints "not numeric" but does not count it as an error
                        col.error(name, line(*keys, m), "meta-type", f"'{dotted(keys + (m,))}' must be a number (got {v!r})",
                                  official=False)
                    elif m == "accuracy" and not 0 <= v <= 100:
                        col.error(name, line(*keys, m), "meta-range", f"'{dotted(keys + (m,))}' = {v} is not a percentage in [0, 100]")
                    elif m == "accuracy":
                        accuracies.append(v)
                    elif m == "logloss" and v < 0:
                        col.error(name, line(*keys, m), "meta-range", f"'{dotted(keys + (m,))}' = {v} is negative")

            base = ("results", "development_dataset")
            if "overall" in dev:
                metric_block(base + ("overall",), dev["overall"])
            for block_name, keys_required in (("class_wise", SCENES), ("device_wise", DEVICES)):
                if block_name not in dev:
                    continue
                block = dev[block_name]
                if not isinstance(block, dict):
                    col.error(name, line(*base, block_name), "meta-type", f"'{dotted(base + (block_name,))}' must be a mapping",
                              official=True)
                    continue
                for k in keys_required:
                    if k not in block:
                        col.error(name, line(*base, block_name), "meta-missing", f"'{dotted(base + (block_name,))}' has no '{k}'",
                                  official=True)
                for k, v in block.items():
                    if k not in keys_required:
                        col.error(name, line(*base, block_name, k), "meta-key",
                                  f"'{dotted(base + (block_name,))}' has unknown key {k!r}; expected {', '.join(keys_required)}")
                    metric_block(base + (block_name, k), v)
            if accuracies and max(accuracies) <= 1.0 and max(accuracies) > 0:
                col.warn(name, line(*base), "accuracy-fraction",
                         "every accuracy is at most 1: DCASE reports accuracy in percent (e.g. 66.8, not 0.668)")
            if total and empty == total:
                col.warn(name, line(*base), "results-empty",
                         "development results are empty; the organisers highly recommend them (sp4sc submit --dev-root)")
            elif empty:
                col.warn(name, line(*base), "results-partial", f"{empty} of {total} development results are empty")
    return meta


# ----------------------------------------------------------------------------- package


def validate_submission(
    directory: str | os.PathLike,
    *,
    eval_root: str | os.PathLike | None = None,
    label: str | None = None,
    sum_tol: float = SUM_TOL,
    strict: bool = False,
    official: bool = False,
    rows: int | None = EVAL_ROWS,
) -> Report:
    """Check a submission package folder; every violation is collected.

    Args:
        directory: the package folder ``<label>/``.
        eval_root: a TAU evaluation folder; its ``evaluation_setup/fold1_test.csv``
            must list exactly the rows of the output (then ``rows`` is not used).
        label: the label to expect (default: the folder's name; ``sp4sc submit``
            passes it while the package is still in a temporary folder).
        sum_tol: tolerance on the sum of each row's probabilities.
        strict: treat warnings (scene_label not the argmax, empty results,
            over budget) as violations.
        official: apply only the rules the organisers' validator enforces
            (:data:`RULES`); no warnings.
        rows: without ``eval_root``, the number of unique files the output must
            list: :data:`EVAL_ROWS` (7,920, the TAU 2021 evaluation set for task 1A,
            whose file names ``0.wav`` ... ``7919.wav`` are checked too) unless told
            otherwise (a small test set); None: no count check.

    Raises:
        Sp4scError: the folder or the evaluation list cannot be read at all.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise Sp4scError(f"{directory}: not a folder; give the package folder <label>/ (e.g. submissions/Lastname_INST_task1a_1)")
    if rows is not None and rows < 1:
        raise Sp4scError(f"--rows {rows}: must be a positive number of evaluation files")
    expected = eval_file_names(eval_root) if eval_root is not None else None
    label = label or directory.name
    report = Report(directory=str(directory), label=label, official_only=official,
                    expected_rows=len(set(expected)) if expected is not None else rows)
    col = _Collector(report, strict and not official, official)

    for rule, problem in label_checks(label):
        col.error(str(directory), None, rule, problem)

    names = sorted(p.name for p in directory.iterdir() if p.is_file())
    for n in names:
        for suffix in (OUTPUT_SUFFIX, META_SUFFIX):
            if n.endswith(suffix) and n[: -len(suffix)] != label:
                col.error(str(directory / n), None, "label-mismatch",
                          f"file prefix {n[: -len(suffix)]!r} differs from the package label {label!r}")
    output = directory / f"{label}{OUTPUT_SUFFIX}"
    meta = directory / f"{label}{META_SUFFIX}"
    if not output.is_file():
        col.error(str(output), None, "output-missing", f"system output {output.name} is missing")
    else:
        report.rows = check_output(output, col, expected=expected, sum_tol=sum_tol, rows=rows)
    if not meta.is_file():
        col.error(str(meta), None, "meta-missing-file", f"meta information {meta.name} is missing")
    else:
        check_meta(meta, col, label=label)
    return report
