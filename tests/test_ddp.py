"""Multi-process training: real `torchrun` jobs of 2 CPU processes (gloo) on the tiny corpus."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from config import load_config
from conftest import tiny_config
from meldataset import SeededSampler
from model import build_model
from train import prepare_labels
from trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_KEYS = os.path.join(REPO, "tests", "data", "jdcnet_state_dict.json")
STEPS_PER_EPOCH = 3  # 6 training clips in global batches of 2

if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("this torch build has no gloo backend for torch.distributed", allow_module_level=True)


def ddp_config(tmp_path, **sections):
    """The tiny config with 1 item per process (global batch 2), dropout off, SyncBatchNorm on."""
    training = {"sync_batchnorm": True, "plot_every": 1, "plot_clips": 2, **sections.pop("training", {})}
    return tiny_config(tmp_path, batch_size=1, training=training, **sections)


def start_torchrun(config_path, cwd):
    """`torchrun --standalone --nproc_per_node 2 train.py --config_path ...`, output merged on a pipe."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(REPO, "train.py"), "--config_path", config_path]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_until(job, text, seconds=240):
    """The job's output up to the first line containing `text` (fails if the job ends or time runs out)."""
    deadline, lines = time.monotonic() + seconds, []
    while time.monotonic() < deadline:
        line = job.stdout.readline()
        if not line:
            pytest.fail(f"the job ended before printing {text!r}:\n{''.join(lines)}")
        lines.append(line)
        if text in line:
            return "".join(lines)
    job.kill()
    pytest.fail(f"no {text!r} within {seconds} s:\n{''.join(lines)}")


def worker_pid(job, rank):
    """The pid of the torchrun worker process of `rank` (a child of the torchrun process)."""
    children = []
    for task in os.listdir(f"/proc/{job.pid}/task"):
        with open(f"/proc/{job.pid}/task/{task}/children") as f:
            children += [int(pid) for pid in f.read().split()]
    for pid in children:
        with open(f"/proc/{pid}/environ", "rb") as f:
            if f"RANK={rank}".encode() in f.read().split(b"\0"):
                return pid
    raise AssertionError(f"no worker of rank {rank} among {children}")


def finish(job, seconds=120):
    """(return code, remaining output) of a job that must end by itself within `seconds`."""
    try:
        output, _ = job.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        job.kill()
        pytest.fail(f"the job did not end within {seconds} s: a rank hangs")
    return job.returncode, output


def test_sampler_shards_one_global_order_whatever_the_world_size():
    single = list(SeededSampler(11, True, 5, batch_size=4, whole_batches=True))
    shards = [list(SeededSampler(11, True, 5, batch_size=2, rank=r, world_size=2, whole_batches=True))
              for r in range(2)]
    assert len(single) == 8 and [len(s) for s in shards] == [4, 4]  # the incomplete global batch is left out
    for batch in range(2):  # global batch b = one process's batch b of 4 (indices and item seeds)
        assert single[4 * batch: 4 * batch + 4] == shards[0][2 * batch: 2 * batch + 2] + shards[1][2 * batch: 2 * batch + 2]
    # validation: every item exactly once over the ranks, in whole batches
    parts = [list(SeededSampler(11, False, 5, batch_size=2, rank=r, world_size=3)) for r in range(3)]
    assert sorted(index for part in parts for index, _ in part) == list(range(11))
    assert [len(p) for p in parts] == [4, 4, 3]
    # resume on 1 process after one global batch of the 2-process run: the same remaining items
    resumed = SeededSampler(11, True, 5, batch_size=4, whole_batches=True)
    resumed.set_epoch(0, skip=4)
    assert list(resumed) == single[4:8] and len(resumed) == 4


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason=f"needs 2 CUDA GPUs (NCCL); this machine has {torch.cuda.device_count()}"))])
def test_two_processes_train_like_one_with_the_global_batch(tmp_path, device):
    # Adam's first steps move every weight by ±lr whatever the size of its gradient, so a gradient of
    # ~1e-9 whose float rounding differs (an all-reduce adds in another order) could flip a weight by
    # 2·lr; eps = 1 makes the step proportional to the gradient and the comparison one of gradients.
    path = ddp_config(tmp_path, epochs=1, device=device, optimizer_params={"lr": 0.1, "eps": 1.0},
                      training={"mixed_precision": False})
    returncode, output = finish(start_torchrun(path, str(tmp_path)), seconds=300)
    assert returncode == 0, output
    config = load_config(path)
    run = config["log_dir"]
    assert sorted(os.listdir(run)) == ["best.pth", "config.yml", "epoch_00001.pth", "last.pth", "tensorboard",
                                       "train.log"]
    assert len(os.listdir(os.path.join(run, "tensorboard"))) == 1  # one events file: rank 0's
    with open(os.path.join(run, "train.log")) as f:
        assert f.read().count("epoch 1: train loss") == 1
    state = torch.load(os.path.join(run, "last.pth"), map_location="cpu", weights_only=True)
    assert (state["epoch"], state["step"], state["global_batch"]) == (1, STEPS_PER_EPOCH, 2)

    # the checkpoint is the hosts' plain layout: no `module.` prefix, strict load
    with open(HOST_KEYS) as f:
        assert {k: list(v.shape) for k, v in state["net"].items()} == json.load(f)
    build_model({"sequence_model": "lstm"}).load_state_dict(state["net"], strict=True)

    # the shared validation equals one process validating the same weights (same batch_size)
    data = prepare_labels(config)
    one = Trainer(config, str(tmp_path / "one"), data)
    one.model.load_state_dict(state["net"])
    metrics = one.validate()
    assert metrics["vuv_threshold"] == state["vuv_threshold"] and metrics["N_FRAMES"] == state["metrics"]["N_FRAMES"]
    assert metrics == pytest.approx(state["metrics"], rel=1e-5, abs=1e-6)

    # one process with the global batch (2) on the same data trains to the same weights
    config["batch_size"] = 2
    single = Trainer(config, str(tmp_path / "single"), data)
    initial = {k: v.clone() for k, v in single.model.state_dict().items()}
    single.train_epoch(0)
    for key, value in single.model.state_dict().items():
        assert torch.allclose(state["net"][key].float(), value.float().cpu(), atol=1e-4, rtol=0), key
    moved = max((single.model.state_dict()[k].float() - initial[k].float()).abs().max().item() for k in initial)
    assert moved > 1e-3  # it trained: the equality is not that of two untouched models


