"""Region and temporal head losses (vectorized GIoU helpers, Hungarian matching).

- ``region_loss``: ``2 * L1 + (1 - GIoU) / 5`` on normalized ``xyxy`` (as in the release).
- ``temporal_loss``: DETR-style set loss of the span decoder, CG-DETR weights: span L1 (10), temporal GIoU
  (1), foreground/background CE with background weight 0.1 (4), saliency hinge (margin 0.2) and a
  rank-contrastive saliency term. The release scales the whole temporal loss by 0.05 in the total training
  loss; that scale belongs to the caller.

Each loss returns a dict of the unweighted scalar terms plus ``total`` (their weighted sum); all terms are
finite and differentiable (masked positions are excluded by multiplication, never by NaN-producing -inf).

Matching without reading back from the device: ``span_groups`` groups the batch items by their number of target
windows n; for n <= ``GPU_MATCH_MAX_TARGETS`` the optimal assignment is found on the device by scoring every
injective assignment of the n targets to the Q queries (Q!/(Q-n)! of them: 5040 for Q = 10, n = 4) - the same
optimum as the Hungarian algorithm (``hungarian_match``, scipy), which larger groups still use.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from tpo_core.config import SALIENCY_FILL
from tpo_core.modeling.heads.temporal import BACKGROUND, FOREGROUND, TemporalOutput

_EPS = 1e-7
GPU_MATCH_MAX_TARGETS = 4
_INJECTIONS: dict[tuple[int, int, str], torch.Tensor] = {}


def box_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalized IoU of ``xyxy`` boxes ``a [..., 4]`` and ``b [..., 4]`` (broadcast) -> ``[...]``.

    Degenerate boxes (``x2 < x1``) count as zero area; pairwise GIoU: ``box_giou(a[:, None], b[None])``.
    """
    wh_a = (a[..., 2:] - a[..., :2]).clamp(min=0)
    wh_b = (b[..., 2:] - b[..., :2]).clamp(min=0)
    area_a, area_b = wh_a.prod(-1), wh_b.prod(-1)
    inter = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    iou = inter / (union + _EPS)
    return iou - (hull - union) / (hull + _EPS)


def giou_1d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalized IoU of 1D ``(start, end)`` spans ``a [..., 2]`` and ``b [..., 2]`` (broadcast) -> ``[...]``."""
    len_a = (a[..., 1] - a[..., 0]).clamp(min=0)
    len_b = (b[..., 1] - b[..., 0]).clamp(min=0)
    inter = (torch.minimum(a[..., 1], b[..., 1]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    union = len_a + len_b - inter
    hull = (torch.maximum(a[..., 1], b[..., 1]) - torch.minimum(a[..., 0], b[..., 0])).clamp(min=0)
    return inter / (union + _EPS) - (hull - union) / (hull + _EPS)


def cxw_to_se(spans: torch.Tensor) -> torch.Tensor:
    """``(center, width) [..., 2] -> (start, end) [..., 2]``."""
    return torch.stack([spans[..., 0] - spans[..., 1] / 2, spans[..., 0] + spans[..., 1] / 2], dim=-1)


def region_loss(pred: torch.Tensor, target: torch.Tensor, l1_weight: float = 2.0,
                giou_weight: float = 0.2) -> dict[str, torch.Tensor]:
    """``pred [B, 4]``, ``target [B, 4]`` normalized ``xyxy`` -> ``{"l1", "giou", "total"}``.

    ``l1`` = mean absolute error over batch and coordinates; ``giou`` = mean of ``1 - GIoU``;
    ``total = l1_weight * l1 + giou_weight * giou`` (released: ``2 * L1 + (1 - GIoU) / 5``).
    """
    if pred.shape != target.shape or pred.shape[-1] != 4:
        raise ValueError(f"region_loss: pred and target must both be [B, 4], got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    target = target.to(pred.dtype)
    l1 = F.l1_loss(pred, target)
    giou = (1.0 - box_giou(pred, target)).mean()
    return {"l1": l1, "giou": giou, "total": l1_weight * l1 + giou_weight * giou}


@torch.no_grad()
def hungarian_match(pred_logits: torch.Tensor, pred_spans: torch.Tensor, target_spans: list[torch.Tensor],
                    cost_l1: float = 10.0, cost_giou: float = 1.0,
                    cost_class: float = 4.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Optimal query-to-target assignment per batch item.

    ``pred_logits [B, Q, 2]``, ``pred_spans [B, Q, 2]`` (cx, w), ``target_spans``: B tensors ``[n_i, 2]``
    (cx, w). Cost = ``cost_l1 * L1(cxw) - cost_giou * GIoU(start/end) - cost_class * p(foreground)``.
    Returns B pairs ``(query_idx [k_i], target_idx [k_i])`` (int64, CPU), ``k_i = min(Q, n_i)``.
    """
    matches = []
    for i, tgt in enumerate(target_spans):
        if tgt.numel() == 0:
            empty = torch.empty(0, dtype=torch.int64)
            matches.append((empty, empty))
            continue
        tgt = tgt.to(pred_spans.device, torch.float32)
        cost = match_cost(pred_logits[i:i + 1], pred_spans[i:i + 1], tgt[None], cost_l1, cost_giou, cost_class)[0]
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        matches.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return matches


