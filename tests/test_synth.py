"""Synthetic dataset: determinism, splits, labels agree with rendered pixels, task samples, CLI, tokenizers."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tpo_core.data.formats import load_conversations, load_qvhighlights, load_region, load_segmentation
from tpo_core.data.rle import decode as rle_decode
from tpo_core.data.rle import mask_bbox
from tpo_core.data.synth import add_synth_parser, generate, region_label_frame, synth_main
from tpo_core.data.synth_scene import BACKGROUND_COLOURS, COLOURS, SHAPES
from tpo_core.data.synth_tasks import (
    MASK_TEMPLATES,
    NUMBER_WORDS,
    REGION_TEMPLATES,
    TASK_ANSWERS,
    TEMPORAL_TEMPLATES,
    all_template_text,
    task_samples,
)
from tpo_core.tokens import TASK_TOKENS, prompt_chunks

ANNOTATIONS = ("temporal.jsonl", "region.json", "segmentation.json", "conversations.json", "negatives.json")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "train"
    generate(root, videos=6, seed=3, split="train", mask_mode="both")
    return root


def _norm(box, w, h):
    return [box[0] / w, box[1] / h, box[2] / w, box[3] / h]


def test_deterministic_and_splits_differ(dataset, tmp_path, capsys):
    again = tmp_path / "again"
    generate(again, videos=6, seed=3, split="train", mask_mode="both")
    for name in ANNOTATIONS:
        assert (again / name).read_text() == (dataset / name).read_text(), name
    val = tmp_path / "val"
    generate(val, videos=6, seed=3, split="val", mask_mode="both")
    train_q = [(r.query, r.duration) for r in load_qvhighlights(dataset / "temporal.jsonl")]
    val_q = [(r.query, r.duration) for r in load_qvhighlights(val / "temporal.jsonl")]
    assert train_q != val_q
    manifest = json.loads((val / "manifest.json").read_text())
    assert (manifest["seed"], manifest["split"], manifest["counts"]["videos"]) == (3, "val", 6)
    assert set(manifest["format_versions"]) == {"temporal", "region", "segmentation", "conversations"}
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate(val, videos=1, seed=3, split="val")
    # from the command line, both entry points: the problem and the fix, exit 2, no traceback
    from runtime.cli import main as tpo_main
    from tpo_core.data.synth import synth_main

    for entry, argv in ((synth_main, []), (tpo_main, ["data", "synth"])):
        assert entry([*argv, "--out", str(val), "--videos", "1", "--seed", "3", "--split", "val"]) == 2
        err = capsys.readouterr().err
        assert "already holds a dataset" in err and "--overwrite" in err and "Traceback" not in err


def test_videos_decode_with_declared_properties(dataset):
    from tpo_core.data.video import video_info

    for rec in load_segmentation(dataset / "segmentation.json", dataset):
        info = video_info(dataset / rec.video)
        assert (info["num_frames"], info["width"], info["height"]) == (rec.num_frames, rec.width, rec.height)
        assert info["fps"] == pytest.approx(rec.extra["fps"])


def test_region_boxes_match_pixels(dataset):
    import decord

    segs = {s.id: s for s in load_segmentation(dataset / "segmentation.json", dataset)}
    regions = load_region(dataset / "region.json")
    assert regions
    for r in regions:
        seg = segs[r.id]
        assert r.frame_index == region_label_frame(seg.num_frames)
        assert r.time == pytest.approx(r.frame_index / seg.extra["fps"])
        mask = seg.mask(r.frame_index)
        assert np.allclose(_norm(mask_bbox(mask), r.width, r.height), r.box, atol=1e-9)  # exact
        frame = decord.VideoReader(str(dataset / r.video))[r.frame_index].asnumpy().astype(int)
        colour = np.array(COLOURS[r.query.split()[1]])
        x0, y0, x1, y1 = (round(v * s) for v, s in zip(r.box, (r.width, r.height, r.width, r.height)))
        inside = np.abs(frame[y0:y1, x0:x1] - colour).max(axis=-1) < 60
        in_mask = np.abs(frame[mask] - colour).max(axis=-1) < 60
        assert in_mask.mean() > 0.6, (r.id, in_mask.mean())  # lossy codec: edges blur, the body keeps its colour
        outside = np.abs(np.delete(frame.reshape(-1, 3), np.flatnonzero(mask.ravel()), 0) - colour).max(-1) < 25
        assert inside.sum() >= 0.6 * mask.sum() and outside.sum() < 0.2 * mask.sum()


def test_segmentation_masks_are_exact(dataset):
    temporal = {(t.vid, t.extra["object_id"]): t for t in load_qvhighlights(dataset / "temporal.jsonl")}
    for s in load_segmentation(dataset / "segmentation.json", dataset):
        assert sorted(set(s.masks) | set(s.absent_frames)) == list(range(s.num_frames))
        assert not set(s.masks) & set(s.absent_frames)
        for f, ref in s.masks.items():
            m = s.mask(f)
            assert m.any() and np.array_equal(m, rle_decode(ref.rle))  # PNG == RLE
        first = s.mask(s.first_frame_index)
        assert s.first_frame_index == min(s.masks)
        assert np.allclose(_norm(mask_bbox(first), s.width, s.height), s.first_frame_box, atol=1e-9)
        t = temporal[(s.extra["vid"], s.object_id)]
        fps = s.extra["fps"]
        visible = sorted(s.masks)
        runs: list[list[int]] = []
        for f in visible:
            if runs and f == runs[-1][1] + 1:
                runs[-1][1] = f
            else:
                runs.append([f, f])
        assert t.relevant_windows == [[round(a / fps, 6), round((b + 1) / fps, 6)] for a, b in runs]
        assert t.relevant_clip_ids == sorted({int(f / fps // 1) for f in visible})
        assert all(len(sc) == 3 and 1 <= sc[0] <= 4 for sc in t.saliency_scores)


def test_conversation_answers_are_exact(dataset):
    segs = load_segmentation(dataset / "segmentation.json", dataset)
    boxes = {(r.video, r.query): r.box for r in load_region(dataset / "region.json")}
    positions = 0
    for conv in load_conversations(dataset / "conversations.json"):
        objects = [s.query.split()[1:] for s in segs if s.video == conv.video]  # [colour, shape]
        assert conv.turns[0][1].startswith("<video>\n")
        for q, a in conv.pairs():
            assert len(a.split()) <= 2
            if q.startswith("In which part of the frame is "):
                box = boxes[(conv.video, q[len("In which part of the frame is "):-1])]
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                expect = {(0, 0): "top left", (0, 1): "top", (0, 2): "top right", (1, 0): "left", (1, 1): "middle",
                          (1, 2): "right", (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right"}
                assert a == expect[(min(2, int(cy * 3)), min(2, int(cx * 3)))]
                positions += 1
            elif q.startswith("How many"):
                assert a == NUMBER_WORDS[len(objects)]
            elif q == "What colour is the background?":
                assert a in BACKGROUND_COLOURS
            elif q.startswith("What colour is the "):
                assert [a, q[len("What colour is the "):-1]] in objects
            elif q.startswith("What shape is "):
                assert [q[len("What shape is "):-1], a] in objects and a in SHAPES
    assert positions == len(boxes)  # the train split asks it of every object with a region label


def test_task_samples(dataset):
    samples = task_samples(dataset)
    by_task = {t: [s for s in samples if s.task == t] for t in ("region", "temporal", "mask", "qa", "negative")}
    assert all(by_task.values()), {t: len(v) for t, v in by_task.items()}
    for s in samples:
        assert Path(s.video).is_file()
        if s.task not in ("qa", "negative"):
            assert s.answer == TASK_ANSWERS[s.task]
    for s in by_task["negative"]:
        assert s.answer.endswith(" is not in the video.") and s.phrase in s.question
    region = load_region(dataset / "region.json")
    assert [s.box for s in by_task["region"]] == [r.box for r in region]
    queries = {r.id: r.query for r in region}
    assert all(s.question in {t.format(p=queries[s.id]) for t in REGION_TEMPLATES} for s in by_task["region"])
    phr = {t.split("{p}")[0] for t in TEMPORAL_TEMPLATES}
    assert all(any(s.question.startswith(p) for p in phr) for s in by_task["temporal"])
    for s in by_task["temporal"]:
        assert len(s.saliency) == math.ceil(s.duration) and s.windows
    seg_queries = {r.id: r.query for r in load_segmentation(dataset / "segmentation.json", dataset)}
    for s in by_task["mask"]:
        assert s.question in {t.format(p=seg_queries[s.id]) for t in MASK_TEMPLATES}
        assert len(s.mask_files) == s.segmentation.num_frames and s.first_frame_box is not None
        assert s.mask_files[s.first_frame_index] is not None and Path(s.mask_files[s.first_frame_index]).is_file()
    assert len({s.question.split(" the ")[0] for s in by_task["region"] + by_task["mask"]}) > 2  # phrasings vary


def test_cli(tmp_path, capsys):
    assert synth_main(["--out", str(tmp_path / "d"), "--videos", "2", "--seed", "1", "--workers", "1"]) == 0
    assert "2 train videos" in capsys.readouterr().out
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["counts"]["videos"] == 2
    parser = argparse.ArgumentParser(prog="tpo")
    sub = parser.add_subparsers(dest="command")
    add_synth_parser(sub)
    args = parser.parse_args(["data", "synth", "--out", "x", "--videos", "3", "--split", "val"])
    assert (args.videos, args.split, args.seed) == (3, "val", 0) and callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "synth", "--out", "x", "--split", "test"])


# ---------------------------------------------------------------------------------------------- tokenizers
def test_tiny_tokenizer_covers_synth_text():
    from tpo_core.data.tokenizer_build import TINY_BASE_VOCAB, load_tokenizer

    tok = load_tokenizer("embedded-tiny")
    assert tok.get_vocab_size(with_added_tokens=False) == TINY_BASE_VOCAB == 1024
    assert [tok.token_to_id(t) for t in ("<unk>", "<s>", "</s>")] == [0, 1, 2]
    ids = {t: tok.encode(t, add_special_tokens=False).ids for t in TASK_TOKENS}
    assert ids == {t: [1024 + i] for i, t in enumerate(TASK_TOKENS)}
    texts = all_template_text() + [c for q in all_template_text()[:20] for c in prompt_chunks(q, times_s=[0.5, 1.5])]
    for text in texts:
        enc = tok.encode(text)
        assert enc.ids[0] == 1  # BOS, as the release tokenizes each chunk
        bad = [t for t in enc.tokens if t == "<unk>" or t.startswith("<0x")]
        assert not bad, (text, bad)
        assert tok.decode(enc.ids, skip_special_tokens=True) == (text[1:] if text.startswith(" ") else text)
    answer = tok.encode("<track_begin><tracking>", add_special_tokens=False).ids
    assert tok.decode(answer) == "<track_begin><tracking>"


def test_tiny_tokenizer_rebuild_is_deterministic():
    from tpo_core.data.tokenizer_build import ASSET_DIR, build_tiny_tokenizer

    committed = json.loads((ASSET_DIR / "tokenizer.json").read_text())
    assert json.loads(build_tiny_tokenizer().to_str()) == committed


def test_fixture_tokenizer_converts_with_task_tokens(fixtures_dir):
    from tpo_core.data.tokenizer_build import load_tokenizer

    assert (fixtures_dir / "tokenizer.model").is_file(), f"compatibility fixture missing at {fixtures_dir}"
    tok = load_tokenizer(fixtures_dir)
    assert tok.get_vocab_size(with_added_tokens=False) == 32000
    assert [tok.token_to_id(t) for t in TASK_TOKENS] == list(range(32000, 32007))
    enc = tok.encode("[INST]")
    assert enc.ids == [1, 733, 16289, 28793] and tok.decode(enc.ids, skip_special_tokens=True) == "[INST]"
    enc = tok.encode("Where is it?<box_begin><boxes>", add_special_tokens=False)
    assert enc.ids[-2:] == [32000, 32003] and tok.decode(enc.ids) == "Where is it?<box_begin><boxes>"
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(fixtures_dir / "tokenizer.model"))
    for text in ("Where is the green triangle?  Two  spaces", "ünïcödé 日本語 \t tab", "[INST] <Video> 0.2s </Video>"):
        assert tok.encode(text, add_special_tokens=False).ids == sp.encode(text), text  # byte fallback included
    with pytest.raises(ValueError, match="neither"):
        load_tokenizer("mistral-v0.2")


def test_train_split_has_more_qa_and_colour_sharing_negatives(dataset, tmp_path):
    """Generator version 4: the train split asks every templated question, the shape of every object and the
    position of every region-labelled object, and names 6 absent objects per video (draws 3-6 with the colour of a
    present one); the val split keeps version 3's 2 negatives and at most 4 + 1 turns, record for record."""
    from tpo_core.data.synth import NEGATIVES_PER_VIDEO

    segs = load_segmentation(dataset / "segmentation.json", dataset)
    present = {}
    for s in segs:
        present.setdefault(s.video, set()).add(tuple(s.query.split()[1:]))
    negatives = json.loads((dataset / "negatives.json").read_text())
    assert len(negatives) == NEGATIVES_PER_VIDEO["train"] * 6
    for video, objs in present.items():
        mine = [n for n in negatives if n["video"] == video]
        assert len({n["query"] for n in mine}) == len(mine) == NEGATIVES_PER_VIDEO["train"]
        assert not {(n["colour"], n["shape"]) for n in mine} & objs  # never an object of that video
        colours = {c for c, _ in objs}
        pool = {(c, sh) for c in colours for sh in SHAPES} - objs - {(n["colour"], n["shape"]) for n in mine[:2]}
        same = [n for n in mine[2:] if n["colour"] in colours]
        assert len(same) == min(len(mine) - 2, len(pool))  # the colour-sharing pool first, while it lasts
    for conv in load_conversations(dataset / "conversations.json"):
        questions = [q.removeprefix("<video>\n") for q, _ in conv.pairs()]
        assert len(questions) == len(set(questions))
        assert {f"What shape is {c}?" for c, _ in present[conv.video]} <= set(questions)
    val = tmp_path / "val"
    generate(val, videos=3, seed=3, split="val")
    assert len(json.loads((val / "negatives.json").read_text())) == NEGATIVES_PER_VIDEO["val"] * 3
    assert all(len(c.pairs()) <= 5 for c in load_conversations(val / "conversations.json"))
