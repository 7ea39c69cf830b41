"""Static int8 quantisation of an exported model: calibration clips, QDQ graph, int8 parity on real clips.

``sp4sc export --int8`` writes ``model_int8.onnx``: ONNX Runtime's post-training
static quantisation (``onnxruntime.quantization.quantize_static``) of the folded
float graph, in the QDQ format (QuantizeLinear / DequantizeLinear pairs around
each quantised op, which ONNX Runtime fuses into QLinearConv & co.):

- weights int8, symmetric, one scale per output channel; biases int32 (scale =
  input scale x weight scale), as ONNX Runtime stores them;
- activations int8 with one scale and zero point per tensor, from the min / max
  seen on the calibration inputs (:func:`calibration_reader`);
- the log-mel front end stays in float: the quantised graph takes log-mels; the
  waveform variant (``model_waveform_int8.onnx``) is the float front end graph
  (:func:`sp4sc.deploy.onnx_graph.frontend_graph`) composed with it.

Calibration inputs are log-mels of training clips (:func:`calibration_clips`):
class-balanced and deterministic (per class, clips ordered by a hash of their path
and the seed, taken round robin), so the same data and ``N`` always give the same
model. No calibration data, no int8 model (:func:`require_calibration`).

Graph forms (same function, checked in tests): every conv / linear layer gets initializers of
its own (:func:`own_initializers`: the exporter shares equal constants, and the quantiser leaves a
conv with a shared bias in float); a sparse-kernel first convolution of the 1-channel input
becomes shifted copies of it at the kernel's non-zero taps and a 1x1 convolution
(:func:`first_conv_as_taps`); a 2x2 average pooling (stride 2, no padding) becomes a depthwise 2x2
convolution with weights 1/4 (:func:`pool_as_depthwise`; 0.25 is exact in int8 at a per-channel
scale). ONNX Runtime 1.32's QLinearAveragePool took about 7 ms of SP4SC's 23 ms at the sp4asc
front end on one Xeon core; the QLinearConv that replaces it about 0.6 ms. The tail from the last
layer to the outputs stays float (:func:`_output_tail`; linear layers write float), so logits and
probabilities are not rounded to int8 steps. Result on 1 core: 1.3x the fp32 model's time (the
1-channel first block and the depthwise convs are slower in ORT's int8 kernels than in its fp32
NCHWc ones); the gain is the bytes.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sp4sc.errors import Sp4scError

CALIB_DEFAULT = 300  # calibration clips for --calib
EVAL_CLIPS_DEFAULT = 400  # evaluation clips of the int8-vs-fp32 report
CALIB_BATCH = 8

CALIB_HINT = ("pass --calib-data ROOT --calib-dataset esc|tau2020|tau2022 (training clips to calibrate on), "
              "or export a Lightning checkpoint that records its training data")


def require_calibration(calib: Any, what: str = "--int8") -> None:
    """Refuse an int8 export without calibration inputs (one line naming the fix)."""
    if calib is None or (hasattr(calib, "__len__") and len(calib) == 0):
        raise Sp4scError(f"{what}: static int8 quantisation needs calibration data and none was given; {CALIB_HINT}")


# ---------------------------------------------------------------- which clips

def data_from_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The training data a Lightning checkpoint records (its datamodule's ``dataset``, ``root``, ``fold``,
    ``split``, ``split_dir``), or None for a plain model file or toy data."""
    import torch

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # unreadable here means: not a Lightning checkpoint we can read data from
        return None
    hp = ckpt.get("datamodule_hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or not hp.get("root") or hp.get("dataset") in (None, "toy"):
        return None
    return {k: hp.get(k) for k in ("dataset", "root", "fold", "split", "split_dir")}


def split_clips(dataset: str, root: str | Path, *, part: str, fold: int | None = None,
                split: int | None = None, split_dir: str | None = None):
    """``(index, clips)``: the training (``part="train"``) or evaluation (``part="eval"``) clips of a dataset.

    ESC-format: train = every fold but ``fold`` (default 1), eval = fold ``fold``; tau2020:
    ``train`` / ``evaluate``; tau2022: ``split{split or 100}`` / ``test``.
    """
    from sp4sc.data.index import load_index

    index = load_index(dataset, root, check_audio=False, split_dir=split_dir)
    if dataset == "esc":
        train, val = index.cv_split(int(fold or 1))
        clips = train if part == "train" else val
    elif dataset == "tau2020":
        clips = index.split("train" if part == "train" else "evaluate")
    elif dataset == "tau2022":
        clips = index.split(f"split{int(split or 100)}" if part == "train" else "test")
    else:
        raise Sp4scError(f"--calib-dataset {dataset!r}: choose esc, tau2020 or tau2022")
    clips = [c for c in clips if c.label is not None]
    if not clips:
        raise Sp4scError(f"{index.root}: the {part} clips of {dataset} carry no labels; calibration needs labelled clips")
    return index, clips


def calibration_clips(clips: Sequence, n: int, seed: int = 0) -> list:
    """``n`` clips, class-balanced and deterministic.

    Per class, clips are ordered by ``sha256(seed:path)`` (independent of the order the
    metadata lists them in); classes then give one clip each in turn (class order by
    label) until ``n`` are chosen or none are left.
    """
    if n < 1:
        raise Sp4scError(f"--calib: must be at least 1, got {n}")
    by_class: dict[int, list] = defaultdict(list)
    for c in clips:
        by_class[int(c.label)].append(c)
    queues = [sorted(v, key=lambda c: hashlib.sha256(f"{seed}:{c.path}".encode()).hexdigest())
              for _, v in sorted(by_class.items())]
    out: list = []
    depth = 0
    while len(out) < n and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(out) < n:
                out.append(q[depth])
        depth += 1
    return out


def clip_features(index, clips: Sequence, cfg, batch: int = 16) -> np.ndarray:
    """Log-mels ``(n, 1, frames, mels)`` float32 of clips at the front end's clip length (as training)."""
    import torch

    from sp4sc.frontend.audio import load_audio
    from sp4sc.frontend.features import LogMel

    logmel = LogMel(cfg).eval()
    out = []
    for i in range(0, len(clips), batch):
        wav = np.stack([load_audio(index.path(c), cfg.sample_rate, cfg.duration) for c in clips[i : i + batch]])
        with torch.no_grad():
            out.append(logmel(torch.from_numpy(wav)).unsqueeze(1).numpy())  # (batch, 1, frames, mels)
    return np.concatenate(out).astype(np.float32)


# ---------------------------------------------------------------- graph and quantisation

def pool_as_depthwise(proto):
    """A copy of ``proto`` whose 2x2 stride-2 unpadded ``AveragePool`` nodes are depthwise ``Conv`` (weights 1/4).

    Channels come from ONNX shape inference; a pool whose channel count is not static is left as it is.
    """
    import copy

    import onnx
    from onnx import helper, numpy_helper

    model = copy.deepcopy(proto)
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: v.type.tensor_type.shape for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = shapes.get(node.input[0]) if node.op_type == "AveragePool" else None
        channels = None
        if shape is not None and len(shape.dim) == 4 and shape.dim[1].HasField("dim_value"):
            channels = shape.dim[1].dim_value
        plain = (list(attrs.get("kernel_shape", [])) == [2, 2] and list(attrs.get("strides", [])) == [2, 2]
                 and not any(attrs.get("pads", [0])) and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
                 and not attrs.get("ceil_mode", 0))
        if channels is None or not plain:
            nodes.append(node)
            continue
        wname = f"{node.name or node.output[0]}_dw_weight"
        model.graph.initializer.append(numpy_helper.from_array(np.full((channels, 1, 2, 2), 0.25, np.float32), wname))
        nodes.append(helper.make_node("Conv", [node.input[0], wname], list(node.output), name=(node.name or "") + "_dw",
                                      group=channels, kernel_shape=[2, 2], strides=[2, 2]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def first_conv_as_taps(proto):
    """A copy of ``proto`` whose sparse-kernel convolutions of the (affine-normalised) graph input with one
    channel (stride 1, no dilation, one group; fewer non-zero taps than the kernel's area) become "im2col by slices": the padded input's shifted copies at the kernel's non-zero
    taps, concatenated as channels, and a 1x1 convolution over them.

    The same function; at int8 ONNX Runtime runs the 1x1 form as one GEMM with K = taps (SP4SC's
    plus-shaped 5x5 kernel: 9 taps) where its 1-channel 5x5 QLinearConv is slow (about 8 ms of 23
    at the sp4asc front end on one core, 5.7 ms in this form).
    """
    import copy

    from onnx import helper, numpy_helper

    model = copy.deepcopy(proto)
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = numpy_helper.to_array(inits[node.input[1]]) if node.op_type == "Conv" and node.input[1] in inits else None
        ok = (w is not None and w.ndim == 4 and w.shape[1] == 1 and attrs.get("group", 1) == 1
              and all(v == 1 for v in attrs.get("strides", [1, 1])) and all(v == 1 for v in attrs.get("dilations", [1, 1]))
              and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET") and w.shape[2] * w.shape[3] > 1
              and (node.input[0] in {i.name for i in model.graph.input} or producers.get(node.input[0]) is not None
                   and producers[node.input[0]].op_type in ("Add", "Mul")))
        taps = [] if not ok else [(dy, dx) for dy in range(w.shape[2]) for dx in range(w.shape[3])
                                  if np.any(w[:, 0, dy, dx] != 0)]
        if not ok or len(taps) == w.shape[2] * w.shape[3]:  # only sparse kernels gain (fewer taps than the area)
            nodes.append(node)
            continue
        kh, kw = w.shape[2], w.shape[3]
        pads = list(attrs.get("pads", [0, 0, 0, 0]))  # top, left, bottom, right
        base = node.name or node.output[0]
        pad_name = f"{base}_taps_pads"
        model.graph.initializer.append(numpy_helper.from_array(
            np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], dtype=np.int64), pad_name))
        padded = f"{base}_taps_padded"
        nodes.append(helper.make_node("Pad", [node.input[0], pad_name], [padded], name=f"{base}_taps_pad"))
        big = np.iinfo(np.int64).max
        cols = []
        for dy, dx in taps:  # (batch, 1, frames, mels) shifted by (dy, dx)
            names = [f"{base}_tap{dy}{dx}_{k}" for k in ("starts", "ends", "axes")]
            ends = [-(kh - 1 - dy) if kh - 1 - dy else big, -(kw - 1 - dx) if kw - 1 - dx else big]
            for name, arr in zip(names, ([dy, dx], ends, [2, 3])):
                model.graph.initializer.append(numpy_helper.from_array(np.array(arr, dtype=np.int64), name))
            out = f"{base}_tap{dy}{dx}"
            nodes.append(helper.make_node("Slice", [padded, *names], [out], name=f"{base}_tap{dy}{dx}"))
            cols.append(out)
        stacked = f"{base}_taps"
        nodes.append(helper.make_node("Concat", cols, [stacked], name=f"{base}_taps_concat", axis=1))
        w1 = np.stack([w[:, 0, dy, dx] for dy, dx in taps], axis=1)[:, :, None, None].astype(np.float32)
        wname = f"{base}_taps_weight"
        model.graph.initializer.append(numpy_helper.from_array(w1, wname))
        nodes.append(helper.make_node("Conv", [stacked, wname, *node.input[2:]], list(node.output), name=f"{base}_1x1",
                                      kernel_shape=[1, 1]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def own_initializers(proto):
    """A copy of ``proto`` where every conv / gemm weight and bias is an initializer of its own.

    The exporter folds equal constants into one initializer (e.g. the all-zero biases of an untrained
    model) and feeds extra users through ``Identity``; ONNX Runtime's quantiser leaves a convolution with
    a shared bias in float (a float Conv among int8 ones, slower than either).
    """
    import copy

    from onnx import numpy_helper

    model = copy.deepcopy(proto)
    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:  # Identity of an initializer -> an initializer named as its output
        if node.op_type == "Identity" and node.input[0] in inits:
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]),
                                                                   node.output[0]))
            continue
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    inits = {t.name: t for t in model.graph.initializer}
    users: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        for name in node.input:
            users[name] += 1
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        for k in range(1, len(node.input)):
            name = node.input[k]
            if name in inits and users[name] > 1:
                new = f"{name}__{node.name or node.output[0]}"
                model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[name]), new))
                node.input[k] = new
                users[name] -= 1
    return model


