"""Complexity the DCASE way: parameters, bytes and MACs of the folded model, and the budget check.

Conventions (DCASE 2021 Task 1A, as in CPJKU's ``helpers/complexity.py`` idea):

- Parameters are counted on the folded float model (:func:`sp4sc.models.fold.fold_batchnorm`):
  every parameter tensor (weights, biases, the per-mel input affine). Buffers are
  not parameters (BatchNorm's num_batches_tracked and running statistics are gone
  after folding; the front end's mel/DFT matrices are not in the model at all).
- Bytes at a storage precision: parameters x 4 (fp32), x 2 (fp16); at int8 as a static
  int8 export stores them (:func:`int8_stored_bytes`): conv / linear weights 1 byte each,
  their biases int32 (4 bytes), one float32 scale per output channel (symmetric weights:
  zero points are 0 and not counted), every other parameter (e.g. the input affine)
  float32. ``bytes_int8_weights_only`` is parameters x 1 (the DCASE 2022+ checkers' count).
  The DCASE 2021 limit is 128 KB = 131,072 bytes at fp16, i.e. 65,536 parameters.
- MACs per inference of one clip, on the folded model, with input
  ``(1, 1, frames, n_mels)`` for the clip duration, from two counters:
  ``thop`` (conv: output elements x cin/groups x kernel area, no bias; linear:
  in x out; plus 1 op per average-pooling output and, registered here, 1 per
  element of the per-mel affine) and ``torchinfo`` (conv: (weight + bias) x
  output positions, i.e. bias charged at every position; linear: weight + bias),
  the counter of DCASE 2022+ tables. The optional MAC budget (DCASE 2022+: 30 M
  for a 1 s clip) is checked against torchinfo's count for a 1 s input.
- MACs under the DCASE 2022-2025 (NeSsi) convention, :func:`macs_nessi`, on the
  model as given (unfolded, with its BatchNorms, as the official baselines count):
  each convolution's (weight + bias) x output positions, plus the parameters of
  every other layer that has some (2 x channels per BatchNorm, weight + bias per
  linear layer); activations, pooling and additions are free. The DCASE 2024
  baseline (``cpmobile``) gives 61,148 parameters and 29,419,156 MACs for 1 s.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sp4sc.constants import BUDGET_BYTES, BUDGET_MACS_PER_SECOND, BUDGET_PARAMS
from sp4sc.errors import BudgetExceeded, Sp4scError
from sp4sc.models.fold import fold_batchnorm, is_folded
from sp4sc.models._common import MelAffine

BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "int8": 1}

__all__ = [
    "BUDGET_MACS_PER_SECOND",
    "BYTES_PER_PARAM",
    "check_budget",
    "complexity_report",
    "count_params",
    "format_report",
    "macs_nessi",
    "macs_thop",
    "macs_torchinfo",
    "nessi_table",
]


def count_params(model: nn.Module) -> dict[str, int]:
    """All and non-zero parameters of ``model`` as it is (fold it first for DCASE figures)."""
    params = [p.detach() for p in model.parameters()]
    return {
        "params": int(sum(p.numel() for p in params)),
        "nonzero_params": int(sum(int(torch.count_nonzero(p)) for p in params)),
    }


def int8_stored_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of a folded model's parameters as a static int8 export stores them.

    Conv and linear weights: 1 byte each plus a float32 scale per output channel; their biases:
    int32; any other parameter (the per-mel input affine, norms): float32.
    """
    weights = biases = scales = other = 0
    seen: set[int] = set()
    for mod in model.modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            seen.add(id(mod.weight))
            weights += mod.weight.numel()
            scales += 4 * mod.weight.shape[0]
            if mod.bias is not None:
                seen.add(id(mod.bias))
                biases += 4 * mod.bias.numel()
    for p in model.parameters():
        if id(p) not in seen:
            other += 4 * p.numel()
    return {"int8_weights": weights, "int32_biases": biases, "float32_scales": scales, "float32_other": other,
            "total": weights + biases + scales + other}


def _count_affine(module: MelAffine, inputs, output) -> None:
    module.total_ops += torch.DoubleTensor([int(output.numel())])


