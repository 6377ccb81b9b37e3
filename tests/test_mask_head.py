"""Mask head (SAM2-style, transformers' SAM2-video modules): stage shapes, fixed-capacity memory, fidelity to
transformers' own orchestration, losses, and ONNX export of the four stages (tiny preset, CPU)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tpo_core.config import get_preset
from tpo_core.modeling.heads.mask import (
    MAX_OBJECT_POINTERS,
    NO_OBJ_SCORE,
    ImageFeatures,
    MaskHead,
    MemoryState,
    count_parameters,
)
from tpo_core.modeling.heads.mask_track import MaskMemoryBank, track, track_batch
from tpo_core.modeling.mask_losses import LOSS_NAMES, boxes_from_masks, mask_head_losses

LLM_DIM = 256


def _perturb(head: MaskHead, seed: int = 0) -> MaskHead:
    """Random init leaves several SAM2 tensors at zero (temporal encodings, fuser scale, no-memory embedding);
    perturb everything so the tests see every path."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return head


# the tiny preset's SAM2 without the pointer head: the release's prompt path (prompt MLP, no box mask prompt, SAM2's
# candidate choice by predicted IoU)
TINY_SAM = dataclasses.replace(get_preset("tiny").mask, box_mask_prompt=False, multimask_select="iou")


