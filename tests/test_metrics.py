"""Eval metrics on hand-made cases with known answers."""

import numpy as np
import pytest

from tpo_core.train.metrics import (
    MetricAccumulator,
    best_window_iou,
    boundary_f,
    box_iou,
    exact_match,
    mask_boundary,
    mask_iou,
    normalize_answer,
    summarize,
    video_j_and_f,
    window_iou,
)


def test_box_iou_known_values():
    assert box_iou([0, 0, 2, 2], [0, 0, 2, 2]) == 1.0
    assert box_iou([0, 0, 2, 2], [1, 0, 3, 2]) == pytest.approx(2 / 6)
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert box_iou([2, 2, 0, 0], [0, 0, 2, 2]) == 1.0  # swapped corners are ordered first
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0  # empty union


def test_window_iou_and_best():
    assert window_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert window_iou((0, 1), (2, 3)) == 0.0
    assert best_window_iou((4, 6), [(0, 1), (4, 7)]) == pytest.approx(2 / 3)
    assert best_window_iou((4, 6), []) == 0.0


def test_mask_iou():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert mask_iou(a, b) == 1.0  # both empty
    a[:2, :2] = True
    assert mask_iou(a, b) == 0.0
    b[:2, :] = True
    assert mask_iou(a, b) == pytest.approx(4 / 8)
    with pytest.raises(ValueError, match="shape"):
        mask_iou(a, np.zeros((3, 3), bool))


def test_boundary_of_a_square():
    m = np.zeros((7, 7), bool)
    m[1:6, 1:6] = True  # 5x5 square: 16 boundary pixels, 3x3 interior
    b = mask_boundary(m)
    assert b.sum() == 16 and not b[2:5, 2:5].any()
    full = np.ones((3, 3), bool)  # image edge counts as outside
    assert mask_boundary(full).sum() == 8


def test_boundary_f_known_values():
    m = np.zeros((20, 20), bool)
    m[5:15, 5:15] = True
    assert boundary_f(m, m, tol=1) == 1.0
    shifted = np.roll(m, 1, axis=1)  # 1 px shift: within tolerance 1 everywhere
    assert boundary_f(shifted, m, tol=1) == 1.0
    far = np.roll(m, 5, axis=1)
    # tolerance 0: only the pixels of the horizontal edges that overlap are hits
    f0 = boundary_f(far, m, tol=0)
    assert 0 < f0 < 1
    empty = np.zeros_like(m)
    assert boundary_f(empty, empty) == 1.0 and boundary_f(empty, m) == 0.0 and boundary_f(m, empty) == 0.0


def test_boundary_f_exact_partial_case():
    gt = np.zeros((10, 10), bool)
    gt[2:8, 2:8] = True  # boundary 20 px
    pred = np.zeros((10, 10), bool)
    pred[2:8, 2:5] = True  # left half: boundary = 6x3 block -> 14 px
    # tol 0: pred boundary pixels on gt boundary: left column (6) + top/bottom rows x=3,4 (4) + corners counted
    bp, bg = mask_boundary(pred), mask_boundary(gt)
    hits_p = int((bp & bg).sum())
    precision, recall = hits_p / bp.sum(), int((bg & bp).sum()) / bg.sum()
    assert boundary_f(pred, gt, tol=0) == pytest.approx(2 * precision * recall / (precision + recall))
    assert hits_p == 10 and bp.sum() == 14 and bg.sum() == 20


def test_video_j_and_f():
    gt = np.zeros((2, 6, 6), bool)
    gt[:, 1:4, 1:4] = True
    pred = gt.copy()
    pred[1] = False
    out = video_j_and_f(pred, gt, tol=1)
    assert out["J"] == pytest.approx(0.5) and out["F"] == pytest.approx(0.5) and out["JF"] == pytest.approx(0.5)


def test_qa_normalization():
    assert normalize_answer("The  Red.") == "red"
    assert exact_match("a circle", "circle") and not exact_match("two", "three")


def test_summary_rates_and_counts():
    acc = MetricAccumulator()
    for v in (0.4, 0.6, 0.8):
        acc.add("region_iou", v)
    for v in (0.5, 0.75):
        acc.add("temporal_iou", v)
    for ok in (True, True, False, True):
        acc.add("routing", ok)
    acc.add("qa_em", True)
    acc.add("mask_J", 0.8)
    acc.add("mask_F", 0.6)
    s = summarize(acc)
    assert s["region"]["acc@0.5"] == pytest.approx(2 / 3, abs=1e-4) and s["region"]["mean_iou"] == pytest.approx(0.6)
    assert s["temporal"]["r1@0.5"] == 1.0 and s["temporal"]["r1@0.7"] == 0.5 and s["temporal"]["miou"] == 0.625
    assert s["routing_accuracy"] == 0.75 and s["num_samples"] == 4
    assert s["mask"]["J&F"] == pytest.approx(0.7) and s["qa"]["accuracy"] == 1.0
