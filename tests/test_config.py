"""Config validation, presets and JSON round trip."""

import json

import pytest

from tpo_core.config import (
    LLMConfig,
    MaskHeadConfig,
    QFormerConfig,
    TemporalHeadConfig,
    TPOConfig,
    VisionConfig,
    get_preset,
)
from tpo_core.tokens import TASK_TOKENS, TaskTokenIds, prompt_chunks


@pytest.mark.parametrize("name", ["tiny", "videochat-tpo-7b"])
def test_presets_round_trip(name, tmp_path):
    cfg = get_preset(name)
    cfg.to_json(tmp_path / "c.json")
    assert TPOConfig.from_json(tmp_path / "c.json") == cfg


def test_7b_preset_has_official_shapes():
    cfg = get_preset("videochat-tpo-7b")
    assert (cfg.vision.img_size, cfg.vision.patch_size, cfg.vision.num_frames) == (224, 16, 16)
    assert cfg.vision.tokens_per_frame == 196 and cfg.vision.num_blocks_built == 23
    assert cfg.qformer.num_queries == 96 and cfg.qformer.num_layers == 12
    assert (cfg.llm.hidden_size, cfg.llm.num_layers, cfg.llm.num_kv_heads, cfg.llm.vocab_size) == (4096, 32, 8, 32000)
    assert cfg.mask.image_size == 1024 and cfg.mask.hidden_dim == 256
    assert TaskTokenIds.after_vocab(cfg.llm.vocab_size).by_token() == {
        "<box_begin>": 32000, "<time_begin>": 32001, "<temp>": 32002, "<boxes>": 32003,
        "<track_begin>": 32004, "<tracking>": 32005, "<track_box>": 32006}


def test_task_token_ids_match_official_added_tokens(fixtures_dir):
    official = json.loads((fixtures_dir / "added_tokens.json").read_text())
    assert TaskTokenIds.after_vocab(32000).by_token() == official
    assert set(official) == set(TASK_TOKENS)


@pytest.mark.parametrize("factory, kwargs, needle", [
    (VisionConfig, {"img_size": 100, "patch_size": 16}, "divisible"),
    (VisionConfig, {"resize": "nearest"}, "resize"),
    (VisionConfig, {"num_blocks_built": 30, "depth": 24}, "exceeds"),
    (QFormerConfig, {"num_heads": 5}, "divisible"),
    (QFormerConfig, {"dropout": 1.5}, "dropout"),
    (LLMConfig, {"num_heads": 32, "num_kv_heads": 5}, "divisible"),
    (LLMConfig, {"max_context": 10**6}, "max_context"),
    (LLMConfig, {"hidden_size": 0}, "positive"),
    (TemporalHeadConfig, {"round_to_s": -1}, "round_to_s"),
    (MaskHeadConfig, {"image_size": 1000}, "multiple of 32"),
    (MaskHeadConfig, {"hiera_stages": (1, 2)}, "equal lengths"),
])
def test_bad_values_raise_with_field_name(factory, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        factory(**kwargs)


def test_unknown_keys_and_versions_are_rejected():
    data = get_preset("tiny").to_dict()
    with pytest.raises(ValueError, match="unknown keys"):
        TPOConfig.from_dict({**data, "typo": 1})
    with pytest.raises(ValueError, match="version"):
        TPOConfig.from_dict({**data, "version": 99})
    with pytest.raises(ValueError, match="target_modules"):
        TPOConfig.from_dict({**data, "llm": {**data["llm"], "lora": {**data["llm"]["lora"], "target_modules": ["x"]}}})


def test_prompt_template_layout():
    chunks = prompt_chunks("When does the red circle appear?", "", [0.5, 1.5])
    assert chunks[0] == "[INST] <Video>" and chunks[1].startswith("</Video>") and chunks[1].endswith("[/INST]")
    assert chunks[2].startswith(" [INST] ") and chunks[2].endswith(" [/INST] ")
    assert "0.5, 1.5 seconds" in chunks[2]  # the question mentions time: sampled times are listed
    assert "seconds" not in prompt_chunks("Where is the red circle?", "", [0.5])[2]
