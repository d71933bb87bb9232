"""How it is optimised: AdamW plus a learning-rate schedule, built from config `optimizer_params`.

The scheduler is stepped once per optimizer step (not per epoch), so every schedule spans
epochs · steps_per_epoch steps. Both objects' state_dict()s restore a run exactly: rebuild with the same
config, load the optimizer state, then the scheduler state.

Parameter groups may carry an `lr_scale`: that group learns at lr · lr_scale under every schedule. The model's
F0 head uses it (parameter_groups): it maps LSTM features bounded to [-1, 1] to Hz, so the highest F0 it can
output is |bias| + Σ|w|, and AdamW moves each weight by at most about lr per step. At a fine-tuning lr of
1e-4, widening that ceiling from ~420 Hz to 1000 Hz (+1.1 on each of 512 weights) takes at least ~10,000
steps; f0_head_lr_scale divides that bound (what it bought in practice: pretrained/README.md).
"""
import math

import torch

SCHEDULERS = ("onecycle", "cosine", "constant")


def parameter_groups(model, f0_head_lr_scale):
    """The model's trainable parameters (those that require gradients) as optimizer groups: with
    f0_head_lr_scale != 1 and the F0 head (`classifier`) trainable, the head in a group of its own with that
    lr_scale. Otherwise one group, as runs saved before the option had."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    head = {id(p) for p in model.classifier.parameters() if p.requires_grad}
    if f0_head_lr_scale == 1 or not head:
        return [{"params": trainable, "lr_scale": 1.0}]
    return [{"params": [p for p in trainable if id(p) not in head], "lr_scale": 1.0},
            {"params": [p for p in trainable if id(p) in head], "lr_scale": float(f0_head_lr_scale)}]


def group_lr_scales(optimizer_state):
    """The lr_scale of each group of an optimizer state_dict (1 where a group has none)."""
    return [group.get("lr_scale", 1.0) for group in optimizer_state["param_groups"]]


def build_optimizer(groups, optimizer_params, epochs, steps_per_epoch):
    """AdamW(lr, weight_decay, betas, eps from optimizer_params) over `groups` (parameter_groups, or plain
    parameters: one group) and the scheduler named by optimizer_params['scheduler']. Returns (optimizer,
    scheduler)."""
    name = optimizer_params["scheduler"]
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler '{name}', expected one of {SCHEDULERS}")
    groups = list(groups)
    if not all(isinstance(group, dict) for group in groups):
        groups = [{"params": groups, "lr_scale": 1.0}]
    peak_lrs = [optimizer_params["lr"] * group["lr_scale"] for group in groups]
    optimizer = torch.optim.AdamW(
        [{**group, "lr": lr} for group, lr in zip(groups, peak_lrs)],
        lr=optimizer_params["lr"],
        weight_decay=optimizer_params["weight_decay"],
        betas=tuple(optimizer_params["betas"]),
        eps=optimizer_params["eps"],
    )
    total_steps = epochs * steps_per_epoch
    if name == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=peak_lrs,
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
        min_lr_ratio = optimizer_params["min_lr"] / optimizer_params["lr"]  # the same ratio for every group
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
