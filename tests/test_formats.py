"""Annotation loaders (QVHighlights, RefCOCO-style, segmentation incl. MeViS, LLaVA) and COCO RLE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tpo_core.data import rle
from tpo_core.data.formats import (
    AnnotationError,
    load_conversations,
    load_qvhighlights,
    load_region,
    load_segmentation,
)

# A record in the QVHighlights train format (illustrative values; 2 s clips: window [72, 78] = clips 36..38).
QVH = {"qid": 9769, "query": "some military patriots takes us through their safety procedures and measures.",
       "duration": 150, "vid": "j7rJstUseKg_360.0_510.0", "relevant_clip_ids": [36, 37, 38],
       "saliency_scores": [[4, 3, 3], [4, 3, 3], [4, 3, 3]], "relevant_windows": [[72, 78]]}


# ------------------------------------------------------------------------------------------------------ RLE
def test_rle_known_cases():
    # column-major runs: [[0,0,1],[0,1,0],[1,0,0]] -> 0,0,1 | 0,1,0 | 1,0,0 -> runs 2,1,1,1,1,1,2;
    # counts after the 3rd are deltas to the count two before: 2,1,1,0,0,0,1 -> chars '2','1','1','0','0','0','1'
    m = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=bool)
    assert rle.mask_to_counts(m) == [2, 1, 1, 1, 1, 1, 2]
    assert rle.encode(m) == {"size": [3, 3], "counts": "2110001"}
    # 100 zeros: 100 = 0b11_00100 -> low group 4 with the 'more' bit (4 | 32) + 48 = 'T', then 3 + 48 = '3'
    assert rle.encode(np.zeros((10, 10))) == {"size": [10, 10], "counts": "T3"}
    # negative delta: runs 5,10,2,1 -> 4th value 1 - 10 = -9 -> 5 bits 10111 (sign bit set, no more) -> 23 + 48 = 'G'
    col = np.zeros((18, 1), dtype=bool)
    col[5:15] = True
    col[17] = True
    assert rle.encode(col) == {"size": [18, 1], "counts": "5:2G"}
    # a mask starting with foreground has a leading 0-run
    assert rle.mask_to_counts(np.ones((2, 2))) == [0, 4]
    for r, want in ((rle.encode(m), m), (rle.encode(col), col), ({"size": [3, 3], "counts": [2, 1, 1, 1, 1, 1, 2]}, m)):
        assert np.array_equal(rle.decode(r), want)
    assert rle.area(rle.encode(col)) == 11 and rle.to_bbox(rle.encode(col)) == [0, 5, 1, 18]


def test_rle_round_trip_random():
    rng = np.random.default_rng(0)
    for _ in range(100):
        m = rng.random((int(rng.integers(1, 50)), int(rng.integers(1, 50)))) < rng.random()
        r = rle.encode(m)
        assert np.array_equal(rle.decode(r), m) and rle.area(r) == m.sum()
        assert rle.string_to_counts(r["counts"]) == rle.mask_to_counts(m)


def test_rle_errors():
    with pytest.raises(ValueError, match="size"):
        rle.decode({"size": [3, 3], "counts": "T3"})  # 100 pixels for a 9-pixel mask
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 2, 2)))


# ------------------------------------------------------------------------------------------------- loaders
def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_qvhighlights_real_record_and_errors(tmp_path):
    recs = load_qvhighlights(_jsonl(tmp_path / "qvh.jsonl", [QVH, {k: QVH[k] for k in ("qid", "query", "duration",
                                                                                          "vid")}]))
    assert recs[0].relevant_windows == [[72.0, 78.0]] and recs[0].vid == QVH["vid"]
    curve = recs[0].saliency_curve(75)
    assert curve[36] == pytest.approx(10 / 3) and curve[:36].sum() == 0
    assert recs[1].relevant_windows == [] and recs[1].saliency_scores == []  # test split: no labels
    bad = dict(QVH, relevant_windows=[[80, 72]])
    with pytest.raises(AnnotationError, match=r"line 1 \(qid=9769\).*relevant_windows"):
        load_qvhighlights(_jsonl(tmp_path / "bad.jsonl", [bad]))
    with pytest.raises(AnnotationError, match="saliency_scores.*relevant_clip_ids"):
        load_qvhighlights(_jsonl(tmp_path / "bad2.jsonl", [dict(QVH, saliency_scores=[[4, 3, 3]])]))
    with pytest.raises(AnnotationError, match="missing field 'duration'"):
        load_qvhighlights(_jsonl(tmp_path / "bad3.jsonl", [{k: v for k, v in QVH.items() if k != "duration"}]))
    with pytest.raises(FileNotFoundError):
        load_qvhighlights(tmp_path / "absent.jsonl")


def test_region_loader(tmp_path):
    recs = [{"id": "a", "video": "v.mp4", "query": "the red circle", "box": [0.1, 0.2, 0.5, 0.6], "width": 100,
             "height": 50, "frame_index": 4, "time": 0.5},
            {"id": "b", "image": "COCO_train2014_000000581857.jpg", "query": "woman in red", "bbox": [10, 5, 40, 20],
             "width": 100, "height": 50}]
    path = tmp_path / "region.json"
    path.write_text(json.dumps(recs))
    a, b = load_region(path)
    assert a.box == (0.1, 0.2, 0.5, 0.6) and (a.frame_index, a.time) == (4, 0.5)
    assert b.box == pytest.approx((0.1, 0.1, 0.5, 0.5)) and b.video.endswith(".jpg")
    path.write_text(json.dumps([dict(recs[0], box=[10, 20, 50, 60])]))
    with pytest.raises(AnnotationError, match=r"region.json: record 0 \(id='a'\): field 'box'.*normalized"):
        load_region(path)
    path.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(AnnotationError, match="JSON list"):
        load_region(path)


def test_segmentation_png_and_rle(tmp_path):
    from PIL import Image

    mask = np.zeros((6, 8), dtype=bool)
    mask[1:4, 2:7] = True
    (tmp_path / "m").mkdir()
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m" / "00000.png")
    rec = {"id": "s", "video": "v.mp4", "query": "the cat", "object_id": 1, "width": 8, "height": 6,
           "num_frames": 3, "first_frame_index": 0, "first_frame_box": [2 / 8, 1 / 6, 7 / 8, 4 / 6],
           "masks": [{"frame": 0, "file": "m/00000.png"}, {"frame": 2, "rle": rle.encode(mask)}],
           "absent_frames": [1]}
    path = tmp_path / "seg.json"
    path.write_text(json.dumps([rec]))
    (s,) = load_segmentation(path)
    assert np.array_equal(s.mask(0), mask) and np.array_equal(s.mask(2), mask) and not s.mask(1).any()
    path.write_text(json.dumps([dict(rec, masks=[{"frame": 9, "file": "m/00000.png"}])]))
    with pytest.raises(AnnotationError, match=r"record 0 \(id='s'\): field 'masks'\[0\].frame=9"):
        load_segmentation(path)
    path.write_text(json.dumps([dict(rec, masks=[{"frame": 0, "file": "m/missing.png"}])]))
    with pytest.raises(AnnotationError, match="missing.png"):
        load_segmentation(path)[0].mask(0)


def test_segmentation_mevis_layout(tmp_path):
    a = np.zeros((4, 5), dtype=bool)
    a[0:2, 0:2] = True
    b = np.zeros((4, 5), dtype=bool)
    b[3, 4] = True
    meta = {"videos": {"vid1": {"expressions": {"0": {"exp": "two things", "obj_id": [0, 1], "anno_id": [7, 8]}},
                                "vid_id": 1, "frames": ["00000", "00001"]}}}
    (tmp_path / "meta_expressions.json").write_text(json.dumps(meta))
    (tmp_path / "mask_dict.json").write_text(json.dumps({"7": [rle.encode(a), None], "8": [rle.encode(b), None]}))
    (s,) = load_segmentation(tmp_path / "meta_expressions.json")
    assert s.query == "two things" and s.absent_frames == [1] and s.first_frame_index == 0
    assert np.array_equal(s.mask(0), a | b) and s.first_frame_box == (0.0, 0.0, 1.0, 1.0)


def test_conversations_loader(tmp_path):
    recs = [{"id": "x", "video": "v.mp4", "conversations": [
        {"from": "human", "value": "<video>\nWhat colour is the circle?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "How many shapes appear in the video?"}, {"from": "gpt", "value": "two"}]}]
    path = tmp_path / "conv.json"
    path.write_text(json.dumps(recs))
    (c,) = load_conversations(path)
    assert c.pairs() == [("What colour is the circle?", "red"), ("How many shapes appear in the video?", "two")]
    recs[0]["conversations"][1]["from"] = "human"
    path.write_text(json.dumps(recs))
    with pytest.raises(AnnotationError, match=r"conv.json: record 0 \(id='x'\): field 'conversations'\[1\]"):
        load_conversations(path)
    path.write_text("{broken")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        load_conversations(path)


def test_loaders_round_trip_synth(tmp_path):
    from tpo_core.data.synth import generate

    generate(tmp_path, videos=2, seed=11, mask_mode="rle")
    raw_t = [json.loads(line) for line in (tmp_path / "temporal.jsonl").read_text().splitlines()]
    for rec, raw in zip(load_qvhighlights(tmp_path / "temporal.jsonl"), raw_t):
        assert (rec.qid, rec.query, rec.duration, rec.relevant_windows, rec.saliency_scores) == (
            raw["qid"], raw["query"], raw["duration"], raw["relevant_windows"], raw["saliency_scores"])
    raw_r = json.loads((tmp_path / "region.json").read_text())
    assert [list(r.box) for r in load_region(tmp_path / "region.json")] == [r["box"] for r in raw_r]
    segs = load_segmentation(tmp_path / "segmentation.json", tmp_path)
    assert all(ref.file is None and ref.rle for s in segs for ref in s.masks.values())
    assert not (tmp_path / "masks").exists()
    assert all(s.mask(min(s.masks)).any() for s in segs)
    assert len(load_conversations(tmp_path / "conversations.json")) == 2
