"""VideoEncoder and QFormerConnector: shapes, fewer frames, position table, 7B on meta, official names."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from tpo_core.config import get_preset
from tpo_core.modeling.connector import ObjectTokens, QFormerConnector, SpatialTokens
from tpo_core.modeling.vision import VideoEncoder, sinusoid_table, video_pos_embed

INDEX = Path(__file__).resolve().parent / "fixtures/videochat_tpo/model.safetensors.index.json"


@pytest.fixture(scope="module")
def tiny():
    return get_preset("tiny")


@pytest.fixture(scope="module")
def encoder(tiny):
    torch.manual_seed(0)
    return VideoEncoder(tiny.vision).eval()


def _frames(tiny, b=2, t=None):
    v = tiny.vision
    return torch.randn(b, t or v.num_frames, 3, v.img_size, v.img_size)


def test_encoder_shapes(tiny, encoder):
    v = tiny.vision
    tokens = encoder(_frames(tiny))
    assert tokens.shape == (2, v.num_tokens, v.embed_dim)
    feats = encoder.frame_features(tokens, v.num_frames)
    assert feats.shape == (2, v.num_frames, v.embed_dim)
    frame1 = tokens[:, v.tokens_per_frame : 2 * v.tokens_per_frame]
    assert v.frame_pool == "mean_max"  # the tiny preset: mean + max over each frame's patches
    assert torch.allclose(feats[:, 1], frame1.mean(1) + frame1.amax(1))
    release = VideoEncoder(dataclasses.replace(v, frame_pool="mean"))  # the release: the mean
    assert torch.allclose(release.frame_features(tokens, v.num_frames)[:, 1], frame1.mean(1))
    assert get_preset("videochat-tpo-7b").vision.frame_pool == "mean"


def test_encoder_accepts_fewer_frames(tiny, encoder):
    v = tiny.vision
    for t in (1, 3, v.num_frames // 2):
        out = encoder(_frames(tiny, b=1, t=t))
        assert out.shape == (1, t * v.tokens_per_frame, v.embed_dim)
        assert torch.isfinite(out).all()


def test_encoder_rejects_bad_frames(tiny, encoder):
    v = tiny.vision
    with pytest.raises(ValueError, match="num_frames"):
        encoder(_frames(tiny, b=1, t=v.num_frames + 1))
    with pytest.raises(ValueError, match="only"):
        encoder(torch.randn(1, 2, 3, v.img_size + v.patch_size, v.img_size + v.patch_size))
    with pytest.raises(ValueError, match="num_frames"):
        encoder.frame_features(torch.randn(1, 10, v.embed_dim), 3)


def test_pos_embed_is_interpolated_sinusoid_and_not_persistent(tiny, encoder):
    v = tiny.vision
    hw, d = v.tokens_per_frame, v.embed_dim
    base = video_pos_embed(v.pos_emb_frames, hw, d, v.pos_emb_frames)
    assert torch.allclose(base[0], sinusoid_table(v.pos_emb_frames * hw, d))
    assert encoder.pos_embed.shape == (1, v.num_frames * hw, d)
    # linear, align_corners=False: 4 -> 8 slots puts slot 0 on base 0 and slot 1 at 0.75 * base0 + 0.25 * base1
    pos = encoder.pos_embed[0].reshape(v.num_frames, hw, d)
    ref = base[0].reshape(v.pos_emb_frames, hw, d)
    assert torch.allclose(pos[0], ref[0], atol=1e-6)
    assert torch.allclose(pos[1], 0.75 * ref[0] + 0.25 * ref[1], atol=1e-6)
    assert "pos_embed" not in encoder.state_dict()


def test_connector_shapes(tiny, encoder):
    torch.manual_seed(0)
    v = tiny.vision
    conn = QFormerConnector(tiny.qformer, v.embed_dim, tiny.llm.hidden_size, v.tokens_per_frame,
                            v.num_frames, v.patch_classes).eval()
    tokens = encoder(_frames(tiny))
    with torch.no_grad():
        out = conn(tokens, encoder.patch_classifier(tokens))
    objects = v.patch_classes - 1
    assert tiny.num_visual_tokens == (tiny.qformer.num_queries + v.num_frames * tiny.qformer.spatial_pool ** 2
                                      + objects) == 144 + 32
    with pytest.raises(ValueError, match="object_tokens needs patch_logits"):
        conn(tokens)
    assert out.shape == (2, tiny.num_visual_tokens, tiny.llm.hidden_size)
    assert conn.query_tokens.shape == (1, tiny.qformer.num_query_tokens, tiny.qformer.hidden_size)
    assert conn.extra_query_tokens.shape == (1, tiny.qformer.num_extra_query_tokens, tiny.qformer.hidden_size)
    with pytest.raises(ValueError, match="spatial_pool=4 needs all 8 frames"):
        conn(torch.randn(1, 7, v.embed_dim), torch.randn(1, 7, v.patch_classes))
    with pytest.raises(ValueError, match="needs tokens_per_frame"):
        QFormerConnector(tiny.qformer, v.embed_dim, tiny.llm.hidden_size)
    queries_only = QFormerConnector(dataclasses.replace(tiny.qformer, spatial_pool=0, object_tokens=False), v.embed_dim,
                                    tiny.llm.hidden_size).eval()
    with torch.no_grad():  # the release's connector: any number of vision tokens (fewer frames)
        assert queries_only(torch.randn(1, 7, v.embed_dim)).shape == (1, tiny.qformer.num_queries,
                                                                      tiny.llm.hidden_size)
    with pytest.raises(ValueError, match="vision tokens"):
        conn(torch.randn(1, 7, v.embed_dim + 1))


def test_spatial_tokens_pool_each_cell_of_each_frame():
    """Token (t, r, c) is the mean of frame t's patches in cell (r, c): a patch grid whose values say where they
    are comes out as the cell's mean, plus the position embedding of that (slot, row, column)."""
    slots, side, grid, dv = 3, 8, 4, 6
    sp = SpatialTokens(grid, dv, dv, side * side, slots)
    with torch.no_grad():
        sp.norm.weight.fill_(1.0), sp.norm.bias.zero_()
        sp.proj.weight.copy_(torch.eye(dv)), sp.proj.bias.zero_()
        t, y, x = torch.meshgrid(torch.arange(slots), torch.arange(side), torch.arange(side), indexing="ij")
        tokens = torch.stack([t, y, x, -t, -y, -x], dim=-1).float().reshape(1, slots * side * side, dv)
        out = sp(tokens) - sp.pos
        pooled = tokens.reshape(1, slots, grid, 2, grid, 2, dv).mean(dim=(3, 5)).reshape(1, -1, dv)
        assert out.shape == (1, slots * grid * grid, dv)
        assert torch.allclose(out, torch.nn.functional.layer_norm(pooled, (dv,), eps=1e-5), atol=1e-5)
        assert torch.allclose(pooled[0, 1 * 16 + 2 * 4 + 3, :3], torch.tensor([1.0, 4.5, 6.5]))  # slot 1, row 2, col 3
    table = SpatialTokens.position_table(slots, grid, 256)
    assert table.shape == (slots * grid * grid, 256) and len({tuple(r.tolist()) for r in table}) == slots * grid * grid
    with pytest.raises(ValueError, match="multiple of 3"):
        SpatialTokens(3, dv, dv, 64, 2)


