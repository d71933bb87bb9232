"""How it is optimised: AdamW plus a learning-rate schedule, built from config `optimizer_params`.

The scheduler is stepped once per optimizer step (not per epoch), so every schedule spans
epochs · steps_per_epoch steps. Both objects' state_dict()s restore a run exactly: rebuild with the same
config, load the optimizer state, then the scheduler state.
"""
import math

import torch

SCHEDULERS = ("onecycle", "cosine", "constant")


def build_optimizer(parameters, optimizer_params, epochs, steps_per_epoch):
    """AdamW(lr, weight_decay, betas, eps from optimizer_params) and the scheduler named by
    optimizer_params['scheduler']. Returns (optimizer, scheduler)."""
    name = optimizer_params["scheduler"]
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler '{name}', expected one of {SCHEDULERS}")
    optimizer = torch.optim.AdamW(
        parameters,
        lr=optimizer_params["lr"],
        weight_decay=optimizer_params["weight_decay"],
        betas=tuple(optimizer_params["betas"]),
        eps=optimizer_params["eps"],
    )
    total_steps = epochs * steps_per_epoch
    if name == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=optimizer_params["lr"],
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            pct_start=optimizer_params["pct_start"],
            div_factor=optimizer_params["div_factor"],
            final_div_factor=optimizer_params["final_div_factor"],
            # Upstream left this at torch's default, which silently overrides beta1 with a 0.85..0.95 cycle;
            # off, the configured betas are the betas used.
            cycle_momentum=False,
        )
    elif name == "cosine":
        warmup_steps = round(optimizer_params["warmup_pct"] * total_steps)
        min_lr_ratio = optimizer_params["min_lr"] / optimizer_params["lr"]
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_lr_factor(step, total_steps, warmup_steps, min_lr_ratio)
        )
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return optimizer, scheduler


def cosine_lr_factor(step, total_steps, warmup_steps, min_lr_ratio):
    """Multiplier of lr at optimizer step `step` (0-based): a linear ramp over the warm-up steps up to 1 at step
    warmup_steps, then cosine decay to min_lr_ratio at the last step (total_steps − 1), and staying there."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(total_steps - 1 - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
