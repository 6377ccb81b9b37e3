"""Property-based tests (hypothesis) of the user-facing inputs: frame arrays into ``Pipeline.ask`` and ``Stream``,
and manifests with any key removed, any type changed or any file changed. The property: a result, or a clear
``ValueError`` (``VideoReadError`` / ``SourceError`` / ``ManifestError`` are ValueErrors) -- never another exception,
never a hang (every example runs under a deadline). Prompts: tests/test_prompt_guard.py. CI-sized: few examples,
small arrays except along one side, which goes up to (and past) the 8192 px limit."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.results import FrameResult, TPOResult
from runtime.video_io import MAX_SIDE

pytestmark = pytest.mark.slow
SETTINGS = settings(max_examples=25, deadline=30_000, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])
DTYPES = (np.uint8, np.uint8, np.uint8, np.float32, np.float64, np.int16, np.uint16, np.bool_, np.int64)


@st.composite
def arrays(draw, max_rank: int = 5):
    """Arrays of any rank <= 5, dtype, and size (one side may reach past MAX_SIDE), contiguous or strided."""
    rank = draw(st.integers(0, max_rank))
    shape = [draw(st.integers(0, 9)) for _ in range(rank)]
    if rank >= 3 and draw(st.booleans()):
        shape[-1] = 3  # mostly plausible frames
    if rank >= 2 and draw(st.integers(0, 4)) == 0:
        shape[draw(st.integers(0, rank - 1))] = draw(st.sampled_from([MAX_SIDE - 1, MAX_SIDE, MAX_SIDE + 1]))
        shape = [min(s, 3) if s < MAX_SIDE - 1 else s for s in shape]  # keep the array small elsewhere
    dtype = draw(st.sampled_from(DTYPES))
    x = np.random.default_rng(draw(st.integers(0, 9))).integers(0, 256, shape).astype(dtype)
    how = draw(st.sampled_from(["plain", "plain", "reversed", "fortran", "stepped"]))
    if how == "reversed" and rank:
        x = x[::-1]
    elif how == "fortran":
        x = np.asfortranarray(x)
    elif how == "stepped" and rank:
        x = np.repeat(x, 2, axis=0)[::2]  # a non-contiguous view with the same values
    return x


@SETTINGS
@given(video=st.one_of(arrays(), st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3)))
def test_ask_takes_any_array_or_refuses_it_clearly(pipe, video):
    try:
        res = pipe.ask(video, "What is it?", max_new_tokens=2, fps=5.0)
    except ValueError as e:
        assert str(e), "a ValueError must say what is wrong"
        return
    assert isinstance(res, TPOResult) and len(res.token_ids) <= 2
    assert isinstance(video, np.ndarray) and video.dtype == np.uint8 and video.ndim == 4 and video.shape[-1] == 3


@SETTINGS
@given(frames=st.lists(st.one_of(arrays(max_rank=4), st.none(), st.integers()), min_size=1, max_size=6),
       cadence=st.sampled_from([None, 0, 1, 2, -1]), window=st.sampled_from([1, 3, 0]))
def test_stream_reports_every_frame_or_refuses_its_arguments(pipe, frames, cadence, window):
    try:
        stream = pipe.stream(iter(frames), "What is it?", cadence=cadence, window=window, max_new_tokens=2)
    except ValueError as e:
        assert cadence == -1 or window == 0, e
        return
    results = list(stream)
    assert [r.index for r in results] == list(range(len(frames)))
    for f, r in zip(frames, results):
        assert isinstance(r, FrameResult)
        ok_frame = isinstance(f, np.ndarray) and f.dtype == np.uint8 and f.ndim == 3 and f.shape[-1] == 3 and \
            min(f.shape[:2]) > 0 and max(f.shape[:2]) <= MAX_SIDE
        assert r.ok or isinstance(r.error, str)
        if not ok_frame:
            assert not r.ok


_prompt_pieces = st.one_of(st.text(max_size=10), st.integers(0xD800, 0xDFFF).map(chr),
                          st.sampled_from(["<s>", "</s>", "<boxes>", "<track_begin>", "<track_box>", "<temp>", "when",
                                           "why " * 300, "\x00", "\u202e"]))


@SETTINGS
@given(parts=st.lists(_prompt_pieces, max_size=6), boxes=st.sampled_from([None, [], [(1, 1, 8, 8)], [(8, 8, 1, 1)]]))
def test_ask_takes_any_prompt_or_refuses_it_clearly(pipe, parts, boxes):
    frames = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    try:
        res = pipe.ask(frames, "".join(parts), max_new_tokens=2, boxes=boxes)
    except ValueError as e:
        assert str(e)
        return
    assert isinstance(res, TPOResult)


# ------------------------------------------------------------------------------------------------- manifests
def _paths(data, prefix=()) -> list[tuple]:
    """Every key path of a JSON tree (list items included, at most the first 3 of a list)."""
    out = []
    items = data.items() if isinstance(data, dict) else enumerate(data[:3]) if isinstance(data, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out += _paths(v, (*prefix, k))
    return out


@pytest.fixture(scope="module")
def raw(export_dir) -> dict:
    return json.loads((export_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def manifest_paths(raw) -> list[tuple]:
    return [p for p in _paths(raw) if p[0] not in ("schema", "schema_version")]


def _other_type(value, choice: int):
    """A JSON value whose type differs from ``value``'s."""
    kinds = [0, "0", 0.5, None, [], {}, True, [1, "x"], {"a": 1}]
    others = [k for k in kinds if type(k) is not type(value) and not (isinstance(value, float) and type(k) is int)]
    return copy.deepcopy(others[choice % len(others)])


