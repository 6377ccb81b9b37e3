"""Runtime building blocks (no export needed): resize against torch, sampling, the manifest's prompt template, KV
cache, and the device memory bank against the reference model's differentiable bank."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from runtime.contract.routing import Sampler
from runtime.kv_cache import KVCache
from runtime.mask_tracker import MemoryBank
from runtime.pipeline import NumpyOps
from runtime.preprocess import Preprocessor, resize, sample_indices
from runtime.video_io import clip_from_frames


@pytest.mark.parametrize("hw,size", [((96, 128), 64), ((1080, 1920), 224), ((37, 100), 128), ((64, 64), 64)])
def test_vision_preprocess_matches_reference(hw, size):
    from tpo_core.data.video import preprocess_frames

    frames = np.random.default_rng(0).integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    pp = Preprocessor(size=size)
    ref = preprocess_frames(frames, size, pp.mean, pp.std, mode="bicubic").numpy()
    got = pp.normalize(pp.vision(frames))[0]
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 2e-5


@pytest.mark.parametrize("hw,size", [((96, 128), 128), ((480, 640), 128), ((30, 50), 128)])
def test_mask_preprocess_matches_reference(hw, size):
    frames = np.random.default_rng(1).integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    ref = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).numpy()
    got = Preprocessor(size=64, mask_size=size).mask(frames) / 255
    assert np.abs(got - ref).max() < 1e-5


def test_bilinear_no_aa_matches_torch():
    x = np.random.default_rng(2).integers(0, 256, (1, 50, 70, 3), dtype=np.uint8)
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2).float(), size=(33, 33), mode="bilinear",
                        align_corners=False).permute(0, 2, 3, 1).numpy()
    assert np.abs(resize(x, 33, "bilinear") - ref).max() < 1e-3


def test_sample_indices_middle_of_segment():
    assert sample_indices(40, 8).tolist() == [2, 7, 12, 17, 22, 27, 32, 37]
    assert sample_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]


def test_sampler_greedy_top_p_and_seeds():
    logits = np.random.default_rng(4).standard_normal(300).astype(np.float32) * 3
    assert Sampler()(logits) == int(np.argmax(logits))
    assert Sampler(True, top_p=1e-6, seed=1)(logits) == int(np.argmax(logits))  # the nucleus is the top token
    a, b = Sampler(True, 0.8, 0.7, seed=5), Sampler(True, 0.8, 0.7, seed=5)
    draws = [a(logits) for _ in range(20)]
    assert draws == [b(logits) for _ in range(20)] and len(set(draws)) > 1
    probs = np.exp(logits / 0.7 - (logits / 0.7).max())
    order = np.argsort(-probs)
    nucleus = order[: int(np.searchsorted(np.cumsum(probs[order]) / probs.sum(), 0.8)) + 1]
    assert set(draws) <= set(nucleus.tolist())
    with pytest.raises(ValueError, match="top_p"):
        Sampler(True, top_p=0.0)


def test_exported_prompt_template_encodes_like_the_model(export_dir):
    from runtime.manifest import Manifest
    from runtime.tokenizer import open_tokenizer
    from tpo_core.model import load_model

    model, m = load_model("embedded"), Manifest.load(export_dir)
    tok = open_tokenizer(m)
    times = np.arange(8) * 0.37
    for q in ("What is red?", "  When does the blue square appear? ", "Track the green circle.", "start it"):
        ref = model.prompts.build(q, times)
        got = tok.build(q, times)
        assert (got.pre, got.num_visual, got.post) == (ref.pre, ref.num_visual, ref.post)
    assert "seconds" in tok.template.render("When is it?", times)[2]
    assert "seconds" not in tok.template.render("Where?", times)[2]
    ids = ref.post[:5]
    assert tok.decode(ids) == model.prompts.decode(ids)


def test_kv_cache_ping_pong_and_capacity():
    kv = KVCache(layers=2, kv_heads=2, head_dim=4, capacity=10)
    assert kv.nbytes == 2 * 2 * 2 * 2 * 10 * 4 * 4
    past, dims = kv.feeds(3)
    assert all(v.shape == (1, 2, 0, 4) for v in past.values()) and dims == {"past": 0, "total": 3}
    pres = kv.present_buffers(3)
    for i, b in enumerate(pres.values()):
        b[...] = i
    kv.advance(3, pres)
    past = kv.past()
    assert [float(v.mean()) for v in past.values()] == [0.0, 1.0, 2.0, 3.0] and kv.length == 3
    pres = kv.present_buffers(1)  # another backend returning fresh arrays is copied in
    fresh = {k: np.full(v.shape, 7, np.float32) for k, v in pres.items()}
    kv.advance(1, fresh)
    assert kv.length == 4 and all((v == 7).all() for v in kv.past().values())
    with pytest.raises(ValueError, match=r"prompt is 7 tokens .*on top of 4 cached.*holds 10"):
        kv.check_fits(7)
    with pytest.raises(ValueError, match="lower max_new_tokens to <= 3"):
        kv.check_fits(3, 10)


def test_memory_bank_matches_reference_state():
    from tpo_core.modeling.heads.mask_track import MaskMemoryBank

    m, p, hw, cm, c = 4, 5, 3, 2, 6
    ref = MaskMemoryBank(m, p, 1, hw, cm, c)
    bank = MemoryBank(m, p, hw, cm, c, "float32", NumpyOps())
    rng = np.random.default_rng(6)
    for t in range(12):
        mem, pos, ptr = (rng.standard_normal(s).astype(np.float32) for s in ((1, hw, cm), (1, hw, cm), (1, c)))
        ref.add(t, torch.from_numpy(mem), torch.from_numpy(pos), torch.from_numpy(ptr), conditioning=t == 0)
        bank.add(t, mem, pos, ptr, conditioning=t == 0)
        want = ref.state(t + 1)
        got = bank.feeds(t + 1)
        for name in ("memory", "memory_pos", "memory_offsets", "memory_valid", "pointers", "pointer_offsets",
                     "pointer_valid"):
            w = getattr(want, name).numpy()
            valid = (want.memory_valid if name.startswith("memory") else want.pointer_valid).numpy()
            g = got[name]
            if name in ("memory", "memory_pos", "pointers"):  # empty slots may hold anything (masked)
                assert np.array_equal(g[valid], w[valid]), name
            else:
                assert np.array_equal(np.where(valid, g, 0), np.where(valid, w, 0)), name
    assert bank.nbytes == 4 * (2 * m * hw * cm + p * c)


def test_clip_from_frames_rejects_images_and_huge_frames():
    with pytest.raises(ValueError, match="single image"):
        clip_from_frames(np.zeros((32, 32, 3), np.uint8), 8)
    with pytest.raises(ValueError, match="uint8"):
        clip_from_frames(np.zeros((4, 32, 32, 3), np.float32), 8)
    with pytest.raises(ValueError, match="8192 px limit"):
        clip_from_frames(np.zeros((1, 8, 8200, 3), np.uint8), 8)
    clip = clip_from_frames(np.zeros((20, 8, 10, 3), np.uint8), 8, fps=4.0)
    assert clip.frames.shape == (8, 8, 10, 3) and clip.duration == 5.0 and (clip.width, clip.height) == (10, 8)
