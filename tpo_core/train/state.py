"""Training checkpoints: the model folder (``save_checkpoint``) plus everything an exact resume needs.

A training checkpoint folder holds, beside ``model.safetensors`` / ``config.json`` / ``checkpoint.json`` /
``tokenizer.json``:

- ``optimizer.safetensors``: AdamW state per parameter, keyed ``<param name>/<state key>`` (``step``,
  ``exp_avg``, ``exp_avg_sq``); ``optimizer.json``: the param groups (lr, base_lr, betas, eps, weight decay,
  training group and the parameter names, in order).
- ``rng_rank<r>.safetensors``: torch CPU (and CUDA) generator states of each process.
- ``trainer_state.json``: stage, optimizer steps done, micro-batches consumed, seed, world size and the
  training config (the data position is derived from the step: the sample order is a pure function of
  ``(seed, stage, epoch)``).

No pickles anywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..checkpoint import save_checkpoint

STATE = "trainer_state.json"
OPTIM = "optimizer.safetensors"
OPTIM_META = "optimizer.json"


@dataclass
class TrainState:
    stage: str
    step: int  # optimizer steps done in this stage
    micro: int  # micro-batches consumed in this stage (per process)
    seed: int
    world_size: int = 1
    finished: bool = False
    planned_steps: int | None = None  # set when a time budget shortened the stage (a resume keeps it)

    def to_dict(self) -> dict:
        return asdict(self)


def _param_names(optimizer: torch.optim.Optimizer) -> list[list[str]]:
    return [list(g["names"]) for g in optimizer.param_groups]


def save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """AdamW state -> ``optimizer.safetensors`` (tensors by parameter name) + ``optimizer.json`` (groups)."""
    sd = optimizer.state_dict()
    names = _param_names(optimizer)
    flat_names = [n for group in names for n in group]
    tensors = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{flat_names[idx]}/{key}"] = t.detach().cpu().contiguous()
    save_file(tensors, str(path / OPTIM))
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
              for g in sd["param_groups"]]
    (path / OPTIM_META).write_text(json.dumps({"param_groups": groups}, indent=1) + "\n")


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Restore the state written by ``save_optimizer`` into an optimizer built for the same stage."""
    meta = json.loads((path / OPTIM_META).read_text())
    saved_groups = meta["param_groups"]
    names = _param_names(optimizer)
    if [g["names"] for g in saved_groups] != names:
        raise ValueError(f"optimizer state in {path} was saved for other trainable parameters than this stage "
                         "trains; resume with the same stage config the checkpoint was written with")
    tensors = load_file(str(path / OPTIM))
    state = {}
    flat = [n for group in names for n in group]
    for idx, name in enumerate(flat):
        keys = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == name}
        if keys:
            state[idx] = keys
    sd = optimizer.state_dict()
    for g, saved in zip(sd["param_groups"], saved_groups):
        for k, v in saved.items():
            g[k] = tuple(v) if k == "betas" else v
    sd["state"] = state
    optimizer.load_state_dict(sd)


def rng_state() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    return out


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    cuda = [state[k] for k in sorted(state) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def save_training_checkpoint(path: str | Path, model, optimizer, state: TrainState, train_config: dict,
                             rank: int = 0, is_main: bool = True) -> Path:
    """Write a resumable checkpoint folder (model + optimizer + RNG + trainer state)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if is_main:
        save_checkpoint(model, path, extra_meta={"stage": state.stage, "step": state.step})
        save_optimizer(optimizer, path)
        (path / STATE).write_text(json.dumps({**state.to_dict(), "train_config": train_config}, indent=1) + "\n")
    save_file(rng_state(), str(path / f"rng_rank{rank}.safetensors"))
    return path


def read_training_state(path: str | Path) -> tuple[TrainState, dict]:
    path = Path(path)
    if not (path / STATE).is_file():
        raise FileNotFoundError(f"{path} holds no {STATE}: --resume needs a training checkpoint written by "
                                "`tpo train` (its stage folders or checkpoints/step_* folders)")
    data = json.loads((path / STATE).read_text())
    cfg = data.pop("train_config")
    return TrainState(**data), cfg


def load_rng(path: str | Path, rank: int = 0) -> None:
    f = Path(path) / f"rng_rank{rank}.safetensors"
    if not f.is_file():
        raise FileNotFoundError(f"{f} is missing: resume with the same number of processes the checkpoint "
                                "was written with")
    set_rng_state(load_file(str(f)))
