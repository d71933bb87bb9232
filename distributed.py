"""Process-group plumbing for `torchrun` (DistributedDataParallel): one process per GPU, or per CPU share.

Without torchrun (or with one process) nothing here starts a process group and every helper is the
identity, so a plain `python train.py` runs exactly as before. Under torchrun (`WORLD_SIZE` > 1) `start`
joins the group — NCCL on CUDA, gloo on the CPU — with `TIMEOUT` on every collective, so a rank that
hangs or vanishes ends the job with an error instead of a silent wait.

Ranks agree on everything that decides control flow (stop flags, skipped steps) through `all_max` and
`mean`; validation results are pooled with `gather`, so every rank computes the same metrics.
"""
import datetime
import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as differentiable

# Longest wait in any collective: long enough for rank 0 to write checkpoints and for an uneven
# label share to finish, short enough that a dead peer is reported within the hour.
TIMEOUT = datetime.timedelta(minutes=30)


def launched_world_size():
    """Processes torchrun started for this job (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start(device):
    """Join torchrun's process group when it started more than one process; returns this rank's device.

    `device` is the configured one (devices.resolve_device). On CUDA each process takes the GPU of its
    local rank; an explicit `cuda:N` cannot serve several processes and is refused.
    """
    if launched_world_size() == 1:
        return device
    if device.type == "cuda" and device.index is not None:
        raise ValueError(f"device {device} under torchrun: every process would use that one GPU; set "
                         "`device: cuda` and each process takes the GPU of its LOCAL_RANK")
    device = local_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                            device_id=device if device.type == "cuda" else None)
    return device


def local_device(device):
    """This process's device: cuda:LOCAL_RANK for a CUDA run under torchrun, else `device`."""
    if device.type == "cuda" and launched_world_size() > 1:
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {local_rank} but this machine has {torch.cuda.device_count()} "
                             "GPU(s); start at most that many processes per node (--nproc_per_node)")
        return torch.device("cuda", local_rank)
    return device


def stop():
    """Leave the process group at the end of the job (after an error the exit ends it: a broken NCCL
    group can hang in destroy)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main():
    """Rank 0 alone writes checkpoints, train.log, TensorBoard and figures."""
    return rank() == 0


def local_cores():
    """CPU cores for this process's own worker pools: the machine's share of each process on it."""
    return max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def barrier():
    if dist.is_initialized():
        dist.barrier()


def all_max(values):
    """The element-wise maximum of a list of ints over all ranks (e.g. stop flags: any rank's flag wins)."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.int64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def mean(tensor):
    """The mean over ranks of a (detached) tensor; the tensor itself in a single process."""
    if not dist.is_initialized():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total / world_size()


def share_of_global_count(count):
    """Loss denominator: the job's count of frames divided by the number of ranks (≥ 1 frame in all).

    A loss `sum over local frames / share_of_global_count(local frames)` averaged over ranks — which is
    what DDP does to gradients — is the sum over all frames divided by all frames: N processes × batch B
    then train exactly like 1 process × batch N·B.
    """
    if not dist.is_initialized():
        return torch.tensor(max(float(count), 1.0))
    total = torch.tensor(float(count), device=_collective_device())
    dist.all_reduce(total)
    return total.clamp(min=1.0) / world_size()


def gather(items):
    """Every rank's list of picklable items, concatenated in rank order, on every rank."""
    if not dist.is_initialized():
        return list(items)
    lists = [None] * world_size()
    dist.all_gather_object(lists, list(items))
    return [item for part in lists for item in part]


def _collective_device():
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


class CPUSyncBatchNorm(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole job's batch, for gloo on the CPU.

    torch.nn.SyncBatchNorm refuses CPU tensors. This one all-reduces per-channel sums and counts, then
    sums of centred squares, with a differentiable all-reduce (its backward all-reduces the gradient), so
    forward, backward and the running statistics equal BatchNorm2d on the concatenated batch. Same
    parameters and buffers as BatchNorm2d, hence the same state_dict.
    """

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        channels, shape = x.shape[1], (1, x.shape[1], 1, 1)
        x32 = x.float()
        count = torch.full((1,), float(x.numel() // channels), device=x.device)
        sums = differentiable.all_reduce(torch.cat([x32.sum((0, 2, 3)), count]))
        total = sums[-1]
        batch_mean = sums[:channels] / total
        centred = x32 - batch_mean.view(shape)  # two passes: no cancellation in E[x²] − E[x]²
        batch_var = differentiable.all_reduce((centred * centred).sum((0, 2, 3))) / total
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(batch_mean.detach(), momentum)
            self.running_var.lerp_(batch_var.detach() * total / (total - 1).clamp(min=1.0), momentum)
        out = centred * torch.rsqrt(batch_var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def convert_sync_batchnorm(model, device):
    """BatchNorm layers -> ones that normalise over the whole job's batch (in place of the old modules,
    keeping the same Parameter and buffer objects, so build the optimizer after this)."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            synced = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats)
            for key, value in list(child._parameters.items()) + list(child._buffers.items()):
                setattr(synced, key, value)
            synced.train(child.training)
            setattr(model, name, synced)
        else:
            convert_sync_batchnorm(child, device)
    return model


def wrap(model, device):
    """DistributedDataParallel around `model` in a process group; `model` itself otherwise.

    Checkpoints are taken from the unwrapped model, so they keep the plain (host) layout without `module.`.
    """
    if not dist.is_initialized():
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
