"""Region and temporal heads, post-processing and losses on the tiny preset (CPU, fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from runtime.contract.postprocess import box_to_pixels, spans_to_seconds
from tpo_core.config import SALIENCY_FILL, get_preset
from tpo_core.modeling.heads.region import RegionHead
from tpo_core.modeling.heads.temporal import TemporalHead, TemporalOutput
from tpo_core.modeling.losses import box_giou, giou_1d, hungarian_match, region_loss, temporal_loss


@pytest.fixture(scope="module")
def tiny():
    return get_preset("tiny")


def _temporal_inputs(tiny, b=2, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    task = torch.randn(b, tiny.llm.hidden_size, generator=g)
    feats = torch.randn(b, length, tiny.vision.embed_dim, generator=g)
    times = torch.linspace(0, 1, length).expand(b, length).contiguous()
    return task, feats, times


def _temporal_head(tiny):
    torch.manual_seed(0)
    return TemporalHead(tiny.temporal, tiny.llm.hidden_size, tiny.vision.embed_dim).eval()


def test_region_head_shape_and_pixels(tiny):
    head = RegionHead(tiny.region, tiny.llm.hidden_size)
    assert head(torch.randn(3, tiny.llm.hidden_size)).shape == (3, 4)
    boxes = torch.tensor([[0.5, 0.6, 0.1, 0.2], [-0.1, 0.0, 1.2, 1.0]])
    px = [box_to_pixels(b.numpy(), width=100, height=50) for b in boxes]
    assert px == [pytest.approx((10.0, 10.0, 50.0, 30.0)), (0.0, 0.0, 100.0, 50.0)]
    with pytest.raises(ValueError, match="positive"):
        box_to_pixels(boxes[0].numpy(), 0, 50)
    with pytest.raises(ValueError, match="task_emb"):
        head(torch.randn(3, tiny.llm.hidden_size + 1))


def test_temporal_head_shapes(tiny):
    head = _temporal_head(tiny)
    out = head(*_temporal_inputs(tiny))
    q = tiny.temporal.num_queries
    assert isinstance(out, TemporalOutput)
    assert out.pred_logits.shape == (2, q, 2) and out.pred_spans.shape == (2, q, 2)
    assert out.saliency.shape == (2, 12)
    assert ((out.pred_spans >= 0) & (out.pred_spans <= 1)).all()
    task, feats, times = _temporal_inputs(tiny, length=tiny.temporal.max_clips + 1)
    with pytest.raises(ValueError, match="max_clips"):
        head(task, feats, times)


def test_temporal_frame_mask_masks(tiny):
    head = _temporal_head(tiny)
    task, feats, times = _temporal_inputs(tiny)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 9:] = False
    with torch.no_grad():
        ref = head(task, feats, times, mask)
        feats2 = feats.clone()
        feats2[1, 9:] = 100.0 * torch.randn(3, feats.shape[-1])
        out = head(task, feats2, times, mask)
        unmasked = head(task, feats2, times)
    for a, b in zip(ref, out):
        assert torch.allclose(a, b, atol=1e-5)
    assert (ref.saliency[1, 9:] == SALIENCY_FILL).all()
    assert not torch.allclose(ref.pred_spans[1], unmasked.pred_spans[1], atol=1e-5)  # the mask did something


def test_spans_to_seconds_known_answer():
    logits = np.array([[0.0, 0.0], [2.0, 0.0], [-1.0, 1.0]])  # fg prob 0.5, 0.881, 0.119
    spans = np.array([[0.25, 0.1], [0.5, 0.2], [0.95, 0.2]])
    windows = spans_to_seconds(logits, spans, duration=10.6, round_to=1.0)
    p_hi, p_lo = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(2.0))
    # q1: (0.4, 0.6) * 10.6 = (4.24, 6.36) -> (4, 6); q0: (0.2, 0.3) * 10.6 = (2.12, 3.18) -> (2, 3);
    # q2: (0.85, 1.05) * 10.6 = (9.01, 11.13) -> clamp (9.01, 10.6) -> round (9, 11) -> clamp (9, 10.6)
    expected = [(4.0, 6.0, p_hi), (2.0, 3.0, 0.5), (9.0, 10.6, p_lo)]
    assert len(windows) == 3
    for (s, e, p), (s_ref, e_ref, p_ref) in zip(windows, expected):
        assert s == pytest.approx(s_ref) and e == pytest.approx(e_ref) and p == pytest.approx(p_ref, rel=1e-6)
    raw = spans_to_seconds(logits, spans, duration=10.0, round_to=0.0)
    assert raw[0][:2] == pytest.approx((4.0, 6.0))
    with pytest.raises(ValueError, match="duration"):
        spans_to_seconds(logits, spans, duration=0.0)


def test_giou_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.5, 0.6]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0], [0.1, 0.2, 0.5, 0.6]])
    expected = torch.tensor([1 / 7 - 2 / 9, -1 / 3, 1.0])
    assert torch.allclose(box_giou(a, b), expected, atol=1e-5)
    assert box_giou(a[:, None], b[None]).shape == (3, 3)
    spans_a = torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    spans_b = torch.tensor([[1.0, 3.0], [2.0, 3.0]])
    assert torch.allclose(giou_1d(spans_a, spans_b), torch.tensor([1 / 3, -1 / 3]), atol=1e-5)


def test_region_loss_known_values():
    pred = torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.1, 0.2, 0.5, 0.6]])
    target = torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.1, 0.2, 0.5, 0.6]])
    terms = region_loss(pred, target)
    giou0 = 1 / 7 - 2 / 9
    assert terms["l1"].item() == pytest.approx(0.05, abs=1e-6)  # 4 x 0.1 over 8 coordinates
    assert terms["giou"].item() == pytest.approx((1 - giou0) / 2, abs=1e-5)
    assert terms["total"].item() == pytest.approx(2 * 0.05 + (1 - giou0) / 2 / 5, abs=1e-5)
    with pytest.raises(ValueError, match="region_loss"):
        region_loss(pred, target[:, :2])


def test_hungarian_picks_known_assignment():
    logits = torch.zeros(1, 3, 2)
    spans = torch.tensor([[[0.2, 0.1], [0.5, 0.1], [0.8, 0.1]]])
    targets = [torch.tensor([[0.79, 0.1], [0.21, 0.1]])]
    ((queries, tgts),) = hungarian_match(logits, spans, targets)
    assert dict(zip(queries.tolist(), tgts.tolist())) == {0: 1, 2: 0}
    ((queries, tgts),) = hungarian_match(logits, spans, [torch.zeros(0, 2)])
    assert queries.numel() == 0 and tgts.numel() == 0


def _temporal_targets(length=12):
    spans = [torch.tensor([[0.3, 0.2]]), torch.tensor([[0.25, 0.1], [0.7, 0.2]])]
    rel = torch.zeros(2, length)
    rel[0, 2:5] = torch.tensor([1.0, 3.0, 2.0])
    rel[1, 2:4] = 1.0
    rel[1, 7:10] = 2.0
    mask = torch.ones(2, length, dtype=torch.bool)
    mask[1, 10:] = False
    return spans, rel, mask


def test_temporal_loss_finite_and_differentiable_edge_cases(tiny):
    head = _temporal_head(tiny).train()
    task, feats, times = _temporal_inputs(tiny)
    _, rel, mask = _temporal_targets()
    out = head(task, feats, times, mask)
    terms = temporal_loss(out, [torch.zeros(0, 2), torch.zeros(0, 2)], torch.zeros_like(rel), mask)
    assert set(terms) == {"span_l1", "span_giou", "label", "saliency", "rank_contrastive", "total"}
    assert all(torch.isfinite(v) for v in terms.values())
    terms["total"].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in head.parameters())


def _overfit(module, loss_fn, steps=30, lr=1e-3):
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    first = None
    for _ in range(steps):
        terms = loss_fn()
        first = first or {k: v.item() for k, v in terms.items()}
        assert all(torch.isfinite(v) for v in terms.values())
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
    return first, {k: v.item() for k, v in loss_fn().items()}


def test_region_loss_decreases_when_overfitting(tiny):
    torch.manual_seed(0)
    head = RegionHead(tiny.region, tiny.llm.hidden_size)
    emb = torch.randn(4, tiny.llm.hidden_size)
    target = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8], [0.2, 0.3, 0.6, 0.9], [0.0, 0.0, 1.0, 1.0]])
    first, last = _overfit(head, lambda: region_loss(head(emb), target))
    for name in first:
        assert last[name] < first[name], (name, first[name], last[name])


def test_temporal_loss_decreases_when_overfitting(tiny):
    head = _temporal_head(tiny).train()
    task, feats, times = _temporal_inputs(tiny)
    spans, rel, mask = _temporal_targets()
    first, last = _overfit(head, lambda: temporal_loss(head(task, feats, times, mask), spans, rel, mask))
    for name in first:
        assert last[name] < first[name], (name, first[name], last[name])
