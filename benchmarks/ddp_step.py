"""DDP training steps per second (random data, no loader), plain or under torchrun:

    python benchmarks/ddp_step.py [--device cpu|cuda] [--batch 8] [--steps 10] [--sync-batchnorm]
    torchrun --standalone --nproc_per_node N benchmarks/ddp_step.py ...   (--batch is per process)

Rank 0 prints steps/s and items/s of the whole job; the step is the trainer's (DDP, globally normalised
masked loss, SyncBatchNorm when asked, AdamW).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import distributed  # noqa: E402
from devices import resolve_device  # noqa: E402
from losses import jdc_loss  # noqa: E402
from model import build_model  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8, help="per process")
    parser.add_argument("--frames", type=int, default=192)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--model", choices=("lstm", "transformer"), default="lstm")
    parser.add_argument("--sync-batchnorm", action="store_true")
    args = parser.parse_args()
    device = distributed.start(resolve_device(args.device))
    torch.manual_seed(0)
    model = build_model({"sequence_model": args.model}).to(device).train()
    if args.sync_batchnorm and distributed.world_size() > 1:
        model = distributed.convert_sync_batchnorm(model, device)
    net = distributed.wrap(model, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    generator = torch.Generator().manual_seed(distributed.rank())
    mel = torch.randn(args.batch, 1, 80, args.frames, generator=generator).to(device)
    f0 = (torch.rand(args.batch, args.frames, generator=generator) * 300 + 80).to(device)
    voiced = (torch.rand(args.batch, args.frames, generator=generator) > 0.3).to(device)
    valid = torch.ones(args.batch, args.frames, dtype=torch.bool, device=device)

    def step():
        pred, logit = net(mel)
        loss, _ = jdc_loss(pred, logit, f0 * voiced, voiced, valid, 0.5, "l1_cents",
                           denominator=distributed.share_of_global_count)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    distributed.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    distributed.barrier()
    rate = args.steps / (time.perf_counter() - start)
    if distributed.is_main():
        world = distributed.world_size()
        print(f"{world} process(es) x batch {args.batch} x {args.frames} frames ({args.model}, {device.type}, "
              f"{torch.get_num_threads()} threads each, sync_batchnorm {args.sync_batchnorm}): {rate:.2f} steps/s, "
              f"{rate * args.batch * world:.1f} items/s")
    distributed.stop()


if __name__ == "__main__":
    main()
