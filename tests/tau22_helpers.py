"""Tiny TAU Urban Acoustic Scenes 2022 Mobile layouts for tests (DCASE 2022-2025 Task 1).

``make_tau22(root, ...)`` writes ``split_setup/split{5,10,...}.csv`` and
``test.csv`` in the official format (tab-separated ``filename<TAB>scene_label``,
names ``audio/<scene>-<city>-<loc>-<segment>-<second>-<device>.wav``) and, on
request, 1 s noise clips at 44.1 kHz under ``audio/``. ``make_tau22_eval``
writes an evaluation folder in the DCASE 2025 layout
(``evaluation_setup/fold1_test.csv`` with ``filename`` and ``device_id``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sp4sc.constants import SCENES

SR = 44100


def tau22_name(scene: str, city: str, loc: int, segment: int, second: int, device: str) -> str:
    return f"audio/{scene}-{city}-{loc}-{segment}-{second}-{device}.wav"


def _wav(path: Path, rng: np.random.Generator, seconds: float = 1.0) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (0.1 * rng.standard_normal(int(SR * seconds))).astype(np.float32), SR)


def make_tau22(root: Path, *, train_devices=("a", "b"), test_devices=("a", "s4"), seconds=2, audio=False,
               splits=(5, 10, 25, 50)) -> Path:
    """Nested splits over ``seconds`` 1 s segments per scene and device; a disjoint test split."""
    rng = np.random.default_rng(0)
    (root / "split_setup").mkdir(parents=True, exist_ok=True)
    train = [(tau22_name(s, "lisbon", 1000 + k, 40000 + k, i, d), s)
             for k, s in enumerate(SCENES) for d in train_devices for i in range(seconds)]
    test = [(tau22_name(s, "vienna", 2000 + k, 50000 + k, i, d), s)
            for k, s in enumerate(SCENES) for d in test_devices for i in range(seconds)]
    # a larger split holds the smaller ones: the first n rows of one list, n growing with the %
    for j, pct in enumerate(splits):
        n = max(1, len(train) * (j + 1) // len(splits))
        (root / "split_setup" / f"split{pct}.csv").write_text(
            "filename\tscene_label\n" + "".join(f"{n_}\t{s}\n" for n_, s in train[:n]))
    (root / "split_setup" / "test.csv").write_text("filename\tscene_label\n" + "".join(f"{n}\t{s}\n" for n, s in test))
    if audio:
        for name, _ in train + test:
            _wav(root / name, rng)
    return root


def make_tau22_eval(root: Path, devices=("a", "s1", "s7", "unknown"), per_device: int = 3, audio: bool = True) -> Path:
    """A DCASE 2025-style evaluation folder: ``evaluation_setup/fold1_test.csv`` (filename, device_id), ``audio/<n>.wav``."""
    rng = np.random.default_rng(1)
    (root / "evaluation_setup").mkdir(parents=True, exist_ok=True)
    rows = []
    for d in devices:
        for _ in range(per_device):
            rows.append((f"audio/{len(rows)}.wav", d))
    (root / "evaluation_setup" / "fold1_test.csv").write_text(
        "filename\tdevice_id\n" + "".join(f"{n}\t{d}\n" for n, d in rows))
    if audio:
        for n, _ in rows:
            _wav(root / n, rng)
    return root