def test_7b_on_meta_param_counts():
    cfg = get_preset("videochat-tpo-7b")
    assert cfg.qformer.spatial_pool == 0 and cfg.num_visual_tokens == cfg.qformer.num_queries == 96  # the release
    with torch.device("meta"):
        vision = VideoEncoder(cfg.vision)
        conn = QFormerConnector(cfg.qformer, cfg.vision.embed_dim, cfg.llm.hidden_size)
    n_vision = sum(p.numel() for p in vision.parameters())
    n_conn = sum(p.numel() for p in conn.parameters())
    assert len(vision.blocks) == 23
    assert 0.28e9 < n_vision < 0.31e9, n_vision
    assert 0.09e9 < n_conn < 0.19e9, n_conn
    assert vision.pos_embed.device.type == "cpu"  # real table even on meta (assign=True loading keeps it)
    assert next(vision.parameters()).device.type == "meta"


def _official_names(prefix: str) -> set[str]:
    names = json.loads(INDEX.read_text())["weight_map"]
    return {k for k in names if k.startswith(prefix)}


def test_vision_names_follow_documented_renames():
    cfg = get_preset("videochat-tpo-7b")
    with torch.device("meta"):
        ours = set(VideoEncoder(cfg.vision).state_dict())
    mapped = set()
    for name in _official_names("vision_encoder."):
        name = name.removeprefix("vision_encoder.encoder.")
        if name.endswith("attn.v_bias"):
            continue  # fused with q_bias into qkv.bias
        mapped.add(name.replace("attn.q_bias", "attn.qkv.bias"))
    assert mapped == ours


def test_qformer_names_follow_documented_renames():
    cfg = get_preset("videochat-tpo-7b")
    with torch.device("meta"):
        ours = set(QFormerConnector(cfg.qformer, cfg.vision.embed_dim, cfg.llm.hidden_size).state_dict())
    dropped = re.compile(r"embeddings\.(word_embeddings|position_embeddings|position_ids)"
                         r"|layer\.\d+\.(intermediate|output)\.")
    mapped = {"proj.weight", "proj.bias", "query_tokens", "extra_query_tokens", "vision_layernorm.weight",
              "vision_layernorm.bias"}
    for name in _official_names("qformer.bert."):
        if dropped.search(name):
            continue
        name = name.replace("qformer.bert.embeddings.LayerNorm", "qformer.layernorm")
        name = name.replace("qformer.bert.", "qformer.").replace(".self.", ".attention.")
        mapped.add(name)
    assert mapped == ours


