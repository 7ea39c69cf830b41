"""``sp4sc bench infer``: per-clip latency of a 10 s clip, PyTorch eager vs ONNX Runtime.

SP4SC (random weights: latency does not depend on them) at the ``sp4asc`` front
end (44.1 kHz, 431 frames x 256 mels per 10 s clip), on the CPU with ``--threads``
threads (default: the cores this process may use). Rows:

- model only (log-mel in, probabilities out) and end to end (waveform in);
- batch 1 and 16 (figures are per clip: the call's time divided by the batch);
- PyTorch eager: the model as trained (unfolded) and as deployed (folded, merged
  blocks: :func:`sp4sc.models.fold.inference_model`), front end :class:`sp4sc.frontend.features.LogMel`;
- ONNX Runtime fp32, fp16 and int8 (the graphs ``sp4sc export`` writes: int8 is
  the static QDQ model, calibrated here on log-mels of noise clips, which gives the
  same kernels and timing as real calibration; ``--dynamic`` adds ONNX Runtime's
  dynamic quantisation for comparison), end to end with the edge runner's numpy
  front end (``export/edge_frontend.py``, its threads = ``--threads``, ONNX Runtime's idle
  threads not spinning, as ``edge_infer.py`` runs) and with the waveform-in graph (front end
  inside ONNX); each ONNX Runtime row has its time as a ratio to fp32 (``0.45x``);
- everything at each of ``--threads`` (default 1 and 2).

Each figure is the median of ``--repeats`` timed calls after two warm-up calls:
wall-clock ms per clip (the latency) and process CPU ms per clip (all threads
together; on a busy machine it shows the work done, which the wall clock does not).
The machine line and the load average before and after are printed: on a shared
machine the figures are only as good as the machine is quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

GOAL_MODEL_MS = 25.0  # SP4SC under ONNX Runtime, per clip
GOAL_END_TO_END_MS = 40.0  # front end included
GOAL_INT8_RATIO = 0.5  # static int8 model time / fp32 model time (issue 30)
GOAL_INT8_END_TO_END_MS = 8.0  # edge front end + int8 model, per 10 s clip on 2 cores (issue 30)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--model", default="sp4sc", help="registered model name (default sp4sc)")
    parser.add_argument("--frontend", default="sp4asc", help="front-end preset (default sp4asc: 10 s, 431 x 256)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per figure at batch 1 (default 7)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="thread counts for torch and ONNX Runtime, each measured in turn (default 1 2; 0: all cores)")
    parser.add_argument("--dynamic", action="store_true", help="also time ONNX Runtime's dynamic int8 quantisation")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="batch sizes (default 1 16)")
    parser.add_argument("--skip-torch-unfolded", action="store_true", help="skip the (slow) unfolded eager model")
    parser.add_argument("--agreement", metavar="CKPT", default=None,
                        help="instead of timing: export CKPT (fp32/fp16/int8) and report how far the fp16 and int8 "
                             "models' probabilities move from the torch model's on --files (real audio)")
    parser.add_argument("--files", nargs="*", default=[], help="audio files for --agreement")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing: ONNX Runtime's per-node profile of the fp32 and int8 graphs at batch 1 "
                             "and the first --threads count (time per operator type and the slowest nodes)")


def _time(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds (all threads) of ``fn()`` over
    ``repeats`` calls, after two warm-up calls."""
    fn()
    fn()
    wall, cpu = [], []
    for _ in range(max(1, repeats)):
        c, t = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def _edge_frontend_module():
    """``export/edge_frontend.py`` from the checkout, or None when sp4sc is installed without it."""
    folder = Path(__file__).resolve().parents[2] / "export"
    if not (folder / "edge_frontend.py").exists():
        return None
    sys.path.insert(0, str(folder))
    try:
        import edge_frontend

        return edge_frontend
    finally:
        sys.path.remove(str(folder))


