"""A small greedy loop over the ONNX graphs, driven only by the manifest, for ``tpo verify``'s end-to-end check.

It reproduces ``tpo_core.generation.generate`` (the routing contract) from what an export folder holds:
tokenizer.json, the prompt template, ``embed_tokens.npy``, the task-embedding tensors and the graphs. The
deployment runtime (``runtime/``) implements the same loop on engines; this one stays minimal (batch 1,
numpy, ONNX Runtime) and exists to prove the export + manifest are sufficient and exact.

Per request: frames -> ``vision`` -> prompt ids (BOS per chunk) -> embeddings with the visual tokens spliced
after chunk 0 -> ``llm`` prefill -> greedy steps; a ``*_begin`` id is fed back, then its placeholder's task
embedding is forced, and that step's last hidden state [D] goes to the head the manifest names:
``head_region``; ``head_temporal`` (with ``frame_features`` and times / duration); or the mask graphs
(``mask_image_encoder`` on every frame, ``mask_prompt`` on frame 0, then per frame ``mask_memory_attention``
-> ``mask_decoder`` -> ``mask_memory_encoder`` over a fixed-capacity ring buffer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from runtime.manifest import Manifest


def vision_frames(manifest: Manifest, frames: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float32 [1, T, 3, S, S] in 0..255 (the vision graph's input; resize per manifest)."""
    pre = manifest.preprocess
    x = torch.as_tensor(frames).permute(0, 3, 1, 2).float()
    size = pre["size"]
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode=pre["resize"], align_corners=pre["align_corners"],
                          antialias=pre["antialias"])
    return x.clamp(*pre["clamp"])[None].numpy()


