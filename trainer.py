"""One training run: masked JDC loss, validation with V/UV calibration, checkpoints, resume.

`Trainer(config, run_dir, data).fit()` — `config` is the validated dict from train.py and `data` the
labelled audio paths per split ({'train': [...], 'val': [...]}, see train.prepare_labels). The loop is
`fit`; everything it calls is a short method below it.
"""
import contextlib
import logging
import math
import os
import signal
import threading
import time
import warnings

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import distributed
from augment import build_augmenter
from devices import resolve_device
from features import float_wave, mel_from_padded, padded_samples
from losses import jdc_loss
from meldataset import MelDataset, build_dataloader, collate
from metrics import calibrate_vuv_threshold, pitch_metrics
from model import CheckpointError, build_model, load_checkpoint, nonfinite_tensors, save_checkpoint, voiced
from optimizers import build_optimizer, parameter_groups
from pack import Pack
from plots import f0_figure

log = logging.getLogger("pitchextractor")


class TrainingStopped(RuntimeError):
    """The run stopped early (signal or diverging loss); last.pth holds its state."""


def selection_key(metrics):
    """Sort key of "best": lower FFE wins, ties broken by higher RPA; a nan never beats a number."""
    ffe, rpa = metrics["FFE"], metrics["RPA"]
    return (math.inf if math.isnan(ffe) else ffe, math.inf if math.isnan(rpa) else -rpa)


def cpu_supports_bf16():
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 / AMX): without it torch emulates bf16,
    and an autocast LSTM step measured ~60x slower than fp32 (AVX2-only AMD EPYC, torch 2.11)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def amp_settings(training, device):
    """(autocast enabled, autocast dtype, GradScaler enabled) for this device and `training` block."""
    if device.type == "cuda":
        if not training["mixed_precision"]:
            return False, torch.float32, False
        if training["amp_dtype"] == "bfloat16":
            if not torch.cuda.is_bf16_supported():
                raise ValueError("training.amp_dtype: bfloat16 but this GPU lacks bfloat16; use float16")
            return True, torch.bfloat16, False  # bf16 has fp32's range: no loss scaling needed
        return True, torch.float16, True
    # CPU: fp32 unless asked; CPU autocast only supports bfloat16, and only pays where the CPU has it.
    if training["cpu_mixed_precision"] and not cpu_supports_bf16():
        log.warning("training.cpu_mixed_precision: this CPU has no native bfloat16; training in fp32")
        return False, torch.float32, False
    return training["cpu_mixed_precision"], torch.bfloat16, False


def cpu_training_threads(cores, num_workers, packed):
    """Torch threads for CPU training. Workers that decode audio files get a core each: OpenMP threads that
    share a core with a busy worker wait on each other. Workers that slice a pack barely work, and leaving
    them cores starves the step (benchmarks/train_step.py, 2 cores, 1 worker, batch 8: 0.15 steps/s on 1
    thread, 0.27 on 2, where the file loader goes 0.14 -> 0.11)."""
    return cores if packed else max(1, cores - num_workers)