def _models(model_name: str, frontend: str, dynamic: bool = False):
    """``(cfg, model, logmel, protos)``: the front end, the model (seed 0 random weights: latency does not
    depend on them), its LogMel and the ONNX graphs ``sp4sc export`` writes (``protos``: fp32, fp16, int8 static
    QDQ calibrated on log-mels of noise clips at a few loudness levels, and with ``dynamic`` int8-dynamic)."""
    import torch

    from sp4sc.deploy.onnx_graph import quantize_int8, to_onnx
    from sp4sc.deploy.quantize import quantize_static_int8
    from sp4sc.frontend.features import LogMel, frontend_preset
    from sp4sc.models import create_model
    from sp4sc.models.fold import deploy_model, fold_batchnorm

    cfg = frontend_preset(frontend)
    torch.manual_seed(0)
    model = create_model(model_name, n_mels=cfg.n_mels).eval()
    folded = fold_batchnorm(model)
    logmel = LogMel(cfg).eval()
    min_frames = int(getattr(folded, "min_frames", 16))
    rng = np.random.default_rng(0)
    with torch.no_grad():
        calib_wav = (rng.standard_normal((16, cfg.n_samples)) * np.geomspace(1e-3, 0.3, 16)[:, None]).astype(np.float32)
        calib = logmel(torch.from_numpy(calib_wav)).unsqueeze(1).numpy()  # (16, 1, frames, mels)
    protos = {"fp32": to_onnx(deploy_model(folded), cfg.n_mels, 4 * min_frames)}
    protos["fp16"] = to_onnx(deploy_model(folded), cfg.n_mels, 4 * min_frames, half=True)
    protos["int8"] = quantize_static_int8(protos["fp32"], calib)
    if dynamic:
        protos["int8-dynamic"] = quantize_int8(protos["fp32"])
    return cfg, model, logmel, protos