def mask_pixels(manifest: Manifest, frames: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float32 [T, 3, Sm, Sm] in 0..255 (bilinear + antialias, the mask graphs' input)."""
    m = manifest.mask
    x = torch.as_tensor(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(m["image_size"], m["image_size"]), mode=m["resize"], align_corners=m["align_corners"],
                      antialias=m["antialias"])
    return x.numpy()


@dataclass
class LoopResult:
    token_ids: list[int] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    region: np.ndarray | None = None  # normalized xyxy [4]
    temporal: dict | None = None  # pred_logits [Q, 2], pred_spans [Q, 2], saliency [T]
    mask_logits: np.ndarray | None = None  # [T, 1, s, s]
    object_scores: np.ndarray | None = None  # [T]


class OnnxTPO:
    """The manifest-driven loop. ``graphs`` is an ``export.verify.Graphs``."""

    def __init__(self, manifest: Manifest, graphs):
        from tokenizers import Tokenizer

        self.m, self.g = manifest, graphs
        self.tok = Tokenizer.from_file(str(manifest.path_of(manifest.tokenizer["files"][0])))
        self.table = self._tensor("embed_tokens")
        self.begin = {v["id"]: (v["placeholder_id"], v["head"]) for v in manifest.task_tokens.values()
                      if v["role"] == "begin"}
        self.placeholder = {v["id"]: self._tensor(v["embedding"]) for v in manifest.task_tokens.values()
                            if v["role"] == "placeholder"}

    def _tensor(self, name: str) -> np.ndarray:
        entry = self.m.tensors[name]
        arr = np.load(self.m.path_of(entry["file"]))
        if entry["dtype"] == "bfloat16":
            raise RuntimeError("bfloat16 tensor files need torch to decode; verify a bf16 export on a GPU")
        return arr

    def prompt_ids(self, question: str, times_s) -> tuple[list[int], list[int]]:
        from export.manifest_fields import render_prompt

        chunks = render_prompt(self.m.prompt, question, times_s)
        bos = self.m.tokenizer["bos_id"]
        ids = [[bos] + self.tok.encode(c, add_special_tokens=False).ids for c in chunks]
        after = self.m.prompt["visual_after_chunk"]
        return [i for c in ids[: after + 1] for i in c], [i for c in ids[after + 1:] for i in c]

    def _llm(self, embeds: np.ndarray, past: list[np.ndarray]):
        p, t = past[0].shape[2], embeds.shape[1]
        feeds = {"inputs_embeds": embeds, "position_ids": np.arange(p, p + t, dtype=np.int64)[None],
                 "attention_mask": np.ones((1, p + t), dtype=np.int64)}
        feeds.update(zip(self.m.kv["past_names"], past))
        out = self.g.run("llm", feeds)
        return out["logits"][0], out["hidden_states"][0, -1], [out[n] for n in self.m.kv["present_names"]]

    def generate(self, clip, question: str, max_new: int | None = None, processor=None) -> LoopResult:
        kv, res = self.m.kv, LoopResult()
        max_new = max_new or self.m.generation["max_new_tokens"]
        vis = self.g.run("vision", {"frames": vision_frames(self.m, clip.frames)})
        pre, post = self.prompt_ids(question, clip.timestamps)
        embeds = np.concatenate([self.table[pre], vis["visual_tokens"][0].astype(self.table.dtype),
                                 self.table[post]])[None]
        empty = np.zeros((1, kv["kv_heads"], 0, kv["head_dim"]), dtype=self.table.dtype)
        logits, hidden, past = self._llm(embeds, [empty] * (2 * kv["layers"]))
        eos = self.m.generation["eos_id"]
        while len(res.token_ids) < max_new:
            scores = torch.as_tensor(logits, dtype=torch.float32)
            if processor is not None:
                scores = processor(len(res.token_ids), scores)
            tok = int(torch.argmax(scores))
            res.token_ids.append(tok)
            if tok == eos:
                break
            logits, hidden, past = self._llm(self.table[[tok]][None], past)
            if tok in self.begin and len(res.token_ids) < max_new:
                placeholder, head = self.begin[tok]
                logits, hidden, past = self._llm(self.placeholder[placeholder][None, None], past)
                res.token_ids.append(placeholder)
                self._head(head, hidden, clip, vis["frame_features"], res)
                res.tasks.append(head)
        return res

    def _head(self, head: str, h: np.ndarray, clip, frame_features: np.ndarray, res: LoopResult) -> None:
        task = h[None]
        if head == "region":
            res.region = self.g.run("head_region", {"task_embedding": task})["box"][0]
        elif head == "temporal":
            times = (np.asarray(clip.timestamps, np.float32) / max(clip.duration, 1e-6))[None]
            out = self.g.run("head_temporal", {"task_embedding": task, "frame_features": frame_features,
                                               "frame_times": times, "frame_mask": np.ones(times.shape, bool)})
            res.temporal = {k: v[0] for k, v in out.items()}
        elif head == "mask":
            res.mask_logits, res.object_scores = self.track(mask_pixels(self.m, clip.frames), task)
        else:
            raise AssertionError(f"unknown head {head!r} in the manifest")

    def track(self, pixels: np.ndarray, task: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """pixels [T, 3, Sm, Sm] 0..255, task [1, D] -> (low-res logits [T, 1, s, s], object scores [T])."""
        m, n = self.m.mask, pixels.shape[0]
        chunk = self.m.components["mask_image_encoder"].profiles["default"]["images"][2]
        parts = [self.g.run("mask_image_encoder", {"pixels": pixels[i:i + chunk]}) for i in range(0, n, chunk)]
        feats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        prompt = self.g.run("mask_prompt", {"task_embedding": task})["sparse_prompt"]
        no_prompt = self._tensor("mask_no_prompt")[None]
        bank = RingBank(m["memory_capacity"], m["pointer_capacity"], feats["embedding"].shape[1], m["mem_dim"],
                        m["hidden_dim"], feats["embedding"].dtype)
        logits, scores = [], []
        for t in range(n):
            f = {k: v[t:t + 1] for k, v in feats.items()}
            cond = self.g.run("mask_memory_attention", {"embedding": f["embedding"],
                                                        "embedding_pos": f["embedding_pos"], **bank.state(t)})
            dec = self.g.run("mask_decoder", {"feat_s0": f["feat_s0"], "feat_s1": f["feat_s1"],
                                              "conditioned": cond["conditioned"],
                                              "sparse_prompt": prompt if t == 0 else no_prompt})
            if t < n - 1 or not m.get("skip_last_memory", True):
                mem = self.g.run("mask_memory_encoder", {"embedding": f["embedding"],
                                                         "low_res_logits": dec["low_res_logits"],
                                                         "object_score_logits": dec["object_score_logits"]})
                bank.add(t, mem["memory"], mem["memory_pos"], dec["object_pointer"], conditioning=t == 0)
            logits.append(dec["low_res_logits"])
            scores.append(dec["object_score_logits"].reshape(-1))
        return np.concatenate(logits), np.concatenate(scores)


class RingBank:
    """Fixed-capacity memory bank (batch 1) laid out as the ``mask_memory_attention`` inputs (see manifest.mask)."""

    def __init__(self, capacity: int, pointers: int, hw: int, mem_dim: int, hidden: int, dtype):
        self.memory = np.zeros((1, capacity, hw, mem_dim), dtype)
        self.memory_pos = np.zeros_like(self.memory)
        self.pointers = np.zeros((1, pointers, hidden), dtype)
        self.mem_frame: list[int | None] = [None] * capacity
        self.ptr_frame: list[int | None] = [None] * pointers
        self.writes = 0

    @staticmethod
    def _slot(conditioning: bool, writes: int, capacity: int) -> int | None:
        if conditioning:
            return 0
        return None if capacity == 1 else 1 + writes % (capacity - 1)

    def add(self, frame: int, memory, memory_pos, pointer, conditioning: bool) -> None:
        ms = self._slot(conditioning, self.writes, len(self.mem_frame))
        if ms is not None:
            self.memory[0, ms], self.memory_pos[0, ms], self.mem_frame[ms] = memory[0], memory_pos[0], frame
        ps = self._slot(conditioning, self.writes, len(self.ptr_frame))
        if ps is not None:
            self.pointers[0, ps], self.ptr_frame[ps] = pointer[0], frame
        self.writes += 0 if conditioning else 1

    def state(self, frame: int) -> dict[str, np.ndarray]:
        def offsets(frames, cond_zero):
            off = [0 if f is None or (cond_zero and i == 0) else frame - f for i, f in enumerate(frames)]
            return np.asarray([off], np.int64), np.asarray([[f is not None for f in frames]])

        mo, mv = offsets(self.mem_frame, True)
        po, pv = offsets(self.ptr_frame, False)
        return {"memory": self.memory, "memory_pos": self.memory_pos, "memory_offsets": mo, "memory_valid": mv,
                "pointers": self.pointers, "pointer_offsets": po, "pointer_valid": pv}


# ------------------------------------------------------------------------------------------- e2e check
QUESTIONS = (("What happens in the video?", None), ("Where is the {obj}?", "<box_begin>"),
             ("When does the {obj} appear?", "<time_begin>"), ("Track the {obj}.", "<track_begin>"))


def force_first(token_id: int | None):
    """A logits processor forcing ``token_id`` at step 0 (so every head is exercised, trained or not)."""
    if token_id is None:
        return None

    def proc(step: int, logits: torch.Tensor) -> torch.Tensor:
        if step == 0:
            logits = torch.full_like(logits, -1e9)
            logits[token_id] = 0.0
        return logits

    return proc


def _compare_heads(report, case: str, ref, got: LoopResult, tol: float) -> None:
    from export.verify import compare

    if ref.region is not None and got.region is not None:
        compare(report, "e2e.head_region", case, ["box"], {"box": got.region},
                [torch.tensor(ref.region.box_normalized)], {"box": tol})
    if ref.temporal is not None and got.temporal is not None:
        compare(report, "e2e.head_temporal", case, ["saliency"], {"saliency": got.temporal["saliency"]},
                [torch.as_tensor(ref.temporal.saliency)], {"saliency": tol})
    if ref.mask is not None and got.mask_logits is not None:
        compare(report, "e2e.mask", case, ["object_scores"], {"object_scores": got.object_scores},
                [torch.as_tensor(ref.mask.object_scores)], {"object_scores": tol})
        h, w = ref.mask.masks.shape[1:]
        up = F.interpolate(torch.as_tensor(got.mask_logits).float(), size=(h, w), mode="bilinear", align_corners=False)
        agree = float((up[:, 0].numpy() > 0).__eq__(ref.mask.masks).mean())
        report.checks += 1
        if agree < 0.999:
            from export.verify import Failure

            report.failures.append(Failure("e2e.mask", case, "masks", 1 - agree, 1 - agree, 0.001,
                                           f"pixel agreement {agree:.4f}"))


def verify_end_to_end(report, manifest: Manifest, graphs, model, videos) -> None:
    """Greedy tokens and head outputs of the ONNX loop vs ``TPOModel.generate`` on every video and question."""
    from tpo_core.data.video import read_video

    loop = OnnxTPO(manifest, graphs)
    ids = {k: v["id"] for k, v in manifest.task_tokens.items()}
    tol = 10 * max(max(c.tolerance.values(), default=1e-4) for c in manifest.components.values())
    strict = manifest.precision == "fp32"
    for path in videos:
        clip = read_video(path, model.config.vision.num_frames)
        for question, forced in QUESTIONS:
            q = question.format(obj="object")
            proc = force_first(ids.get(forced))
            ref = model.generate(clip, q, logits_processor=proc)
            got = loop.generate(clip, q, processor=proc)
            case = f"{path.name}: {q!r}"
            same = got.token_ids == ref.token_ids
            report.e2e.append({"case": case, "tokens_equal": same, "tasks": got.tasks, "tokens": len(got.token_ids)})
            report.checks += 1
            if not same:
                first = next((i for i, (a, b) in enumerate(zip(got.token_ids, ref.token_ids)) if a != b),
                             min(len(got.token_ids), len(ref.token_ids)))
                msg = f"greedy tokens differ from step {first}: onnx {got.token_ids[:first + 3]} vs " \
                      f"torch {ref.token_ids[:first + 3]}"
                if strict:
                    from export.verify import Failure

                    report.failures.append(Failure("e2e.llm", case, "token_ids", 1.0, 1.0, 0.0, msg))
                else:
                    report.notes.append(f"{case}: {msg} ({manifest.precision} vs float32 reference)")
                continue
            if got.tasks != ref.tasks:
                from export.verify import Failure

                report.failures.append(Failure("e2e.routing", case, "tasks", 1.0, 1.0, 0.0,
                                               f"onnx {got.tasks} vs torch {ref.tasks}"))
                continue
            _compare_heads(report, case, ref, got, tol)