class Trainer:
    def __init__(self, config, run_dir, data, resume_from=None):
        self.config, self.run_dir = config, run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.training, self.loss_params = config["training"], config["loss_params"]
        self.device = distributed.local_device(resolve_device(config["device"]))
        self.global_batch = config["batch_size"] * distributed.world_size()
        if self.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(cpu_training_threads(len(os.sched_getaffinity(0)), config["num_workers"],
                                                       isinstance(data["train"], Pack)))
        torch.manual_seed(config["seed"])
        self.train_loader, self.val_loader = (self._loader(data[split], train=split == "train")
                                              for split in ("train", "val"))
        self.model = build_model(config["model_params"]).to(self.device)
        if self.training["sync_batchnorm"] and distributed.world_size() > 1:
            self.model = distributed.convert_sync_batchnorm(self.model, self.device)
        self.model.set_gradient_checkpointing(self.training["gradient_checkpointing"],
                                              self.training["gradient_checkpointing_use_reentrant"])
        if config["optimizer_params"]["voicing_only"]:
            self.model.train_voicing_only()
        groups = parameter_groups(self.model, config["optimizer_params"]["f0_head_lr_scale"])
        self.optimizer, self.scheduler = build_optimizer(
            groups, config["optimizer_params"], config["epochs"], len(self.train_loader))
        self.amp, self.amp_dtype, use_scaler = amp_settings(self.training, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.epoch = self.batches_done = self.step = self.nonfinite_run = self.nonfinite_total = 0
        self.vuv_threshold = self.loss_params["vuv_initial_threshold"]
        self.best, self.metrics = None, {}
        self.stop_signal = None
        self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard")) if distributed.is_main() else None
        if resume_from:
            self._restore(load_checkpoint(resume_from), resume_from)
        elif config["pretrained_model"]:
            self._load_pretrained(config["pretrained_model"], config["load_only_params"])
        if self.training["channels_last"]:
            self.model.to(memory_format=torch.channels_last)
        self.net = distributed.wrap(self.model, self.device)  # trains; self.model is what is saved and evaluated
        if self.training["compile"]:
            self.net = torch.compile(self.net)
        self.augment = build_augmenter(config["dataset_params"]["augmentation"], self._babble_clips(),
                                       config["seed"], self.device)
        self.deadline = None

    def fit(self):
        """Train the remaining epochs; returns the best epoch's summary (metrics, threshold, path)."""
        budget = self.training["max_minutes"] * 60
        self.deadline = time.monotonic() + budget if budget > 0 else None
        with save_on_signals(self):
            for epoch in range(self.epoch, self.config["epochs"]):
                self.epoch = epoch
                train_loss = self.train_epoch(epoch)
                self.metrics = self.validate()
                finished = self.batches_done == 0  # else the time budget ended the epoch early
                self.epoch = epoch + finished
                self.log_epoch(epoch, train_loss, self.metrics)
                self.save_checkpoints(epoch, self.metrics)
                if not finished:
                    log.info("training.max_minutes = %g spent after %d batches of epoch %d; resume continues "
                             "from there", self.training["max_minutes"], self.batches_done, epoch + 1)
                    break
        if self.writer is not None:
            self.writer.close()
        return self.best

    # ------------------------------------------------------------------ data
    def _loader(self, paths, train):
        config = self.config
        pool = os.path.join(self.run_dir, "synthetic_pool") if train else None
        dataset = MelDataset(paths, config["dataset_params"], train=train, pool_dir=pool, seed=config["seed"])
        if train and distributed.world_size() > 1 and len(dataset) < self.global_batch:
            raise ValueError(f"{len(dataset)} training files for a global batch of {self.global_batch} "
                             f"(batch_size {config['batch_size']} × {distributed.world_size()} processes); "
                             "lower batch_size or start fewer processes")
        return build_dataloader(dataset, config["batch_size"], config["num_workers"], config["seed"], self.device,
                                config["dataset_params"]["dataloader"], rank=distributed.rank(),
                                world_size=distributed.world_size())

    def _babble_clips(self):
        """Training clips for the babble noise bank: a seeded draw, about noise_bank_seconds of audio."""
        dataset = self.train_loader.dataset
        wanted = self.config["dataset_params"]["augmentation"]["noise_bank_seconds"] * 24000
        clips, total = [], 0
        for index in np.random.default_rng(self.config["seed"]).permutation(len(dataset)):
            if total >= wanted:
                break
            clips.append(dataset.wave(int(index))[0])
            total += len(clips[-1])
        return clips

    def mels(self, batch, train=False):
        """The device-side feature step: waveform crops -> (augmented, when training) mels on self.device."""
        wave, valid = float_wave(batch["wave"].to(self.device, non_blocking=True)), batch["valid"].to(self.device)
        if train and self.augment is not None:
            wave = self.augment(wave, batch["seed"], padded_samples(valid.sum(1)))
        mel = mel_from_padded(wave, valid)[:, None]
        return mel.contiguous(memory_format=torch.channels_last) if self.training["channels_last"] else mel

    # ------------------------------------------------------------------ steps
    def train_epoch(self, epoch):
        self.model.train()
        if distributed.is_main():  # one rank renders a shared synthetic pool; the others then read it
            self.train_loader.dataset.prepare_epoch(epoch)
        distributed.barrier()
        self.train_loader.sampler.set_epoch(epoch, skip=self.batches_done * self.global_batch)
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.config['epochs']}", dynamic_ncols=True,
                   initial=self.batches_done, total=self.batches_done + len(self.train_loader),
                   disable=not distributed.is_main())
        losses = []
        for batch in bar:
            loss = self.train_step(batch)
            self.batches_done += 1
            if loss is not None:
                losses.append(loss)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            out_of_time, self.stop_signal = self._agree_on_stop()
            if out_of_time:
                return float(np.mean(losses)) if losses else math.nan  # batches_done marks where to resume
            if self.stop_signal is not None:
                self._save(os.path.join(self.run_dir, "last.pth"))
                raise TrainingStopped(f"stopped by signal {self.stop_signal}; resume with --resume "
                                      f"{os.path.join(self.run_dir, 'last.pth')}")
        self.batches_done = 0
        return float(np.mean(losses)) if losses else math.nan

    def _agree_on_stop(self):
        """(time budget spent, signal name or None), the same on every rank: a signal to any rank stops all
        of them after the same step, and the budget ends the epoch on all of them at once."""
        out_of_time = self.deadline is not None and time.monotonic() > self.deadline
        signum = signal.Signals[self.stop_signal].value if self.stop_signal else 0
        out_of_time, signum = distributed.all_max([int(out_of_time), signum])
        return bool(out_of_time), signal.Signals(signum).name if signum else None

    def train_step(self, batch):
        """One optimizer step; returns the loss, or None when a non-finite loss skipped the step."""
        mel = self.mels(batch, train=True)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        # A bad batch would also poison BatchNorm's running statistics: keep them to put back.
        buffers = [b.clone() for b in self.model.buffers()]
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            f0, logit = self.net(mel)
        loss, parts = jdc_loss(f0, logit, batch["f0"], batch["voiced"], batch["valid"],
                               self.loss_params["lambda_vuv"], self.loss_params["f0_loss"],
                               denominator=distributed.share_of_global_count, certain=batch["certain"])
        # The job's loss (the mean of the ranks' losses, each normalised by the global frame counts): every
        # rank sees the same value, so all of them skip a non-finite step together.
        job_loss, job_f0, job_vuv = distributed.mean(torch.stack([loss.detach(), parts["f0"], parts["vuv"]]))
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(job_loss):
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), buffers):
                    buffer.copy_(saved)
            return self._skip_nonfinite(job_loss)
        self.nonfinite_run = 0
        self.scaler.scale(loss).backward()
        if self.training["grad_clip"] > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.training["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        if self.writer is not None and self.step % 10 == 0:
            self.writer.add_scalar("train/loss", job_loss.item(), self.step)
            self.writer.add_scalar("train/loss_f0", job_f0.item(), self.step)
            self.writer.add_scalar("train/loss_vuv", job_vuv.item(), self.step)
            self.writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
        return job_loss.item()

    def _skip_nonfinite(self, loss):
        self.nonfinite_run += 1
        self.nonfinite_total += 1
        log.warning("non-finite loss (%s) at step %d: step skipped (%d in a row, %d in all)",
                    loss.item(), self.step, self.nonfinite_run, self.nonfinite_total)
        if self.writer is not None:
            self.writer.add_scalar("train/nonfinite_steps", self.nonfinite_total, self.step)
        if self.nonfinite_run >= self.training["max_nonfinite_steps"]:
            self._save(os.path.join(self.run_dir, "last.pth"))
            raise TrainingStopped(
                f"{self.nonfinite_run} consecutive non-finite losses: training diverged; lower "
                f"optimizer_params.lr, set training.grad_clip, or check the data for NaN audio")
        return None

    @torch.no_grad()
    def predict(self, mel):
        """(f0 Hz, voiced logit) for a batch of mels, in eval mode, on the CPU."""
        self.model.eval()
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            f0, logit = self.model(mel.to(self.device))
        return f0.float().cpu(), logit.float().cpu()

    def validate(self):
        """Losses and metrics on the validation set, at the V/UV threshold calibrated on it.

        Under torchrun each rank scores its share of the batches and the frames and batch losses of all
        ranks are pooled, so every rank gets the threshold and metrics of a single-process validation.
        """
        self.val_loader.sampler.set_epoch(0)
        frames, losses = [], []
        for batch in self.val_loader:
            f0, logit = self.predict(self.mels(batch))
            loss, parts = jdc_loss(f0, logit, batch["f0"], batch["voiced"], batch["valid"],
                                   self.loss_params["lambda_vuv"], self.loss_params["f0_loss"],
                                   certain=batch["certain"])
            losses.append([loss.item(), parts["f0"].item(), parts["vuv"].item()])
            valid = batch["valid"] & batch["certain"]  # uncertain labels are not scored
            frames.append((batch["f0"][valid], batch["voiced"][valid], f0[valid], torch.sigmoid(logit[valid])))
        frames, losses = distributed.gather(frames), distributed.gather(losses)
        ref_f0, ref_voiced, est_f0, prob = (torch.cat(x).numpy() for x in zip(*frames))
        self.vuv_threshold, _ = calibrate_vuv_threshold(
            prob, ref_voiced, self.loss_params["vuv_calibration_steps"], initial=self.vuv_threshold)
        metrics = pitch_metrics(ref_f0, est_f0, voiced(prob, self.vuv_threshold), ref_voiced)
        metrics.update(zip(("loss", "loss_f0", "loss_vuv"), np.mean(losses, axis=0).tolist()))
        metrics["vuv_threshold"] = self.vuv_threshold
        return {k: float(v) for k, v in metrics.items()}

    # ------------------------------------------------------------------ logging
    def log_epoch(self, epoch, train_loss, metrics):
        shown = ("loss", "RPA", "RCA", "GPE", "VUV_F1", "FFE", "MED_CENTS", "vuv_threshold")
        log.info("epoch %d: train loss %.4f | val %s", epoch + 1, train_loss,
                 " ".join(f"{k} {metrics[k]:.4g}" for k in shown))
        if self.writer is None:  # not rank 0
            return
        self.writer.add_scalar("train/epoch_loss", train_loss, epoch + 1)
        for key, value in metrics.items():
            self.writer.add_scalar(f"val/{key}", value, epoch + 1)
        if (epoch + 1) % self.training["plot_every"] == 0 or epoch + 1 == self.config["epochs"]:
            self.writer.add_figure("val/f0", self.plot_clips(), epoch + 1)

    def plot_clips(self):
        dataset = self.val_loader.dataset
        clips = []
        for index in range(min(self.training["plot_clips"], len(dataset))):
            item = dataset[index]
            f0, logit = self.predict(self.mels(collate([item])))
            clips.append({"title": os.path.basename(dataset.paths[index]), "f0": f0[0].numpy(),
                          "prob": torch.sigmoid(logit[0]).numpy(), "label": item[1].numpy()})
        return f0_figure(clips, self.vuv_threshold)

    # ------------------------------------------------------------------ checkpoints
    def _state(self):
        return {
            "net": self.model.state_dict(), "model_params": self.config["model_params"],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "batches_done": self.batches_done, "step": self.step,
            "global_batch": self.global_batch,
            "config": self.config, "vuv_threshold": float(self.vuv_threshold), "metrics": self.metrics,
            "best": self.best, "nonfinite_total": self.nonfinite_total, "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }

    def _save(self, path):
        """Rank 0 writes; every rank waits for it, so none can end the job before the file is complete.

        Weights holding a NaN or an infinity are never written: rank 0's (the ones it would write) are checked
        and every rank stops with it, so the checkpoints on disk keep the last finite state."""
        bad = nonfinite_tensors(self.model.state_dict()) if distributed.is_main() else []
        if distributed.all_max([int(bool(bad))])[0]:
            names = f" ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})" if bad else ""
            raise TrainingStopped(
                f"non-finite weights after step {self.step}{names}: training diverged; nothing was saved, so the "
                f"checkpoints in {self.run_dir} keep the last finite state. Lower optimizer_params.lr or set "
                "training.grad_clip")
        if distributed.is_main():
            save_checkpoint(self._state(), path)
        distributed.barrier()

    def save_checkpoints(self, epoch, metrics):
        self._save(os.path.join(self.run_dir, "last.pth"))
        if self._is_better(metrics):
            best_path = os.path.join(self.run_dir, "best.pth")
            self.best = {"epoch": epoch + 1, "vuv_threshold": float(self.vuv_threshold),
                         "checkpoint": best_path, **metrics}
            self._save(best_path)
        if (epoch + 1) % self.config["save_freq"] == 0:
            self._save(os.path.join(self.run_dir, f"epoch_{epoch + 1:05d}.pth"))

    def _is_better(self, metrics):
        return self.best is None or selection_key(metrics) < selection_key(self.best)

    def _restore(self, state, path):
        self.model.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batches_done, self.step = state["epoch"], state["batches_done"], state["step"]
        saved_batch = state.get("global_batch", self.global_batch)  # older checkpoints: one process
        if saved_batch == self.global_batch:
            self.scheduler.load_state_dict(state["scheduler"])
        else:
            self._continue_with_global_batch(saved_batch)
        self.vuv_threshold, self.metrics, self.best = state["vuv_threshold"], state["metrics"], state["best"]
        self.nonfinite_total = state["nonfinite_total"]
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        log.info("resumed from %s at epoch %d, batch %d, step %d", path, self.epoch + 1, self.batches_done,
                 self.step)

    def _continue_with_global_batch(self, saved_batch):
        """Resume a run saved with another global batch (another number of processes): skip the items its
        epoch has used and put the schedule where this run's own steps would be."""
        items = self.batches_done * saved_batch
        self.batches_done = items // self.global_batch
        if items % self.global_batch:
            log.warning("the saved run used %d items of epoch %d, not a multiple of the global batch %d: "
                        "%d of them are trained on again", items, self.epoch + 1, self.global_batch,
                        items % self.global_batch)
        self.scheduler.last_epoch = self.epoch * len(self.train_loader) + self.batches_done - 1
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": this only repositions it
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        log.info("resumed a run of global batch %d with global batch %d: %d items of epoch %d done, "
                 "schedule at step %d of %d", saved_batch, self.global_batch, items - items % self.global_batch,
                 self.epoch + 1, self.scheduler.last_epoch, self.config["epochs"] * len(self.train_loader))

    def _load_pretrained(self, path, only_params):
        """Start from one of our checkpoints or a host {'net': ...} file: load what matches, list the rest."""
        state = load_checkpoint(path)
        own = self.model.state_dict()
        matched = {k: v for k, v in state["net"].items() if k in own and own[k].shape == v.shape}
        if not matched:
            raise CheckpointError(f"pretrained_model {path}: none of its {len(state['net'])} tensors fits this "
                                  f"{self.config['model_params']['sequence_model']} model; use a checkpoint of the "
                                  "same kind of model, or set pretrained_model: \"\"")
        self.model.load_state_dict(matched, strict=False)
        missing = sorted(set(own) - set(matched))
        unused = sorted(set(state["net"]) - set(matched))
        log.info("pretrained %s: loaded %d/%d tensors", path, len(matched), len(own))
        if missing or unused:
            log.warning("pretrained %s: not loaded (kept initialised): %s; not used from the file: %s",
                        path, ", ".join(missing) or "none", ", ".join(unused) or "none")
        if "vuv_threshold" in state:
            self.vuv_threshold = float(state["vuv_threshold"])
        if not only_params and not missing and "optimizer" in state:
            self._restore(state, path)


@contextlib.contextmanager
def save_on_signals(trainer):
    """SIGINT/SIGTERM ask the trainer to finish its step, save last.pth and stop (see train_epoch)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, frame):
        trainer.stop_signal = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
