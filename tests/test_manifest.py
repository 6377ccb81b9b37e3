"""The typed manifest: every key of every section is required and typed; a missing key, a wrong type, an unknown
key or an old schema is refused with a message naming it and the fix."""

from __future__ import annotations

import copy
import dataclasses
import json
import typing

import pytest

from runtime.manifest import SCHEMA_VERSION, Manifest, ManifestError


def _field_paths(cls, data: dict, prefix: tuple = ()) -> list[tuple]:
    """Key paths of every dataclass field in ``data`` (descending into dataclass fields and dict-of-dataclass
    values)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name == "root":
            continue
        path = (*prefix, f.name)
        out.append(path)
        tp, value = hints[f.name], data[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if dataclasses.is_dataclass(tp):
            out += _field_paths(tp, value, path)
        elif typing.get_origin(tp) is dict and len(inner) == 2 and dataclasses.is_dataclass(inner[1]):
            for key in list(value)[:2]:  # two entries of each keyed section
                out += _field_paths(inner[1], value[key], (*path, key))
        elif len(inner) == 1 and dataclasses.is_dataclass(inner[0]) and value is not None:
            out += _field_paths(inner[0], value, path)
    return out


@pytest.fixture(scope="module")
def raw(export_dir) -> dict:
    return json.loads((export_dir / "manifest.json").read_text())


def _at(data: dict, path: tuple):
    for key in path[:-1]:
        data = data[key]
    return data


def test_every_key_is_required_and_named_when_missing(raw):
    paths = _field_paths(Manifest, raw)
    assert len(paths) > 120  # every section, component, tensor and token field
    for path in paths:
        if path in (("schema",), ("schema_version",)):
            continue
        data = copy.deepcopy(raw)
        del _at(data, path)[path[-1]]
        with pytest.raises(ManifestError) as err:
            Manifest.from_dict(data)
        assert f"{'.'.join(path)} is missing" in str(err.value) and "tpo export" in str(err.value), path


@pytest.mark.parametrize("path, value, message", [
    (("kv", "max_context"), "256", "kv.max_context must be int"),
    (("kv", "layers"), True, "kv.layers must be int"),
    (("prompt", "chunks"), "one chunk", "prompt.chunks must be a list"),
    (("preprocess", "mean"), [0.5, 0.5], "preprocess.mean must have 3 values"),
    (("task_tokens", "<boxes>", "id"), None, "task_tokens.<boxes>.id must be int"),
    (("components", "llm", "profiles", "decode", "seq"), [1, 1], "components.llm.profiles.decode.seq must have 3"),
    (("heads", "untrained"), ["colour"], "heads.untrained names unknown heads ['colour']"),
    (("generation", "stop_ids"), [], "generation.stop_ids non-empty"),
    (("preprocess", "resize"), "lanczos", "preprocess.resize 'lanczos' not in"),
])
def test_wrong_types_and_values_are_named(raw, path, value, message):
    data = copy.deepcopy(raw)
    _at(data, path)[path[-1]] = value
    with pytest.raises(ManifestError) as err:
        Manifest.from_dict(data)
    assert message in str(err.value)


def test_unknown_keys_old_schema_and_non_objects(raw):
    data = copy.deepcopy(raw)
    data["mask"]["ring"] = "prose"
    with pytest.raises(ManifestError, match="mask.ring is not a known key"):
        Manifest.from_dict(data)
    data = copy.deepcopy(raw)
    data["schema_version"] = SCHEMA_VERSION - 1
    with pytest.raises(ManifestError, match=r"schema_version is 1; this runtime reads 2 .*re-export"):
        Manifest.from_dict(data)
    with pytest.raises(ManifestError, match="must be a JSON object"):
        Manifest.from_dict([raw])


def test_round_trip_is_exact(raw, export_dir):
    m = Manifest.load(export_dir)
    assert json.loads(json.dumps(m.to_dict())) == raw
    assert dataclasses.replace(m, root=None) == Manifest.from_dict(raw)


def test_a_changed_tokenizer_file_is_caught(export_dir, tmp_path):
    import shutil

    folder = tmp_path / "exp"
    shutil.copytree(export_dir, folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = list(vocab)[10:12]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two token ids swapped
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="tokenizer: file tokenizer.json changed since export"):
        Manifest.load(folder)