def test_object_tokens_read_presence_size_and_centroid_per_frame(tiny):
    """A class seen on patch (row 2, col 5) of frames 2-5 only: presence ~1 there and ~0 elsewhere, the centroid at
    that patch's centre where present and at the frame centre where absent; an absent class reads absent."""
    v = tiny.vision
    side, c, t = int(v.tokens_per_frame ** 0.5), v.patch_classes, v.num_frames
    objects = ObjectTokens(c, v.tokens_per_frame, t, tiny.llm.hidden_size)
    logits = torch.zeros(1, t, v.tokens_per_frame, c)
    logits[..., 0] = 20.0  # background everywhere
    logits[0, 2:6, 2 * side + 5, 7] = 40.0  # class 7 on one patch of frames 2..5
    feats = objects.features(logits.reshape(1, t * v.tokens_per_frame, c))  # [1, C-1, T', 4]
    assert feats.shape == (1, c - 1, t, 4)
    cls7 = feats[0, 6]
    assert torch.all(cls7[2:6, 0] > 0.99) and torch.all(cls7[[0, 1, 6, 7], 0] < 1e-6)
    assert torch.allclose(cls7[2:6, 1], torch.full((4,), (1 / v.tokens_per_frame) ** 0.5), atol=1e-3)
    want = torch.tensor([2 * (5.5 / side) - 1, 2 * (2.5 / side) - 1])  # centroid (x, y) in [-1, 1]
    assert torch.allclose(cls7[2:6, 2:], want.expand(4, 2), atol=1e-3)
    assert torch.allclose(cls7[[0, 1, 6, 7], 2:], torch.zeros(4, 2), atol=1e-3)  # absent: the frame centre
    assert float(feats[0, 0, :, 0].max()) < 1e-6  # class 1 never appears
    out = objects(logits.reshape(1, t * v.tokens_per_frame, c))
    assert out.shape == (1, c - 1, tiny.llm.hidden_size)
    with pytest.raises(ValueError, match=r"expected \[B, 512, 33\]"):
        objects(torch.zeros(1, 500, c))
    with pytest.raises(ValueError, match="object_tokens reads the video encoder's patch classifier"):
        dataclasses.replace(tiny, vision=dataclasses.replace(v, patch_classes=0, patch_class_names=()))


def test_object_names_add_each_class_names_word_embeddings(tiny):
    """object_names: each object token gains the mean LLM input embedding of its class name's words ("red circle"
    -> the rows of its two word tokens), scaled to RMS 0.5; the tokens differ from the unnamed ones by exactly that."""
    from tpo_core.data.patch_labels import CLASS_NAMES, patch_class
    from tpo_core.model import TPOModel

    assert tiny.vision.patch_class_names == CLASS_NAMES and len(CLASS_NAMES) == tiny.vision.patch_classes - 1
    assert CLASS_NAMES[patch_class("purple", "diamond") - 1] == "purple diamond"
    named_cfg = dataclasses.replace(tiny, qformer=dataclasses.replace(tiny.qformer, object_names=True))
    model = TPOModel.from_config(named_cfg, seed=0).eval()
    table = model.llm.base_model().get_input_embeddings().weight
    names = model.class_name_embeddings()
    k = patch_class("red", "circle") - 1
    ids = model.tokenizer.encode("red circle", add_special_tokens=False).ids
    assert len(ids) == 2 and torch.allclose(names[k], table[ids].mean(0))
    torch.manual_seed(0)
    frames = torch.randn(1, tiny.vision.num_frames, 3, tiny.vision.img_size, tiny.vision.img_size)
    with torch.no_grad():
        tokens = model.vision(frames)
        logits = model.vision.patch_classifier(tokens)
        named = model.connect(tokens)[0, -(tiny.vision.patch_classes - 1):]
        plain = model.connector.objects(logits)[0]
    scaled = 0.5 * names / names.pow(2).mean(-1, keepdim=True).sqrt()
    assert torch.allclose(named - plain, scaled, atol=1e-5)
    with pytest.raises(ValueError, match="object_names needs class_names"):
        model.connector(tokens, logits)
    with pytest.raises(ValueError, match="object_names needs object_tokens=true and vision.patch_class_names"):
        dataclasses.replace(named_cfg, vision=dataclasses.replace(tiny.vision, patch_class_names=()))
    with pytest.raises(ValueError, match="must name every class but the background: 32"):
        dataclasses.replace(tiny.vision, patch_class_names=("red circle",))
