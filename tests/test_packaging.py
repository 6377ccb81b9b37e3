"""The base install (``pip install tpo-edge``: setup.py's ``RUNTIME``) is enough to run an export folder.

1. Every module that ``runtime/`` imports (at module level or inside a function) is the standard library,
   ``runtime`` itself, a base requirement, or one of the GPU-only packages (torch, triton, TensorRT).
2. A subprocess in which torch, transformers, peft (and tpo_core, export) cannot be imported opens a
   ``runtime.Pipeline`` on the embedded export, answers a free question and one question forced to each head
   on a generated video, and gets the same tokens, box, spans and masks as the same pipeline in this process.
3. The ``tpo`` command, with every optional dependency blocked: ``tpo run`` answers from an export folder;
   ``tpo ask`` exits 2 naming the extra to install.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "transformers", "peft", "tpo_core", "export")
# CUDA / TensorRT / NVDEC paths, never the CPU path
GPU_ONLY = {"torch", "triton", "tensorrt", "tensorrt_rtx", "PyNvVideoCodec"}
IMPORT_NAME = {"opencv-python-headless": "cv2"}  # distribution -> module, where they differ


def _base_requirements() -> list[str]:
    """setup.py's ``RUNTIME`` list (read from its source: no install needed)."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "RUNTIME" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py defines no RUNTIME list")


def _runtime_imports() -> dict[str, set[str]]:
    """Top-level module name -> runtime files importing it (every import statement, nested ones included)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "runtime").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def test_base_requirements_cover_every_runtime_import():
    base = _base_requirements()
    dists = {req.split(">")[0].split("=")[0].split("<")[0].split(";")[0].strip() for req in base}
    assert not dists & {"torch", "transformers", "peft", "accelerate", "onnx"}, dists
    allowed = {IMPORT_NAME.get(d, d).replace("-", "_") for d in dists} | GPU_ONLY | {"runtime", "__future__"}
    missing = {m: sorted(files) for m, files in _runtime_imports().items()
               if m not in allowed and m not in sys.stdlib_module_names}
    assert not missing, f"runtime/ imports modules that the base install does not bring: {missing}; add them to " \
                        "setup.py's RUNTIME or move the import out of runtime/"


_BLOCKER = r"""
import importlib.abc, json, sys

BLOCKED = set(sys.argv[3].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the base install has none)", name=name)
        return None

sys.meta_path.insert(0, Block())
"""
_CHILD = _BLOCKER + r"""
import numpy as np
from runtime.pipeline import Pipeline

folder, video = sys.argv[1], sys.argv[2]
tasks = json.load(open(f"{folder}/manifest.json"))["task_tokens"]
begin = {info["head"]: info["id"] for info in tasks.values() if info["role"] == "begin"}

def force(token_id):
    def processor(step, logits):
        if step == 0:
            logits = logits.copy()
            logits[:] = -1e9
            logits[token_id] = 0.0
        return logits
    return processor

out = []
with Pipeline.from_manifest(folder, threads=2) as pipe:
    for head, prompt in [(None, "What colour is the background?"), ("region", "Where is the object?"),
                         ("temporal", "When does the object appear?"), ("mask", "Track the object.")]:
        r = pipe.ask(video, prompt, logits_processor=None if head is None else force(begin[head]))
        out.append({"token_ids": r.token_ids, "tasks": r.tasks,
                    "box": None if r.region is None else list(r.region.box),
                    "spans": None if r.temporal is None else [[s.start, s.end] for s in r.temporal.spans],
                    "mask_areas": None if r.mask is None else [int(m.sum()) for m in r.mask.masks]})
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"results": out, "leaked": leaked}))
"""


def _summary(r) -> dict:
    return {"token_ids": r.token_ids, "tasks": r.tasks,
            "box": None if r.region is None else list(r.region.box),
            "spans": None if r.temporal is None else [[s.start, s.end] for s in r.temporal.spans],
            "mask_areas": None if r.mask is None else [int(m.sum()) for m in r.mask.masks]}


@pytest.mark.slow
def test_runtime_runs_an_export_folder_without_torch_transformers_peft(export_dir, sample_videos, pipe):
    video = sample_videos[0]
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(export_dir), video, ",".join(BLOCKED)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"the runtime needed a blocked module:\n{proc.stderr[-3000:]}"
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert child["leaked"] == []
    got = child["results"]
    assert [r["tasks"] for r in got[1:]] == [["region"], ["temporal"], ["mask"]]
    assert len(got[1]["box"]) == 4 and np.isfinite(got[1]["box"]).all()
    assert got[2]["spans"] and got[3]["mask_areas"] and len(got[3]["mask_areas"]) == pipe.num_frames

    tasks = json.loads((Path(export_dir) / "manifest.json").read_text())["task_tokens"]
    begin = {info["head"]: info["id"] for info in tasks.values() if info["role"] == "begin"}

    def force(token_id):
        def processor(step, logits):
            if step == 0:
                logits = logits.clone() if hasattr(logits, "clone") else logits.copy()
                logits[:] = -1e9
                logits[token_id] = 0.0
            return logits
        return processor

    prompts = [(None, "What colour is the background?"), ("region", "Where is the object?"),
               ("temporal", "When does the object appear?"), ("mask", "Track the object.")]
    ref = [_summary(pipe.ask(video, p, logits_processor=None if h is None else force(begin[h]))) for h, p in prompts]
    for a, b in zip(got, ref):
        assert a["token_ids"] == b["token_ids"] and a["tasks"] == b["tasks"] and a["mask_areas"] == b["mask_areas"]
        assert a["spans"] == b["spans"]
        assert (a["box"] is None) == (b["box"] is None)
        if a["box"] is not None:
            assert np.allclose(a["box"], b["box"], atol=1e-3)


_CLI_CHILD = _BLOCKER + r"""
from runtime.cli import main

rc_run = main(["run", sys.argv[1], "--video", sys.argv[2], "--prompt", "Where is the object?", "--json"])
rc_ask = main(["ask", "--sample"])
print(json.dumps({"run": rc_run, "ask": rc_ask}))
"""
# every optional dependency of setup.py's extras (top-level module names)
OPTIONAL = ("torch", "transformers", "peft", "accelerate", "safetensors", "scipy", "PIL", "sentencepiece", "onnx",
            "onnxscript", "matplotlib", "triton", "tensorrt", "tensorrt_rtx")


@pytest.mark.slow
def test_tpo_run_needs_only_the_base_install(export_dir, sample_videos):
    proc = subprocess.run([sys.executable, "-c", _CLI_CHILD, str(export_dir), sample_videos[0], ",".join(OPTIONAL)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"run": 0, "ask": 2}, proc.stdout[-2000:]
    assert "tpo ask: error: this command needs 'torch'" in proc.stderr and "tpo-edge[export]" in proc.stderr
