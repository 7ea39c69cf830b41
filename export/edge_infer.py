#!/usr/bin/env python3
"""Run an exported sp4sc model on audio files with ONNX Runtime: no torch, no sp4sc.

Usage::

    python export/edge_infer.py --model DIR/model.onnx [--json] [--batch-size N] [--pad silence|repeat] [--crop] FILE...

``DIR`` is a folder written by ``sp4sc export``; ``frontend.json`` beside the
model gives the log-mel settings and the class names. The output is the same as
``sp4sc infer``: one line per file (top class and its probability), or with
``--json`` ``{"classes": [...], "files": [...], "probs": [[...], ...]}``.

Clip length as ``sp4sc infer``: each clip runs at its own length; ``--pad
silence|repeat`` pads clips shorter than the model's trained length up to it,
``--crop`` cuts longer ones; one line on stderr says when lengths differ.

Needs numpy, soundfile and onnxruntime (and soxr for files whose sample rate
differs from the model's). Errors print one line (``error: ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from edge_frontend import (  # noqa: E402
    FRONTEND_FORMAT,
    ClipLengths,
    EdgeError,
    EdgeFrontEnd,
    fit_clip,
    frontend_digest,
    load_audio,
    too_short_message,
)

META_PREFIX = "sp4sc."


class EdgeModel:
    """An exported model and its front end, checked against each other.

    Args:
        model_path: ``model.onnx`` (or a variant: ``model_fp16.onnx``, ``model_int8.onnx``,
            ``model_waveform.onnx``) from an ``sp4sc export`` folder.
        frontend_path: ``frontend.json``; by default the one beside the model.
        threads: ONNX Runtime intra-op threads (0: its default).

    Raises:
        EdgeError: a missing or foreign file, a model whose input is not
            ``(batch, 1, frames, mels)`` / ``(batch, samples)``, or a ``frontend.json``
            from another export.
    """

    def __init__(self, model_path: str | Path, frontend_path: str | Path | None = None, threads: int = 0):
        import onnxruntime as ort

        model_path = Path(model_path)
        if not model_path.exists():
            raise EdgeError(f"{model_path}: model not found; pass the model.onnx of an `sp4sc export` folder")
        if model_path.is_dir():
            raise EdgeError(f"{model_path}: is a folder; pass the model file inside it (e.g. {model_path}/model.onnx)")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        # no spinning between runs: ONNX Runtime's idle threads would take the cores the front end's
        # threads need (2 cores, 10 s clip: front end 2.9 -> 2.0 ms, front end + int8 model 8.9 -> 7.8 ms)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail / InvalidProtobuf / InvalidGraph types
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise EdgeError(f"{model_path}: not a loadable ONNX model ({first[:200]})") from exc
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        if META_PREFIX + "fingerprint" not in meta:
            raise EdgeError(
                f"{model_path}: not an sp4sc export (no sp4sc.fingerprint in the ONNX metadata); "
                "export the model with `sp4sc export`"
            )
        self.meta = meta
        self.fingerprint = meta[META_PREFIX + "fingerprint"]

        frontend_path = Path(frontend_path) if frontend_path else model_path.parent / "frontend.json"
        if not frontend_path.exists():
            raise EdgeError(f"{frontend_path}: not found; keep frontend.json beside the model (copy the whole export folder)")
        try:
            spec = json.loads(frontend_path.read_text())
        except (OSError, ValueError) as exc:
            raise EdgeError(f"{frontend_path}: not readable JSON ({exc}); re-export the model") from exc
        if not isinstance(spec, dict):
            raise EdgeError(f"{frontend_path}: not an sp4sc frontend.json (expected a JSON object)")
        if spec.get("format", FRONTEND_FORMAT) != FRONTEND_FORMAT:
            raise EdgeError(f"{frontend_path}: format {spec.get('format')} is not {FRONTEND_FORMAT}; update export/")
        missing = [k for k in ("frontend", "classes", "fingerprint", "frontend_digest") if k not in spec]
        if missing:
            raise EdgeError(f"{frontend_path}: not an sp4sc frontend.json (lacks {missing}); re-export the model")
        self.frontend = EdgeFrontEnd(spec["frontend"], workers=threads)
        self.duration = float(spec["frontend"]["duration"])
        # exports before min_frames was written: only the STFT's own limit is known
        self.min_frames = int((spec.get("input") or {}).get("min_frames") or 1)
        self.min_samples = max((self.min_frames - 1) * self.frontend.hop, self.frontend.n_fft // 2 + 1)
        self.classes = [str(c) for c in spec["classes"]]

        # the model's input and outputs
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise EdgeError(f"{model_path}: model has {len(inputs)} inputs, expected one")
        self.input_name = inputs[0].name
        shape = list(inputs[0].shape)
        if len(shape) == 4:
            self.kind = "logmel"
            if isinstance(shape[1], int) and shape[1] != 1:
                raise EdgeError(f"{model_path}: model input has {shape[1]} channels, expected 1 (batch, 1, frames, mels)")
            if isinstance(shape[3], int) and shape[3] != self.frontend.n_mels:
                raise EdgeError(
                    f"{model_path}: model expects {shape[3]} mel bands but {frontend_path} gives "
                    f"{self.frontend.n_mels}; use the frontend.json of the same export"
                )
        elif len(shape) == 2:
            self.kind = "waveform"
        else:
            raise EdgeError(
                f"{model_path}: model input has rank {len(shape)} {shape}; expected (batch, 1, frames, mels) "
                "log-mel or (batch, samples) waveform"
            )
        outputs = {o.name: o for o in self.session.get_outputs()}
        if "probs" not in outputs:
            raise EdgeError(f"{model_path}: model has no 'probs' output (outputs: {list(outputs)}); re-export it")
        n_out = outputs["probs"].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.classes):
            raise EdgeError(f"{model_path}: model gives {n_out} classes but {frontend_path} names {len(self.classes)}")

        # one export: fingerprint, front end settings and class names must agree
        if spec["fingerprint"] != self.fingerprint:
            raise EdgeError(
                f"{model_path}: comes from another export than {frontend_path} (fingerprint "
                f"{self.fingerprint} vs {spec['fingerprint']}); use the model and frontend.json of one export folder"
            )
        digest = frontend_digest(spec["frontend"])
        if digest != meta.get(META_PREFIX + "frontend_digest") or digest != spec["frontend_digest"]:
            raise EdgeError(
                f"{frontend_path}: front end settings do not match the model's (digest {digest} vs "
                f"{meta.get(META_PREFIX + 'frontend_digest')}); was frontend.json edited? re-export the model"
            )
        if json.dumps(self.classes) != meta.get(META_PREFIX + "classes", json.dumps(self.classes)):
            raise EdgeError(f"{frontend_path}: class names differ from the model's; was it edited? re-export the model")

    def features(self, wavs: np.ndarray) -> np.ndarray:
        """Waveforms ``(batch, samples)`` -> model input (log-mel ``(batch, 1, frames, mels)`` or the waveforms)."""
        if self.kind == "waveform":
            return np.ascontiguousarray(wavs, dtype=np.float32)
        return self.frontend(wavs)[:, None]  # (batch, 1, frames, mels)

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        """Model input -> probabilities ``(batch, classes)``."""
        (probs,) = self.session.run(["probs"], {self.input_name: x})
        return probs

    def predict_files(self, files: Sequence[str], batch_size: int = 16, pad: str | None = None,
                      crop: bool = False) -> np.ndarray:
        """Audio files -> probabilities ``(n_files, classes)`` float32.

        Each clip at its own length unless ``pad`` / ``crop`` fit it to the trained length
        (:func:`edge_frontend.fit_clip`); clips of equal length in a batch run together.
        """
        if batch_size < 1:
            raise EdgeError(f"--batch-size: must be at least 1, got {batch_size}")
        sr = self.frontend.sample_rate
        lengths = ClipLengths(self.frontend.n_samples, sr, pad, crop)
        rows: dict[int, np.ndarray] = {}
        for start in range(0, len(files), batch_size):
            groups: dict[int, list[tuple[int, np.ndarray]]] = {}  # length -> [(clip index, waveform)]
            for i in range(start, min(start + batch_size, len(files))):
                raw = load_audio(files[i], sr, None)
                wav = fit_clip(raw, self.frontend.n_samples, pad, crop)
                if wav.shape[0] < self.min_samples:
                    raise EdgeError(too_short_message(files[i], wav.shape[0], self.min_samples, sr, self.duration, pad))
                lengths.add(raw.shape[0], wav.shape[0])
                groups.setdefault(wav.shape[0], []).append((i, wav))
            for group in groups.values():
                probs = self.predict_features(self.features(np.stack([w for _, w in group])))
                for (i, _), row in zip(group, probs):
                    rows[i] = row
        note = lengths.note()
        if note:
            print(f"INFO: clip length: {note}", file=sys.stderr)
        if not rows:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.stack([rows[i] for i in range(len(files))]).astype(np.float32)


def result_json(classes: Sequence[str], files: Sequence[str], probs: np.ndarray) -> dict[str, Any]:
    """The ``--json`` document shared with ``sp4sc infer``."""
    return {"classes": list(classes), "files": [str(f) for f in files], "probs": [[float(p) for p in row] for row in probs]}


def format_table(classes: Sequence[str], files: Sequence[str], probs: np.ndarray) -> str:
    """One line per file: ``FILE<TAB>top class<TAB>probability``."""
    lines = []
    for f, row in zip(files, probs):
        k = int(np.argmax(row))
        lines.append(f"{f}\t{classes[k]}\t{row[k]:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge_infer.py", description="class probabilities of audio files with an exported sp4sc model")
    parser.add_argument("--model", required=True, help="model.onnx (or a variant) inside an `sp4sc export` folder")
    parser.add_argument("--frontend", default=None, help="frontend.json (default: beside the model)")
    parser.add_argument("--json", action="store_true", help='print {"classes", "files", "probs"} as JSON')
    parser.add_argument("--batch-size", type=int, default=16, help="files per ONNX Runtime call (default 16)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all cores)")
    parser.add_argument("--pad", choices=("silence", "repeat"), default=None,
                        help="pad clips shorter than the model's trained length up to it: with silence, or by "
                             "repeating the clip (default: each clip runs at its own length)")
    parser.add_argument("--crop", action="store_true",
                        help="cut clips longer than the model's trained length to their first part of that length "
                             "(default: each clip runs at its own length)")
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg)")
    args = parser.parse_args(argv)
    try:
        model = EdgeModel(args.model, args.frontend, threads=args.threads)
        probs = model.predict_files(args.files, batch_size=args.batch_size, pad=args.pad, crop=args.crop)
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result_json(model.classes, args.files, probs)))
    else:
        print(format_table(model.classes, args.files, probs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