def calibration_reader(x: np.ndarray, input_name: str = "logmel", batch: int = CALIB_BATCH):
    """An ``onnxruntime.quantization.CalibrationDataReader`` over log-mels ``x``, ``batch`` clips a call."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = [x[i : i + batch] for i in range(0, len(x), batch)]
            self.pos = 0

        def get_next(self):
            if self.pos >= len(self.batches):
                return None
            self.pos += 1
            return {input_name: self.batches[self.pos - 1]}

        def rewind(self):
            self.pos = 0

    return _Reader()


def quantize_static_int8(proto, calib: np.ndarray, *, input_name: str = "logmel"):
    """The QDQ int8 model of a float logmel model, calibrated on ``calib`` ``(n, 1, frames, mels)``.

    Per-channel symmetric int8 weights, int8 activations (MinMax calibration); first the graph
    forms ONNX Runtime's int8 kernels run faster (:func:`pool_as_depthwise`,
    :func:`first_conv_as_taps`); the node making each output and the softmax stay float.
    Deterministic for the same inputs.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from sp4sc.deploy.onnx_graph import _quiet_root_logger

    require_calibration(calib)
    reader = calibration_reader(np.ascontiguousarray(calib, np.float32), input_name)
    graph = first_conv_as_taps(pool_as_depthwise(own_initializers(proto)))
    # the outputs stay float: logits from a float last layer, probabilities not rounded to 1/256 steps
    keep_float = _output_tail(graph)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(graph, src)
        with warnings.catch_warnings(), _quiet_root_logger():
            warnings.simplefilter("ignore")
            quantize_static(
                src, dst, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=keep_float,
                # linear layers' outputs stay float (QGemm writes float): logits are not rounded to int8 steps
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                               "OpTypesToExcludeOutputQuantization": ["Gemm", "MatMul"]},
            )
        return onnx.load(dst)