def _tiny_head(variant: str = "sam2", seed: int = 0) -> MaskHead:
    torch.manual_seed(seed)
    return _perturb(MaskHead(TINY_SAM, LLM_DIM, variant=variant), seed).eval()


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """Tiny ops gain nothing from intra-op threads; on a busy 2-core box OpenMP spinning makes them ~5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def head() -> MaskHead:
    return _tiny_head()


@pytest.fixture(scope="module")
def frame(head):
    torch.manual_seed(1)
    px = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        feats = head.encode_image(px)
        prompt = head.sparse_prompt(torch.randn(1, LLM_DIM))
        dec = head.decode(feats, head.condition_without_memory(feats.embedding), prompt)
        mem, pos = head.encode_memory(feats.embedding, dec.low_res_logits, dec.object_score_logits)
    return px, feats, prompt, dec, mem, pos


def _state(head, frame, num_frames: int = 3, scale: float = 1.0) -> MemoryState:
    """A partly filled bank (cond frame + num_frames-1 tracked frames), seen from frame ``num_frames``."""
    _, _, _, dec, mem, pos = frame
    bank = MaskMemoryBank.for_head(head)
    for t in range(num_frames):
        bank.add(t, mem * (1 + scale * t), pos, dec.object_pointer * (1 - 0.1 * t), conditioning=t == 0)
    return bank.state(num_frames)


def test_stage_shapes(head, frame):
    _, feats, prompt, dec, mem, pos = frame
    assert feats.feat_s0.shape == (1, 8, 32, 32) and feats.feat_s1.shape == (1, 16, 16, 16)
    assert feats.embedding.shape == (1, 64, 64) and feats.embedding_pos.shape == (1, 64, 64)
    assert prompt.shape == (1, 3, 64)
    assert dec.low_res_logits.shape == (1, 1, 32, 32) and dec.raw_low_res_logits.shape == (1, 1, 32, 32)
    assert dec.iou.shape == (1, 1) and dec.object_score_logits.shape == (1, 1) and dec.object_pointer.shape == (1, 64)
    assert mem.shape == (1, 64, 16) and pos.shape == (1, 64, 16)
    st = _state(head, frame)
    assert st.memory.shape == (1, 7, 64, 16) and st.pointers.shape == (1, MAX_OBJECT_POINTERS, 64)
    with torch.no_grad():
        cond = head.memory_attention(feats.embedding, feats.embedding_pos, st)
        tracked = head.decode(feats, cond, None)
    assert cond.shape == (1, 64, 64) and tracked.low_res_logits.shape == (1, 1, 32, 32)
    gated = dec.object_score_logits[0, 0] <= 0
    assert torch.equal(dec.low_res_logits, torch.full_like(dec.low_res_logits, NO_OBJ_SCORE)) == bool(gated)


def test_track_shapes_and_determinism(head):
    torch.manual_seed(2)
    px, prompt = torch.randn(5, 3, 128, 128), torch.randn(1, 3, 64)
    with torch.no_grad():
        a, b = track(head, px, prompt), track(head, px, prompt)
    assert a.low_res_logits.shape == (5, 1, 32, 32)
    assert a.object_score_logits.shape == (5, 1) and a.iou.shape == (5, 1)
    assert torch.equal(a.raw_low_res_logits, b.raw_low_res_logits) and torch.equal(a.iou, b.iou)
    masks = head.masks_at_resolution(a.low_res_logits, 48, 64)
    assert masks.shape == (5, 48, 64) and masks.dtype == torch.bool


def test_track_batch_rows_equal_track_per_video(head):
    """Training tracks all mask samples of a batch at once; each row must be that video tracked alone."""
    torch.manual_seed(3)
    px, prompts = torch.randn(3, 9, 3, 128, 128), torch.randn(3, 3, 64)
    with torch.no_grad():
        batched = track_batch(head, px, prompts)
        alone = [track(head, px[i], prompts[i:i + 1]) for i in range(3)]
    assert batched.low_res_logits.shape == (3, 9, 1, 32, 32) and batched.iou.shape == (3, 9, 1)
    for i, one in enumerate(alone):
        for name in ("low_res_logits", "object_score_logits", "iou", "raw_low_res_logits"):
            torch.testing.assert_close(getattr(batched, name)[i], getattr(one, name), atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one object per video"):
        track_batch(head, px, prompts[:2])


def test_memory_shape_constant_past_capacity(head, monkeypatch):
    seen = []
    original = head.memory_attention

    def spy(embedding, embedding_pos, state):
        seen.append((tuple(state.memory.shape), tuple(state.pointers.shape), int(state.memory_valid.sum())))
        return original(embedding, embedding_pos, state)

    monkeypatch.setattr(head, "memory_attention", spy)
    num_frames = head.cfg.num_maskmem + 3
    with torch.no_grad():
        track(head, torch.randn(num_frames, 3, 128, 128), torch.randn(1, 3, 64))
    assert len(seen) == num_frames - 1
    assert {s[:2] for s in seen} == {((1, 7, 64, 16), (1, MAX_OBJECT_POINTERS, 64))}
    assert [s[2] for s in seen] == [min(t, 7) for t in range(1, num_frames)]


def test_ring_buffer_offsets(head, frame):
    st = _state(head, frame, num_frames=12)  # 11 tracked frames through 6 ring slots
    offsets = sorted(st.memory_offsets[0].tolist())
    assert offsets == [0, 1, 2, 3, 4, 5, 6] and bool(st.memory_valid.all())
    assert sorted(st.pointer_offsets[0][st.pointer_valid[0]].tolist()) == list(range(1, 13))


def test_invalid_slots_do_not_influence_output(head, frame):
    _, feats, *_ = frame
    st = _state(head, frame, num_frames=3)
    assert not bool(st.memory_valid[0, 4]) and not bool(st.pointer_valid[0, 9])
    noisy = MemoryState(*[x.clone() for x in st.as_tuple()])
    noisy.memory[:, 3:] = torch.randn_like(noisy.memory[:, 3:]) * 10
    noisy.memory_pos[:, 3:] = 5.0
    noisy.memory_offsets[:, 3:] = 4
    noisy.pointers[:, 3:] = torch.randn_like(noisy.pointers[:, 3:]) * 10
    noisy.pointer_offsets[:, 3:] = 7
    with torch.no_grad():
        ref = head.memory_attention(feats.embedding, feats.embedding_pos, st)
        out = head.memory_attention(feats.embedding, feats.embedding_pos, noisy)
        noisy.memory[:, 1] += 1.0  # a valid slot must matter
        changed = head.memory_attention(feats.embedding, feats.embedding_pos, noisy)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert (changed - ref).abs().max() > 1e-3


def test_empty_bank_is_the_conditioning_path(head, frame):
    _, feats, *_ = frame
    bank = MaskMemoryBank.for_head(head)
    with torch.no_grad():
        out = head.memory_attention(feats.embedding, feats.embedding_pos, bank.state(0))
    torch.testing.assert_close(out, head.condition_without_memory(feats.embedding))


def test_memory_attention_matches_transformers(head, frame):
    """With every slot valid our masked fixed-capacity attention equals transformers' Sam2VideoMemoryAttention."""
    _, feats, *_ = frame
    st = _state(head, frame, num_frames=12)
    st.pointer_valid[:] = True
    m, cm = head.cfg.num_maskmem, head.cfg.mem_dim
    tpos = head.sam.memory_temporal_positional_encoding[:, 0]  # [M, 1, Cm]
    mem_pos = st.memory_pos[0] + tpos[torch.remainder(st.memory_offsets[0] - 1, m)]
    ptr = st.pointers[0].reshape(-1, cm)
    memory = torch.cat([st.memory[0].reshape(-1, cm), ptr])[:, None]
    memory_pos = torch.cat([mem_pos.reshape(-1, cm), torch.zeros_like(ptr)])[:, None]
    with torch.no_grad():
        ours = head.memory_attention(feats.embedding, feats.embedding_pos, st)
        ref = head.sam.memory_attention(
            current_vision_features=feats.embedding.transpose(0, 1), memory=memory,
            current_vision_position_embeddings=feats.embedding_pos.transpose(0, 1),
            memory_posision_embeddings=memory_pos, num_object_pointer_tokens=ptr.shape[0])
    torch.testing.assert_close(ours, ref.reshape(ours.shape), rtol=1e-4, atol=1e-5)


