"""The three-stage TPO trainer (Accelerate: CPU, one GPU or DDP over several).

``train(cfg, data_dir, out_dir, stages=...)`` runs the named stages in order. Per stage:

- freezing + AdamW param groups from the ``StageConfig`` (``params.py``), cosine lr (``schedule.py``);
- the sample order is a pure function of ``(seed, stage, epoch)``; global micro-batch ``m`` of a stage takes
  positions ``[m * B * W, (m + 1) * B * W)`` of the concatenated epoch orders and process ``r`` the r-th
  ``B``-slice (W processes), so a resume only needs the micro-batch count;
- ``grad_accum`` micro-batches per optimizer step, gradient clipping per parameter group (or global), bf16
  autocast on CUDA; the gradient norm of every trainable group is logged (``grad_norm/<group>``, before
  clipping) beside each loss term;
- batches are collated ahead of the step: on a background thread (``loader_workers=0``) or in
  ``loader_workers`` worker processes (a ``DataLoader`` over micro-batch indices, pinned memory); either way a
  micro-batch is a pure function of its index, so the trajectory does not depend on the choice;
- nothing is read back from the device between log steps: the logged terms are summed on the device and
  read once per ``log_every`` steps;
- ``time_budget_s``: the stage measures its step time after a few steps and shortens itself to fit;
- a checkpoint every ``save_every`` steps (``<out>/<stage>/checkpoints/step_XXXXXX``) and at the end
  (``<out>/<stage>``, a full model folder usable by ``tpo eval`` / ``tpo ask``); ``<out>/final`` after the
  last stage; metrics in ``<out>/<stage>/metrics.jsonl`` and a loss plot ``loss_curve.png`` beside them.

Exact resume: model, AdamW state, lr step, RNG states and the data position are restored, so the loss
trajectory equals an uninterrupted run's (tested on CPU).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import get_preset
from ..data.clip_store import ClipStore
from ..data.collate import ClipCache, TPOCollator
from .objective import TPOObjective
from .params import apply_freezing, build_optimizer, group_parameters
from .schedule import CosineSchedule
from .stages import BUDGET_PROBE, REPLAN_AT, STAGE_NAMES, StageConfig, TrainConfig
from .state import TrainState, load_optimizer, load_rng, read_training_state, save_training_checkpoint


@dataclass
class StageResult:
    stage: str
    steps: int
    history: list[dict] = field(default_factory=list)  # one record per logged step
    seconds: float = 0.0
    checkpoint: str = ""
    interrupted: bool = False  # stopped by the time budget; resume with --resume auto


class SampleStream:
    """Deterministic per-stage sample order (see module docstring); ``batch(m)`` -> this process's samples."""

    def __init__(self, samples: list, stage: StageConfig, seed: int, stage_index: int, rank: int = 0,
                 world: int = 1):
        self.pool = [s for s in samples if s.task in stage.tasks]
        if not self.pool:
            have = sorted({s.task for s in samples})
            raise ValueError(f"stage {stage.name} trains on {stage.tasks} but the data holds only {have}")
        self.weights = self._weights(stage)
        self.seed, self.stage_index, self.rank, self.world = seed, stage_index, rank, world
        self.batch_size = stage.batch_size
        self._orders: dict[int, np.ndarray] = {}

    def _weights(self, stage: StageConfig) -> np.ndarray | None:
        if not stage.task_weights:
            return None
        counts = {t: sum(s.task == t for s in self.pool) for t in stage.tasks}
        w = np.array([stage.task_weights.get(s.task, 1.0) / max(counts[s.task], 1) for s in self.pool])
        return w / w.sum()

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            rng = np.random.default_rng([self.seed, self.stage_index, epoch])
            n = len(self.pool)
            self._orders = {epoch: rng.permutation(n) if self.weights is None else rng.choice(n, n, p=self.weights)}
        return self._orders[epoch]

    def batch(self, micro: int) -> list:
        n = len(self.pool)
        start = (micro * self.world + self.rank) * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            out.append(self.pool[int(self.order(pos // n)[pos % n])])
        return out


class MicroBatches(torch.utils.data.Dataset):
    """Micro-batch ``m`` of a stage, collated (``DataLoader`` workers call this; batch_size=None)."""

    def __init__(self, collate: TPOCollator, stream: SampleStream):
        self.collate, self.stream = collate, stream

    def __len__(self) -> int:
        return 1 << 40

    def __getitem__(self, micro: int):
        return self.collate(self.stream.batch(micro), key=micro)


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)


def _accelerator(cpu: bool | None = None):
    from accelerate import Accelerator, DistributedDataParallelKwargs

    use_cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    return Accelerator(cpu=use_cpu, mixed_precision="no" if use_cpu else "bf16",
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def _load_samples(data_dir: str | Path) -> list:
    from ..data.synth_tasks import task_samples

    samples = task_samples(data_dir)
    if not samples:
        raise ValueError(f"no training samples in {data_dir}; generate data with `tpo data synth --out DIR`")
    return samples


def open_patch_labels(config, data_dir: str | Path | None, cfg: TrainConfig, log=print):
    """The dataset's ``patch_labels.npz`` for the ``patch`` loss (``data/patch_labels.py``), or None: the model has
    no patch classifier, no stage weights the term, or the data has no labels for this frame / patch grid (said
    in one line, so a run without the term is never silent)."""
    from ..data.patch_labels import PatchLabels

    weighted = any(float(cfg.stage(n).loss_weights.get("patch", 0.0)) > 0 for n in STAGE_NAMES)
    if not config.vision.patch_classes or not weighted:
        return None
    labels = PatchLabels.open(data_dir)
    v = config.vision
    side = v.img_size // v.patch_size
    why = None
    if labels is None:
        why = f"{data_dir} has no patch_labels.npz (real data, or synthetic data of generator version < 3)"
    elif labels.frames != v.num_frames or labels.grid != side or v.tubelet_size != 1:
        why = (f"the labels describe {labels.frames} frames x {labels.grid}x{labels.grid} patches, the model sees "
               f"{v.num_frames} frames (tubelet {v.tubelet_size}) x {side}x{side} patches")
    if why is not None:
        if log is not None:
            log(f"patch loss off: {why}")
        return None
    return labels


def build_model(cfg: TrainConfig, init: str | Path | None):
    from ..model import TPOModel

    if init is not None:
        return TPOModel.from_pretrained(init)
    return TPOModel.from_config(get_preset(cfg.preset), seed=cfg.seed)


class StageRunner:
    """Runs one stage on a model; owns its optimizer, schedule, stream and logging."""

    def __init__(self, model, stage: StageConfig, cfg: TrainConfig, samples: list, out_dir: Path, accelerator,
                 cache: ClipCache, quiet: bool = False, loader_workers: int = 0, patch_labels=None):
        self.model, self.stage, self.cfg, self.acc, self.quiet = model, stage, cfg, accelerator, quiet
        self.loader_workers = loader_workers
        self.out = out_dir / stage.name
        if stage.apply_lora and not model.llm.lora_applied:
            model.llm.apply_lora()
        model.to(accelerator.device)
        base = model.llm.base_model()
        if stage.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif _checkpointing(base):
            base.gradient_checkpointing_disable()
        self.freeze = apply_freezing(model, stage)
        self.optimizer = build_optimizer(self.freeze, stage)
        self.schedule = CosineSchedule(self.optimizer, stage.steps, stage.warmup_steps, stage.min_lr_ratio)
        self.objective = TPOObjective(model, stage.loss_weights, stage.head_grad_scale)
        self.groups = group_parameters(self.freeze)
        self.stream = SampleStream(samples, stage, cfg.seed, STAGE_NAMES.index(stage.name),
                                   accelerator.process_index, accelerator.num_processes)
        self.collate = TPOCollator(model.config, model.prompts, stage.mask_frames, cfg.seed, cache,
                                   patch_labels=patch_labels)
        self.state = TrainState(stage=stage.name, step=0, micro=0, seed=cfg.seed,
                                world_size=accelerator.num_processes)
        self.wrapped, self.opt = accelerator.prepare(self.objective, self.optimizer)
        self.history: list[dict] = []
        self.total_steps = stage.steps  # lowered by a time budget (``_plan_budget``)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"collate-{stage.name}")
        self._prefetch = None  # (micro index, future) of the batch being collated in the background
        self._loader = None  # (next micro index, iterator) of the worker-process loader
        self._window: dict[str, torch.Tensor] = {}
        self._window_count: dict[str, int] = {}

    def resume_from(self, path: Path) -> None:
        state, _ = read_training_state(path)
        load_optimizer(self.optimizer, path)
        load_rng(path, self.acc.process_index)
        self.state = state
        if state.planned_steps:
            self.total_steps = state.planned_steps
            self.schedule.total = state.planned_steps
        metrics = self.out / "metrics.jsonl"
        if metrics.is_file():
            keep = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            self.history = [r for r in keep if r["step"] <= state.step]
            if self.acc.is_main_process:  # drop records of steps after the checkpoint (a crashed run's)
                metrics.write_text("".join(json.dumps(r) + "\n" for r in self.history))

    def _batch(self, micro: int):
        """Micro-batch ``micro`` collated; the next ones are collated in the background meanwhile (decoding,
        mask targets and tokenization overlap the GPU step): by ``loader_workers`` processes, or else by one
        thread. Collation is a pure function of ``micro``, so the prefetch never changes what a step sees
        (resume included)."""
        if self.loader_workers > 0:
            return self._from_loader(micro)
        pending = self._prefetch
        batch = pending[1].result() if pending is not None and pending[0] == micro else self._collate(micro)
        self._prefetch = (micro + 1, self._pool.submit(self._collate, micro + 1))
        return batch

    def _collate(self, micro: int):
        return self.collate(self.stream.batch(micro), key=micro)

    def _from_loader(self, micro: int):
        if self._loader is None or self._loader[0] != micro:
            end = self.total_steps * self.stage.grad_accum
            loader = torch.utils.data.DataLoader(
                MicroBatches(self.collate, self.stream), batch_size=None, sampler=range(micro, max(end, micro + 1)),
                num_workers=self.loader_workers, pin_memory=self.acc.device.type == "cuda", prefetch_factor=2,
                worker_init_fn=_worker_init, multiprocessing_context="fork",
                generator=torch.Generator().manual_seed(micro))  # its seed draw leaves the global RNG alone
            self._loader = (micro, iter(loader))
        batch = next(self._loader[1])
        self._loader = (micro + 1, self._loader[1])
        return batch

    def _micro_step(self, sync: bool) -> dict[str, torch.Tensor]:
        batch = self._batch(self.state.micro).to(self.acc.device)
        self.state.micro += 1
        ctx = self.acc.no_sync(self.wrapped) if not sync and self.acc.num_processes > 1 else _null()
        with ctx:
            out = self.wrapped(batch)
            self.acc.backward(out["loss"] / self.stage.grad_accum)
        return {k: v.detach() for k, v in out.items()}

    def _clip(self) -> dict[str, torch.Tensor]:
        """Per-group gradient norms (before clipping) and clipping (``clip_mode``); device tensors, no sync.
        Under DeepSpeed / FSDP (sharded gradients) the accelerator's global clipping is used instead."""
        from accelerate.utils import DistributedType

        st = self.stage
        if self.acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            params = [p for _, p, _ in self.freeze.trainable]
            norm = self.acc.clip_grad_norm_(params, st.grad_clip)  # None under DeepSpeed (it clips itself)
            return {} if norm is None else {"grad_norm": norm.detach().float()}
        grads = {g: [p.grad for p in ps if p.grad is not None] for g, ps in self.groups.items()}
        grads = {g: v for g, v in grads.items() if v}
        if not grads:
            return {}
        norms = {g: torch.linalg.vector_norm(torch.stack(torch._foreach_norm(v, 2.0)).float())
                 for g, v in grads.items()}
        total = torch.linalg.vector_norm(torch.stack(list(norms.values())))
        if st.grad_clip > 0:
            for g, v in grads.items():
                norm = norms[g] if st.clip_mode == "group" else total
                torch._foreach_mul_(v, (st.grad_clip / (norm + 1e-6)).clamp(max=1.0).to(v[0].dtype))
        out = {f"grad_norm/{g}": n for g, n in norms.items()}
        out["grad_norm"] = total
        return out

    def _step(self) -> dict[str, torch.Tensor]:
        """One optimizer step (``grad_accum`` micro-batches); returns the step's logged terms as device tensors
        (the mean over micro-batches, the gradient norms and the lr factor)."""
        self.model.train()
        lr_factor = self.schedule.apply(self.state.step)
        sums: dict[str, torch.Tensor] = {}
        for i in range(self.stage.grad_accum):
            for k, v in self._micro_step(sync=i == self.stage.grad_accum - 1).items():
                sums[k] = sums.get(k, 0.0) + v.float() / self.stage.grad_accum
        sums.update(self._clip())
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.state.step += 1
        sums["lr_factor"] = torch.tensor(lr_factor)
        return sums

    def step(self) -> dict[str, float]:
        """One optimizer step; returns each logged term as a float (reads them back: use ``run`` to train)."""
        rec = self._step()
        keys = list(rec)
        values = torch.stack([rec[k].reshape(()).float().cpu() for k in keys]).tolist()
        return dict(zip(keys, values))

    def _accumulate(self, rec: dict[str, torch.Tensor]) -> None:
        for k, v in rec.items():
            self._window[k] = self._window.get(k, 0.0) + v.reshape(()).float()
            self._window_count[k] = self._window_count.get(k, 0) + 1

    def _flush(self, steps: int, seconds: float) -> dict:
        """The mean of every term over the window (one read-back), plus timing."""
        keys = list(self._window)
        values = torch.stack([self._window[k].cpu() for k in keys]).tolist() if keys else []
        mean = {k: v / self._window_count[k] for k, v in zip(keys, values)}
        samples_per_step = self.stage.batch_size * self.stage.grad_accum * self.acc.num_processes
        mean.update(stage=self.stage.name, step=self.state.step, seconds_per_step=seconds / max(steps, 1),
                    samples_per_s=samples_per_step * steps / max(seconds, 1e-9))
        self._window, self._window_count = {}, {}
        return mean

    def _plan_budget(self, t_start: float, probe: dict) -> None:
        """``time_budget_s``: at step ``BUDGET_PROBE[0]`` note the time, at ``BUDGET_PROBE[1]`` measure the step
        time and shorten the stage so it ends within the budget; then, when ``REPLAN_AT`` shares of the budget
        have passed (and at least as many steps as the probe's since it), plan again from the step time measured
        since the probe (longer and steadier: the probe's
        steps include the loader's cold start, and on a shared GPU it can be 1.5x the later steps), up to the
        configured ``steps``. The cosine schedule follows every plan."""
        st, step = self.stage, self.state.step
        if not st.time_budget_s or (self.state.planned_steps is not None and "t1" not in probe):
            return  # no budget, or a resumed stage (its plan came with the checkpoint)
        if "t1" not in probe and step < BUDGET_PROBE[0] + ("t" in probe) * (BUDGET_PROBE[1] - BUDGET_PROBE[0]):
            return
        probe_steps = BUDGET_PROBE[1] - BUDGET_PROBE[0]
        if "t1" in probe and (probe["next"] >= len(REPLAN_AT) or step - probe["s1"] < probe_steps):
            return  # all re-plans done, or too few steps since the probe to measure
        if "t1" in probe and not (_agreement_step(self.acc, step, st) and agree_any(
                self.acc, time.perf_counter() - t_start >= REPLAN_AT[probe["next"]] * st.time_budget_s)[0]):
            return  # not yet time (on any process: under DDP they re-plan at the same step)
        _device_sync(self.acc.device)
        now = time.perf_counter()
        if "t" not in probe:
            probe.update(t=now, s0=step)
            return
        if "t1" not in probe:
            per_step = (now - probe["t"]) / max(1, step - probe["s0"])
            probe.update(t1=now, s1=step, next=0)
            cap = self.total_steps
        else:
            per_step = (now - probe["t1"]) / max(1, step - probe["s1"])
            probe["next"] += 1
            cap = st.steps
        left = st.time_budget_s - (now - t_start)
        # under DDP every process must stop at the same step (or the next gradient all-reduce hangs): the shortest plan
        self.total_steps = agree_min(self.acc, max(step, min(cap, step + int(left / max(per_step, 1e-9)))))
        self.schedule.total = self.total_steps
        self.state.planned_steps = self.total_steps
        if self.acc.is_main_process:
            print(f"{st.name}: {per_step:.3f} s/step at step {step} -> {self.total_steps} of {st.steps} steps fit "
                  f"the {st.time_budget_s:.0f} s budget", flush=True)

    def save(self, path: Path) -> None:
        self.acc.wait_for_everyone()
        save_training_checkpoint(path, self.acc.unwrap_model(self.wrapped).model, self.optimizer, self.state,
                                 self.cfg.to_dict(), self.acc.process_index, self.acc.is_main_process)
        self.acc.wait_for_everyone()

    def run(self, deadline: float | None = None) -> StageResult:
        """Train to ``stage.steps`` (or the time budget's length); if ``time.time()`` passes ``deadline``,
        checkpoint and stop early."""
        st, t_start = self.stage, time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        bar = _progress(st, self.state.step, disable=self.quiet or not self.acc.is_local_main_process)
        t_last, n_window, probe = time.perf_counter(), 0, {}
        while self.state.step < self.total_steps:
            self._accumulate(self._step())
            n_window += 1
            self._plan_budget(t_start, probe)
            if self.state.step % st.log_every == 0 or self.state.step == self.total_steps:
                now = time.perf_counter()
                mean = self._flush(n_window, now - t_last)
                self.history.append(mean)
                self._write_metrics(mean)
                bar.set_postfix_str(_postfix(mean))
                t_last, n_window = now, 0
            bar.update(1)
            if st.save_every and self.state.step % st.save_every == 0 and self.state.step < self.total_steps:
                self.save(self.out / "checkpoints" / f"step_{self.state.step:06d}")
            if deadline is not None and _agreement_step(self.acc, self.state.step, st) \
                    and agree_any(self.acc, time.time() > deadline)[0] and self.state.step < self.total_steps:
                bar.close()
                path = self.out / "checkpoints" / f"step_{self.state.step:06d}"
                self.save(path)
                self.freeze.remove()
                self._close()
                self._plot(st)  # a stage cut by the deadline keeps its loss plot too
                return StageResult(stage=st.name, steps=self.state.step, history=self.history,
                                   seconds=time.perf_counter() - t_start, checkpoint=str(path), interrupted=True)
        bar.close()
        self.state.finished = True
        self.save(self.out)
        self.freeze.remove()
        self._close()
        self._plot(st)
        return StageResult(stage=st.name, steps=self.state.step, history=self.history,
                           seconds=time.perf_counter() - t_start, checkpoint=str(self.out))

    def _plot(self, st) -> None:
        if self.acc.is_main_process and self.history:
            from .plots import plot_losses

            plot_losses(self.history, self.out / "loss_curve.png", title=f"{st.name} ({self.cfg.preset})")

    def _close(self) -> None:
        self._prefetch = None
        self._loader = None  # drops the iterator: its worker processes exit
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _write_metrics(self, rec: dict) -> None:
        if not self.acc.is_main_process:
            return
        path = self.out / "metrics.jsonl"
        if len(self.history) == 1 or not path.is_file():
            path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        else:
            with open(path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")


def _checkpointing(model) -> bool:
    """Whether activation checkpointing is on (transformers 5.x renamed ``is_gradient_checkpointing``)."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def _agreement_step(acc, step: int, stage: StageConfig) -> bool:
    """Whether a time-based decision is checked at ``step``: every step on one process; under DDP only at the logging
    steps, where the metrics are read back anyway (the agreement's all-reduce waits for the device), so a stop or a
    re-plan comes at most ``log_every`` steps late."""
    return acc.num_processes <= 1 or step % stage.log_every == 0


def agree_any(acc, *flags: bool) -> tuple[bool, ...]:
    """Under DDP (``acc.num_processes`` > 1) each flag is set on every process when it is set on any (one MAX
    all-reduce), so that a time-based decision (a re-plan, the ``--max-minutes`` stop) is taken at the same step
    everywhere; one process: the flags as given, no collective."""
    if acc.num_processes <= 1:
        return tuple(bool(f) for f in flags)
    t = torch.tensor([float(bool(f)) for f in flags], device=acc.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def agree_min(acc, value: int) -> int:
    """Under DDP the smallest ``value`` over the processes (one MIN all-reduce); one process: ``value``."""
    if acc.num_processes <= 1:
        return int(value)
    t = torch.tensor([int(value)], device=acc.device, dtype=torch.long)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return int(t.item())


def _device_sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _progress(stage: StageConfig, initial: int, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=stage.steps, initial=initial, desc=stage.name, disable=disable, dynamic_ncols=True)


def _postfix(rec: dict) -> str:
    keys = [k for k in ("loss", "lm", "region", "temporal", "mask_pixel") if k in rec]
    parts = [f"{k}={rec[k]:.3f}" for k in keys] + [f"{rec['samples_per_s']:.1f} samp/s"]
    return " ".join(parts)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint ``--resume auto`` continues from: the newest unfinished-stage checkpoint, else the last
    finished stage folder, else None (fresh start)."""
    out_dir = Path(out_dir)
    for name in reversed(STAGE_NAMES):
        stage_dir = out_dir / name
        steps = sorted((stage_dir / "checkpoints").glob("step_*"))
        steps = [p for p in steps if (p / "trainer_state.json").is_file()]
        if (stage_dir / "trainer_state.json").is_file():
            return stage_dir
        if steps:
            return steps[-1]
    return None


def _resume_plan(resume: Path, stages: list[str]) -> tuple[list[str], TrainState]:
    state, _ = read_training_state(resume)
    if state.stage not in stages:
        raise ValueError(f"--resume {resume} is a {state.stage} checkpoint but this run trains {stages}")
    rest = stages[stages.index(state.stage):]
    if state.finished:
        rest = rest[1:]
    return rest, state


def train(cfg: TrainConfig, data_dir: str | Path, out_dir: str | Path, stages: list[str] | None = None,
          resume: str | Path | None = None, init: str | Path | None = None, cpu: bool | None = None,
          quiet: bool = False, samples: list | None = None, max_minutes: float | None = None,
          loader_workers: int = 0) -> list[StageResult]:
    """Train ``stages`` (default: all three) in order; returns one ``StageResult`` per stage run.

    ``resume="auto"`` continues from ``latest_checkpoint(out_dir)`` (or starts fresh); ``max_minutes`` stops
    at a step boundary with a checkpoint once that much wall time has passed (re-run with ``resume="auto"``).
    ``loader_workers`` > 0 collates in that many worker processes. A clip store of ``data_dir``
    (``clip_store.build_clip_store``) is used when there is one.
    """
    deadline = None if max_minutes is None else time.time() + 60.0 * max_minutes
    stages = list(stages or STAGE_NAMES)
    out_dir = Path(out_dir)
    if resume == "auto":
        resume = latest_checkpoint(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    acc = _accelerator(cpu)
    samples = samples if samples is not None else _load_samples(data_dir)
    resume_state = None
    if resume is not None:
        resume = Path(resume)
        stages, resume_state = _resume_plan(resume, stages)
        init = resume
        if not stages:
            return []
    model = build_model(cfg, init)
    cache = ClipCache(model.config.vision.num_frames, store=ClipStore.open(data_dir, model.config.vision.num_frames))
    patch_labels = open_patch_labels(model.config, data_dir, cfg, log=None if quiet else print)
    if acc.is_main_process:
        (out_dir / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    results = []
    for name in stages:
        runner = StageRunner(model, cfg.stage(name), cfg, samples, out_dir, acc, cache, quiet, loader_workers,
                             patch_labels)
        if resume_state is not None and not resume_state.finished and resume_state.stage == name:
            runner.resume_from(resume)
        resume_state = None
        results.append(runner.run(deadline))
        model = acc.unwrap_model(runner.wrapped).model
        if results[-1].interrupted:
            return results
    if acc.is_main_process and results:
        model.save_pretrained(out_dir / "final")
        (out_dir / "final" / "train_summary.json").write_text(json.dumps(
            [{"stage": r.stage, "steps": r.steps, "configured_steps": cfg.stage(r.stage).steps,
              "seconds": round(r.seconds, 2),
              "last": r.history[-1] if r.history else None} for r in results], indent=1) + "\n")
    return results