def match_cost(pred_logits: torch.Tensor, pred_spans: torch.Tensor, targets: torch.Tensor, cost_l1: float = 10.0,
               cost_giou: float = 1.0, cost_class: float = 4.0) -> torch.Tensor:
    """Matching cost ``[G, Q, n]`` of ``pred_logits/pred_spans [G, Q, 2]`` against ``targets [G, n, 2]`` (cx, w):
    ``cost_l1 * L1(cxw) - cost_giou * GIoU(start/end) - cost_class * p(foreground)``."""
    prob_fg = pred_logits.float().softmax(-1)[..., FOREGROUND]  # [G, Q]
    spans, tgt = pred_spans.float(), targets.float()
    return (cost_l1 * torch.cdist(spans, tgt, p=1)
            - cost_giou * giou_1d(cxw_to_se(spans)[:, :, None], cxw_to_se(tgt)[:, None])
            - cost_class * prob_fg[:, :, None])


def _injections(q: int, n: int, device: torch.device) -> torch.Tensor:
    """Every ordered choice of n distinct queries out of q: int64 [q!/(q-n)!, n] (built once per device)."""
    key = (q, n, str(device))
    if key not in _INJECTIONS:
        _INJECTIONS[key] = torch.tensor(list(itertools.permutations(range(q), n)), dtype=torch.int64).to(device)
    return _INJECTIONS[key]


