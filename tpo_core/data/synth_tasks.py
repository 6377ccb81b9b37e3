"""Question templates, templated QA and ``task_samples``: the instruction-form training samples.

``task_samples(root)`` turns a dataset written by ``tpo data synth`` (or any folder with the same four
annotation files) into ``TaskSample``s: the question the user asks and the answer text the LLM must emit,
with task tokens (region ``<box_begin><boxes>``, temporal ``<time_begin><temp>``, mask
``<track_begin><tracking>``), plus the dense labels the matching head trains on. Each task has several
phrasings (picked per record from a hash of its id, so the choice is stable), so the LLM must route by
meaning, not by one fixed sentence.

Negative samples (task ``negative``, from ``negatives.json``): a region / temporal / mask question about an
object that is not in the video; the answer is text (``NEGATIVE_ANSWER``, e.g. "The red circle is not in the
video.") and no ``*_begin`` token, so the model learns to say so instead of running a head.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tpo_core.data.formats import load_conversations, load_qvhighlights, load_region, load_segmentation
from tpo_core.data.synth_scene import BACKGROUND_COLOURS, COLOURS, SHAPES, SceneSpec

REGION_TEMPLATES = ("Where is {p}?", "Find {p}.", "Locate {p} in the video.", "Give the bounding box of {p}.")
TEMPORAL_TEMPLATES = ("When is {p} visible?", "When does {p} appear?", "At what time can you see {p}?",
                      "During which part of the video is {p} on screen?")
TEMPORAL_QUERY_TEMPLATES = ("When does this happen: {q}?", "Find the moment when {q}.",
                            "At what time in the video does this occur: {q}?")  # real data: free-form query
MASK_TEMPLATES = ("Track {p}.", "Segment {p}.", "Follow {p} through the video.", "Give the mask of {p}.")
TASK_ANSWERS = {"region": "<box_begin><boxes>", "temporal": "<time_begin><temp>",
                "mask": "<track_begin><tracking>"}
TEMPORAL_QUERY = "{p} is visible"  # the declarative QVHighlights-style query stored in temporal.jsonl
NEGATIVE_ANSWER = "{P} is not in the video."  # P = the phrase with a capital letter ("The red circle")
POSITION_QUESTION = "In which part of the frame is {p}?"  # answered for the region label frame, 3 x 3 grid
POSITION_ROWS, POSITION_COLS = ("top", "", "bottom"), ("left", "", "right")
NEGATIVE_ASKS = ("region", "temporal", "mask")  # the question forms a negative sample is asked in

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
QA_TEMPLATES = {
    "count": "How many shapes appear in the video?",
    "colour_of": "What colour is the {shape}?",
    "shape_of": "What shape is {colour}?",
    "which_moves": "Which shape moves?",
    "does_move": "Does the {colour} {shape} move?",
    "which_appears": "Which shape appears later in the video?",
    "which_disappears": "Which shape disappears?",
    "background": "What colour is the background?",
}


def make_qa(scene: SceneSpec, rng: np.random.Generator, max_turns: int = 4) -> list[tuple[str, str]]:
    """Templated (question, answer) pairs whose answers are exact for ``scene``; answers are 1-2 words."""
    objs = scene.objects
    qa = [(QA_TEMPLATES["count"], NUMBER_WORDS[len(objs)]),
          (QA_TEMPLATES["background"], scene.background)]
    o = objs[int(rng.integers(len(objs)))]
    qa.append((QA_TEMPLATES["colour_of"].format(shape=o.shape), o.colour))
    o = objs[int(rng.integers(len(objs)))]
    qa.append((QA_TEMPLATES["shape_of"].format(colour=o.colour), o.shape))
    movers = [o for o in objs if o.moving]
    if len(movers) == 1 and len(objs) > 1:
        qa.append((QA_TEMPLATES["which_moves"], movers[0].shape))
    else:
        o = objs[int(rng.integers(len(objs)))]
        qa.append((QA_TEMPLATES["does_move"].format(colour=o.colour, shape=o.shape), "yes" if o.moving else "no"))
    late = [o for o in objs if o.on > 0]
    if len(late) == 1:
        qa.append((QA_TEMPLATES["which_appears"], late[0].shape))
    gone = [o for o in objs if o.off < scene.num_frames]
    if len(gone) == 1:
        qa.append((QA_TEMPLATES["which_disappears"], gone[0].shape))
    order = rng.permutation(len(qa))[:max_turns]
    return [qa[i] for i in sorted(order)]


def extra_train_qa(scene: SceneSpec, regions: list[dict], asked: list[tuple[str, str]],
                   rng: np.random.Generator) -> list[tuple[str, str]]:
    """Training-only QA beyond ``make_qa``: "What shape is <colour>?" for every object and the position question
    for every object with a region label (``regions``: the video's region records), minus questions already in
    ``asked``, in a random order."""
    seen = {q for q, _ in asked}
    extra = [(QA_TEMPLATES["shape_of"].format(colour=o.colour), o.shape) for o in scene.objects]
    extra += [(POSITION_QUESTION.format(p=r["query"]), position_answer(r["box"])) for r in regions]
    extra = [qa for qa in extra if qa[0] not in seen]
    return [extra[i] for i in rng.permutation(len(extra))]


def make_negatives(scene: SceneSpec, rng: np.random.Generator, count: int) -> list[dict]:
    """``count`` questions about objects that are not in ``scene`` (distinct colour/shape pairs).

    The first two: one *hard* (it shares the colour or the shape of an object that is there: "the red square" when
    there is a red circle, so the answer depends on both words), one from any absent pair. Draws 3 and later name
    an absent pair with the colour of a present object (the negatives the first default answered with a head most
    often, ~48 %), falling back to hard, then any. Each record: ``query`` (the phrase), ``colour``, ``shape``,
    ``asked`` (the question form: region, temporal or mask), ``hard``.
    """
    present = {(o.colour, o.shape) for o in scene.objects}
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    hard = [(c, s) for c, s in absent if any(c == pc or s == ps for pc, ps in present)]
    same_colour = [(c, s) for c, s in absent if any(c == pc for pc, _ in present)]
    asks = rng.permutation(NEGATIVE_ASKS)
    out, used = [], set()
    for j in range(count):
        pools = [hard if j % 2 == 0 and hard else absent] if j < 2 else [same_colour, hard, absent]
        pool = next((p for p in ([x for x in q if x not in used] for q in pools) if p), None)
        if pool is None:
            raise ValueError(f"make_negatives: only {len(out)} absent colour/shape pairs for {count} negatives")
        colour, shape = pool[int(rng.integers(len(pool)))]
        used.add((colour, shape))
        out.append({"query": f"the {colour} {shape}", "colour": colour, "shape": shape,
                    "asked": str(asks[j % len(asks)]), "hard": (colour, shape) in hard})
    return out


def position_answer(box) -> str:
    """Where a normalized xyxy box's centre lies in a 3 x 3 grid of the frame: "top left", "top", ..., "middle",
    ..., "bottom right" (thirds of the width and height)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    row, col = min(2, int(cy * 3)), min(2, int(cx * 3))
    words = [w for w in (POSITION_ROWS[row], POSITION_COLS[col]) if w]
    return " ".join(words) or "middle"


def position_text() -> list[str]:
    """Every position question and answer (not in the tokenizer's corpus; tested to encode cleanly)."""
    cells = [(x / 3 + 0.1, y / 3 + 0.1, x / 3 + 0.2, y / 3 + 0.2) for x in range(3) for y in range(3)]
    answers = {position_answer(box) for box in cells}
    return sorted({POSITION_QUESTION.format(p=f"the {c} {s}") for c in COLOURS for s in SHAPES} | answers)


def negative_answer(phrase: str) -> str:
    """The answer to a question about an absent object: ``"The red circle is not in the video."``."""
    return NEGATIVE_ANSWER.format(P=phrase[:1].upper() + phrase[1:])


def all_template_text() -> list[str]:
    """The tiny tokenizer's core corpus: every question and answer the generator produced when the tokenizer
    was built (the negative answers came later and encode without byte fallback too: ``negative_text``)."""
    phrases = [f"the {c} {s}" for c in COLOURS for s in SHAPES]
    lines = [t.format(p=p) for p in phrases for t in REGION_TEMPLATES + TEMPORAL_TEMPLATES + MASK_TEMPLATES]
    lines += [t.format(q=TEMPORAL_QUERY.format(p=p)) for p in phrases[:4] for t in TEMPORAL_QUERY_TEMPLATES]
    lines += [TEMPORAL_QUERY.format(p=p) for p in phrases] + phrases
    for c in COLOURS:
        for s in SHAPES:
            lines += [QA_TEMPLATES["colour_of"].format(shape=s), QA_TEMPLATES["shape_of"].format(colour=c),
                      QA_TEMPLATES["does_move"].format(colour=c, shape=s)]
    lines += [QA_TEMPLATES[k] for k in ("count", "which_moves", "which_appears", "which_disappears", "background")]
    lines += list(COLOURS) + list(BACKGROUND_COLOURS) + list(SHAPES) + list(NUMBER_WORDS) + ["yes", "no"]
    lines += list(TASK_ANSWERS.values())
    return sorted(set(lines))


def negative_text() -> list[str]:
    """Every negative answer the generator can produce (not in the tokenizer's corpus; tested to encode cleanly)."""
    return sorted({negative_answer(f"the {c} {s}") for c in COLOURS for s in SHAPES})


@dataclass
class TaskSample:
    """One instruction sample. ``video`` is an absolute path; times are seconds; boxes normalized xyxy.

    region: ``box`` + ``box_frame``/``box_time`` (the frame the box refers to).
    temporal: ``windows`` [[st, ed], ...] and ``saliency`` per ``clip_len``-second clip [ceil(duration)].
    mask: ``mask_files`` per frame (absolute PNG path, or None where absent), ``first_frame_box`` +
    ``first_frame_index``, ``segmentation`` (the record, for RLE masks). qa: only question/answer.
    negative: question/answer plus ``asked`` (the question form: region, temporal or mask).
    """

    task: str
    video: str
    question: str
    answer: str
    duration: float | None = None
    id: str = ""
    phrase: str = ""  # the referred object ("the red circle"); empty for qa
    box: tuple[float, float, float, float] | None = None
    box_frame: int | None = None
    box_time: float | None = None
    windows: list[list[float]] = field(default_factory=list)
    saliency: list[float] = field(default_factory=list)
    clip_len: float = 1.0
    mask_files: list[str | None] = field(default_factory=list)
    first_frame_box: tuple[float, float, float, float] | None = None
    first_frame_index: int | None = None
    segmentation: object | None = None
    asked: str = ""  # negative samples: the task the question is phrased as


def _pick(templates: tuple[str, ...], key: str) -> str:
    return templates[zlib.crc32(key.encode()) % len(templates)]


def visible_at_start(record) -> bool:
    """Whether a segmentation record's object is visible on every frame of the first eighth of its video.

    TPO's mask head is prompted on the first sampled frame (the middle of the first of T >= 8 segments, so
    inside the first eighth) and propagates from there; an object that only appears later cannot be found
    from that prompt (its memory holds nothing to track). Such queries are answered by the temporal task.
    """
    n = int(record.num_frames)
    return all(f in record.masks for f in range(0, max(1, n // 8) + 1) if f < n)


def load_negatives(path: str | Path) -> list[dict]:
    """``negatives.json``: a list of ``{"id", "video", "query", "asked", ...}``; a clear error on a bad record."""
    import json

    path = Path(path)
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: must hold a JSON list of negative questions, got {type(data).__name__}")
    for i, rec in enumerate(data):
        missing = [k for k in ("id", "video", "query", "asked") if not isinstance(rec, dict) or k not in rec]
        if missing or rec["asked"] not in NEGATIVE_ASKS:
            raise ValueError(f"{path}: record {i} needs 'id', 'video', 'query' and 'asked' in {NEGATIVE_ASKS} "
                             f"(missing {missing}); regenerate it with `tpo data synth`")
    return data


_TEMPLATES_OF = {"region": REGION_TEMPLATES, "temporal": TEMPORAL_TEMPLATES, "mask": MASK_TEMPLATES}


def task_samples(root: str | Path, tasks: tuple[str, ...] = ("region", "temporal", "mask", "qa", "negative"),
                 mask_from_start_only: bool = True) -> list[TaskSample]:
    """All instruction samples of the dataset at ``root`` (files that are absent are skipped).

    ``mask_from_start_only``: mask samples only for objects ``visible_at_start`` (training and ``tpo eval``
    both read samples through here, so they agree; docs/data.md gives the counts of a generated split).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist; create one with "
                                "`tpo data synth --out DIR --videos N --seed S`")
    out: list[TaskSample] = []
    if "region" in tasks and (root / "region.json").is_file():
        for r in load_region(root / "region.json"):
            out.append(TaskSample(task="region", video=str(root / r.video), id=r.id, answer=TASK_ANSWERS["region"],
                                  question=_pick(REGION_TEMPLATES, r.id).format(p=r.query), phrase=r.query,
                                  duration=r.extra.get("duration"), box=r.box, box_frame=r.frame_index,
                                  box_time=r.time))
    if "temporal" in tasks and (root / "temporal.jsonl").is_file():
        for t in load_qvhighlights(root / "temporal.jsonl"):
            clip_len = float(t.extra.get("clip_len", 1.0))
            key, phrase = str(t.qid), t.extra.get("phrase")
            question = (_pick(TEMPORAL_TEMPLATES, key).format(p=phrase) if phrase else
                        _pick(TEMPORAL_QUERY_TEMPLATES, key).format(q=t.query.strip().rstrip(".").lower()))
            out.append(TaskSample(
                task="temporal", video=str(root / t.extra.get("video", f"videos/{t.vid}.mp4")), id=key,
                question=question, phrase=phrase or t.query,
                answer=TASK_ANSWERS["temporal"], duration=t.duration, windows=t.relevant_windows,
                saliency=t.saliency_curve(math.ceil(t.duration / clip_len - 1e-9)).tolist(), clip_len=clip_len))
    if "mask" in tasks and (root / "segmentation.json").is_file():
        for s in load_segmentation(root / "segmentation.json", root):
            if mask_from_start_only and not visible_at_start(s):
                continue
            files = [str(root / s.masks[f].file) if f in s.masks and s.masks[f].file else None
                     for f in range(s.num_frames)]
            out.append(TaskSample(task="mask", video=str(root / s.video), id=s.id, answer=TASK_ANSWERS["mask"],
                                  question=_pick(MASK_TEMPLATES, s.id).format(p=s.query), phrase=s.query,
                                  duration=s.extra.get("duration"), mask_files=files,
                                  first_frame_box=s.first_frame_box, first_frame_index=s.first_frame_index,
                                  segmentation=s))
    if "qa" in tasks and (root / "conversations.json").is_file():
        for c in load_conversations(root / "conversations.json"):
            for j, (q, a) in enumerate(c.pairs()):
                out.append(TaskSample(task="qa", video=str(root / c.video) if c.video else "", id=f"{c.id}_{j}",
                                      question=q, answer=a, duration=c.extra.get("duration")))
    if "negative" in tasks and (root / "negatives.json").is_file():
        for r in load_negatives(root / "negatives.json"):
            out.append(TaskSample(task="negative", video=str(root / r["video"]), id=r["id"], phrase=r["query"],
                                  question=_pick(_TEMPLATES_OF[r["asked"]], r["id"]).format(p=r["query"]),
                                  answer=negative_answer(r["query"]), duration=r.get("duration"),
                                  asked=r["asked"]))
    return out