def macs_thop(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Operations counted by thop (``profile``) for one forward pass on zeros of ``input_shape``."""
    import warnings

    with warnings.catch_warnings():  # thop 0.1.1 compares versions with the deprecated distutils classes
        warnings.simplefilter("ignore", DeprecationWarning)
        import thop

    m = copy.deepcopy(model).eval()
    param = next(m.parameters())
    x = torch.zeros(input_shape, dtype=param.dtype, device=param.device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ops, _ = thop.profile(m, inputs=(x,), custom_ops={MelAffine: _count_affine}, verbose=False)
    return int(round(float(ops)))


def macs_torchinfo(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Mult-adds counted by torchinfo (``summary(...).total_mult_adds``) for one forward pass."""
    import torchinfo

    m = copy.deepcopy(model).eval()
    param = next(m.parameters())
    stats = torchinfo.summary(
        m, input_size=input_shape, dtypes=[param.dtype], device=param.device, verbose=0, mode="eval"
    )
    return int(stats.total_mult_adds)


def _plain_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy computing with its own modules (SP4SC's fast and CPU paths off), so hooks see every layer."""
    m = copy.deepcopy(model).eval()
    if callable(getattr(m, "set_fast", None)):
        m.set_fast(False)
    if callable(getattr(m, "set_cpu_path", None)):
        m.set_cpu_path(False)
    return m


def nessi_table(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per-layer parameters and MACs under the DCASE 2022-2025 (NeSsi) convention, in call order.

    NeSsi (AlbertoAncilotto/NeSsi, which the CPJKU DCASE 2024/2025 baselines call through
    ``torchinfo.summary(...).total_mult_adds``) charges a convolution its (weight + bias)
    parameters once per output position (times the batch), and any other layer with
    parameters (BatchNorm: 2 x channels, linear: weight + bias, the folded per-mel affine)
    its parameter count once per batch item; layers without parameters (ReLU, pooling,
    additions) cost nothing. The model is counted as given: pass it unfolded, as the
    challenge's tables do.

    Args:
        model: any module; it is run once on zeros of ``input_shape`` (a copy, in eval mode).
        input_shape: e.g. ``(1, 1, frames, mels)``.

    Returns:
        One dict per call of a layer with parameters: ``name`` (module path), ``type``,
        ``input_shape``, ``output_shape``, ``params`` and ``macs``.
    """
    m = _plain_copy(model)
    rows: list[dict[str, Any]] = []

    def hook(name: str):
        def count(module: nn.Module, inputs, output) -> None:
            n = sum(p.numel() for p in module.parameters(recurse=False))
            out = output[0] if isinstance(output, (tuple, list)) else output
            batch = int(out.shape[0]) if out.dim() else 1
            if isinstance(module, nn.modules.conv._ConvNd):
                macs = n * batch * math.prod(int(d) for d in out.shape[2:])
            else:
                macs = n * batch
            first = inputs[0] if inputs else None
            rows.append({"name": name, "type": type(module).__name__,
                         "input_shape": list(first.shape) if isinstance(first, torch.Tensor) else None,
                         "output_shape": list(out.shape), "params": int(n), "macs": int(macs)})
        return count

    handles = [mod.register_forward_hook(hook(name)) for name, mod in m.named_modules()
               if any(True for _ in mod.parameters(recurse=False))]
    try:
        param = next(m.parameters())
        with torch.no_grad():
            m(torch.zeros(input_shape, dtype=param.dtype, device=param.device))
    finally:
        for h in handles:
            h.remove()
    return rows


def macs_nessi(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Total MACs of one forward pass on ``input_shape`` under the DCASE 2022-2025 (NeSsi) convention.

    See :func:`nessi_table` for the convention; count the unfolded model, as the
    official baselines do (``cpmobile`` on ``(1, 1, 65, 256)``: 29,419,156).
    """
    return int(sum(row["macs"] for row in nessi_table(model, input_shape)))


def complexity_report(
    model: nn.Module,
    frontend_cfg,
    *,
    duration: float | None = None,
    count_macs: bool = True,
) -> dict[str, Any]:
    """Parameters, bytes and MACs of ``model`` folded, for clips of ``duration`` seconds.

    Args:
        model: a registry model (folded or not; it is folded on a copy).
        frontend_cfg: the :class:`sp4sc.frontend.features.FrontEndConfig` that feeds the model
            (gives frames per second and mel bins).
        duration: clip length in seconds for the MAC count (default: the front end's).
        count_macs: False skips the two MAC counters (they run the model).

    Returns:
        A JSON-able dict with keys ``model``, ``model_kwargs``, ``folded`` (always True:
        the figures are of the folded model), ``params``, ``nonzero_params``,
        ``bytes_fp32``, ``bytes_fp16``, ``bytes_int8``, ``kb_fp16`` (bytes / 1024),
        ``params_unfolded`` and ``state_dict_values_unfolded`` (of ``model`` as given;
        None when it came folded), ``frontend`` (preset name), ``duration``,
        ``input_shape`` [1, 1, frames, mels], ``macs_thop``, ``macs_torchinfo``,
        ``input_shape_1s``, ``macs_1s_thop``, ``macs_1s_torchinfo`` (None when not counted)
        and ``counters`` (a sentence saying what was counted how).
    """
    n_mels = getattr(model, "n_mels", None)
    if n_mels is not None and n_mels != frontend_cfg.n_mels:
        raise Sp4scError(
            f"{getattr(model, 'arch_name', type(model).__name__)}: model takes {n_mels} mel bins but front end "
            f"{frontend_cfg.name!r} gives {frontend_cfg.n_mels}; pick the matching front end"
        )
    duration = float(frontend_cfg.duration if duration is None else duration)
    if not duration > 0:
        raise Sp4scError(f"--duration: must be positive, got {duration}")
    was_folded = is_folded(model)
    folded = fold_batchnorm(model)
    counts = count_params(folded)
    int8_bytes = int8_stored_bytes(folded)
    frames = frontend_cfg.frames_for(duration)
    shape = (1, 1, frames, frontend_cfg.n_mels)
    shape_1s = (1, 1, frontend_cfg.frames_for(1.0), frontend_cfg.n_mels)
    report: dict[str, Any] = {
        "model": getattr(model, "arch_name", type(model).__name__),
        "model_kwargs": dict(getattr(folded, "arch_kwargs", {})),
        "folded": True,
        **counts,
        **{f"bytes_{p}": counts["params"] * b for p, b in BYTES_PER_PARAM.items()},
        "bytes_int8": int8_bytes["total"],  # as stored: weights 1 B, biases int32, per-channel scales
        "bytes_int8_weights_only": counts["params"],
        "int8_bytes": int8_bytes,
        "kb_fp16": round(counts["params"] * 2 / 1024, 1),
        "params_unfolded": None if was_folded else int(sum(p.numel() for p in model.parameters())),
        "state_dict_values_unfolded": None if was_folded else int(sum(v.numel() for v in model.state_dict().values())),
        "frontend": frontend_cfg.name,
        "duration": duration,
        "input_shape": list(shape),
        "macs_thop": None,
        "macs_torchinfo": None,
        "input_shape_1s": list(shape_1s),
        "macs_1s_thop": None,
        "macs_1s_torchinfo": None,
        "macs_nessi": None,
        "macs_1s_nessi": None,
        "nessi_model": "folded" if was_folded else "unfolded",
        "counters": (
            "parameters and bytes of the folded float model (buffers excluded); MACs of the folded model for one "
            "clip: thop 0.1.1 (conv/linear multiply-adds, no bias, +1 per avg-pool output and per input-affine "
            "element) and torchinfo (conv bias charged at every output position); NeSsi (DCASE 2022-2025) MACs "
            "of the model as given, unfolded unless it came folded (conv weights x output positions + 2 x "
            "channels per BatchNorm)"
        ),
    }
    if count_macs:
        frames_min = getattr(folded, "min_frames", 1)
        if frames < frames_min:
            raise Sp4scError(f"--duration: {duration:g} s gives {frames} frames, the model needs at least {frames_min}")
        report["macs_thop"] = macs_thop(folded, shape)
        report["macs_torchinfo"] = macs_torchinfo(folded, shape)
        report["macs_nessi"] = macs_nessi(model, shape)
        if shape_1s[2] >= frames_min:
            if shape_1s == shape:
                report["macs_1s_thop"], report["macs_1s_torchinfo"] = report["macs_thop"], report["macs_torchinfo"]
                report["macs_1s_nessi"] = report["macs_nessi"]
            else:
                report["macs_1s_thop"] = macs_thop(folded, shape_1s)
                report["macs_1s_torchinfo"] = macs_torchinfo(folded, shape_1s)
                report["macs_1s_nessi"] = macs_nessi(model, shape_1s)
    return report


def check_budget(
    report: dict[str, Any],
    max_params: int | None = BUDGET_PARAMS,
    max_bytes: int | None = BUDGET_BYTES,
    max_macs_per_s: int | None = None,
    *,
    precision: str = "fp16",
) -> dict[str, Any]:
    """Raise :class:`BudgetExceeded` naming every figure over its limit; return the verdict otherwise.

    Args:
        report: from :func:`complexity_report`.
        max_params: parameter limit (None: no limit). DCASE 2021: 65,536.
        max_bytes: byte limit at ``precision`` (None: no limit). DCASE 2021: 131,072 at fp16.
        max_macs_per_s: MAC limit for a 1 s clip, torchinfo count (None: no limit). DCASE 2022+: 30 M.
        precision: storage precision of the byte count: fp32, fp16 or int8.

    Returns:
        ``{"within_budget": True, "limits": {...}}``.
    """
    if precision not in BYTES_PER_PARAM:
        raise Sp4scError(f"precision: {precision!r} is not one of {sorted(BYTES_PER_PARAM)}")
    name = report.get("model", "model")
    over = []
    if max_params is not None and report["params"] > max_params:
        over.append(f"{report['params']:,} parameters > limit {max_params:,}")
    n_bytes = report[f"bytes_{precision}"]
    if max_bytes is not None and n_bytes > max_bytes:
        over.append(f"{n_bytes:,} bytes at {precision} ({n_bytes / 1024:.1f} KB) > limit {max_bytes:,} ({max_bytes / 1024:.1f} KB)")
    if max_macs_per_s is not None:
        macs = report.get("macs_1s_torchinfo")
        if macs is None:
            raise Sp4scError(f"{name}: MACs were not counted; cannot check the MAC limit")
        if macs > max_macs_per_s:
            over.append(f"{macs:,} MACs per 1 s clip (torchinfo) > limit {max_macs_per_s:,}")
    if over:
        raise BudgetExceeded(
            f"{name} (folded) is over the complexity budget: " + "; ".join(over)
            + "; choose a smaller model or variant (sp4sc.models.list_models()) or pass --no-budget to go on anyway"
        )
    return {
        "within_budget": True,
        "limits": {"max_params": max_params, "max_bytes": max_bytes, "precision": precision,
                   "max_macs_per_s": max_macs_per_s},
    }


def _si(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:g}"


def format_report(report: dict[str, Any]) -> str:
    """Human-readable lines of a :func:`complexity_report`."""
    lines = [
        f"model               {report['model']} (folded; front end {report['frontend']})",
        f"parameters          {report['params']:,} ({report['nonzero_params']:,} non-zero)",
        f"bytes               fp32 {report['bytes_fp32']:,} | fp16 {report['bytes_fp16']:,} "
        f"({report['kb_fp16']} KB) | int8 {report['bytes_int8']:,} ({report['bytes_int8'] / 1024:.1f} KB as stored: "
        f"weights 1 B, biases int32, scales)",
    ]
    if report.get("state_dict_values_unfolded") is not None:
        lines.append(
            f"unfolded            {report['params_unfolded']:,} parameters, "
            f"{report['state_dict_values_unfolded']:,} state-dict values"
        )
    if report.get("macs_thop") is not None:
        lines.append(
            f"MACs {report['duration']:g} s clip      thop {report['macs_thop']:,} ({_si(report['macs_thop'])}) | "
            f"torchinfo {report['macs_torchinfo']:,} ({_si(report['macs_torchinfo'])}), folded model, "
            f"input {tuple(report['input_shape'])}"
        )
    if report.get("macs_nessi") is not None:
        lines.append(
            f"MACs {report['duration']:g} s clip      NeSsi (DCASE 2022-2025) {report['macs_nessi']:,} "
            f"({_si(report['macs_nessi'])}), {report.get('nessi_model', 'unfolded')} model: conv weights x output "
            "positions + 2 x channels per BatchNorm"
        )
    if report.get("macs_1s_torchinfo") is not None and report["input_shape_1s"] != report["input_shape"]:
        lines.append(
            f"MACs 1 s clip       thop {_si(report['macs_1s_thop'])} | torchinfo {_si(report['macs_1s_torchinfo'])} | "
            f"NeSsi (DCASE 2022-2025) {_si(report.get('macs_1s_nessi'))}, input {tuple(report['input_shape_1s'])}"
        )
    return "\n".join(lines)


def macs_per_second(report: dict[str, Any]) -> float | None:
    """torchinfo MACs of a 1 s clip (the DCASE 2022+ figure), or None when not counted."""
    v = report.get("macs_1s_torchinfo")
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


# ----------------------------------------------------------------------------- rules by DCASE edition


@dataclass(frozen=True)
class Rules:
    """One DCASE Task 1 edition's complexity limits and how it counts.

    Attributes:
        name: ``dcase2021``, ``dcase2024`` or ``dcase2025``.
        max_params: parameter limit (None: none).
        max_bytes: limit on the parameters' bytes at ``precision`` (None: none).
        precision: default storage precision of the byte count (``--precision`` overrides).
        max_macs_per_s: MAC limit for one 1 s clip (None: none).
        mac_counter: ``torchinfo`` (DCASE 2021's optional 2022+-style check) or
            ``nessi`` (:func:`macs_nessi`, the DCASE 2022-2025 convention).
        per_device: the limits hold for the model each device runs (DCASE 2025).
        source: where the numbers come from.
    """

    name: str
    max_params: int | None
    max_bytes: int | None
    precision: str
    max_macs_per_s: int | None
    mac_counter: str
    per_device: bool
    source: str


RULES: dict[str, Rules] = {
    # DCASE 2021 Task 1A: 128 KB = 131,072 bytes of parameters at fp16 (65,536 parameters); no MAC limit.
    "dcase2021": Rules("dcase2021", BUDGET_PARAMS, BUDGET_BYTES, "fp16", None, "torchinfo", False,
                       "DCASE 2021 Task 1A task page (128 KB of non-zero parameters; SP4ASC counted at fp16)"),
    # DCASE 2024 Task 1: 128 kB of parameter memory and 30 MMACs per 1 s clip. The organisers' checker uses
    # 128 kB = 128,000 bytes (CPJKU/dcase2024_task1_baseline helpers/nessi.py: MAX_PARAMS_MEMORY = 128_000,
    # MAX_MACS = 30_000_000; README: "with 8-bit parameters at most 128,000 parameters"), MACs counted as NeSsi does.
    "dcase2024": Rules("dcase2024", None, 128_000, "fp16", BUDGET_MACS_PER_SECOND, "nessi", False,
                       "CPJKU/dcase2024_task1_baseline helpers/nessi.py and README 'Baseline Complexity'"),
    # DCASE 2025 Task 1: the same limits, checked for the model each device runs (CPJKU dcase2025_task1_inference
    # test_complexity.py: get_model_for_device(model, d) for d in a, b, c, s1..s10, each <= 30 MMACs and
    # <= 128,000 bytes, the parameter bytes summed over the dtypes stored).
    "dcase2025": Rules("dcase2025", None, 128_000, "fp16", BUDGET_MACS_PER_SECOND, "nessi", True,
                       "CPJKU dcase2025_task1_inference complexity.py / test_complexity.py"),
}
EDITIONS = tuple(RULES)


def edition_rules(name: str) -> Rules:
    """The :class:`Rules` of an edition; a one-line error for an unknown one."""
    if name not in RULES:
        raise Sp4scError(f"--rules {name!r}: unknown; choose one of {', '.join(RULES)}")
    return RULES[name]


def nessi_counter():
    """:func:`macs_nessi` (the DCASE 2022-2025 NeSsi MAC convention), or a clear error where it is missing."""
    fn = globals().get("macs_nessi")
    if fn is None:
        raise Sp4scError("the NeSsi MAC counter (sp4sc.deploy.complexity.macs_nessi) is not available in this "
                         "version; use --rules dcase2021 or update sp4sc")
    return fn


def apply_rules(report: dict[str, Any], model: nn.Module, rules: Rules, *, precision: str | None = None,
                max_params: int | None = None, max_bytes: int | None = None,
                max_macs_per_s: int | None = None, count_macs: bool = True) -> dict[str, Any]:
    """Add an edition's verdict to ``report`` (``report["rules"]``); never raises for being over.

    For NeSsi editions the MACs of one 1 s clip are counted with :func:`macs_nessi`
    on ``model`` as given (the baseline counts its model with BatchNorm, 2 x
    channels per BatchNorm layer), into ``report["macs_1s_nessi"]``. Bytes are
    the folded model's parameters at ``precision`` (what is stored and shipped).
    Explicit ``max_*`` arguments override the edition's limits.

    Returns:
        ``report["rules"]``: edition, limits, the figures checked, ``within`` and
        ``over`` (one phrase per limit broken).
    """
    precision = precision or rules.precision
    if precision not in BYTES_PER_PARAM:
        raise Sp4scError(f"--precision {precision!r}: choose one of {', '.join(BYTES_PER_PARAM)}")
    limits = {"max_params": rules.max_params if max_params is None else max_params,
              "max_bytes": rules.max_bytes if max_bytes is None else max_bytes,
              "max_macs_per_s": rules.max_macs_per_s if max_macs_per_s is None else max_macs_per_s,
              "precision": precision}
    macs_key = "macs_1s_nessi" if rules.mac_counter == "nessi" else "macs_1s_torchinfo"
    if rules.mac_counter == "nessi" and count_macs:
        report["macs_1s_nessi"] = int(nessi_counter()(model, tuple(report["input_shape_1s"])))
    macs = report.get(macs_key)
    # The organisers' formula: "[parameter count] * [bit per parameter] / 8" (DCASE 2025 meta template,
    # system.complexity.total_model_size; CPJKU complexity.py sums numel x dtype bytes of the parameters).
    # For int8 that is parameters x 1 (bytes_int8_weights_only), not the larger int8-export count
    # (int32 biases, per-channel scales) the report's bytes_int8 gives; both stay in the report.
    n_bytes = int(report["params"]) * BYTES_PER_PARAM[precision]
    over = []
    if limits["max_params"] is not None and report["params"] > limits["max_params"]:
        over.append(f"{report['params']:,} parameters > limit {limits['max_params']:,}")
    if limits["max_bytes"] is not None and n_bytes > limits["max_bytes"]:
        over.append(f"{n_bytes:,} bytes at {precision} > limit {limits['max_bytes']:,}")
    if limits["max_macs_per_s"] is not None:
        if macs is None:
            raise Sp4scError(f"--rules {rules.name}: the MAC limit needs the MAC count; drop --no-macs")
        if macs > limits["max_macs_per_s"]:
            over.append(f"{macs:,} MACs per 1 s clip ({rules.mac_counter}) > limit {limits['max_macs_per_s']:,}")
    verdict = {"edition": rules.name, "limits": limits, "params": int(report["params"]), "bytes": n_bytes, "macs_1s": macs,
               "mac_counter": rules.mac_counter, "per_device": rules.per_device, "source": rules.source,
               "within": not over, "over": over}
    report["rules"] = verdict
    return verdict


def format_rules(verdict: dict[str, Any]) -> str:
    """Lines stating each checked figure against its limit (and the share of the limit used)."""
    lim = verdict["limits"]
    lines = []

    def row(label: str, value: int | None, limit: int | None, unit: str) -> None:
        if limit is None:
            return
        share = f" ({100.0 * value / limit:.1f} % of the limit)" if value is not None else ""
        lines.append(f"{label:<20}{value:,} {unit} <= {limit:,}?{share} {'ok' if value <= limit else 'OVER'}")

    lines.append(f"rules               {verdict['edition']} ({verdict['source']})")
    row("parameters", None if lim["max_params"] is None else verdict.get("params"), lim["max_params"], "")
    row(f"bytes ({lim['precision']})", verdict["bytes"], lim["max_bytes"], "bytes")
    row(f"MACs 1 s ({verdict['mac_counter']})", verdict["macs_1s"], lim["max_macs_per_s"], "MACs")
    lines.append("verdict             " + ("within the limits" if verdict["within"] else "OVER: " + "; ".join(verdict["over"])))
    return "\n".join(lines)
