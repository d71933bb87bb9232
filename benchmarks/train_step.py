"""Training steps per second (batch 16 x 192 frames), LSTM and Transformer; CPU, and GPU fp32 vs AMP
(with peak GPU memory, and AMP with gradient checkpointing); then the end-to-end rate of the real trainer
(Trainer.train_step on loader batches: waveform crops, device-side augmentation and mel) from a pack and
from audio files, next to the bare model at the same batch, with samples/s.

    python benchmarks/train_step.py [--steps 5] [--batch 16] [--device all|cpu|cuda] [--quick]
                                    [--workers 2] [--end-to-end-only]
"""
import argparse
import contextlib
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config import load_config  # noqa: E402
from f0_labels import label_settings  # noqa: E402
from losses import jdc_loss  # noqa: E402
from model import build_model  # noqa: E402
from pack import build_pack  # noqa: E402
from trainer import Trainer  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Configs", "config.yml")


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


def endless(loader):
    for epoch in range(10**9):
        loader.sampler.set_epoch(epoch)
        yield from loader


def end_to_end_steps_per_second(source, kind, batch, steps, device, workers, amp_dtype):
    """Trainer.train_step per second on the real loader over `source` (pack or paths), augmentation on."""
    overrides = [f"device={device}", f"batch_size={batch}", f"num_workers={workers}", "epochs=1000",
                 f"model_params.sequence_model={kind}", "loss_params.lambda_vuv_candidates=[]",
                 "dataset_params.augmentation.enabled=true", "dataset_params.augmentation.noise_bank_seconds=20.0",
                 f"training.mixed_precision={str(amp_dtype is not None).lower()}",
                 f"training.amp_dtype={'bfloat16' if amp_dtype == torch.bfloat16 else 'float16'}"]
    with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stderr(open(os.devnull, "w")):
        trainer = Trainer(load_config(CONFIG, overrides), run_dir, {"train": source, "val": source})
        trainer.model.train()
        batches = endless(trainer.train_loader)
        for _ in range(1 + 2 * workers):  # warm-up: worker start-up, first allocations
            trainer.train_step(next(batches))
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(next(batches))
        if device != "cpu":
            torch.cuda.synchronize()
        return steps / (time.perf_counter() - start)


def end_to_end(args, device, steps):
    from dataloader import write_clips  # the benchmark corpus: WORLD renders of 2.5-3 s

    amp = torch.bfloat16 if device != "cpu" else None
    kind = "lstm"
    with tempfile.TemporaryDirectory() as folder:
        paths = write_clips(folder, 64)
        f0_params = load_config(CONFIG)["dataset_params"]["f0_params"]
        f0_params["pyworld"].update(algorithm="dio", d4c_threshold=0.0)  # labels fast: not what is timed
        labels = label_settings(f0_params)
        pack, _ = build_pack(paths, os.path.join(folder, "train.pack"), labels)
        bare = steps_per_second(kind, args.batch, steps=steps, device=device, amp_dtype=amp)
        print(f"end to end, {kind}, batch {args.batch} x 192, {args.workers} loader workers, {device}"
              f"{', amp bf16' if amp else ''}:")
        print(f"  bare model (random mels on the device): {bare:7.2f} steps/s  {bare * args.batch:8.0f} samples/s")
        for name, source in (("packed loader + device features", pack), ("file loader + device features", paths)):
            rate = end_to_end_steps_per_second(source, kind, args.batch, steps, device, args.workers, amp)
            print(f"  {name:38s} {rate:7.2f} steps/s  {rate * args.batch:8.0f} samples/s  "
                  f"({100 * rate / bare:.0f} % of bare)")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all")
    parser.add_argument("--quick", action="store_true", help="two steps each (CI smoke run)")
    parser.add_argument("--workers", type=int, default=2, help="loader workers of the end-to-end rate")
    parser.add_argument("--end-to-end-only", action="store_true", help="skip the bare-model tables")
    args = parser.parse_args()
    steps = 2 if args.quick else args.steps
    if not args.end_to_end_only:
        tables(args, steps)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    for device in ("cpu", "cuda") if args.device == "all" else (args.device,):
        if device == "cpu" or torch.cuda.is_available():
            end_to_end(args, device, steps if device == "cpu" else steps * 10)


def tables(args, steps):
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
