"""One training engine: a fit with its own budget and schedule, resumable, data-parallel.

A *fit* trains a model for ``plan.epochs * plan.steps_per_epoch`` optimiser steps from its
current weights (so fine-tuning is: load weights, then fit), validates every
``plan.val_every`` epochs, keeps the weights of the best validation epoch and can stop on a
time budget. What to train and how to score it is a :class:`FitTask`; progress and metrics
reach the caller through :class:`Callback` objects. The budget and learning-rate schedule
belong to the fit, not to a run's total, so the active-learning loop can fine-tune for a
few hundred steps each cycle with a fresh schedule.

Weight averaging: with ``plan.ema_decay`` the engine keeps an exponential moving average
of the weights (BatchNorm statistics included) beside the trained ones; validation, the
kept best weights, the callbacks' epoch-end view and the returned model are the average,
while the optimiser goes on stepping the trained weights. A detector's validation CPM
swings by 0.05-0.1 between epochs a few hundred steps apart; the average smooths that
over the last ~1/(1 - decay) steps (Polyak & Juditsky 1992; the EMA of Tan & Le,
"EfficientDet", CVPR 2020, and of YOLO's trainers).

Resuming: with ``checkpoint`` set, the engine writes the model, optimiser and scaler state,
the history and the best weights after every epoch, and ``resume=True`` continues from
there. Random draws do not need saved generator states: each epoch reseeds the task from
``(plan.seed, rank, epoch)``, so a resumed run draws the same patches as an unbroken one.

Data parallel: under ``torchrun`` (see :mod:`activecad.training.distributed`) the task's
loss module is wrapped in DistributedDataParallel; every rank reseeds with its own rank
(distinct patches), gradients are averaged, and only rank 0 validates, calls the
callbacks and writes the checkpoint.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from activecad.training.distributed import DistContext, broadcast_object, context

__all__ = ["Callback", "FitPlan", "FitResult", "FitState", "FitTask", "fit", "lr_at"]

Schedule = Literal["step", "constant", "cosine", "drops"]


@dataclass(frozen=True)
class FitPlan:
    """The budget, optimiser and schedule of one fit.

    Attributes:
        epochs: epochs of this fit.
        steps_per_epoch: optimiser steps per epoch.
        lr: peak learning rate.
        optimizer: ``adamw``, ``sgd`` (momentum 0.9), ``nesterov`` (SGD with Nesterov
            momentum 0.9, as MONAI's LUNA16 detection recipe) or ``radam`` (Rectified Adam,
            Liu et al. 2019, as MELD is trained).
        weight_decay: weight decay.
        schedule: ``step`` (the rate drops tenfold for the last tenth of the epochs, as
            Liu, Cao & Tian, "Deep Active Learning for Effective Pulmonary Nodule
            Detection", MICCAI 2020, §3.1 do; with ``time_budget_s`` and
            ``lr_drop_in_budget``, from the first epoch that starts past 90 % of the budget
            if that comes first, so a fit the budget cuts short still ends on the low
            rate), ``constant``, or ``cosine`` (per step, from
            ``lr`` down to 0 at the last step), or ``drops`` (the rate is multiplied by 0.1
            at each share of the fit's steps in ``lr_drops``).
        lr_drops: for ``schedule="drops"``: shares of the fit's total steps, e.g.
            ``(25 / 40, 37 / 40)`` for Kim et al.'s drops after epochs 25 and 37 of 40.
        warmup: share of the fit's steps over which the rate rises linearly from
            ``lr / warmup steps`` to the schedule's (0: none), before any drop.
        val_every: validate every this many epochs, and after the last one.
        best_metric: the validation metric whose maximum picks the kept weights.
        seed: seed of every random draw of the fit.
        time_budget_s: stop after the first epoch that ends past this many seconds.
        lr_drop_in_budget: let the ``step`` schedule drop at 90 % of ``time_budget_s``
            (False: at the last tenth of the epochs only, as fits before this option did).
        amp: mixed precision where the device supports it (CUDA).
        ema_decay: keep an exponential moving average of the weights with this decay per
            step and use it for validation and as the result (0: none; e.g. 0.999 averages
            over about the last 1,000 steps). Early steps average with a smaller decay,
            ``min(ema_decay, (1 + n) / (10 + n))`` after n steps, so a fit of few steps is
            not held at its start weights.
    """

    epochs: int
    steps_per_epoch: int
    lr: float
    optimizer: Literal["adamw", "sgd", "nesterov", "radam"] = "adamw"
    weight_decay: float = 0.0
    schedule: Schedule = "step"
    lr_drops: tuple[float, ...] = ()
    warmup: float = 0.0
    val_every: int = 1
    best_metric: str = "cpm"
    seed: int = 0
    time_budget_s: float | None = None
    lr_drop_in_budget: bool = True
    amp: bool = True
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.steps_per_epoch < 1:
            raise ValueError(
                f"a fit needs at least one epoch and one step, got {self.epochs} epochs "
                f"of {self.steps_per_epoch} steps"
            )
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


def lr_at(plan: FitPlan, epoch: int, step: int = 0, *, dropped_at: int | None = None) -> float:
    """The learning rate of ``step`` (0-based, within the epoch) of ``epoch`` (0-based).

    ``dropped_at``: for the ``step`` schedule, the epoch (0-based) from which the time
    budget lowered the rate (None: it has not)."""
    total = plan.epochs * plan.steps_per_epoch
    done = epoch * plan.steps_per_epoch + step
    warming = math.ceil(plan.warmup * total)
    rate = _scheduled_lr(plan, done, total)
    if plan.schedule == "step" and dropped_at is not None and epoch >= dropped_at:
        rate = min(rate, 0.1 * plan.lr)
    if done < warming:
        return rate * (done + 1) / warming
    return rate


def _scheduled_lr(plan: FitPlan, done: int, total: int) -> float:
    if plan.schedule == "constant":
        return plan.lr
    if plan.schedule == "cosine":
        return 0.5 * plan.lr * (1.0 + math.cos(math.pi * done / total))
    if plan.schedule == "drops":
        return plan.lr * 0.1 ** sum(done >= int(share * total) for share in plan.lr_drops)
    epoch = done // plan.steps_per_epoch
    return plan.lr * (0.1 if epoch >= math.ceil(0.9 * plan.epochs) else 1.0)


class FitTask(Protocol):
    """What the engine trains and how it scores it.

    ``model`` holds the weights that are checkpointed and returned. ``loss_module`` is the
    module called once per step as ``loss_module(batch)``; it returns a dict of scalar
    losses with the key ``total`` (the one that is back-propagated). It contains ``model``
    (often it *is* ``model``); under torchrun it is the one wrapped in DDP.
    """

    model: nn.Module
    loss_module: nn.Module

    def reseed(self, seed: int) -> None:
        """Reseed every random draw of the task (called at the start of each epoch)."""
        ...

    def start_epoch(self, epoch: int) -> None:
        """Prepare epoch ``epoch`` (0-based), e.g. switch a schedule of the loss."""
        ...

    def next_batch(self, device: str) -> object:
        """The next training batch on ``device``."""
        ...

    def validate(self) -> dict[str, float]:
        """Validation metrics of ``model`` (empty when there is nothing to validate on)."""
        ...


@dataclass
class FitState:
    """The engine's state as callbacks see it.

    Attributes:
        model: the model being trained (not the DDP wrapper).
        plan: the fit's plan.
        epoch: epochs completed.
        step: steps completed in the current epoch.
        history: one record per completed epoch (losses, lr, seconds, metrics).
        best_value: the best ``plan.best_metric`` so far (None before any validation).
        best_epoch: the epoch (1-based) it was reached.
        improved: True at the end of an epoch that set a new best.
        lr_dropped_at: the epoch (0-based) from which the time budget lowered the
            ``step`` schedule's rate (None: it has not).
        ctx: where this process stands in a data-parallel job.
    """

    model: nn.Module
    plan: FitPlan
    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int | None = None
    improved: bool = False
    lr_dropped_at: int | None = None
    ctx: DistContext = field(default_factory=DistContext)


class Callback:
    """Hooks into a fit; subclass and override what you need (all default to no-ops).

    Callbacks run on rank 0 only.
    """

    def on_fit_start(self, state: FitState) -> None:
        """Before the first step (after weights, optimiser and checkpoint are loaded)."""

    def on_step_end(self, state: FitState, losses: dict[str, float]) -> None:
        """After each optimiser step, with this step's losses (this rank's batch)."""

    def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
        """After each epoch's record (losses averaged over steps and ranks, metrics)."""

    def on_fit_end(self, state: FitState) -> None:
        """After the last epoch, with the kept (best-validation) weights in the model."""


