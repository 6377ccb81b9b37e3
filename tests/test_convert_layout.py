"""The release layout and the conversion table against the real index (no weights): names, exact shapes, bytes."""

import json
import re

import pytest
import torch

from runtime.cli import main as tpo_main
from tpo_core.config import TPOConfig, get_preset
from tpo_core.convert.converter import _expected_state, config_from_release, target_shape
from tpo_core.convert.layout import ReleaseDims, layout_bytes, release_layout
from tpo_core.convert.synthetic import small_config, small_dims
from tpo_core.convert.table import build_plan, conversion_table


@pytest.fixture(scope="module")
def index(fixtures_dir):
    return json.loads((fixtures_dir / "model.safetensors.index.json").read_text())


def test_official_layout_has_every_index_name_and_its_total_size(index):
    layout = release_layout(ReleaseDims.official())
    assert list(layout) != [] and set(layout) == set(index["weight_map"]) and len(layout) == 2594
    assert layout_bytes(layout) == index["metadata"]["total_size"]  # every derived shape right, to the byte


@pytest.mark.parametrize("merge_lora", [False, True])
def test_7b_preset_has_the_release_shapes_exactly(merge_lora):
    """Every converted tensor has exactly the shape the 7B preset builds (was: a 2 % parameter band, which hid
    the box MLP's width); the model's only tensors not from the release are the temporal head's."""
    layout = release_layout(ReleaseDims.official())
    shapes = {n: (s, None) for n, (s, _) in layout.items()}
    plan = build_plan(list(layout), merge_lora=merge_lora)
    want = _expected_state(get_preset("videochat-tpo-7b"), merge_lora)
    got = {name: target_shape(t, shapes) for name, t in plan.targets.items()}
    assert {k: v for k, v in want.items() if not k.startswith("temporal_head.")} == got
    assert got["mask_head.box_mlp.layers.0.weight"] == (4096, 4096)  # track_embed_decode2 hidden 4096
    assert got["mask_head.sam.prompt_encoder.point_embed.weight"] == (4, 256)
    assert got["vision.blocks.22.attn.qkv.bias"] == (3072,)


def test_dry_run_json_on_the_release_index(fixtures_dir, capsys):
    rc = tpo_main(["convert", "--from", "videochat-tpo", str(fixtures_dir), "--dry-run", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["total"] == 2594 and out["unmapped"] == []
    assert out["mapped"] + len(out["extras"]) == 2594 and out["mapped"] == 2221
    extras = out["extras"]
    assert sum(k.startswith("cg_model.") for k in extras) == 285 and "cg_criterion.empty_weight" in extras
    assert sum(k.startswith("qformer.bert.") for k in extras) == 75
    assert {k.split(".")[0] for k in extras} == {"cg_model", "cg_criterion", "qformer", "project_down",
                                                  "merge_proj", "temporal_embed", "action_embed"}
    assert all(isinstance(r, str) and len(r) > 20 for r in extras.values())


def test_every_rule_is_used_and_first_matches_are_unambiguous(index):
    names = list(index["weight_map"])
    for merge in (False, True):
        for rule in conversion_table(merge):
            assert any(rule.regex.fullmatch(n) for n in names), f"rule {rule.source} matches no official name"


def test_small_variant_keeps_the_official_name_patterns(index):
    def pattern(name):
        return re.sub(r"\d+", "N", name)

    official = {pattern(n) for n in index["weight_map"]}
    small = release_layout(small_dims())
    assert {pattern(n) for n in small} == official
    assert len(small) < 1000 and layout_bytes(small) < 20e6


def test_config_from_release_is_the_7b_preset(fixtures_dir):
    release_cfg = json.loads((fixtures_dir / "config.json").read_text())
    assert config_from_release(release_cfg).to_dict() == get_preset("videochat-tpo-7b").to_dict()
    with pytest.raises(ValueError, match="disagrees"):
        config_from_release(release_cfg, base=small_config())
    bad = json.loads(json.dumps(release_cfg))
    bad["model_config"]["llm"]["name"] = "llama_13b"
    with pytest.raises(ValueError, match="mistral_7b"):
        config_from_release(bad)


def test_old_configs_get_the_box_mlp_width_they_were_built_with():
    data = get_preset("tiny").to_dict()
    del data["mask"]["box_mlp_dim"]
    assert TPOConfig.from_dict(data).mask.box_mlp_dim == data["mask"]["prompt_mlp_dim"] // 2
    with torch.device("meta"):
        assert get_preset("videochat-tpo-7b").mask.box_mlp_dim == 4096


def test_docs_table_is_generated_from_the_code():
    from tpo_core.convert.report import BEGIN, DOC, END, table_markdown

    doc = DOC.read_text()
    assert doc.split(BEGIN, 1)[1].split(END, 1)[0] == "\n" + table_markdown(), \
        "docs/convert.md is stale: run `python -m tpo_core.convert.report`"