_TAIL_OPS = ("Cast", "Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "GlobalAveragePool", "ReduceMean",
             "Softmax")


def _output_tail(graph) -> list[str]:
    """Names of the nodes between the last compute layer and the graph outputs (casts, reshapes, global
    pooling, softmax): left in float so the logits and probabilities are not rounded to int8 steps."""
    producers = {o: n for n in graph.graph.node for o in n.output}
    tail: list[str] = []
    todo = [o.name for o in graph.graph.output]
    while todo:
        node = producers.get(todo.pop())
        if node is None or node.name in tail:
            continue
        if node.op_type in _TAIL_OPS or set(node.output) & {o.name for o in graph.graph.output}:
            tail.append(node.name)
            if node.op_type in _TAIL_OPS:
                todo.extend(node.input[:1])
    return tail


def int8_initializer_bytes(proto) -> dict[str, int]:
    """Bytes of what a QDQ graph stores, by role: quantised parameters (int8 weights, int32 biases),
    their scales and zero points, float parameters left unquantised, and activation scales and zero
    points (the last are not parameters). The file holds SP4SC's plus kernels as 5x5 (zeros included)."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    out = {"int8_weights": 0, "int32_biases": 0, "weight_scales_and_zero_points": 0, "float_params": 0,
           "activation_scales_and_zero_points": 0}
    seen: set[str] = set()
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        param = node.op_type == "DequantizeLinear" and node.input[0] in inits
        if param and node.input[0] not in seen:
            arr = inits[node.input[0]]
            out["int32_biases" if arr.dtype == np.int32 else "int8_weights"] += arr.nbytes
            seen.add(node.input[0])
        for name in node.input[1:]:
            if name in inits and name not in seen:
                out["weight_scales_and_zero_points" if param else "activation_scales_and_zero_points"] += inits[name].nbytes
                seen.add(name)
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for name in node.input:
            arr = inits.get(name)
            if arr is not None and name not in seen and arr.dtype == np.float32 and arr.size > 1:
                out["float_params"] += arr.nbytes
                seen.add(name)
    out["params_total"] = (out["int8_weights"] + out["int32_biases"] + out["weight_scales_and_zero_points"]
                           + out["float_params"])
    return out


# ---------------------------------------------------------------- parity on real clips

def int8_vs_fp32(fp32_session, int8_session, x: np.ndarray, labels: Sequence[int] | None = None,
                 batch: int = 16, input_name: str = "logmel") -> dict[str, Any]:
    """int8 against fp32 (both ONNX Runtime) on log-mels ``x``: max / mean |dp|, top-1 agreement, and accuracies."""
    p32 = np.concatenate([fp32_session.run(["probs"], {input_name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])
    p8 = np.concatenate([int8_session.run(["probs"], {input_name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])
    d = np.abs(p8.astype(np.float64) - p32.astype(np.float64))
    out: dict[str, Any] = {
        "clips": int(len(x)),
        "max_abs_prob": float(d.max()) if d.size else 0.0,
        "mean_abs_prob": float(d.mean()) if d.size else 0.0,
        "top1_agreement": float(np.mean(p8.argmax(1) == p32.argmax(1))) if len(x) else 1.0,
    }
    if labels is not None and len(labels) == len(x):
        y = np.asarray(labels)
        out["accuracy_fp32"] = float(np.mean(p32.argmax(1) == y))
        out["accuracy_int8"] = float(np.mean(p8.argmax(1) == y))
    return out