def test_decode_matches_transformers_box_prompt(head, frame):
    _, feats, *_ = frame
    box = torch.tensor([[0.2, 0.3, 0.7, 0.8]])
    h, c = head.embed_size, head.cfg.hidden_dim
    with torch.no_grad():
        cond = head.condition_without_memory(feats.embedding)
        ours = head.decode(feats, cond, head.box_prompt_embedding(box))
        ref = head.sam._single_frame_forward(
            image_embeddings=[feats.feat_s0, feats.feat_s1, cond.transpose(1, 2).reshape(1, c, h, h)],
            input_boxes=(box * head.image_size).view(1, 1, 4), multimask_output=True)
    torch.testing.assert_close(ours.low_res_logits, ref.pred_masks.reshape(1, 1, 32, 32))
    torch.testing.assert_close(ours.object_pointer, ref.object_pointer.reshape(1, c))
    torch.testing.assert_close(ours.object_score_logits, ref.object_score_logits.reshape(1, 1))
    torch.testing.assert_close(ours.iou, ref.iou_scores.reshape(1, 3).max(dim=1, keepdim=True).values)


def test_encode_memory_matches_transformers_sam21():
    head = _tiny_head("sam2.1", seed=3)
    torch.manual_seed(4)
    emb, low = torch.randn(1, 64, 64), torch.randn(1, 1, 32, 32)
    for score in (2.0, -2.0):  # present, and absent (SAM2.1 adds the occlusion embedding)
        obj = torch.tensor([[score]])
        with torch.no_grad():
            mem, pos = head.encode_memory(emb, low, obj)
            ref_mem, ref_pos = head.sam._encode_new_memory(
                current_vision_feats=emb.transpose(0, 1), object_score_logits=obj, is_mask_from_pts=False,
                pred_masks_high_res=F.interpolate(low, size=(128, 128), mode="bilinear", align_corners=False))
        torch.testing.assert_close(mem, ref_mem.float().transpose(0, 1), rtol=1e-2, atol=2e-2)  # ref is bf16
        torch.testing.assert_close(pos, ref_pos.transpose(0, 1))


def test_preprocess_and_box_prompt(head):
    frames = torch.randint(0, 256, (2, 90, 160, 3), dtype=torch.uint8)
    px = head.preprocess(frames)
    assert px.shape == (2, 3, 128, 128) and px.dtype == torch.float32
    assert head.box_prompt_embedding(torch.tensor([[0.1, 0.1, 0.5, 0.5]])).shape == (1, 3, 64)
    with pytest.raises(ValueError, match="uint8"):
        head.preprocess(frames.float())
    with pytest.raises(ValueError, match="pixels must be"):
        head.encode_image(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="variant"):
        MaskHead(TINY_SAM, LLM_DIM, variant="sam3")
    with pytest.raises(ValueError, match="box_mask_prompt needs the pointer"):
        MaskHead(get_preset("tiny").mask, LLM_DIM)


def test_7b_mask_head_on_meta():
    cfg = get_preset("videochat-tpo-7b")
    with torch.device("meta"):
        head = MaskHead(cfg.mask, cfg.llm.hidden_size)
    sam, prompt_mlp = count_parameters(head.sam), count_parameters(head.prompt_mlp)
    assert 0.22e9 < sam < 0.23e9, sam  # SAM2 Hiera-L: 224.4M
    assert prompt_mlp == 4096 * 4096 + 4096 + 4096 * 768 + 768
    assert head.sam.vision_encoder.config.backbone_config.embed_dim_per_stage == [144, 288, 576, 1152]
    assert head.embed_size == 64 and head.num_pointer_tokens == 4


