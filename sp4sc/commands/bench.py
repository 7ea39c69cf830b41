"""``sp4sc bench {features,train,infer}``: benchmarks that print figures and the machine."""

from __future__ import annotations

import argparse
import importlib

BENCHES = {
    "features": ("sp4sc.benchmarks.features", "feature-cache throughput (clips/s) at the sp4asc front end"),
    "train": ("sp4sc.benchmarks.train", "train-step throughput (clips/s) of SP4SC and CNN6"),
    "infer": ("sp4sc.benchmarks.infer", "per-clip latency: PyTorch eager vs ONNX Runtime"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True, metavar="{" + ",".join(BENCHES) + "}")
    for name, (module, help_) in BENCHES.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_bench_module=module)
        importlib.import_module(module).add_arguments(p)


def run(args: argparse.Namespace) -> int | None:
    return importlib.import_module(args._bench_module).run(args)
