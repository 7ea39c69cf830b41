"""Metrics equal scikit-learn's on fixed inputs; DCASE blocks and the torchmetrics state agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, log_loss as sk_log_loss

from sp4sc import metrics
from sp4sc.errors import Sp4scError

CLASSES = ("a", "b", "c", "d")


def _fixed(n: int = 60, c: int = 4, seed: int = 3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * 3
    logits[0, 0] = 60.0  # a nearly one-hot row: exercises the clipping
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    y = rng.integers(0, c, size=n)
    y[0] = 1  # the confident row is wrong: -log(p) is clipped at -log(eps)
    devices = rng.choice(["a", "b", "s1"], size=n)
    return logits, probs, y, devices


def test_accuracy_and_log_loss_equal_sklearn():
    _, probs, y, _ = _fixed()
    assert metrics.accuracy(y, probs) == pytest.approx(accuracy_score(y, probs.argmax(1)), abs=1e-12)
    assert metrics.macro_accuracy(y, probs) == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)), abs=1e-12)
    assert metrics.log_loss(y, probs) == pytest.approx(sk_log_loss(y, probs, labels=range(4)), rel=1e-12)
    # the clipped row matters: without clipping the value would be ~ +inf-ish / far larger
    assert metrics.log_loss(y, probs) < 40


def test_log_loss_normalises_rows_before_clipping():
    _, probs, y, _ = _fixed()
    assert metrics.log_loss(y, probs * 3.0) == pytest.approx(metrics.log_loss(y, probs), rel=1e-12)


def test_dcase_results_match_sklearn_subsets():
    _, probs, y, devices = _fixed()
    r = metrics.dcase_results(y, probs, CLASSES, devices)
    assert r["overall"]["logloss"] == pytest.approx(sk_log_loss(y, probs, labels=range(4)), rel=1e-12)
    assert r["overall"]["accuracy"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    for c, name in enumerate(CLASSES):
        sel = y == c
        assert r["class_wise"][name]["logloss"] == pytest.approx(
            sk_log_loss(y[sel], probs[sel], labels=range(4)), rel=1e-12)
        assert r["class_wise"][name]["accuracy"] == pytest.approx((probs[sel].argmax(1) == c).mean())
    for dev in ("a", "b", "s1"):
        sel = devices == dev
        assert r["device_wise"][dev]["logloss"] == pytest.approx(
            sk_log_loss(y[sel], probs[sel], labels=range(4)), rel=1e-12)
        assert r["device_wise"][dev]["accuracy"] == pytest.approx(
            balanced_accuracy_score(y[sel], probs[sel].argmax(1)))


def test_scene_metrics_accumulates_batches_like_the_functional_form():
    logits, probs, y, devices = _fixed()
    names = ["a", "b", "s1"]
    m = metrics.SceneMetrics(4, names)
    idx = torch.tensor([names.index(d) for d in devices])
    for s in range(0, len(y), 7):  # uneven batches
        m.update(torch.from_numpy(logits[s:s + 7]), torch.from_numpy(y[s:s + 7]), idx[s:s + 7])
    got = m.report(CLASSES)
    want = metrics.dcase_results(y, probs, CLASSES, devices)
    assert got["overall"]["logloss"] == pytest.approx(want["overall"]["logloss"], rel=1e-9)
    assert got["overall"]["accuracy"] == pytest.approx(want["overall"]["accuracy"], rel=1e-12)
    assert got["overall"]["micro_accuracy"] == pytest.approx(accuracy_score(y, probs.argmax(1)))
    for key in ("class_wise", "device_wise"):
        assert got[key].keys() == want[key].keys()
        for k in want[key]:
            assert got[key][k]["accuracy"] == pytest.approx(want[key][k]["accuracy"], rel=1e-12)
            assert got[key][k]["logloss"] == pytest.approx(want[key][k]["logloss"], rel=1e-9)
    cm = m.compute()["confusion"].numpy()
    assert cm.sum() == len(y)
    assert np.trace(cm) == (probs.argmax(1) == y).sum()


def test_unknown_devices_are_kept_apart():
    m = metrics.SceneMetrics(2, ["a"])
    m.update(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]), torch.tensor([0, -1]))
    rep = m.report(("x", "y"))
    assert rep["device_wise"]["a"]["accuracy"] == 1.0
    assert rep["device_wise"]["unknown"]["accuracy"] == 0.0


def test_bad_probabilities_are_refused():
    with pytest.raises(Sp4scError, match="non-negative"):
        metrics.log_loss([0], [[np.nan, 1.0]])
    with pytest.raises(Sp4scError, match="shape"):
        metrics.log_loss([0], [0.5, 0.5])


def test_confusion_figure_draws():
    fig = metrics.confusion_figure(np.array([[3, 1], [0, 2]]), ("x", "y"))
    assert len(fig.axes) == 2  # the matrix and its colour bar
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["0.25", "0.75", "1.00"]  # rates of non-zero cells
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_device_rows_only_when_the_data_names_devices():
    y = np.array([0, 1, 1, 0])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert metrics.dcase_results(y, p, ["x", "y"], ["", None, "", ""])["device_wise"] == {}
    assert metrics.dcase_results(y, p, ["x", "y"])["device_wise"] == {}
    mixed = metrics.dcase_results(y, p, ["x", "y"], ["a", None, "a", ""])["device_wise"]
    assert set(mixed) == {"a", "unknown"}
    for names, batch_devices, expected in (((), None, set()), (("a",), torch.tensor([0, -1, 0, -1]), {"a", "unknown"})):
        m = metrics.SceneMetrics(2, names, from_logits=False)
        m.update(torch.tensor(p), torch.tensor(y), batch_devices)
        assert set(m.report(["x", "y"])["device_wise"]) == expected