@settings(max_examples=60, deadline=30_000, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), remove=st.booleans(), choice=st.integers(0, 20))
def test_any_removed_key_or_changed_type_is_a_manifest_error(raw, manifest_paths, export_dir, tmp_path_factory, data,
                                                            remove, choice):
    from runtime.manifest import Manifest, ManifestError
    from runtime.pipeline import Pipeline

    path = data.draw(st.sampled_from(manifest_paths))
    broken = copy.deepcopy(raw)
    node = broken
    for k in path[:-1]:
        node = node[k]
    if remove:
        del node[path[-1]]
    else:
        node[path[-1]] = _other_type(node[path[-1]], choice)
    try:
        m = Manifest.from_dict(broken)
    except ManifestError as e:
        assert "tpo export" in str(e)
        return
    # accepted (an untyped dict, a list item's removal that keeps the types, ...): the runtime opens it or refuses it
    folder = tmp_path_factory.mktemp("m")
    for f in export_dir.iterdir():
        (folder / f.name).symlink_to(f)
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").write_text(json.dumps(broken))
    assert m is not None
    try:
        Pipeline.from_manifest(folder).close()
    except ValueError:
        pass


@pytest.mark.parametrize("which", ["component", "external", "tensor", "tokenizer"])
def test_any_changed_file_is_caught(raw, export_dir, tmp_path, which):
    from runtime.manifest import ManifestError
    from runtime.pipeline import Pipeline

    files = {"component": [c["file"] for c in raw["components"].values()],
             "external": [c["external_data"] for c in raw["components"].values() if c["external_data"]],
             "tensor": [t["file"] for t in raw["tensors"].values()], "tokenizer": [raw["tokenizer"]["file"]]}[which]
    if not files:
        files = [raw["tokenizer"]["file"]]  # this export keeps every graph in one file
    folder = tmp_path / "exp"
    shutil.copytree(export_dir, folder)
    rng = np.random.default_rng(0)
    for name in files[:3]:
        blob = bytearray((folder / name).read_bytes())
        blob[int(rng.integers(len(blob)))] ^= 0x55
        (folder / name).write_bytes(bytes(blob))
        with pytest.raises(ManifestError, match="changed since export"):
            Pipeline.from_manifest(folder)
        (folder / name).write_bytes((export_dir / name).read_bytes())