@torch.no_grad()
def match_group(pred_logits: torch.Tensor, pred_spans: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Optimal assignment for G items with n targets each -> query index of each target ``[G, n]`` (on the
    device). n <= ``GPU_MATCH_MAX_TARGETS``: exhaustive on the device; larger n: scipy (reads the costs back)."""
    g, q = pred_logits.shape[:2]
    n = targets.shape[1]
    cost = match_cost(pred_logits, pred_spans, targets)  # [G, Q, n]
    if n <= min(q, GPU_MATCH_MAX_TARGETS):
        perms = _injections(q, n, cost.device)  # [K, n]
        total = cost[:, perms, torch.arange(n, device=cost.device)].sum(-1)  # [G, K]
        return perms[total.argmin(dim=1)]
    out = torch.full((g, n), -1, dtype=torch.int64)
    for i, c in enumerate(cost.cpu().numpy()):
        rows, cols = linear_sum_assignment(c)
        out[i, torch.as_tensor(cols)] = torch.as_tensor(rows, dtype=torch.int64)
    return out.to(cost.device)


def span_groups(target_spans: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batch items grouped by target count: ``[(rows [G] int64, targets [G, n, 2]), ...]`` for n >= 1 (items
    without a target are left out). The collator builds these on the host (``Batch.temporal_groups``)."""
    by_n: dict[int, list[int]] = {}
    for i, t in enumerate(target_spans):
        if t.shape[0]:
            by_n.setdefault(int(t.shape[0]), []).append(i)
    return [(torch.tensor(rows, dtype=torch.int64), torch.stack([target_spans[i] for i in rows]).float())
            for _, rows in sorted(by_n.items())]


def saliency_hinge_loss(saliency: torch.Tensor, relevance: torch.Tensor, valid: torch.Tensor,
                        margin: float = 0.2) -> torch.Tensor:
    """Mean of ``relu(margin + s_neg - s_pos)`` over all (positive, negative) frame pairs of each item.

    Positive frames: ``relevance > 0``; negative frames: ``relevance == 0``; both valid. Items with no
    positive or no negative frame contribute nothing. ``saliency/relevance/valid [B, L]`` -> scalar.
    """
    pos = (relevance > 0) & valid
    neg = (relevance <= 0) & valid
    pair = pos[:, :, None] & neg[:, None, :]  # [B, Lpos, Lneg]
    hinge = F.relu(margin + saliency[:, None, :] - saliency[:, :, None])
    return (hinge * pair).sum() / pair.sum().clamp(min=1)


def rank_contrastive_loss(saliency: torch.Tensor, relevance: torch.Tensor, valid: torch.Tensor,
                          tau: float = 0.5, levels: torch.Tensor | None = None) -> torch.Tensor:
    """Rank-contrastive saliency term (simple version of QD-DETR / CG-DETR's).

    For each distinct positive relevance level ``r`` in the batch: positives are the valid frames with
    ``relevance >= r``; the term is the mean over positives of ``-log softmax_valid(saliency / tau)``,
    averaged over the items that have a positive; the result is the mean over levels. Binary relevance gives
    one level. ``[B, L]`` inputs -> scalar (0 when no frame is positive). ``levels``: those distinct levels when
    the caller knows them (the collator does; ``torch.unique`` would read the relevance back from the device).
    """
    logits = (saliency / tau).masked_fill(~valid, SALIENCY_FILL)  # invalid frames: no probability mass
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # [B, L]
    if levels is None:
        levels = torch.unique(relevance[(relevance > 0) & valid])
    if levels.numel() == 0:
        return saliency.sum() * 0.0
    pos = (relevance[None] >= levels[:, None, None]) & valid[None]  # [R, B, L]
    n_pos = pos.sum(-1)  # [R, B]
    per_item = -(log_prob[None] * pos).sum(-1) / n_pos.clamp(min=1)  # [R, B]
    has = (n_pos > 0).to(per_item.dtype)
    return ((per_item * has).sum(-1) / has.sum(-1).clamp(min=1)).mean()


def temporal_loss(
    out: TemporalOutput,
    target_spans: list[torch.Tensor],
    target_saliency: torch.Tensor,
    frame_mask: torch.Tensor | None = None,
    span_l1: float = 10.0,
    span_giou: float = 1.0,
    label: float = 4.0,
    saliency: float = 1.0,
    rank_contrastive: float = 1.0,
    eos_coef: float = 0.1,
    margin: float = 0.2,
    tau: float = 0.5,
    groups: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    levels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Set loss of the temporal head -> ``{"span_l1", "span_giou", "label", "saliency", "rank_contrastive",
    "total"}``.

    ``out``: ``TemporalOutput`` (``pred_logits [B, Q, 2]``, ``pred_spans [B, Q, 2]``, ``saliency [B, L]``);
    ``target_spans``: B tensors ``[n_i, 2]`` (cx, w) normalized; ``target_saliency [B, L]``: per-frame
    relevance (> 0 = inside a moment; QVHighlights scores 0-4 or a 0/1 mask); ``frame_mask [B, L]`` bool.
    Matching uses the optimal assignment under the default costs (10 / 1 / 4), whatever the loss weights
    (``match_group``; ``groups`` = ``span_groups(target_spans)`` when the caller has it, e.g. on the device).
    ``levels``: the distinct positive relevance levels (see ``rank_contrastive_loss``).
    ``label`` is the weighted CE over all queries (foreground for matched ones, background weight
    ``eos_coef``). Span terms are means over matched pairs (0 if the batch has no target span).
    """
    logits, spans, sal = out.pred_logits, out.pred_spans, out.saliency
    b, q = logits.shape[:2]
    if len(target_spans) != b or target_saliency.shape != sal.shape:
        raise ValueError(f"temporal_loss: got {len(target_spans)} target span sets and target_saliency "
                         f"{tuple(target_saliency.shape)}; expected {b} sets and {tuple(sal.shape)}")
    valid = torch.ones_like(sal, dtype=torch.bool) if frame_mask is None else frame_mask.bool()
    if groups is None:
        groups = span_groups(target_spans)
    batch_idx, query_idx, tgt = [], [], []
    for rows, targets in groups:
        rows, targets = rows.to(spans.device), targets.to(spans.device, spans.dtype)
        qi = match_group(logits[rows], spans[rows], targets)  # [G, n], fixed matching costs 10 / 1 / 4
        bi, ti = rows[:, None].expand_as(qi), targets
        if targets.shape[1] > q:  # more windows than queries: unmatched targets (-1) drop out (scipy path)
            keep = qi >= 0
            bi, qi, ti = bi[keep], qi[keep], targets[keep]
        batch_idx.append(bi.reshape(-1))
        query_idx.append(qi.reshape(-1))
        tgt.append(ti.reshape(-1, 2))
    if batch_idx:
        batch_idx, query_idx, tgt = torch.cat(batch_idx), torch.cat(query_idx), torch.cat(tgt)
    else:
        batch_idx = query_idx = torch.zeros(0, dtype=torch.int64, device=spans.device)
        tgt = spans.new_zeros(0, 2)
    matched = spans[batch_idx, query_idx]  # [K, 2]
    if matched.shape[0]:
        loss_l1 = F.l1_loss(matched, tgt)
        loss_giou = (1.0 - giou_1d(cxw_to_se(matched), cxw_to_se(tgt))).mean()
    else:
        loss_l1 = loss_giou = spans.sum() * 0.0
    classes = torch.full((b, q), BACKGROUND, dtype=torch.int64, device=logits.device)
    classes[batch_idx, query_idx] = FOREGROUND
    weight = torch.ones(2, device=logits.device, dtype=logits.dtype)
    weight[BACKGROUND] = eos_coef
    loss_label = F.cross_entropy(logits.reshape(-1, 2), classes.reshape(-1), weight=weight)
    rel = target_saliency.to(sal.dtype)
    loss_sal = saliency_hinge_loss(sal, rel, valid, margin)
    loss_rank = rank_contrastive_loss(sal, rel, valid, tau, levels)
    total = (span_l1 * loss_l1 + span_giou * loss_giou + label * loss_label + saliency * loss_sal
             + rank_contrastive * loss_rank)
    return {"span_l1": loss_l1, "span_giou": loss_giou, "label": loss_label, "saliency": loss_sal,
            "rank_contrastive": loss_rank, "total": total}
