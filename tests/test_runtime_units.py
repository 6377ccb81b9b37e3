"""Runtime building blocks against the reference (no export needed): resize, post-processing, sampling,
tokenization, KV cache, memory bank."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from runtime.generator import Sampler
from runtime.kv_cache import KVCache
from runtime.mask_tracker import MemoryBank
from runtime.pipeline import NumpyOps, box_to_pixels, spans_to_seconds
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


def test_sample_indices_matches_reference():
    from tpo_core.data.video import sample_indices as ref

    for n, t in [(100, 8), (5, 8), (1, 16), (301, 16)]:
        assert (sample_indices(n, t) == ref(n, t)).all()


def test_spans_and_boxes_match_reference():
    from tpo_core.modeling.heads.region import boxes_to_pixels
    from tpo_core.modeling.heads.temporal import spans_to_seconds as ref_spans

    rng = np.random.default_rng(3)
    for _ in range(20):
        logits = rng.standard_normal((10, 2)).astype(np.float32)
        spans = rng.random((10, 2)).astype(np.float32)
        dur = float(rng.uniform(1, 30))
        for r in (1.0, 0.1, 0.0):
            got = spans_to_seconds(logits, spans, dur, r)
            want = ref_spans(torch.from_numpy(logits)[None], torch.from_numpy(spans)[None], dur, r)[0]
            assert [g[:2] for g in got] == [w[:2] for w in want]
            assert np.allclose([g[2] for g in got], [w[2] for w in want], rtol=0, atol=1e-12)
        box = (rng.random(4) * 1.4 - 0.2).astype(np.float32)
        ref = boxes_to_pixels(torch.from_numpy(box)[None], 640, 360)[0].tolist()
        assert box_to_pixels(box, 640, 360) == tuple(ref)


@pytest.mark.parametrize("do_sample", [False, True])
def test_sampler_matches_reference(do_sample):
    from tpo_core.generation import _sample

    logits = np.random.default_rng(4).standard_normal(300).astype(np.float32) * 3
    gen = torch.Generator().manual_seed(5) if do_sample else None
    ref = [_sample(torch.from_numpy(logits), do_sample, 0.8, 0.7, gen) for _ in range(20)]
    s = Sampler(do_sample, 0.8, 0.7, seed=5)
    assert [s(logits) for _ in range(20)] == ref


def test_prompt_tokens_match_reference():
    from export.manifest_fields import _tokenizer, prompt_template
    from runtime.tokenizer import PromptTokenizer
    from tpo_core.cli import load_model

    model = load_model("embedded")
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        model.tokenizer.save(str(Path(d) / "tokenizer.json"))
        tok = PromptTokenizer(_tokenizer(model), prompt_template(model.config.system_message,
                                                                 model.config.num_visual_tokens), Path(d))
    times = np.arange(8) * 0.37
    for q in ("What is red?", "  When does the blue square appear? ", "Track the green circle.", "start it"):
        ref = model.prompts.build(q, times)
        got = tok.build(q, times)
        assert (got.pre, got.num_visual, got.post) == (ref.pre, ref.num_visual, ref.post)
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
