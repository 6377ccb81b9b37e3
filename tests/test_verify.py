"""tpo verify: the runtime Pipeline equals TPOModel.generate; failures are gathered; bad sources refused."""

from __future__ import annotations

import json

import pytest
import torch
from test_export import tiny_export

from export.exporter import export_model, load_source
from export.verify import reference_model, verify_export
from runtime.cli import main as tpo_main
from runtime.manifest import Manifest


def test_end_to_end_tokens_and_heads_equal_the_reference():
    report = verify_export(tiny_export(), videos=2)
    assert report.ok, report.summary()
    assert len(report.e2e) == 8 and all(case["tokens_equal"] for case in report.e2e)
    assert {task for case in report.e2e for task in case["tasks"]} == {"region", "temporal", "mask"}
    assert {"e2e.head_region.box", "e2e.head_temporal.saliency", "e2e.mask.object_scores"} <= set(report.worst)


def test_verify_cli_prints_json_and_exits_zero(capsys):
    assert tpo_main(["verify", str(tiny_export()), "--videos", "1", "--no-e2e", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["checks"] > 50 and not out["failures"]


def test_a_different_model_fails_with_every_failure_gathered(tmp_path, capsys):
    model, _ = load_source("untrained-tiny")
    with torch.no_grad():
        model.region_head.pointer.out[3].weight.mul_(1.5)  # the tiny preset's pointer heads
        model.mask_head.pointer.out[3].bias.add_(0.5)
    model.save_pretrained(tmp_path / "other")
    code = tpo_main(["verify", str(tiny_export()), "--checkpoint", str(tmp_path / "other"), "--videos", "0",
                     "--no-e2e", "--json"])
    assert code == 1
    out = json.loads(capsys.readouterr().out)
    failed = {(f["component"], f["output"]) for f in out["failures"]}
    assert ("head_region", "box") in failed and ("mask_prompt", "sparse_prompt") in failed
    assert not any(c in ("vision", "llm") for c, _ in failed)
    assert all(f["max_abs"] > f["allowed"] for f in out["failures"])


def test_a_changed_checkpoint_is_refused(tmp_path):
    model, _ = load_source("untrained-tiny")
    model.save_pretrained(tmp_path / "ckpt")
    m = export_model(tmp_path / "ckpt", tmp_path / "exp", "fp32", components=["head_region"], log=lambda _m: None)
    assert m.source.sha256 and reference_model(m) is not None
    with torch.no_grad():
        model.region_head.pointer.out[1].bias.add_(1.0)
    model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="sha256"):
        reference_model(Manifest.load(tmp_path / "exp", require_all=False))


def test_export_cli_partial_embedded(tmp_path, capsys):
    """`tpo export --checkpoint embedded` (falls back to the untrained tiny model when none is installed)."""
    assert tpo_main(["export", "--checkpoint", "embedded", "--out", str(tmp_path), "--components", "head_region",
                     "loc_encoder"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line)["components"] == ["head_region", "loc_encoder"]
    m = Manifest.load(tmp_path, require_all=False)
    assert (tmp_path / "tokenizer.json").is_file() and set(m.components) == {"head_region", "loc_encoder"}


def test_pointer_export_passes_patch_tokens_and_refuses_without_them():
    """The tiny preset's pointer heads: vision gives patch_tokens, head_region / mask_prompt take them (the
    end-to-end verify above runs them against TPOModel.generate); without them the runtime says so."""
    import numpy as np

    from runtime.pipeline import Pipeline

    m = Manifest.load(tiny_export())
    patch = m.components["vision"].outputs[-1]
    assert patch.name == "patch_tokens" and tuple(patch.dims) == ("batch", 8, 64, 128)
    assert [t.name for t in m.components["head_region"].inputs] == ["task_embedding", "patch_tokens"]
    assert [t.name for t in m.components["mask_prompt"].inputs] == ["task_embedding", "patch_tokens"]
    pipe = Pipeline.from_manifest(tiny_export(), threads=1)
    h = np.zeros(m.kv.hidden_size, np.float32)
    with pytest.raises(ValueError, match="patch tokens"):
        pipe.head_feeds("head_region", h[None])
    with pytest.raises(ValueError, match="patch tokens"):
        pipe.tracker.prompt(h)
    prompt = pipe.tracker.prompt(h, np.zeros((1, 8, 64, 128), np.float32))
    assert tuple(prompt.sparse.shape) == (1, 3, m.mask.hidden_dim)
    assert prompt.box is None or tuple(prompt.box.shape) == (1, 4)
