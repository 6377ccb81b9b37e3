"""The TPO model: 7B parameter budget on meta, shapes, task-token routing in generate, checkpoints."""


import numpy as np
import pytest
import torch

from tpo_core.checkpoint import CheckpointError
from tpo_core.config import get_preset
from tpo_core.convert.layout import ReleaseDims, release_layout
from tpo_core.data.video import read_video
from tpo_core.model import TPOModel, parameter_breakdown


@pytest.fixture(scope="module")
def tiny():
    return TPOModel.from_config(get_preset("tiny"), seed=0).eval()


@pytest.fixture(scope="module")
def clip(sample_videos, tiny):
    return read_video(sample_videos[0], tiny.config.vision.num_frames)


def test_7b_parameter_budget_matches_release():
    """Exact shapes are checked tensor by tensor in test_convert_layout.py; here the per-part budget."""
    with torch.device("meta"):
        model = TPOModel(get_preset("videochat-tpo-7b"))
        model.llm.apply_lora()
    counts = parameter_breakdown(model)
    assert 7.2e9 < counts["llm"] < 7.3e9 and 40e6 < counts["lora"] < 45e6
    assert 0.28e9 < counts["vision_encoder"] < 0.32e9
    layout = release_layout(ReleaseDims.official())  # the release's own tensors (SAM2 + track_embed MLPs)
    mask_release = sum(int(np.prod(shape)) for name, (shape, _) in layout.items()
                       if name.startswith(("sam.", "track_embed.", "track_embed_decode2.")))
    gaussian = 2 * 128  # SAM2's positional Gaussian matrix: a buffer, not a parameter, in transformers
    assert counts["mask_head"] == mask_release - gaussian  # exact (the box MLP is 4096 wide, as released)


def test_encode_video_shapes(tiny):
    cfg = tiny.config
    frames = torch.randn(2, cfg.vision.num_frames, 3, cfg.vision.img_size, cfg.vision.img_size)
    visual, feats = tiny.encode_video(frames)
    assert visual.shape == (2, cfg.num_visual_tokens, cfg.llm.hidden_size)
    assert feats.shape == (2, cfg.vision.num_frames, cfg.vision.embed_dim)
    with pytest.raises(ValueError, match=r"\[B, T, 3, S, S\]"):
        tiny.encode_video(frames[0])


def _force(*ids):
    """A logits processor that makes step i emit ids[i] (then EOS from the last)."""

    def proc(step, scores):
        out = torch.full_like(scores, -1e9)
        out[ids[min(step, len(ids) - 1)]] = 0.0
        return out

    return proc


@pytest.mark.parametrize("begin, head", [("<box_begin>", "region"), ("<time_begin>", "temporal"),
                                         ("<track_begin>", "mask")])
def test_forced_begin_token_runs_the_matching_head(tiny, clip, begin, head):
    ids = tiny.task_ids.by_token()
    eos = tiny.prompts.eos_id
    res = tiny.generate(clip, "Where is the red circle?", logits_processor=_force(ids[begin], eos, eos))
    placeholder = {"region": "<boxes>", "temporal": "<temp>", "mask": "<tracking>"}[head]
    assert res.token_ids == [ids[begin], ids[placeholder], eos]
    assert res.tasks == [head]
    for name in ("region", "temporal", "mask"):
        assert (getattr(res, name) is not None) == (name == head)
    if head == "region":
        x0, y0, x1, y1 = res.region.box
        assert 0 <= x0 <= x1 <= clip.width and 0 <= y0 <= y1 <= clip.height
    if head == "temporal":
        assert res.temporal.saliency.shape == (tiny.config.vision.num_frames,)
        assert all(0 <= s.start <= s.end <= clip.duration for s in res.temporal.spans)
    if head == "mask":
        assert res.mask.masks.shape == (len(clip.frames), clip.height, clip.width)
        assert res.mask.masks.dtype == bool


def test_head_reads_the_hidden_state_at_the_placeholder(tiny, clip):
    """The KV-cached routing gives the head the same vector as a teacher-forced pass over the pair."""
    ids = tiny.task_ids
    eos = tiny.prompts.eos_id
    res = tiny.generate(clip, "Where is the red circle?", logits_processor=_force(ids.box_begin, eos))
    with torch.no_grad():
        from tpo_core.data.video import preprocess_frames

        cfg = tiny.config.vision
        pixels = preprocess_frames(clip.frames, cfg.img_size, cfg.mean, cfg.std, mode=cfg.resize)[None]
        visual, _, patches = tiny.encode_video_patches(pixels)
        prompt = tiny.prompts.build("Where is the red circle?", clip.timestamps)
        prompt.answer = [ids.box_begin, ids.boxes]
        emb = tiny.sequence_embeds(prompt, visual, with_answer=True)
        _, hidden, _ = tiny.llm(emb)
        expected = tiny.run_region(hidden[:, -1], patches)[0].numpy()  # the tiny preset's pointer head
    np.testing.assert_allclose(res.region.box_normalized, expected, atol=1e-5)


def test_greedy_generate_is_deterministic(tiny, clip):
    a = tiny.generate(clip, "What color is the background?")
    b = tiny.generate(clip, "What color is the background?")
    assert a.token_ids == b.token_ids and a.text == b.text


def test_top_p_sampling_is_seeded(tiny, clip):
    a = tiny.generate(clip, "What color is the background?", do_sample=True, top_p=0.9, seed=3, max_new_tokens=8)
    b = tiny.generate(clip, "What color is the background?", do_sample=True, top_p=0.9, seed=3, max_new_tokens=8)
    assert a.token_ids == b.token_ids


def test_prompt_longer_than_kv_capacity_is_rejected(tiny, clip):
    with pytest.raises(ValueError, match="max_context"):
        tiny.generate(clip, "red " * 400)


def test_checkpoint_round_trip_and_strict_errors(tiny, clip, tmp_path):
    tiny.save_pretrained(tmp_path / "ck")
    loaded = TPOModel.from_pretrained(tmp_path / "ck")
    a = tiny.generate(clip, "Where is the red circle?", max_new_tokens=6)
    b = loaded.generate(clip, "Where is the red circle?", max_new_tokens=6)
    assert a.token_ids == b.token_ids
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "ck" / "model.safetensors"))
    assert state.pop("region_head.pointer.key_in.weight") is not None
    state["surprise.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "ck" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys: region_head.*unexpected keys: surprise"):
        TPOModel.from_pretrained(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="lacks model.safetensors"):
        TPOModel.from_pretrained(tmp_path / "nowhere")
