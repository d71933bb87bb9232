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

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from devices import resolve_device
from losses import jdc_loss
from meldataset import MelDataset, build_dataloader
from metrics import calibrate_vuv_threshold, pitch_metrics
from model import build_model, load_checkpoint, save_checkpoint, voiced
from optimizers import build_optimizer
from plots import f0_figure

log = logging.getLogger("pitchextractor")


class TrainingStopped(RuntimeError):
    """The run stopped early (signal or diverging loss); last.pth holds its state."""


def selection_key(metrics):
    """Sort key of "best": lower FFE wins, ties broken by higher RPA; a nan never beats a number."""
    ffe, rpa = metrics["FFE"], metrics["RPA"]
    return (math.inf if math.isnan(ffe) else ffe, math.inf if math.isnan(rpa) else -rpa)


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
    # CPU: fp32 unless asked; CPU autocast only supports bfloat16.
    return training["cpu_mixed_precision"], torch.bfloat16, False


class Trainer:
    def __init__(self, config, run_dir, data, resume_from=None):
        self.config, self.run_dir = config, run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.training, self.loss_params = config["training"], config["loss_params"]
        self.device = resolve_device(config["device"])
        if self.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # Leave a core to each loader worker: OpenMP threads that share a core with a busy
            # worker wait on each other, and a 2-thread step then runs several times slower.
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) - config["num_workers"]))
        torch.manual_seed(config["seed"])
        self.train_loader, self.val_loader = (self._loader(data[split], train=split == "train")
                                              for split in ("train", "val"))
        self.model = build_model(config["model_params"]).to(self.device)
        self.model.set_gradient_checkpointing(self.training["gradient_checkpointing"],
                                              self.training["gradient_checkpointing_use_reentrant"])
        self.optimizer, self.scheduler = build_optimizer(
            self.model.parameters(), config["optimizer_params"], config["epochs"], len(self.train_loader))
        self.amp, self.amp_dtype, use_scaler = amp_settings(self.training, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.epoch = self.batches_done = self.step = self.nonfinite_run = self.nonfinite_total = 0
        self.vuv_threshold = self.loss_params["vuv_initial_threshold"]
        self.best, self.metrics = None, {}
        self.stop_signal = None
        self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"))
        if resume_from:
            self._restore(load_checkpoint(resume_from), resume_from)
        elif config["pretrained_model"]:
            self._load_pretrained(config["pretrained_model"], config["load_only_params"])
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
        self.writer.close()
        return self.best

    # ------------------------------------------------------------------ data
    def _loader(self, paths, train):
        config = self.config
        dataset = MelDataset(paths, config["dataset_params"], train=train)
        return build_dataloader(dataset, config["batch_size"], config["num_workers"], config["seed"], self.device,
                                config["dataset_params"]["dataloader"])

    # ------------------------------------------------------------------ steps
    def train_epoch(self, epoch):
        self.model.train()
        batch_size = self.config["batch_size"]
        self.train_loader.sampler.set_epoch(epoch, skip=self.batches_done * batch_size)
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.config['epochs']}", dynamic_ncols=True,
                   initial=self.batches_done, total=self.batches_done + len(self.train_loader))
        losses = []
        for batch in bar:
            loss = self.train_step(batch)
            self.batches_done += 1
            if loss is not None:
                losses.append(loss)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if self.deadline is not None and time.monotonic() > self.deadline:
                return float(np.mean(losses)) if losses else math.nan  # batches_done marks where to resume
            if self.stop_signal is not None:
                self._save(os.path.join(self.run_dir, "last.pth"))
                raise TrainingStopped(f"stopped by signal {self.stop_signal}; resume with --resume "
                                      f"{os.path.join(self.run_dir, 'last.pth')}")
        self.batches_done = 0
        return float(np.mean(losses)) if losses else math.nan

    def train_step(self, batch):
        """One optimizer step; returns the loss, or None when a non-finite loss skipped the step."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        # A bad batch would also poison BatchNorm's running statistics: keep them to put back.
        buffers = [b.clone() for b in self.model.buffers()]
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            f0, logit = self.model(batch["mel"])
        loss, parts = jdc_loss(f0, logit, batch["f0"], batch["voiced"], batch["valid"],
                               self.loss_params["lambda_vuv"], self.loss_params["f0_loss"])
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), buffers):
                    buffer.copy_(saved)
            return self._skip_nonfinite(loss)
        self.nonfinite_run = 0
        self.scaler.scale(loss).backward()
        if self.training["grad_clip"] > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.training["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        if self.step % 10 == 0:
            self.writer.add_scalar("train/loss", loss.item(), self.step)
            self.writer.add_scalar("train/loss_f0", parts["f0"].item(), self.step)
            self.writer.add_scalar("train/loss_vuv", parts["vuv"].item(), self.step)
            self.writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
        return loss.item()

    def _skip_nonfinite(self, loss):
        self.nonfinite_run += 1
        self.nonfinite_total += 1
        log.warning("non-finite loss (%s) at step %d: step skipped (%d in a row, %d in all)",
                    loss.item(), self.step, self.nonfinite_run, self.nonfinite_total)
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
        """Losses and metrics on the validation set, at the V/UV threshold calibrated on it."""
        self.val_loader.sampler.set_epoch(0)
        frames, losses = [], []
        for batch in self.val_loader:
            f0, logit = self.predict(batch["mel"])
            loss, parts = jdc_loss(f0, logit, batch["f0"], batch["voiced"], batch["valid"],
                                   self.loss_params["lambda_vuv"], self.loss_params["f0_loss"])
            losses.append([loss.item(), parts["f0"].item(), parts["vuv"].item()])
            valid = batch["valid"]
            frames.append((batch["f0"][valid], batch["voiced"][valid], f0[valid], torch.sigmoid(logit[valid])))
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
        self.writer.add_scalar("train/epoch_loss", train_loss, epoch + 1)
        for key, value in metrics.items():
            self.writer.add_scalar(f"val/{key}", value, epoch + 1)
        if (epoch + 1) % self.training["plot_every"] == 0 or epoch + 1 == self.config["epochs"]:
            self.writer.add_figure("val/f0", self.plot_clips(), epoch + 1)

    def plot_clips(self):
        dataset = self.val_loader.dataset
        clips = []
        for index in range(min(self.training["plot_clips"], len(dataset))):
            mel, label, _ = dataset[index]
            f0, logit = self.predict(mel[None, None])
            clips.append({"title": os.path.basename(dataset.paths[index]), "f0": f0[0].numpy(),
                          "prob": torch.sigmoid(logit[0]).numpy(), "label": label.numpy()})
        return f0_figure(clips, self.vuv_threshold)

    # ------------------------------------------------------------------ checkpoints
    def _state(self):
        return {
            "net": self.model.state_dict(), "model_params": self.config["model_params"],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "batches_done": self.batches_done, "step": self.step,
            "config": self.config, "vuv_threshold": float(self.vuv_threshold), "metrics": self.metrics,
            "best": self.best, "nonfinite_total": self.nonfinite_total, "torch_rng": torch.get_rng_state(),
        }

    def _save(self, path):
        save_checkpoint(self._state(), path)

    def save_checkpoints(self, epoch, metrics):
        self._save(os.path.join(self.run_dir, "last.pth"))
        if self._is_better(metrics):
            best_path = os.path.join(self.run_dir, "best.pth")
            self.best = {"epoch": epoch + 1, "vuv_threshold": float(self.vuv_threshold),
                         "checkpoint": best_path, **metrics}
            save_checkpoint({**self._state(), "best": self.best}, best_path)
        if (epoch + 1) % self.config["save_freq"] == 0:
            self._save(os.path.join(self.run_dir, f"epoch_{epoch + 1:05d}.pth"))

    def _is_better(self, metrics):
        return self.best is None or selection_key(metrics) < selection_key(self.best)

    def _restore(self, state, path):
        self.model.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batches_done, self.step = state["epoch"], state["batches_done"], state["step"]
        self.vuv_threshold, self.metrics, self.best = state["vuv_threshold"], state["metrics"], state["best"]
        self.nonfinite_total = state["nonfinite_total"]
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed from %s at epoch %d, batch %d, step %d", path, self.epoch + 1, self.batches_done,
                 self.step)

    def _load_pretrained(self, path, only_params):
        """Start from one of our checkpoints or a host {'net': ...} file: load what matches, list the rest."""
        state = load_checkpoint(path)
        own = self.model.state_dict()
        matched = {k: v for k, v in state["net"].items() if k in own and own[k].shape == v.shape}
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
