"""Training runs on a tiny corpus, on the CPU, through the real code paths."""
import csv
import math
import os
import signal

import pytest
import torch
from click.testing import CliRunner

import train
from train import prepare_labels
from config import ConfigError, load_config
from trainer import Trainer, TrainingStopped, amp_settings, cpu_supports_bf16
from conftest import tiny_config
from model import VOICING_BRANCH


def run_files(run):
    return sorted(f for f in os.listdir(run) if not f.startswith("."))


def test_two_epochs_lower_the_loss_and_write_every_file(tmp_path):
    config = load_config(tiny_config(tmp_path, epochs=3))
    trainer = Trainer(config, str(tmp_path / "steps"), prepare_labels(config))
    losses = [trainer.train_epoch(epoch) for epoch in range(3)]
    assert losses[2] < 0.8 * losses[0]
    result = train.run_one(config, config["log_dir"], prepare_labels(config), resume=None)
    run = config["log_dir"]
    for name in ("last.pth", "best.pth", "epoch_00001.pth", "epoch_00003.pth", "train.log", "config.yml",
                 "tensorboard"):
        assert name in run_files(run), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(run, "tensorboard")))
    state = torch.load(os.path.join(run, "best.pth"), map_location="cpu", weights_only=True)
    assert {"net", "optimizer", "scheduler", "scaler", "epoch", "step", "config", "vuv_threshold",
            "metrics"} <= set(state)
    assert 0 < state["vuv_threshold"] < 1 and state["epoch"] == result["epoch"]
    assert state["step"] == 3 * state["epoch"]  # 6 clips, batches of 2
    assert not math.isnan(state["metrics"]["RPA"])
    with open(os.path.join(run, "train.log")) as f:
        assert "epoch 3: train loss" in f.read()


