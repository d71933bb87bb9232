"""Training steps per second (batch 16 x 192 frames), LSTM and Transformer; CPU, and GPU fp32 vs AMP
(with peak GPU memory, and AMP with gradient checkpointing).

    python benchmarks/train_step.py [--steps 5] [--batch 16] [--device all|cpu|cuda] [--quick]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from losses import jdc_loss  # noqa: E402
from model import build_model  # noqa: E402


def steps_per_second(kind, batch=16, frames=192, steps=5, device="cpu", amp_dtype=None, checkpointing=False):
    """Full optimizer steps (forward, masked loss, backward, AdamW) per second on random data."""
    torch.manual_seed(0)
    model = build_model({"sequence_model": kind}).to(device).train()
    model.set_gradient_checkpointing(checkpointing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    mel = torch.randn(batch, 1, 80, frames, device=device)
    f0 = torch.rand(batch, frames, device=device) * 300 + 80
    voiced = torch.rand(batch, frames, device=device) > 0.3
    valid = torch.ones(batch, frames, dtype=torch.bool, device=device)

    def step():
        with torch.autocast(torch.device(device).type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            pred, logit = model(mel)
        loss, _ = jdc_loss(pred, logit, f0 * voiced, voiced, valid, 0.5, "l1_cents")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    step()  # warm-up
    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device != "cpu":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all")
    parser.add_argument("--quick", action="store_true", help="two steps each (CI smoke run)")
    args = parser.parse_args()
    steps = 2 if args.quick else args.steps
    if args.device in ("all", "cpu"):
        print(f"CPU, {torch.get_num_threads()} threads, batch {args.batch} x 192 frames")
        for kind in ("lstm", "transformer"):
            print(f"  {kind:12s} {steps_per_second(kind, args.batch, steps=steps):6.2f} steps/s")
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        print(f"GPU {torch.cuda.get_device_name()}, batch {args.batch} x 192 frames")
        rows = (("fp32", None, False), ("amp fp16", torch.float16, False), ("amp bf16", torch.bfloat16, False),
                ("amp fp16 + gradient checkpointing", torch.float16, True))
        for kind in ("lstm", "transformer"):
            for label, dtype, checkpointing in rows:
                rate = steps_per_second(kind, args.batch, steps=steps * 10, device="cuda", amp_dtype=dtype,
                                        checkpointing=checkpointing)
                peak = torch.cuda.max_memory_allocated() / 2**20
                print(f"  {kind:12s} {label:34s} {rate:7.1f} steps/s  peak {peak:7.0f} MiB")


if __name__ == "__main__":
    main()
