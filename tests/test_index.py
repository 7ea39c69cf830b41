"""Dataset indexes on the real TAU2020 metadata and ESC-10, and every validation error naming its culprit."""

from __future__ import annotations

from pathlib import Path

import pytest

from sp4sc.constants import SCENES
from sp4sc.data.index import load_index, summarize
from sp4sc.errors import Sp4scError

META_HEADER = "filename\tscene_label\tidentifier\tsource_label\n"


# ------------------------------------------------------------------ real metadata


@pytest.mark.shared
def test_tau2020_real_metadata_counts(tau_meta_root):
    idx = load_index("tau2020", tau_meta_root, check_audio=False)
    assert idx.classes == SCENES
    assert len(idx.all_clips()) == 23035
    assert [len(idx.split(s)) for s in ("train", "evaluate", "test")] == [13962, 2968, 2968]
    devices = {}
    for c in idx.all_clips():
        devices[c.device] = devices.get(c.device, 0) + 1
    assert devices["a"] == 14400 and sum(devices.values()) == 23035
    train_devices = {c.device for c in idx.split("train")}
    test_devices = {c.device for c in idx.split("test")}
    assert {"s4", "s5", "s6"} <= test_devices and not {"s4", "s5", "s6"} & train_devices
    cities = {c.city for c in idx.all_clips()}
    assert len(cities) == 10 and {"barcelona", "lisbon", "vienna"} <= cities
    first = idx.split("train")[0]
    assert first.path == "audio/airport-lisbon-1000-40000-a.wav"
    assert (first.scene, first.label, first.device, first.city) == ("airport", 0, "a", "lisbon")
    assert all(c.scene is not None for c in idx.split("test"))  # labels from meta.csv
    s = summarize(idx)
    assert s["total"] == 23035 and s["splits"]["train"]["by_device"]["a"] == 10215


@pytest.mark.shared
def test_tau2020_missing_audio_is_one_error(tau_meta_root):
    with pytest.raises(Sp4scError, match="23035 listed audio files are missing") as err:
        load_index("tau2020", tau_meta_root)
    assert "audio/airport-lisbon-1000-40000-a.wav" in str(err.value) and "..." in str(err.value)


@pytest.mark.shared
def test_esc10_folds(esc10_root):
    idx = load_index("esc", esc10_root)
    assert len(idx.all_clips()) == 400
    assert [len(idx.split(f"fold{k}")) for k in range(1, 6)] == [80] * 5
    assert idx.classes == tuple(sorted(idx.classes)) and len(idx.classes) == 10
    train, val = idx.cv_split(3)
    assert len(train) == 320 and len(val) == 80 and {c.fold for c in val} == {3}
    dog = next(c for c in idx.all_clips() if c.path == "audio/1-100032-A-0.ogg")
    assert dog.scene == "dog" and idx.classes[dog.label] == "dog" and dog.fold == 1
    with pytest.raises(Sp4scError, match="fold 7"):
        idx.cv_split(7)


# ------------------------------------------------------------------ synthetic layouts


def make_tau(root: Path, meta_rows=None, train=None, evaluate=None, test=None, audio=True) -> Path:
    """A minimal TAU2020 layout; rows are lists of fields (joined with tabs)."""
    meta_rows = meta_rows or [
        [f"audio/{s}-lyon-{i}-{i}-a.wav", s, f"lyon-{i}", "a"] for i, s in enumerate(SCENES[:4])
    ]
    (root / "evaluation_setup").mkdir(parents=True, exist_ok=True)
    (root / "meta.csv").write_text(META_HEADER + "".join("\t".join(r) + "\n" for r in meta_rows))
    names = [(r[0], r[1]) for r in meta_rows]
    train = train if train is not None else "filename\tscene_label\n" + "".join(f"{n}\t{s}\n" for n, s in names[:2])
    evaluate = evaluate if evaluate is not None else "filename\tscene_label\n" + "".join(f"{n}\t{s}\n" for n, s in names[2:])
    test = test if test is not None else "filename\n" + "".join(f"{n}\n" for n, _ in names[2:])
    for split, text in (("train", train), ("evaluate", evaluate), ("test", test)):
        (root / "evaluation_setup" / f"fold1_{split}.csv").write_text(text)
    if audio:
        (root / "audio").mkdir(exist_ok=True)
        for n, _ in names:
            if not n.startswith("/") and ".." not in n:
                (root / n).write_bytes(b"x")
    return root


def test_minimal_layout_loads_and_tau2021eval(tmp_path):
    root = make_tau(tmp_path)
    idx = load_index("tau2020", root)
    assert len(idx.split("train")) == 2 and idx.split("evaluate")[0].scene == SCENES[2]
    ev = load_index("tau2021eval", root)
    assert [c.label for c in ev.split("test")] == [None, None] and ev.classes == SCENES


def test_unknown_scene_names_line_and_value(tmp_path):
    rows = [["audio/x-lyon-1-1-a.wav", "airport", "lyon-1", "a"], ["audio/y-lyon-2-2-a.wav", "airprot", "lyon-2", "a"]]
    make_tau(tmp_path, rows, train="filename\tscene_label\naudio/x-lyon-1-1-a.wav\tairport\n",
             evaluate="filename\tscene_label\naudio/x-lyon-1-1-a.wav\tairport\n", test="filename\naudio/x-lyon-1-1-a.wav\n")
    with pytest.raises(Sp4scError, match=r"meta.csv: line 3: unknown scene label 'airprot'"):
        load_index("tau2020", tmp_path)


def test_missing_column_is_named(tmp_path):
    make_tau(tmp_path)
    (tmp_path / "meta.csv").write_text("filename\tscene_label\tidentifier\naudio/a.wav\tairport\tlyon-1\n")
    with pytest.raises(Sp4scError, match=r"meta.csv: missing column source_label"):
        load_index("tau2020", tmp_path)