def test_boxes_from_masks():
    m = torch.zeros(2, 10, 20, dtype=torch.bool)
    m[0, 2:5, 4:10] = True
    torch.testing.assert_close(boxes_from_masks(m), torch.tensor([[0.2, 0.2, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]))


def test_losses_finite_and_decrease_when_overfitting():
    head = _tiny_head(seed=5).train()
    torch.manual_seed(6)
    px, h = torch.randn(2, 3, 128, 128), torch.randn(1, LLM_DIM)
    target = torch.zeros(2, 64, 64, dtype=torch.bool)
    target[0, 16:40, 12:36] = True  # present on the prompted frame, absent (occluded) on the tracked one
    box = boxes_from_masks(target[:1])
    teacher = head.box_prompt_embedding(box)
    head.sam.vision_encoder.requires_grad_(False)  # frozen image encoder (as in TPO), keeps the test fast
    opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=2e-3)
    history = []
    for _ in range(30):
        prompt = head.sparse_prompt(h)
        losses = mask_head_losses(track(head, px, prompt), target, sparse_prompt=prompt, teacher_prompt=teacher,
                                  box_pred=head.box(h), box_target=box)
        assert set(losses) == {*LOSS_NAMES, "total"} and all(torch.isfinite(v) for v in losses.values())
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        history.append({k: float(v) for k, v in losses.items()})
    first, last = history[0], history[-1]
    assert last["total"] < 0.5 * first["total"], (first, last)
    for name in ("mask_bce", "object_score", "prompt_l1", "box_l1"):
        assert last[name] < first[name], (name, first, last)


# ----------------------------------------------------------------------------------------------- ONNX
class _Stage(nn.Module):
    def __init__(self, head: MaskHead, stage: str):
        super().__init__()
        self.head, self.stage = head, stage

    def forward(self, *args):
        h = self.head
        if self.stage == "mask_image_encoder":
            f = h.encode_image(args[0])
            return f.feat_s0, f.feat_s1, f.embedding, f.embedding_pos
        if self.stage == "mask_decoder":
            s0, s1, conditioned, prompt = args
            o = h.decode(ImageFeatures(s0, s1, conditioned, conditioned), conditioned, prompt)
            return o.low_res_logits, o.iou, o.object_score_logits, o.object_pointer
        if self.stage == "mask_memory_attention":
            return h.memory_attention(args[0], args[1], MemoryState(*args[2:]))
        return h.encode_memory(*args)


