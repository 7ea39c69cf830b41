"""Module boundaries: the deploy-time model sits below inference and export, the library knows nothing of the demo."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "sp4sc"


def _imports(path: Path) -> set[str]:
    """Every sp4sc module a file imports, at any level (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sp4sc"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("sp4sc")}
    return out


@pytest.mark.parametrize("module, forbidden", [
    ("deploy/infer.py", {"sp4sc.deploy.onnx_export", "sp4sc.deploy.onnx_graph", "sp4sc.deploy.onnx_parity"}),
    ("models/fold.py", {"sp4sc.deploy.infer", "sp4sc.deploy.onnx_export", "sp4sc.deploy.onnx_graph", "sp4sc.deploy.onnx_parity"}),
    ("deploy/onnx_export.py", {"sp4sc.deploy.infer"}),
    ("deploy/onnx_graph.py", {"sp4sc.deploy.infer", "sp4sc.deploy.onnx_export", "sp4sc.deploy.onnx_parity"}),
    ("deploy/onnx_parity.py", {"sp4sc.deploy.infer", "sp4sc.deploy.onnx_export"}),
])
def test_no_import_circle_between_inference_and_export(module, forbidden):
    assert not _imports(PKG / module) & forbidden


def test_library_modules_do_not_know_the_demo():
    for path in PKG.rglob("*.py"):
        if path.parent.name == "commands" or path.name == "cli.py":  # the commands and their dispatcher
            continue
        text = path.read_text()
        assert "demo_step" not in text and "sp4sc.commands.demo" not in text, path


def test_deploy_model_lives_with_folding_and_the_old_names_still_work():
    from sp4sc.deploy import infer, onnx_export
    from sp4sc.models import fold

    assert onnx_export.deploy_model is fold.deploy_model and onnx_export.DeploySepBlock is fold.DeploySepBlock
    assert infer.inference_model is fold.inference_model


def test_inference_imports_no_onnx():
    code = "import sys, sp4sc.deploy.infer; sys.exit(any(m.startswith(('onnx', 'sp4sc.deploy.onnx')) for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