def test_lambda_sweep_makes_one_run_per_value_and_a_summary(tmp_path):
    path = tiny_config(tmp_path, epochs=1, loss_params={"lambda_vuv_candidates": [0.25, 1.0]})
    result = CliRunner().invoke(train.main, ["--config_path", path])
    assert result.exit_code == 0, result.output
    log_dir = load_config(path)["log_dir"]
    assert os.path.exists(os.path.join(log_dir, "lambda_vuv_0.25", "best.pth"))
    assert os.path.exists(os.path.join(log_dir, "lambda_vuv_1", "best.pth"))
    with open(os.path.join(log_dir, "sweep_summary.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["lambda_vuv"]) for r in rows] == [0.25, 1.0]
    assert all(os.path.exists(r["checkpoint"]) and 0 < float(r["vuv_threshold"]) < 1 for r in rows)
    saved = torch.load(rows[1]["checkpoint"], map_location="cpu", weights_only=True)
    assert saved["config"]["loss_params"]["lambda_vuv"] == 1.0
    assert "best λ_vuv =" in result.output


def test_resume_after_epoch_one_gives_the_uninterrupted_weights(tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        config = load_config(tiny_config(tmp_path, model_params={"cnn_dropout": 0.5}))
        straight = Trainer(config, str(tmp_path / "straight"), prepare_labels(config))
        straight.fit()
        first = config  # the same 2-epoch config; dropout makes the restored RNG state matter
        part = Trainer(first, str(tmp_path / "part"), prepare_labels(first))
        part.epoch = 0
        part.train_epoch(0)
        part.metrics = part.validate()
        part.epoch, part.batches_done = 1, 0
        part.save_checkpoints(0, part.metrics)
        resumed = Trainer(first, str(tmp_path / "part"), prepare_labels(first), resume_from=str(tmp_path / "part" / "last.pth"))
        assert resumed.epoch == 1 and resumed.step == part.step
        resumed.fit()
    finally:
        torch.use_deterministic_algorithms(False)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_mid_epoch_saves_last_and_restores_the_handlers(tmp_path):
    config = load_config(tiny_config(tmp_path, epochs=50))
    trainer = Trainer(config, config["log_dir"], prepare_labels(config))
    real_step = trainer.train_step

    def step_then_sigterm(batch):  # the signal arrives during step 2, whatever the machine's speed
        loss = real_step(batch)
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    trainer.train_step = step_then_sigterm
    with pytest.raises(TrainingStopped, match="SIGTERM"):
        trainer.fit()
    state = torch.load(os.path.join(config["log_dir"], "last.pth"), map_location="cpu", weights_only=True)
    assert state["step"] == trainer.step == 2 and state["batches_done"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_fine_tune_from_a_host_net_file(tmp_path, caplog):
    config = load_config(tiny_config(tmp_path, epochs=1))
    donor = Trainer(config, str(tmp_path / "donor"), prepare_labels(config)).model
    host_file = tmp_path / "host.pth"
    torch.save({"net": donor.state_dict()}, host_file)
    tuned = load_config(tiny_config(tmp_path, epochs=1, pretrained_model=str(host_file), load_only_params=True))
    trainer = Trainer(tuned, str(tmp_path / "tuned"), prepare_labels(tuned))
    for key, value in donor.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[key], value)
    # a Transformer model takes the CNN front from the host file and lists what it could not
    mixed = load_config(tiny_config(tmp_path, epochs=1, pretrained_model=str(host_file), load_only_params=True,
                                    model_params={"sequence_model": "transformer"}))
    with caplog.at_level("WARNING", logger="pitchextractor"):
        transformer = Trainer(mixed, str(tmp_path / "mixed"), prepare_labels(mixed))
    assert torch.equal(transformer.model.conv_block[0].weight, donor.conv_block[0].weight)
    assert "bilstm_classifier.weight_ih_l0" in caplog.text  # not used from the file


def test_voicing_only_trains_the_detector_and_leaves_the_f0_bit_identical(tmp_path):
    config = load_config(tiny_config(tmp_path, optimizer_params={"lr": 0.001, "voicing_only": True},
                                     model_params={"sequence_model": "lstm", "cnn_dropout": 0.3}))
    trainer = Trainer(config, config["log_dir"], prepare_labels(config))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    mel = trainer.mels(next(iter(trainer.val_loader)))
    f0_before, logit_before = trainer.predict(mel)
    trainer.train_epoch(0)
    after = trainer.model.state_dict()
    branch = {k for k in before if k.split(".")[0] in VOICING_BRANCH}
    assert branch and all(not torch.equal(before[k], after[k]) for k in branch if after[k].is_floating_point())
    assert all(torch.equal(before[k], after[k]) for k in before if k not in branch)  # BatchNorm statistics too
    f0_after, logit_after = trainer.predict(mel)
    assert torch.equal(f0_before, f0_after) and not torch.equal(logit_before, logit_after)
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == sum(
        1 for k, _ in trainer.model.named_parameters() if k.split(".")[0] in VOICING_BRANCH)


def test_nan_batch_is_skipped_and_three_in_a_row_stop(tmp_path):
    config = load_config(tiny_config(tmp_path))
    trainer = Trainer(config, config["log_dir"], prepare_labels(config))
    batch = next(iter(trainer.train_loader))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    poisoned = dict(batch, wave=batch["wave"].clone())  # batches carry waveforms; the mel is made on the device
    poisoned["wave"][0, 3000] = float("nan")
    assert trainer.train_step(poisoned) is None
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert trainer.train_step(batch) is not None and trainer.nonfinite_run == 0
    trainer.train_step(poisoned)
    trainer.train_step(poisoned)
    with pytest.raises(TrainingStopped, match="3 consecutive non-finite losses"):
        trainer.train_step(poisoned)
    assert trainer.nonfinite_total == 4


def test_bad_set_key_fails_before_any_work(tmp_path):
    path = tiny_config(tmp_path)
    result = CliRunner().invoke(train.main, ["--config_path", path, "--set", "training.grad_clipp=1"])
    assert result.exit_code != 0
    assert "unknown key `grad_clipp`" in result.output
    assert not os.path.exists(load_config(path)["log_dir"])


@pytest.mark.parametrize("text, message", [
    ("epochs: -1\n", "`epochs` = -1: must be > 0"),
    ("model_params:\n  sequence_model: gru\n", "must be one of transformer, lstm"),
    ("trainig:\n  grad_clip: 1\n", "unknown key `trainig`"),
    ("batch_size: 2.5\n", "must be a int"),
    ("dataset_params:\n  synthetic_data:\n    resynthesis:\n      contour: harvest\n", "must be one of labels, world"),
])
def test_bad_config_values_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(str(path))
    assert "\n" not in str(info.value)


def test_shipped_config_equals_the_defaults():
    from config_defaults import DEFAULTS
    import yaml
    with open(os.path.join(os.path.dirname(__file__), "..", "Configs", "config.yml")) as f:
        assert yaml.safe_load(f) == DEFAULTS


def test_amp_settings_cuda_logic_on_cpu():
    cuda = torch.device("cuda")
    base = {"mixed_precision": True, "amp_dtype": "float16", "cpu_mixed_precision": False}
    assert amp_settings(base, cuda) == (True, torch.float16, True)
    assert amp_settings({**base, "mixed_precision": False}, cuda) == (False, torch.float32, False)
    assert amp_settings(base, torch.device("cpu"))[0] is False
    asked = {**base, "cpu_mixed_precision": True}
    if cpu_supports_bf16():
        assert amp_settings(asked, torch.device("cpu")) == (True, torch.bfloat16, False)
    else:  # emulated bf16 is far slower than fp32: the request falls back with a warning
        assert amp_settings(asked, torch.device("cpu")) == (False, torch.float32, False)


def test_cpu_bf16_probe_matches_the_cpu_flags():
    # Native bf16 needs AVX512-BF16 or AMX; /proc/cpuinfo says which this machine has (Linux).
    with open("/proc/cpuinfo") as handle:
        flags = set(next(line for line in handle if line.startswith("flags")).split(":")[1].split())
    if {"avx512_bf16", "amx_bf16"} & flags:
        assert cpu_supports_bf16()
    elif "avx512f" not in flags:
        assert not cpu_supports_bf16()


def test_time_budget_stops_mid_epoch_and_resume_continues_there(tmp_path):
    config = load_config(tiny_config(tmp_path, epochs=2, training={"max_minutes": 1e-6}))
    best = Trainer(config, config["log_dir"], prepare_labels(config)).fit()
    state = torch.load(os.path.join(config["log_dir"], "last.pth"), map_location="cpu", weights_only=True)
    assert (state["epoch"], state["batches_done"], state["step"]) == (0, 1, 1)
    assert best is not None and os.path.exists(best["checkpoint"])
    unlimited = load_config(tiny_config(tmp_path, epochs=2))
    resumed = Trainer(unlimited, config["log_dir"], prepare_labels(unlimited), resume_from=os.path.join(config["log_dir"], "last.pth"))
    resumed.fit()
    assert resumed.step == 6  # the 2 remaining batches of epoch 1, then 3 in epoch 2