@pytest.mark.parametrize(("stage", "variant"), [
    ("mask_image_encoder", "sam2"), ("mask_decoder", "sam2"), ("mask_memory_attention", "sam2"),
    ("mask_memory_encoder", "sam2"),
    # SAM2.1 only changes these two graphs (pointer temporal encoding, occlusion embedding)
    ("mask_memory_attention", "sam2.1"), ("mask_memory_encoder", "sam2.1"),
])
def test_stage_exports_to_onnx(head, frame, stage, variant):
    h = head if variant == "sam2" else _tiny_head("sam2.1", seed=7)
    px, feats, prompt, dec, mem, _ = frame
    args = {
        "mask_image_encoder": (px,),
        "mask_decoder": (feats.feat_s0, feats.feat_s1, feats.embedding + 0.1, prompt),
        "mask_memory_attention": (feats.embedding, feats.embedding_pos, *_state(h, frame).as_tuple()),
        "mask_memory_encoder": (feats.embedding, dec.raw_low_res_logits, torch.tensor([[-1.0]])),
    }[stage]
    module = _Stage(h, stage).eval()
    names = [f"in{i}" for i in range(len(args))]
    buf = io.BytesIO()
    torch.onnx.export(module, args, buf, dynamo=False, opset_version=17, input_names=names)
    module.eval()  # export restores the wrapper's previous mode recursively
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    feeds = dict(zip(names, (a.numpy() for a in args)))
    got = sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})
    with torch.no_grad():
        ref = module(*args)
    ref = ref if isinstance(ref, tuple) else (ref,)
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r.numpy(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- the box mask prompt (tiny preset, with the pointer)
def test_box_raster_is_the_box_and_differentiable():
    from tpo_core.modeling.heads.mask import box_raster

    box = torch.tensor([[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    r = box_raster(box, 32)
    assert r.shape == (2, 1, 32, 32)
    inside = r[0, 0, 18:30, 10:22]  # cells whose centres are >= 2 cells inside the box (rows 16-31, cols 8-23)
    outside = torch.cat([r[0, 0, :14].flatten(), r[0, 0, :, :6].flatten(), r[0, 0, :, 26:].flatten()])
    assert inside.min() > 0.95 and outside.max() < 0.05
    assert r[1].max() < 0.05  # an empty box rasters to ~0 (decode also replaces it by the no-mask embedding)
    r[0].sum().backward()
    assert box.grad[0].abs().min() > 0  # every edge moves the raster: the pixel loss reaches the pointer's box


def test_fresh_head_shares_one_fourier_matrix():
    """SAM2 encodes prompt points and image positions with one matrix; a fresh transformers build drew two."""
    head = MaskHead(TINY_SAM, LLM_DIM)
    assert torch.equal(head.sam.prompt_encoder.shared_embedding.positional_embedding,
                       head.sam.shared_image_embedding.positional_embedding)


def _pointer_model():
    from tpo_core.model import TPOModel

    torch.manual_seed(0)
    return TPOModel(get_preset("tiny")).eval()


def test_box_mask_prompt_reaches_the_mask():
    """With ``box_mask_prompt`` the decoder's mask depends on the box through the dense prompt (the sparse corner
    tokens alone were ignored by the trained tiny decoder), an empty box is SAM2's no-mask path, and tracking
    needs the box."""
    head = _perturb(_pointer_model().mask_head, 3).eval()
    assert head.uses_box_mask
    px = torch.randn(1, 3, 128, 128)
    a_box, b_box = torch.tensor([[0.05, 0.05, 0.3, 0.3]]), torch.tensor([[0.6, 0.6, 0.95, 0.95]])
    with torch.no_grad():
        feats = head.encode_image(px)
        cond = head.condition_without_memory(feats.embedding)
        sparse = head.embed_boxes(a_box)
        a = head.decode(feats, cond, sparse, box=a_box).raw_low_res_logits
        b = head.decode(feats, cond, sparse, box=b_box).raw_low_res_logits
        none = head.decode(feats, cond, sparse).raw_low_res_logits
        empty = head.decode(feats, cond, sparse, box=torch.zeros(1, 4)).raw_low_res_logits
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(empty, none)
    with pytest.raises(ValueError, match="box_mask_prompt"):
        track(head, torch.randn(2, 3, 128, 128), sparse)
    out = track(head, torch.randn(2, 3, 128, 128), sparse, box=a_box)
    assert out.low_res_logits.shape == (2, 1, 32, 32)


def test_multimask_select_first_keeps_candidate_zero_whatever_the_iou_head_says():
    """The tiny preset trains no IoU head, so SAM2's best-of-3 picked by float noise: candidate 0 in every case under
    bf16 training (exact ties), mostly candidate 2 in fp32 inference. ``multimask_select="first"`` keeps candidate 0
    in both; "iou" keeps the highest predicted IoU (SAM2, the release)."""
    head = _perturb(_pointer_model().mask_head, 4).eval()
    assert head.cfg.multimask_select == "first" and get_preset("videochat-tpo-7b").mask.multimask_select == "iou"
    with torch.no_grad():
        iou_bias = head.sam.mask_decoder.iou_prediction_head.proj_out.bias
        iou_bias.copy_(torch.tensor([0.0, -5.0, -5.0, 5.0]))  # candidate 2 (token 3) predicts the best IoU
        feats = head.encode_image(torch.randn(1, 3, 128, 128))
        cond = head.condition_without_memory(feats.embedding)
        box = torch.tensor([[0.2, 0.2, 0.6, 0.7]])
        sparse = head.embed_boxes(box)
        c, h = head.cfg.hidden_dim, head.embed_size
        masks, iou, _, _ = head.sam.mask_decoder(
            image_embeddings=cond.transpose(1, 2).reshape(1, c, h, h),
            image_positional_embeddings=head.sam.get_image_wide_positional_embeddings(),
            sparse_prompt_embeddings=sparse[:, None], dense_prompt_embeddings=head.dense_prompt(1, box),
            multimask_output=True, high_resolution_features=[feats.feat_s0, feats.feat_s1])
        assert int(iou[0, 0].argmax()) == 2
        first = head.decode(feats, cond, sparse, box=box)
        torch.testing.assert_close(first.raw_low_res_logits[:, 0], masks[:, 0, 0])
        head.cfg = dataclasses.replace(head.cfg, multimask_select="iou")
        best = head.decode(feats, cond, sparse, box=box)
        torch.testing.assert_close(best.raw_low_res_logits[:, 0], masks[:, 0, 2])
    with pytest.raises(ValueError, match="multimask_select"):
        dataclasses.replace(TINY_SAM, multimask_select="best")