@dataclass
class FitResult:
    """What a fit produced.

    Attributes:
        model: the trained model, holding the best-validation weights when validation
            ran (see ``best_epoch``), else the last weights.
        epochs_done: epochs completed in total (including resumed ones).
        history: every epoch's record.
        best_value: best ``plan.best_metric`` (None without validation).
        best_epoch: the epoch whose weights ``model`` holds when validation ran.
        stopped_early: True when the time budget ended the fit.
    """

    model: nn.Module
    epochs_done: int
    history: list[dict[str, float]]
    best_value: float | None
    best_epoch: int | None
    stopped_early: bool = False


class _WeightAverage:
    """An exponential moving average of a model's state (parameters and float buffers;
    integer buffers such as BatchNorm's step count follow the model)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for key, value in model.state_dict().items():
            average = self.state[key]
            if average.is_floating_point():
                average.lerp_(value.detach(), 1.0 - decay)
            else:
                average.copy_(value)


@contextmanager
def _averaged(model: nn.Module, average: _WeightAverage | None) -> Iterator[None]:
    """Within the block ``model`` holds the averaged weights (if any), then its own again."""
    if average is None:
        yield
        return
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(average.state)
    try:
        yield
    finally:
        model.load_state_dict(trained)


def _optimizer(plan: FitPlan, params: object) -> torch.optim.Optimizer:
    if plan.optimizer in ("sgd", "nesterov"):
        return torch.optim.SGD(
            params,  # type: ignore[arg-type]
            lr=plan.lr,
            momentum=0.9,
            weight_decay=plan.weight_decay,
            nesterov=plan.optimizer == "nesterov",
        )
    if plan.optimizer == "radam":
        return torch.optim.RAdam(params, lr=plan.lr, weight_decay=plan.weight_decay)  # type: ignore[arg-type]
    return torch.optim.AdamW(params, lr=plan.lr, weight_decay=plan.weight_decay)  # type: ignore[arg-type]


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of one rank's epoch: distinct per rank and epoch, the same on resume."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return _cpu_dict(module.state_dict())


def _cpu_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def fit(
    task: FitTask,
    plan: FitPlan,
    *,
    device: str = "cpu",
    checkpoint: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    extra_state: dict[str, object] | None = None,
) -> FitResult:
    """Train ``task.model`` from its current weights for the budget of ``plan``.

    Args:
        task: the model, its loss, batches and validation (already on ``device``).
        plan: budget, optimiser, schedule, validation and seed of this fit.
        device: torch device the batches go to.
        checkpoint: file written (rank 0, atomically) after every epoch; None: none.
        resume: continue from ``checkpoint`` (the weights, optimiser, history and best
            weights in it replace the task's).
        callbacks: progress and metrics hooks (rank 0 only).
        extra_state: picklable values stored in the checkpoint under ``extra`` (e.g. the
            model configuration, so a resumed run can check it).

    Returns:
        the result; ``model`` holds the best-validation weights when validation ran.

    Raises:
        FileNotFoundError: ``resume`` without an existing ``checkpoint``.

    Example::

        plan = FitPlan(epochs=2, steps_per_epoch=100, lr=1e-4, schedule="cosine")
        result = fit(task, plan, checkpoint="run/checkpoint.pt")
        result.model  # best-validation weights
    """
    start = time.monotonic()
    ctx = context()
    model = task.model
    optimizer = _optimizer(plan, [p for p in model.parameters() if p.requires_grad])
    use_amp = plan.amp and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    state = FitState(model=model, plan=plan, ctx=ctx)
    average = _WeightAverage(model, plan.ema_decay) if plan.ema_decay else None
    best_weights: dict[str, torch.Tensor] | None = None
    checkpoint_path = Path(checkpoint) if checkpoint is not None else None
    if resume:
        if checkpoint_path is None or not checkpoint_path.is_file():
            raise FileNotFoundError(f"nothing to resume: {checkpoint_path} does not exist")
        saved = None
        if ctx.is_main:
            saved = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        saved = broadcast_object(saved, ctx)
        assert isinstance(saved, dict)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        state.epoch, state.history = int(saved["epoch"]), list(saved["history"])
        state.best_value, state.best_epoch = saved["best_value"], saved["best_epoch"]
        state.lr_dropped_at = saved.get("lr_dropped_at")
        best_weights = saved["best_weights"]
        if average is not None and saved.get("average") is not None:
            average.state = {k: v.to(device) for k, v in saved["average"].items()}
            average.updates = int(saved["average_updates"])
    runner: nn.Module = task.loss_module
    if ctx.distributed:
        runner = nn.parallel.DistributedDataParallel(
            task.loss_module,
            device_ids=[ctx.local_rank] if ctx.backend == "nccl" else None,
            # Some parameters may get no gradient in a step (the detector's unused pyramid
            # outputs, loss-prediction layers behind a detach); DDP must not wait for them.
            find_unused_parameters=True,
        )
    if ctx.is_main:
        for cb in callbacks:
            cb.on_fit_start(state)
    stopped_early = False
    first_epoch = state.epoch
    for epoch in range(first_epoch, plan.epochs):
        seed = epoch_seed(plan.seed, ctx.rank, epoch)
        task.reseed(seed)
        torch.manual_seed(seed)
        task.start_epoch(epoch)
        if _time_to_drop(plan, state, time.monotonic() - start):
            state.lr_dropped_at = epoch
        state.lr_dropped_at = broadcast_object(state.lr_dropped_at, ctx)
        model.train()
        sums: dict[str, float] = {}
        epoch_start = time.monotonic()
        for step in range(plan.steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(plan, epoch, step, dropped_at=state.lr_dropped_at)
            batch = task.next_batch(device)
            with torch.autocast("cuda", enabled=use_amp):
                losses = runner(batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["total"]).backward()
            scaler.step(optimizer)
            scaler.update()
            if average is not None:
                average.update(model)
            values = {k: float(v.detach()) for k, v in losses.items()}
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            state.step = step + 1
            if ctx.is_main:
                for cb in callbacks:
                    cb.on_step_end(state, values)
        means = _mean_over_ranks(sums, plan.steps_per_epoch, ctx, device)
        _sync_buffers(model, ctx)
        record: dict[str, float] = {
            "epoch": epoch + 1,
            **means,
            "lr": lr_at(plan, epoch, dropped_at=state.lr_dropped_at),
            "seconds": time.monotonic() - epoch_start,
        }
        out_of_time = plan.time_budget_s is not None and (
            time.monotonic() - start > plan.time_budget_s
        )
        out_of_time = bool(broadcast_object(out_of_time, ctx))
        last = epoch + 1 == plan.epochs or out_of_time
        state.epoch = epoch + 1
        state.improved = False
        if ctx.is_main:
            # Validation and the callbacks see the averaged weights, when averaging.
            with _averaged(model, average):
                if (epoch + 1) % plan.val_every == 0 or last:
                    model.eval()
                    with torch.no_grad():
                        metrics = task.validate()
                    record.update(metrics)
                    value = metrics.get(plan.best_metric)
                    if value is not None and (
                        state.best_value is None or value >= state.best_value
                    ):
                        state.best_value, state.best_epoch = float(value), epoch + 1
                        state.improved = True
                        best_weights = _cpu_state(model)
                state.history.append(record)
                for cb in callbacks:
                    cb.on_epoch_end(state, record)
            # The checkpoint last: once it names this epoch, what the callbacks write of it
            # (a model's per-epoch weights) is on disk, and a resumed run never skips it.
            if checkpoint_path is not None:
                _save_checkpoint(
                    checkpoint_path,
                    model,
                    optimizer,
                    scaler,
                    state,
                    best_weights,
                    extra_state,
                    average,
                )
        else:
            state.history.append(record)
        if out_of_time and epoch + 1 < plan.epochs:
            stopped_early = True
            break
    # Every rank ends with rank 0's view of the best weights.
    best = broadcast_object((state.best_value, state.best_epoch, best_weights, state.history), ctx)
    state.best_value, state.best_epoch, best_weights, state.history = best  # type: ignore[misc]
    if best_weights is not None:
        model.load_state_dict(best_weights)
    elif average is not None:
        model.load_state_dict(average.state)
    model.eval()
    if ctx.is_main:
        for cb in callbacks:
            cb.on_fit_end(state)
    return FitResult(
        model=model,
        epochs_done=state.epoch,
        history=state.history,
        best_value=state.best_value,
        best_epoch=state.best_epoch,
        stopped_early=stopped_early,
    )


def _sync_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP averages gradients, so parameters agree across ranks; BatchNorm's running
    statistics are updated by each rank's own last forward pass and drift apart. Rank 0's
    are what its validation and checkpoint use, so every rank takes them.
    """
    if not ctx.distributed:
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def _mean_over_ranks(
    sums: dict[str, float], steps: int, ctx: DistContext, device: str
) -> dict[str, float]:
    keys = sorted(sums)
    if not ctx.distributed:
        return {k: sums[k] / steps for k in keys}
    import torch.distributed as dist

    values = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {k: float(v) / (steps * ctx.world_size) for k, v in zip(keys, values, strict=True)}


def _time_to_drop(plan: FitPlan, state: FitState, elapsed_s: float) -> bool:
    """Whether the ``step`` schedule's drop is due by the clock before it is by epoch."""
    return (
        plan.schedule == "step"
        and plan.lr_drop_in_budget
        and plan.time_budget_s is not None
        and state.lr_dropped_at is None
        and elapsed_s >= 0.9 * plan.time_budget_s
    )


def _save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: FitState,
    best_weights: dict[str, torch.Tensor] | None,
    extra: dict[str, object] | None,
    average: _WeightAverage | None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "model": _cpu_state(model),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": state.epoch,
            "history": state.history,
            "best_value": state.best_value,
            "best_epoch": state.best_epoch,
            "lr_dropped_at": state.lr_dropped_at,
            "best_weights": best_weights,
            "plan": copy.copy(state.plan.__dict__),
            "extra": extra or {},
            "average": _cpu_dict(average.state) if average is not None else None,
            "average_updates": average.updates if average is not None else 0,
        },
        tmp,
    )
    tmp.replace(path)
