"""The edge runner keeps torch-free copies of a few library pieces; each copy must agree with its original.

export/edge_infer.py and export/edge_frontend.py may not import sp4sc (which imports torch), so the
``--pad``/``--crop`` argument block, the JSON and table output, the clip-length tally and the
too-short message exist twice. These tests fail as soon as one side changes without the other.
(The log-mel front end and ``fit_clip`` twins are checked in tests/test_edge.py.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

from sp4sc.commands.infer import add_clip_length_arguments
from sp4sc.deploy import infer as lib_infer
from sp4sc.frontend import audio as lib_audio

EXPORT_DIR = Path(__file__).resolve().parents[1] / "export"
sys.path.insert(0, str(EXPORT_DIR))
import edge_frontend  # noqa: E402
import edge_infer  # noqa: E402


def _actions(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    return {a.dest: (tuple(a.option_strings), a.choices and tuple(a.choices), a.default, a.help, type(a).__name__)
            for a in parser._actions if a.dest in ("pad", "crop")}


def _edge_parser() -> argparse.ArgumentParser:
    """The edge runner's parser, captured from its main() without running it."""
    captured = {}
    real = argparse.ArgumentParser.parse_args

    def grab(self, *a, **k):
        captured["parser"] = self
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = grab
    try:
        with pytest.raises(SystemExit):
            edge_infer.main(["--model", "m.onnx", "x.wav"])
    finally:
        argparse.ArgumentParser.parse_args = real
    return captured["parser"]


def test_pad_and_crop_options_are_the_same_in_both_runners():
    lib = argparse.ArgumentParser()
    add_clip_length_arguments(lib)
    edge = _edge_parser()
    assert set(_actions(lib)) == {"pad", "crop"}
    assert _actions(edge) == _actions(lib)


def test_json_and_table_output_agree():
    classes = ["a", "b", "c"]
    files = ["x.wav", "dir/y.flac"]
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32)
    assert edge_infer.result_json(classes, files, probs) == lib_infer.result_json(classes, files, probs)
    assert edge_infer.format_table(classes, files, probs) == lib_infer.format_table(classes, files, probs)


@pytest.mark.parametrize("pad, crop", [(None, False), ("silence", False), ("repeat", True), (None, True)])
def test_clip_length_notes_agree(pad, crop):
    lengths = [16000, 8000, 24000, 12000, 16000]
    a = edge_frontend.ClipLengths(16000, 16000, pad=pad, crop=crop)
    b = lib_audio.ClipLengths(16000, 16000, pad=pad, crop=crop)
    for n in lengths:
        out = lib_audio.fit_clip(np.zeros(n, np.float32), 16000, pad=pad, crop=crop).shape[0]
        a.add(n, out)
        b.add(n, out)
    assert a.note() == b.note()


@pytest.mark.parametrize("pad", [None, "silence"])
def test_too_short_messages_agree(pad):
    args = ("clip.wav", 800, 4000, 16000, 1.0, pad)
    assert edge_frontend.too_short_message(*args) == lib_infer.too_short_message(*args)