def run_bench(model_name: str = "sp4sc", frontend: str = "sp4asc", repeats: int = 7,
              threads: int | Sequence[int] = (1, 2), batches: tuple[int, ...] = (1, 16), unfolded: bool = True,
              dynamic: bool = False) -> dict[str, Any]:
    """Measure and return ``{"machine", "machine_line", "load_before", "load_after", "rows", "goal"}``.

    Every row carries ``threads``; ONNX Runtime rows carry ``vs_fp32`` (ms / the fp32 row's ms of the
    same kind, batch and threads).
    """
    import onnxruntime as ort
    import torch

    from sp4sc.cpu import cores
    from sp4sc.machine import describe, line
    from sp4sc.models.fold import inference_model
    from sp4sc.deploy.onnx_graph import waveform_model
    from sp4sc.deploy.onnx_parity import ort_session

    n_cores = cores()
    thread_list = [int(t) or n_cores for t in ([threads] if isinstance(threads, int) else threads)]
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    cfg, model, logmel, protos = _models(model_name, frontend, dynamic)
    deployed = inference_model(model)
    rng = np.random.default_rng(0)
    wave_proto = waveform_model(protos["fp32"], cfg)
    edge = _edge_frontend_module()

    rows: list[dict[str, Any]] = []

    def add(name: str, runtime: str, precision: str, batch: int, n_threads: int, frontend_included: bool,
            timing: tuple[float, float]) -> None:
        wall, cpu = timing
        rows.append({
            "name": name, "runtime": runtime, "precision": precision, "batch": batch, "threads": n_threads,
            "frontend_included": frontend_included, "ms_per_call": wall * 1e3, "ms_per_clip": wall * 1e3 / batch,
            "cpu_ms_per_clip": cpu * 1e3 / batch,
        })

    torch_threads = torch.get_num_threads()  # restored below: a caller's (or a test run's) torch keeps its threads
    try:
        for n_threads in thread_list:
            torch.set_num_threads(n_threads)
            sessions = {k: ort_session(p, threads=n_threads) for k, p in protos.items()}
            edge_fe = edge.EdgeFrontEnd(cfg.to_dict(), workers=n_threads) if edge else None
            # end to end as the edge runner runs: ORT's idle threads do not spin (they would take the front end's cores)
            edge_sessions = {k: ort_session(protos[k], threads=n_threads, spin=False) for k in ("fp32", "int8")}
            wave_sess = ort_session(wave_proto, threads=n_threads)
            for batch in batches:
                reps = repeats if batch == 1 else max(2, repeats // 3)
                wav = (0.1 * rng.standard_normal((batch, cfg.n_samples))).astype(np.float32)  # (batch, samples)
                with torch.no_grad():
                    x_t = logmel(torch.from_numpy(wav)).unsqueeze(1)  # (batch, 1, frames, mels)
                x_np = x_t.numpy()

                with torch.no_grad():
                    add("front end: LogMel (torch)", "torch", "fp32", batch, n_threads, True,
                        _time(lambda: logmel(torch.from_numpy(wav)), reps))
                    if edge_fe is not None:
                        add("front end: numpy (edge runner)", "numpy", "fp32", batch, n_threads, True,
                            _time(lambda: edge_fe(wav), reps))
                    if unfolded:
                        add("model: torch eager, unfolded", "torch", "fp32", batch, n_threads, False,
                            _time(lambda: model(x_t), reps))
                    add("model: torch eager, folded+merged", "torch", "fp32", batch, n_threads, False,
                        _time(lambda: deployed(x_t), reps))
                    add("end to end: torch LogMel + folded model", "torch", "fp32", batch, n_threads, True,
                        _time(lambda: deployed(logmel(torch.from_numpy(wav)).unsqueeze(1)), reps))
                for precision, sess in sessions.items():
                    add(f"model: ONNX Runtime {precision}", "onnxruntime", precision, batch, n_threads, False,
                        _time(lambda s=sess: s.run(["probs"], {"logmel": x_np}), reps))
                if edge_fe is not None:
                    for precision in ("fp32", "int8"):
                        add(f"end to end: numpy front end + ONNX Runtime {precision}", "onnxruntime", precision, batch,
                            n_threads, True,
                            _time(lambda s=edge_sessions[precision]: s.run(["probs"], {"logmel": edge_fe(wav)[:, None]}),
                                  reps))
                add("end to end: ONNX Runtime waveform graph fp32", "onnxruntime", "fp32", batch, n_threads, True,
                    _time(lambda: wave_sess.run(["probs"], {"waveform": wav}), reps))
    finally:
        torch.set_num_threads(torch_threads)

    # ratio to fp32: ONNX Runtime rows against the fp32 row of the same kind, batch and threads
    for r in rows:
        if r["runtime"] != "onnxruntime":
            continue
        base = [b for b in rows if b["runtime"] == "onnxruntime" and b["precision"] == "fp32"
                and b["batch"] == r["batch"] and b["threads"] == r["threads"]
                and b["name"] == r["name"].replace(r["precision"], "fp32")]
        r["vs_fp32"] = r["ms_per_clip"] / base[0]["ms_per_clip"] if base else None

    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None

    def best(pred) -> float | None:
        vals = [r["ms_per_clip"] for r in rows if pred(r)]
        return min(vals) if vals else None

    def ratio(n_threads: int) -> float | None:
        r = [x for x in rows if x["name"] == "model: ONNX Runtime int8" and x["batch"] == 1 and x["threads"] == n_threads]
        return r[0]["vs_fp32"] if r else None

    model_ms = best(lambda r: r["name"] == "model: ONNX Runtime fp32" and r["batch"] == 1)
    e2e_ms = best(lambda r: r["name"].startswith("end to end") and r["runtime"] == "onnxruntime" and r["batch"] == 1)
    e2e8_ms = best(lambda r: r["name"] == "end to end: numpy front end + ONNX Runtime int8" and r["batch"] == 1)
    ratios = {t: ratio(t) for t in thread_list}
    best_ratio = min((v for v in ratios.values() if v is not None), default=None)
    return {
        "model": model_name, "frontend": cfg.to_dict(), "clip_seconds": cfg.duration,
        "input_shape": [1, 1, cfg.n_frames, cfg.n_mels], "threads": thread_list,
        "onnxruntime": ort.__version__, "machine": describe(), "machine_line": line(),
        "load_before": load_before, "load_after": load_after, "rows": rows,
        "goal": {
            "model_ms_batch1": model_ms, "model_goal_ms": GOAL_MODEL_MS,
            "model_within_goal": model_ms is not None and model_ms <= GOAL_MODEL_MS,
            "end_to_end_ms_batch1": e2e_ms, "end_to_end_goal_ms": GOAL_END_TO_END_MS,
            "end_to_end_within_goal": e2e_ms is not None and e2e_ms <= GOAL_END_TO_END_MS,
            "int8_vs_fp32_by_threads": ratios, "int8_ratio_goal": GOAL_INT8_RATIO,
            "int8_within_goal": best_ratio is not None and best_ratio <= GOAL_INT8_RATIO,
            "int8_end_to_end_ms_batch1": e2e8_ms, "int8_end_to_end_goal_ms": GOAL_INT8_END_TO_END_MS,
            "int8_end_to_end_within_goal": e2e8_ms is not None and e2e8_ms <= GOAL_INT8_END_TO_END_MS,
        },
    }


def profile_ops(model_name: str = "sp4sc", frontend: str = "sp4asc", threads: int = 1, repeats: int = 7,
                precisions: Sequence[str] = ("fp32", "int8"), top: int = 8) -> dict[str, Any]:
    """Where the ONNX Runtime time goes: per-node kernel times from ONNX Runtime's profiler.

    Each precision's graph (as :func:`run_bench` builds it) runs ``repeats`` calls at batch 1 on one
    10 s (preset-length) clip after two warm-ups, with profiling on; each node's ``*_kernel_time`` is the
    median over the timed calls (ms per call), and the nodes are summed per operator type.
    Profiling adds a little time per node, so the totals run above ``run_bench``'s figures; the shares
    are what to read.
    """
    import tempfile

    import torch

    from sp4sc.deploy.onnx_parity import ort_session
    from sp4sc.machine import describe, line

    cfg, _, logmel, protos = _models(model_name, frontend)
    wav = (0.1 * np.random.default_rng(0).standard_normal((1, cfg.n_samples))).astype(np.float32)
    with torch.no_grad():
        x = logmel(torch.from_numpy(wav)).unsqueeze(1).numpy()  # (1, 1, frames, mels)
    out: dict[str, Any] = {"model": model_name, "frontend": cfg.to_dict(), "clip_seconds": cfg.duration,
                           "input_shape": list(x.shape), "threads": threads, "repeats": repeats,
                           "machine": describe(), "machine_line": line(), "precisions": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in precisions:
            sess = ort_session(protos[precision], threads=threads, profile_prefix=str(Path(tmp) / precision))
            for _ in range(2):  # warm-up calls: their events are dropped below
                sess.run(["probs"], {"logmel": x})
            for _ in range(repeats):
                sess.run(["probs"], {"logmel": x})
            events = json.loads(Path(sess.end_profiling()).read_text())
            runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
            n_warm = 2 if len(runs) >= repeats + 2 else 0
            t_from = runs[n_warm]["ts"] if runs else 0
            kernels = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")
                       and e.get("ts", 0) >= t_from]
            durations: dict[str, tuple[str, list[float]]] = {}
            for e in kernels:
                name = e["name"][: -len("_kernel_time")]
                durations.setdefault(name, (e.get("args", {}).get("op_name", "?"), []))[1].append(e["dur"] / 1e3)
            # median per node over the calls: one slow call of a node (seen: 30x on a depthwise int8 conv) would
            # otherwise dominate a mean
            per_node = {name: (op, statistics.median(ds)) for name, (op, ds) in durations.items()}
            per_op: dict[str, float] = {}
            for op, ms in per_node.values():
                per_op[op] = per_op.get(op, 0.0) + ms
            total = sum(per_op.values())
            run_ms = statistics.median(r["dur"] / 1e3 for r in runs[n_warm:]) if runs[n_warm:] else None
            out["precisions"][precision] = {
                "kernel_ms_per_call": total, "run_ms_median": run_ms, "nodes": len(per_node),
                "by_op": sorted(([op, ms, ms / total if total else 0.0] for op, ms in per_op.items()),
                                key=lambda r: -r[1]),
                "top_nodes": sorted(([n, op, ms, ms / total if total else 0.0] for n, (op, ms) in per_node.items()),
                                    key=lambda r: -r[2])[:top],
            }
    return out


def format_profile(res: dict[str, Any]) -> str:
    lines = [
        f"bench infer --profile: {res['model']} at the {res['frontend']['name']} front end, one "
        f"{res['clip_seconds']:g} s clip = input {tuple(res['input_shape'])}; {res['threads']} thread(s), "
        f"{res['repeats']} profiled calls at batch 1",
        res["machine_line"],
    ]
    for precision, p in res["precisions"].items():
        run = f", session run {p['run_ms_median']:.2f} ms (median)" if p["run_ms_median"] is not None else ""
        lines += ["", f"{precision}: kernels {p['kernel_ms_per_call']:.2f} ms per call over {p['nodes']} nodes{run}",
                  f"  {'operator':<28} {'ms/call':>8} {'share':>6}"]
        lines += [f"  {op:<28} {ms:>8.2f} {share:>6.0%}" for op, ms, share in p["by_op"]]
        lines.append(f"  {'slowest nodes':<44} {'operator':<20} {'ms/call':>8} {'share':>6}")
        lines += [f"  {name[:44]:<44} {op:<20} {ms:>8.2f} {share:>6.0%}" for name, op, ms, share in p["top_nodes"]]
    return "\n".join(lines)


def format_table(res: dict[str, Any]) -> str:
    threads = res["threads"] if isinstance(res["threads"], list) else [res["threads"]]
    lines = [
        f"bench infer: {res['model']} at the {res['frontend']['name']} front end, one {res['clip_seconds']:g} s clip "
        f"= input {tuple(res['input_shape'])}; threads {' and '.join(str(t) for t in threads)}; "
        f"onnxruntime {res['onnxruntime']}",
        res["machine_line"],
        f"load average (1/5/15 min) before {_load(res['load_before'])}, after {_load(res['load_after'])}",
        "",
        f"{'':<52} {'threads':>7} {'batch':>5} {'ms/clip':>9} {'vs fp32':>8} {'ms/call':>9} {'cpu ms/clip':>12}",
    ]
    for r in res["rows"]:
        ratio = f"{r['vs_fp32']:.2f}x" if r.get("vs_fp32") is not None else ""
        lines.append(f"{r['name']:<52} {r.get('threads', ''):>7} {r['batch']:>5} {r['ms_per_clip']:>9.2f} {ratio:>8} "
                     f"{r['ms_per_call']:>9.1f} {r['cpu_ms_per_clip']:>12.1f}")
    g = res["goal"]
    lines.append("")
    if g["model_ms_batch1"] is None:
        # the goals are per-clip latencies at batch 1; a run without it has nothing to hold them against
        lines.append("goals (stated at batch 1) not checked: this run has no batch-1 figures; add 1 to --batch")
        return "\n".join(lines)
    lines.append(
        f"goal: ONNX Runtime model <= {g['model_goal_ms']:g} ms/clip: {g['model_ms_batch1']:.1f} ms "
        f"({'met' if g['model_within_goal'] else 'NOT met'}); end to end <= {g['end_to_end_goal_ms']:g} ms: "
        f"{g['end_to_end_ms_batch1']:.1f} ms ({'met' if g['end_to_end_within_goal'] else 'NOT met'}) (batch 1)"
    )
    if any(v is not None for v in (g.get("int8_vs_fp32_by_threads") or {}).values()):
        per = ", ".join(f"{v:.2f}x at {t} thread{'s' if int(t) > 1 else ''}"
                        for t, v in g["int8_vs_fp32_by_threads"].items() if v is not None)
        lines.append(f"goal: static int8 model <= {g['int8_ratio_goal']:g}x fp32: {per} "
                     f"({'met' if g['int8_within_goal'] else 'NOT met'}, batch 1)")
    if g.get("int8_end_to_end_ms_batch1") is not None:
        lines.append(f"goal: edge front end + int8 model <= {g['int8_end_to_end_goal_ms']:g} ms: "
                     f"{g['int8_end_to_end_ms_batch1']:.2f} ms "
                     f"({'met' if g['int8_end_to_end_within_goal'] else 'NOT met'}, batch 1, best thread count)")
    return "\n".join(lines)


def _load(v) -> str:
    return "n/a" if v is None else "/".join(f"{x:.2f}" for x in v)


def variant_agreement(ckpt: str, files: list[str], batch_size: int = 16) -> dict[str, Any]:
    """Probabilities of the exported fp32/fp16/int8 models vs the torch model on real audio files.

    Top-1 agreement with the torch model and max / mean absolute probability
    differences; with labelled files this is the accuracy change's upper bound
    (a changed top-1 can only move accuracy by that fraction).
    """
    import tempfile

    import torch

    from sp4sc.frontend.audio import load_audio
    from sp4sc.models.checkpoint import load_model
    from sp4sc.frontend.features import LogMel
    from sp4sc.deploy.onnx_export import FILES, export_onnx, ort_session

    loaded = load_model(ckpt)
    cfg = loaded.frontend
    logmel = LogMel(cfg).eval()
    feats, ref = [], []
    for i in range(0, len(files), batch_size):
        wav = np.stack([load_audio(f, cfg.sample_rate, cfg.duration) for f in files[i : i + batch_size]])
        with torch.no_grad():
            x = logmel(torch.from_numpy(wav)).unsqueeze(1)  # (batch, 1, frames, mels)
            ref.append(torch.softmax(loaded.model(x).double(), -1).numpy())
        feats.append(x.numpy())
    x_all, ref_all = np.concatenate(feats), np.concatenate(ref)
    out: dict[str, Any] = {"checkpoint": str(ckpt), "files": len(files), "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        # int8 calibrated on the same files (no training data here): an optimistic view of static int8;
        # `sp4sc export --int8` calibrates on training clips and reports the evaluation clips apart
        export_onnx(loaded, Path(tmp) / "exp", fp16=True, int8=True, no_budget=True, calib=x_all)
        for key in ("fp32", "fp16", "int8"):
            sess = ort_session(Path(tmp) / "exp" / FILES[key])
            p = np.concatenate([sess.run(["probs"], {"logmel": x_all[i : i + batch_size]})[0]
                                for i in range(0, len(x_all), batch_size)])
            out["variants"][key] = {
                "top1_agreement": float(np.mean(p.argmax(1) == ref_all.argmax(1))),
                "max_abs_prob": float(np.abs(p - ref_all).max()),
                "mean_abs_prob": float(np.abs(p - ref_all).mean()),
            }
    out["mean_top_prob"] = float(ref_all.max(1).mean())
    return out


def run(args: argparse.Namespace) -> int:
    from sp4sc.errors import Sp4scError

    if args.agreement:
        if not args.files:
            raise Sp4scError("--agreement: give the audio files with --files FILE...")
        res = variant_agreement(args.agreement, list(args.files))
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            from sp4sc.machine import line

            print(f"{res['checkpoint']}: exported variants vs the torch model on {res['files']} files "
                  f"(mean top probability {res['mean_top_prob']:.3f})")
            for k, v in res["variants"].items():
                print(f"  {k:<5} top-1 agreement {v['top1_agreement']:.3f}, max |dprob| {v['max_abs_prob']:.2e}, "
                      f"mean |dprob| {v['mean_abs_prob']:.2e}")
            print(line())
        return 0

    if args.repeats < 1:
        raise Sp4scError(f"--repeats: must be at least 1, got {args.repeats}")
    if any(b < 1 for b in args.batch):
        raise Sp4scError(f"--batch: batch sizes must be at least 1, got {args.batch}")
    if any(t < 0 for t in args.threads):
        raise Sp4scError(f"--threads: thread counts must be 0 (all cores) or more, got {args.threads}")
    if args.profile:
        from sp4sc.cpu import cores

        res = profile_ops(args.model, args.frontend, threads=args.threads[0] or cores(), repeats=args.repeats)
        print(json.dumps(res, indent=2) if args.json else format_profile(res))
        return 0
    res = run_bench(args.model, args.frontend, args.repeats, tuple(args.threads), tuple(args.batch),
                    unfolded=not args.skip_torch_unfolded, dynamic=args.dynamic)
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0