def test_sigterm_to_one_rank_stops_both_and_one_process_resumes(tmp_path):
    path = ddp_config(tmp_path, epochs=50, save_freq=50, training={"plot_every": 50})
    job = start_torchrun(path, str(tmp_path))
    output = read_until(job, "epoch 1: train loss")  # both ranks are in the training loop
    os.kill(worker_pid(job, rank=1), signal.SIGTERM)
    returncode, rest = finish(job)
    output += rest
    assert returncode != 0
    # rank 1 stopped through the signal path, and rank 0 with it: not by a broken collective. (Rank 0's own
    # message may be cut short: torchrun ends the remaining ranks once one has exited.)
    assert "rank 1: stopped by signal SIGTERM" in output and "Connection closed" not in output, output
    run = load_config(path)["log_dir"]
    assert not [f for f in os.listdir(run) if f.endswith(".tmp")]
    state = torch.load(os.path.join(run, "last.pth"), map_location="cpu", weights_only=True)
    # saved at the stop, in epoch 2 or later (not by the end of epoch 1), at a step both ranks had done
    assert state["step"] == STEPS_PER_EPOCH * state["epoch"] + state["batches_done"] > STEPS_PER_EPOCH

    # continue in one process (global batch 1): the rest of that epoch, then stop
    config = load_config(path)
    config["epochs"] = state["epoch"] + 1
    resumed = Trainer(config, run, prepare_labels(config), resume_from=os.path.join(run, "last.pth"))
    assert (resumed.epoch, resumed.batches_done, resumed.step) == (state["epoch"], 2 * state["batches_done"],
                                                                  state["step"])
    resumed.fit()
    remaining = 2 * (STEPS_PER_EPOCH - state["batches_done"])  # its items, one per step
    assert resumed.step == state["step"] + remaining
    assert resumed.scheduler.last_epoch == config["epochs"] * 2 * STEPS_PER_EPOCH  # the schedule ran to its end
    after = torch.load(os.path.join(run, "last.pth"), map_location="cpu", weights_only=True)
    assert (after["epoch"], after["batches_done"], after["global_batch"]) == (config["epochs"], 0, 1)


def test_a_killed_rank_ends_the_job_with_a_message(tmp_path):
    job = start_torchrun(ddp_config(tmp_path, epochs=50, training={"plot_every": 50}), str(tmp_path))
    read_until(job, "epoch 1: train loss")
    os.kill(worker_pid(job, rank=1), signal.SIGKILL)
    returncode, output = finish(job)
    assert returncode != 0
    assert "rank: 1" in output and "SIGKILL" in output, output
