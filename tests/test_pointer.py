"""The pointer head (config ``pointer.enabled``): off reproduces the release heads and graphs (the shipped default
loads strictly); on, the boundary shapes, the export/runtime IO, and that it learns where a feature is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tpo_core.config import PointerConfig, get_preset
from tpo_core.export_specs import component_io
from tpo_core.model import TPOModel
from tpo_core.modeling.heads.pointer import PointerHead
from tpo_core.train.params import named_groups

DEFAULT = Path(__file__).resolve().parents[1] / "tpo_core" / "assets" / "default"


def _names(specs) -> list[str]:
    return [s.name for s in specs]


def test_shipped_default_loads_strictly_with_the_flag_its_config_says():
    data = json.loads((DEFAULT / "config.json").read_text())
    model = TPOModel.from_pretrained(DEFAULT)  # strict: any missing / unexpected key raises
    assert model.uses_patches == bool(data.get("pointer", {}).get("enabled", False))


def test_flag_off_is_the_release_heads_and_graphs(tmp_path):
    """A checkpoint saved before the pointer existed (no ``pointer`` key in its config) loads with the flag off:
    the release's region MLP and mask prompt MLP, the release graphs' IO."""
    cfg = get_preset("tiny")
    cfg.pointer = PointerConfig(enabled=False)
    cfg.mask.box_mask_prompt = False  # the box mask prompt needs the pointer's box
    TPOModel.from_config(cfg, seed=0).save_pretrained(tmp_path / "old")
    data = json.loads((tmp_path / "old" / "config.json").read_text())
    del data["pointer"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(data))
    model = TPOModel.from_pretrained(tmp_path / "old")  # strict
    assert not model.uses_patches and not model.mask_head.uses_patches
    assert not any(k.startswith(("region_head.pointer.", "mask_head.pointer.")) for k in model.state_dict())
    assert hasattr(model.region_head, "mlp") and hasattr(model.mask_head, "prompt_mlp")
    io = component_io(model.config)
    assert _names(io["vision"].outputs) == ["visual_tokens", "frame_features"]
    assert _names(io["head_region"].inputs) == ["task_embedding"]
    assert _names(io["mask_prompt"].inputs) == ["task_embedding"]
    h = torch.randn(2, model.config.llm.hidden_size)
    with torch.no_grad():  # the release region head: the MLP on the task embedding alone
        torch.testing.assert_close(model.run_region(h), model.region_head.mlp(h))
        torch.testing.assert_close(model.mask_head.sparse_prompt(h).flatten(1), model.mask_head.prompt_mlp(h))
    assert get_preset("videochat-tpo-7b").pointer.enabled is False  # the 7B keeps the release architecture


def test_flag_on_shapes_at_the_boundaries():
    cfg = get_preset("tiny")
    assert cfg.pointer.enabled
    model = TPOModel.from_config(cfg, seed=0).eval()
    v = cfg.vision
    t, p, dv = v.num_frames // v.tubelet_size, v.tokens_per_frame, v.embed_dim
    with torch.no_grad():
        visual, feats, patches = model.encode_video_patches(torch.randn(2, v.num_frames, 3, v.img_size, v.img_size))
        assert patches.shape == (2, t, p, dv) and feats.shape == (2, t, dv)
        h = torch.randn(2, cfg.llm.hidden_size)
        box = model.run_region(h, patches)
        assert box.shape == (2, 4) and bool((box[:, 2:] > box[:, :2]).all())  # ordered corners
        prompt = model.mask_head.sparse_prompt(h, patches)
        assert prompt.shape == (2, 3, cfg.mask.hidden_dim)
        # the mask prompt is SAM2's own box prompt of the pointer's box
        torch.testing.assert_close(prompt, model.mask_head.box_prompt_embedding(model.mask_head.box(h, patches)))
    with pytest.raises(ValueError, match="patch_tokens"):
        model.run_region(h)
    with pytest.raises(ValueError, match="patch_tokens"):
        model.mask_head.sparse_prompt(h)
    with pytest.raises(ValueError, match="patch_tokens"):
        model.run_region(h, patches[:, :, :10])
    io = component_io(cfg)
    want = ("batch", t, p, dv)
    assert io["vision"].outputs[-1].name == "patch_tokens" and io["vision"].outputs[-1].dims == want
    assert _names(io["head_region"].inputs) == ["task_embedding", "patch_tokens"]
    assert io["head_region"].inputs[1].dims == want
    assert io["mask_prompt"].inputs[1].dims == ("objects", t, p, dv)
    groups = {g: {n for n, _ in ps} for g, ps in named_groups(model).items()}
    assert any(n.startswith("region_head.pointer.") for n in groups["region_head"])
    assert any(n.startswith("mask_head.pointer.") for n in groups["mask_prompt"])


def test_bad_pointer_config_is_refused():
    with pytest.raises(ValueError, match="num_heads"):
        PointerConfig(enabled=True, dim=30, num_heads=4)
    with pytest.raises(ValueError, match="enabled"):
        PointerConfig(enabled="yes")


def _position_task(n: int, gen: torch.Generator, side: int = 4, frames: int = 2, classes: int = 4, dv: int = 16):
    """Patches [n, frames, side^2, dv] of noise with ``classes`` objects, each a fixed feature vector added at a
    random cell of a random frame; the query one-hot names one object; the target is that object's cell box."""
    feats = torch.randn(classes, dv, generator=torch.Generator().manual_seed(0)) * 2.0
    patches = torch.randn(n, frames, side * side, dv, generator=gen) * 0.5
    query = torch.zeros(n, classes)
    boxes = torch.zeros(n, 4)
    for i in range(n):
        cells = torch.randperm(frames * side * side, generator=gen)[:classes]
        for k, cell in enumerate(cells.tolist()):
            patches[i, cell // (side * side), cell % (side * side)] += feats[k]
        k = int(torch.randint(classes, (1,), generator=gen))
        query[i, k] = 1.0
        cell = int(cells[k]) % (side * side)
        y, x = divmod(cell, side)
        boxes[i] = torch.tensor([x / side, y / side, (x + 1) / side, (y + 1) / side])
    return query, patches, boxes


def _acc(pred: torch.Tensor, boxes: torch.Tensor) -> float:
    lt, rb = torch.maximum(pred[:, :2], boxes[:, :2]), torch.minimum(pred[:, 2:], boxes[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = lambda b: (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)  # noqa: E731
    return float(((inter / (area(pred) + area(boxes) - inter)) >= 0.5).float().mean())


def test_pointer_learns_where_the_asked_feature_is(one_thread):
    from tpo_core.modeling.losses import region_loss

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    head = PointerHead(PointerConfig(enabled=True, dim=32, num_heads=2, num_layers=1), 4, 16, 2, 4)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    for _ in range(300):
        q, p, b = _position_task(64, gen)
        loss = region_loss(head(q, p), b)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    q, p, b = _position_task(300, torch.Generator().manual_seed(99))
    with torch.no_grad():
        acc = _acc(head(q, p), b)
    mean_box = _acc(b.mean(0, keepdim=True).expand_as(b), b)
    assert mean_box < 0.1
    assert acc >= 0.8, f"pointer Acc@0.5 {acc:.3f} (mean box {mean_box:.3f})"