def test_comma_instead_of_tab(tmp_path):
    make_tau(tmp_path)
    (tmp_path / "meta.csv").write_text("filename,scene_label,identifier,source_label\naudio/a.wav,airport,lyon-1,a\n")
    with pytest.raises(Sp4scError, match=r"meta.csv: the header is comma-separated.*must be tab-separated"):
        load_index("tau2020", tmp_path)


def test_comma_rows_in_a_one_column_list(tmp_path):
    make_tau(tmp_path, evaluate="filename,scene_label\naudio/bus-lyon-1-1-a.wav,bus\n")
    with pytest.raises(Sp4scError, match=r"fold1_evaluate.csv: the header is comma-separated"):
        load_index("tau2020", tmp_path)


def test_duplicate_filename_is_named(tmp_path):
    rows = [["audio/x.wav", "airport", "lyon-1", "a"], ["audio/y.wav", "bus", "lyon-2", "a"], ["audio/x.wav", "bus", "lyon-3", "a"]]
    make_tau(tmp_path, rows)
    with pytest.raises(Sp4scError, match=r"meta.csv: duplicate filename 'audio/x.wav' on lines 2 and 4"):
        load_index("tau2020", tmp_path)


@pytest.mark.parametrize("bad,message", [("../outside.wav", "escapes the dataset root"),
                                         ("audio/../../outside.wav", "escapes the dataset root"),
                                         ("/etc/passwd", "absolute path")])
def test_paths_escaping_the_root(tmp_path, bad, message):
    rows = [["audio/x.wav", "airport", "lyon-1", "a"], [bad, "bus", "lyon-2", "a"]]
    make_tau(tmp_path, rows)
    with pytest.raises(Sp4scError, match=message) as err:
        load_index("tau2020", tmp_path, check_audio=False)
    assert bad in str(err.value) and "line 3" in str(err.value)


def test_empty_file_is_named(tmp_path):
    make_tau(tmp_path, train="")
    with pytest.raises(Sp4scError, match=r"fold1_train.csv: is empty"):
        load_index("tau2020", tmp_path)


def test_missing_audio_counts_and_names(tmp_path):
    rows = [[f"audio/clip{i}.wav", "park", f"lyon-{i}", "b"] for i in range(9)]
    make_tau(tmp_path, rows)
    for i in (1, 2, 4, 5, 6, 7, 8):
        (tmp_path / f"audio/clip{i}.wav").unlink()
    with pytest.raises(Sp4scError, match=r"7 listed audio files are missing on disk") as err:
        load_index("tau2020", tmp_path)
    msg = str(err.value)
    assert "audio/clip1.wav" in msg and "audio/clip6.wav" in msg and "audio/clip7.wav" not in msg  # first five
    assert load_index("tau2020", tmp_path, check_audio=False).split("train")[0].path == "audio/clip0.wav"


def test_split_file_not_in_meta(tmp_path):
    make_tau(tmp_path, test="filename\naudio/ghost.wav\n")
    with pytest.raises(Sp4scError, match=r"fold1_test.csv: line 2: 'audio/ghost.wav' is not listed in"):
        load_index("tau2020", tmp_path)


def test_unknown_dataset_and_root(tmp_path):
    with pytest.raises(Sp4scError, match="--dataset 'tau2019'"):
        load_index("tau2019", tmp_path)
    with pytest.raises(Sp4scError, match="nowhere"):
        load_index("tau2020", tmp_path / "nowhere")


def make_esc(root: Path, text: str) -> Path:
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    (root / "meta" / "esc50.csv").write_text(text)
    return root


def test_esc_errors_name_the_culprit(tmp_path):
    root = make_esc(tmp_path / "tab", "filename\tfold\ttarget\tcategory\n1-1-A-0.ogg\t1\t0\tdog\n")
    with pytest.raises(Sp4scError, match=r"esc50.csv: the header is tab-separated.*comma-separated"):
        load_index("esc", root)
    root = make_esc(tmp_path / "col", "filename,fold,target\n1-1-A-0.ogg,1,0\n")
    with pytest.raises(Sp4scError, match=r"esc50.csv: missing column category"):
        load_index("esc", root)
    root = make_esc(tmp_path / "dup", "filename,fold,target,category\na.ogg,1,0,dog\nb.ogg,2,1,cat\na.ogg,3,0,dog\n")
    with pytest.raises(Sp4scError, match=r"duplicate filename 'audio/a.ogg' on lines 2 and 4"):
        load_index("esc", root, check_audio=False)
    root = make_esc(tmp_path / "fold", "filename,fold,target,category\na.ogg,one,0,dog\n")
    with pytest.raises(Sp4scError, match=r"line 2: fold 'one' is not an integer"):
        load_index("esc", root, check_audio=False)
    root = make_esc(tmp_path / "esc", "filename,fold,target,category\r\nb.ogg,2,1,cat\r\na.ogg,1,0,dog\r\n")
    idx = load_index("esc", root, check_audio=False)
    assert idx.classes == ("cat", "dog") and idx.split("fold1")[0].label == 1


def test_inner_dotdot_that_stays_inside_is_normalised(tmp_path):
    rows = [["audio/sub/../x.wav", "airport", "lyon-1", "a"], ["audio/y.wav", "bus", "lyon-2", "a"]]
    make_tau(tmp_path, rows, train="filename\tscene_label\naudio/x.wav\tairport\n",
             evaluate="filename\tscene_label\naudio/y.wav\tbus\n", test="filename\naudio/y.wav\n", audio=False)
    idx = load_index("tau2020", tmp_path, check_audio=False)
    assert idx.split("train")[0].path == "audio/x.wav"
