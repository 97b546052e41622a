"""The training engine on a one-weight regression: schedule, resume, best weights, DDP."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from activecad.training import Callback, FitPlan, FitState, fit, lr_at


class _Loss(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"total": ((self.model(x) - y) ** 2).mean()}


class Regression:
    """Learn y = 3 x from noisy draws; validation score = -|w - 3| (or a given sequence)."""

    def __init__(self, scores: list[float] | None = None):
        torch.manual_seed(0)
        self.model: nn.Module = nn.Linear(1, 1, bias=False)
        self.loss_module: nn.Module = _Loss(self.model)
        self.rng = np.random.default_rng(0)
        self.scores = scores
        self.validations = 0
        self.seeds: list[int] = []

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.seeds.append(seed)

    def start_epoch(self, epoch: int) -> None:
        pass

    def next_batch(self, device: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(self.rng.normal(size=(8, 1))).float()
        return x, 3 * x + 0.1 * torch.from_numpy(self.rng.normal(size=(8, 1))).float()

    def validate(self) -> dict[str, float]:
        self.validations += 1
        if self.scores is not None:
            return {"cpm": self.scores[self.validations - 1]}
        return {"cpm": -abs(float(self.model.weight.detach()) - 3.0)}


def test_step_schedule_drops_tenfold_for_the_last_tenth() -> None:
    # By hand: 20 epochs -> ceil(0.9 * 20) = 18, so epochs 18 and 19 (0-based) run at lr/10.
    plan = FitPlan(epochs=20, steps_per_epoch=5, lr=0.01)
    assert [lr_at(plan, e) for e in (0, 17, 18, 19)] == pytest.approx([0.01, 0.01, 0.001, 0.001])
    cosine = FitPlan(epochs=2, steps_per_epoch=5, lr=1.0, schedule="cosine")
    # Half-way through (step 5 of 10): 0.5 * (1 + cos(pi / 2)) = 0.5.
    assert lr_at(cosine, 1, 0) == pytest.approx(0.5)
    assert lr_at(cosine, 0, 0) == pytest.approx(1.0)
    # Kim et al.'s drops at 25/40 and 37/40 of 400 steps (40 epochs of 10): steps 0-249 at
    # lr, 250-369 at lr/10, 370-399 at lr/100.
    drops = FitPlan(epochs=40, steps_per_epoch=10, lr=1.0, schedule="drops",
                    lr_drops=(25 / 40, 37 / 40))  # fmt: skip
    assert [lr_at(drops, 24, 9), lr_at(drops, 25, 0), lr_at(drops, 36, 9), lr_at(drops, 37, 0)] == (
        pytest.approx([1.0, 0.1, 0.1, 0.01])
    )
    # MONAI's LUNA16 recipe: warm-up over 10 of 300 epochs, a tenfold drop half-way. With
    # 30 epochs of 10 steps: 10 warm-up steps at (k + 1) / 10 of the rate, then the rate,
    # then a tenth from step 150.
    recipe = FitPlan(epochs=30, steps_per_epoch=10, lr=1.0, schedule="drops",
                     lr_drops=(0.5,), warmup=10 / 300)  # fmt: skip
    assert [lr_at(recipe, 0, k) for k in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert [lr_at(recipe, 1, 0), lr_at(recipe, 14, 9), lr_at(recipe, 15, 0)] == (
        pytest.approx([1.0, 1.0, 0.1])
    )


class _SlowRegression(Regression):
    """Each epoch takes ``seconds`` on a fake clock (advanced as the epoch starts)."""

    def __init__(self, clock: list[float], seconds: float):
        super().__init__()
        self.clock, self.seconds = clock, seconds

    def start_epoch(self, epoch: int) -> None:
        self.clock[0] += self.seconds


def test_step_schedule_drops_when_the_time_budget_would_end_the_fit_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By hand: 20 epochs of 10 s under a 100 s budget. Epoch e (0-based) starts at
    10 (e + 1) s, so the first past 90 s is epoch 8, and the fit stops after epoch 10, the
    first to end past 100 s; the epoch rule alone would drop at epoch 18, never reached."""
    from activecad.training import engine

    clock = [0.0]
    monkeypatch.setattr(engine, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    plan = FitPlan(epochs=20, steps_per_epoch=2, lr=0.01, time_budget_s=100.0)
    result = fit(_SlowRegression(clock, 10.0), plan, checkpoint=tmp_path / "c.pt")
    assert result.stopped_early and result.epochs_done == 11
    assert [r["lr"] for r in result.history] == pytest.approx([0.01] * 8 + [0.001] * 3)
    # A resumed run keeps the drop.
    assert torch.load(tmp_path / "c.pt", weights_only=False)["lr_dropped_at"] == 8
    # Without a budget the epoch rule is the only one.
    untimed = fit(_SlowRegression(clock, 10.0), FitPlan(epochs=20, steps_per_epoch=2, lr=0.01))
    assert [r["lr"] for r in untimed.history].index(pytest.approx(0.001)) == 18


def test_fit_learns_and_resume_equals_an_unbroken_run(tmp_path: Path) -> None:
    plan = FitPlan(epochs=4, steps_per_epoch=20, lr=0.05, optimizer="sgd", schedule="constant")
    whole = fit(Regression(), plan, checkpoint=tmp_path / "a.pt")
    assert float(whole.model.weight.detach()) == pytest.approx(3.0, abs=0.1)

    first = FitPlan(epochs=2, steps_per_epoch=20, lr=0.05, optimizer="sgd", schedule="constant")
    fit(Regression(), first, checkpoint=tmp_path / "b.pt")
    resumed = fit(Regression(), plan, checkpoint=tmp_path / "b.pt", resume=True)
    assert resumed.epochs_done == 4 and len(resumed.history) == 4
    # Per-epoch reseeding: the resumed run drew the same batches, so the weights agree.
    assert torch.equal(resumed.model.weight, whole.model.weight)


def test_an_epoch_is_checkpointed_only_after_its_callbacks(tmp_path: Path) -> None:
    """A run stopped inside a callback resumes at that epoch, so what callbacks write of an
    epoch (MELD's per-epoch weights) is never skipped."""
    written: list[int] = []
    killed = []

    class Keep(Callback):
        def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
            if state.epoch == 2 and not killed:
                killed.append(True)
                raise KeyboardInterrupt  # killed while writing epoch 2's file
            written.append(state.epoch)

    plan = FitPlan(epochs=3, steps_per_epoch=2, lr=0.05, optimizer="sgd", schedule="constant")
    with pytest.raises(KeyboardInterrupt):
        fit(Regression(), plan, checkpoint=tmp_path / "c.pt", callbacks=[Keep()])
    assert written == [1]
    fit(Regression(), plan, checkpoint=tmp_path / "c.pt", resume=True, callbacks=[Keep()])
    assert written == [1, 2, 3]


def test_the_best_validation_weights_are_kept(tmp_path: Path) -> None:
    weights: list[float] = []

    class Record(Callback):
        def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
            weights.append(float(state.model.weight.detach()))

    task = Regression(scores=[0.1, 0.9, 0.5])
    plan = FitPlan(epochs=3, steps_per_epoch=3, lr=0.05, optimizer="sgd", schedule="constant")
    result = fit(task, plan, callbacks=[Record()])
    assert (result.best_epoch, result.best_value) == (2, pytest.approx(0.9))
    assert float(result.model.weight.detach()) == pytest.approx(weights[1])
    assert weights[1] != weights[2]


def test_fine_tuning_starts_from_the_given_weights() -> None:
    task = Regression()
    with torch.no_grad():
        task.model.weight.fill_(2.5)
    seen: list[float] = []

    class First(Callback):
        def on_fit_start(self, state: FitState) -> None:
            seen.append(float(state.model.weight.detach()))

    fit(task, FitPlan(epochs=1, steps_per_epoch=1, lr=1e-3), callbacks=[First()])
    assert seen == [2.5]


class _WeightTrail(Callback):
    """The trained weight at the start and after every step, and what each epoch end sees."""

    def __init__(self) -> None:
        self.trained: list[float] = []
        self.seen: list[float] = []

    def on_fit_start(self, state: FitState) -> None:
        self.trained.append(float(state.model.weight.detach()))

    def on_step_end(self, state: FitState, losses: dict[str, float]) -> None:
        self.trained.append(float(state.model.weight.detach()))

    def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
        self.seen.append(float(state.model.weight.detach()))

    def averages(self, decay: float) -> list[float]:
        """By hand: a_0 = w_0; after step n, a_n = d_n a_(n-1) + (1 - d_n) w_n with
        d_n = min(decay, (1 + n) / (10 + n))."""
        average, out = self.trained[0], []
        for n, weight in enumerate(self.trained[1:], 1):
            d = min(decay, (1 + n) / (10 + n))
            average = d * average + (1 - d) * weight
            out.append(average)
        return out


def test_weight_average_by_hand_is_what_validation_and_the_result_see(tmp_path: Path) -> None:
    trail = _WeightTrail()
    task = Regression(scores=[0.5, 0.4])  # the first epoch stays the best
    plan = FitPlan(
        epochs=2, steps_per_epoch=5, lr=0.05, optimizer="sgd", schedule="constant", ema_decay=0.8
    )
    result = fit(task, plan, callbacks=[trail], checkpoint=tmp_path / "a.pt")
    by_hand = trail.averages(0.8)
    assert trail.seen == pytest.approx([by_hand[4], by_hand[9]], abs=1e-6)
    assert trail.seen[1] != pytest.approx(trail.trained[10], abs=1e-3)  # not the weights
    # The result is the best epoch's average; training went on from the trained weights.
    assert float(result.model.weight.detach()) == pytest.approx(by_hand[4], abs=1e-6)

    first = FitPlan(**{**plan.__dict__, "epochs": 1})
    fit(Regression(scores=[0.5]), first, checkpoint=tmp_path / "b.pt")
    # Resumed after epoch 1, the average goes on from the saved one (its second
    # validation, 0.4, stays below the first's 0.5, so epoch 1's average is kept).
    resumed = fit(Regression(scores=[0.4]), plan, checkpoint=tmp_path / "b.pt", resume=True)
    saved = torch.load(tmp_path / "b.pt", weights_only=False)
    assert saved["average_updates"] == 10
    assert float(saved["average"]["weight"]) == pytest.approx(by_hand[9], abs=1e-6)
    assert float(resumed.model.weight.detach()) == pytest.approx(by_hand[4], abs=1e-6)


def test_without_validation_the_result_is_the_average() -> None:
    task = Regression()
    task.validate = lambda: {}  # type: ignore[method-assign]
    trail = _WeightTrail()
    # decay 0.5 is never reached in 4 steps: (1 + n) / (10 + n) < 0.5 for n < 8.
    plan = FitPlan(epochs=1, steps_per_epoch=4, lr=0.05, optimizer="sgd", ema_decay=0.5)
    result = fit(task, plan, callbacks=[trail])
    assert float(result.model.weight.detach()) == pytest.approx(trail.averages(0.5)[-1], abs=1e-6)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    from activecad.training import distributed

    torch.set_num_threads(1)
    distributed.setup("cpu")
    task = Regression()
    plan = FitPlan(epochs=2, steps_per_epoch=5, lr=0.05, optimizer="sgd", schedule="constant")
    fit(task, plan, checkpoint=Path(out) / f"checkpoint-{rank}.pt")
    torch.save({"weight": task.model.weight.detach(), "seeds": task.seeds}, f"{out}/rank{rank}.pt")
    distributed.teardown()


def test_two_gloo_processes_keep_identical_weights_and_only_rank_0_writes(
    tmp_path: Path,
) -> None:
    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["weight"], r1["weight"])
    assert set(r0["seeds"]).isdisjoint(r1["seeds"])  # each rank draws its own batches
    assert (tmp_path / "checkpoint-0.pt").is_file()
    assert not (tmp_path / "checkpoint-1.pt").exists()
