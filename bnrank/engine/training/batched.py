"""Several candidates of one architecture trained together in one vmapped network (torch.func)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence

import torch
from torch import nn

from bnrank.engine.errors import TrainingError
from bnrank.engine.training.precision import autocast
from bnrank.engine.training.trainer import Trainer


def _signature(model: nn.Module) -> tuple:
    return tuple((n, tuple(p.shape), p.requires_grad) for n, p in model.named_parameters()) + tuple(
        (n, tuple(b.shape)) for n, b in model.named_buffers()
    )


def can_train_together(trainers: Sequence[Trainer]) -> bool:
    """Same network layout, same trainable set, same config and step, no regulariser: one stacked run fits."""
    first = trainers[0]
    return all(
        t.config == first.config
        and t.step == first.step
        and t.regulariser is None
        and _signature(t.model) == _signature(first.model)
        for t in trainers
    )


def train_together(trainers: Sequence[Trainer], until: int | None = None) -> dict[int, TrainingError]:
    """Advance several candidates of one architecture in one vmapped network (torch.func), up to step ``until``.

    Every trainer sees the same patches at the same steps anyway, so one batch feeds all of them; their weights,
    buffers and Adam states are stacked along a new leading axis, the forward pass is ``vmap`` over
    ``functional_call``, and each candidate's DiceCE is summed, so each gets exactly its own gradient (Adam is
    element-wise, so the stacked optimiser is each candidate's own). Validation, patience and curves stay each
    trainer's: weights are copied back before a validation and at the end, with the optimiser states, so a
    trainer can go on alone afterwards. Returns the trainers (by index) whose loss went non-finite: they are
    stopped and the others go on.
    """
    from torch.func import functional_call, stack_module_state, vmap

    if not can_train_together(trainers):
        raise TrainingError("these candidates cannot be trained together (different layouts, configs or steps)")
    first, config = trainers[0], trainers[0].config
    until = config.max_steps if until is None else min(until, config.max_steps)
    models = [t.model for t in trainers]
    params, buffers = stack_module_state(models)
    trainable = [n for n, p in models[0].named_parameters() if p.requires_grad]
    for name, p in params.items():
        p.requires_grad_(name in trainable)
    optimiser = torch.optim.Adam([params[n] for n in trainable], lr=config.lr, weight_decay=config.weight_decay)
    named = [dict(m.named_parameters()) for m in models]
    states = [[t.optimiser.state.get(named[i][n]) for i, t in enumerate(trainers)] for n in trainable]
    for n, per in zip(trainable, states, strict=True):
        if all(per):
            optimiser.state[params[n]] = {
                k: torch.stack([s[k] for s in per]) if k != "step" else per[0][k].clone() for k in per[0]
            }
    base = copy.deepcopy(models[0]).to("meta")

    def forward(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (x,))

    stacked_forward = vmap(forward, in_dims=(0, 0, None), randomness="different")
    active = [not t.stopped_early for t in trainers]
    failed: dict[int, TrainingError] = {}

    def sync() -> None:
        with torch.no_grad():
            for i, m in enumerate(models):
                if not active[i]:
                    continue
                for n, p in m.named_parameters():
                    p.copy_(params[n][i])
                for n, b in m.named_buffers():
                    b.copy_(buffers[n][i])

    started, step = time.perf_counter(), first.step
    try:
        while step < until and any(active):
            step += 1
            x, y = first.schedule.next_batch()
            for t in trainers[1:]:  # identical schedules: keep theirs where it would be, without drawing again
                t.schedule.rng.bit_generator.state = first.schedule.rng.bit_generator.state
            x, y = x.to(first.device, non_blocking=True), y.to(first.device)
            with autocast(config):
                logits = stacked_forward(params, buffers, x)
            losses, total = [], None
            for i, t in enumerate(trainers):
                if not active[i]:
                    losses.append(float("nan"))
                    continue
                t.step = step
                loss = t.loss_fn(logits[i].float(), y)
                value = float(loss.detach())
                if not math.isfinite(value):
                    failed[i] = TrainingError(
                        f"{t.label + ': ' if t.label else ''}loss became {value} at step {t.step}"
                    )
                    active[i] = False
                    continue
                losses.append(value)
                total = loss if total is None else total + loss
            if total is not None:
                optimiser.zero_grad(set_to_none=True)
                total.backward()
                optimiser.step()
            if any(active[i] and t.validates_at(t.step) for i, t in enumerate(trainers)):
                sync()
            elapsed = (time.perf_counter() - started) / len(trainers)
            for i, t in enumerate(trainers):
                if active[i]:
                    t._after_step(losses[i], time.perf_counter() - elapsed)
                    if t.stopped_early:
                        active[i] = False
    finally:
        sync()  # those still active; one stopped early was synced at the validation that stopped it
        share = (time.perf_counter() - started) / len(trainers)
        for i, t in enumerate(trainers):
            t.seconds += share
            if not active[i]:
                continue
            p_of = named[i]
            for n in trainable:
                state = optimiser.state.get(params[n])
                if state:
                    t.optimiser.state[p_of[n]] = {
                        k: (v[i].clone() if k != "step" else v.clone()) for k, v in state.items()
                    }
    return failed
