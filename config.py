"""Read and check a training config once: unknown keys and bad values are one-line errors.

A config file may give any subset of the keys; the rest take the defaults below (the values in
Configs/config.yml, which a test keeps identical). `--set a.b=value` overrides are applied before
the checks, so they are checked too.
"""
import contextlib
import copy
import math
import os

import torch
import yaml

from audio import SAMPLE_RATE, decode_lines
from augment import NOISE_TYPES
from config_defaults import DEFAULTS
from f0_backends import BACKENDS, CREPE_MODELS, PRAAT_WINDOW_PERIODS, PYWORLD_ALGORITHMS, PYWORLD_FALLBACKS
from f0_labels import LABEL_MODES
from losses import F0_LOSS_KINDS
from model import SEQUENCE_MODELS, build_model
from optimizers import SCHEDULERS, build_optimizer
from synthetic import RESYNTHESIS_CONTOURS

AMP_DTYPES = ("float16", "bfloat16")  # what training.amp_dtype may name (trainer.amp_settings maps them)
CHOICES = {
    "resume": ("auto", "never"),
    "optimizer_params.scheduler": SCHEDULERS,
    "loss_params.f0_loss": F0_LOSS_KINDS,
    "training.amp_dtype": AMP_DTYPES,
    "model_params.sequence_model": SEQUENCE_MODELS,
    "dataset_params.synthetic_data.resynthesis.contour": RESYNTHESIS_CONTOURS,
    "dataset_params.f0_params.pyworld.algorithm": PYWORLD_ALGORITHMS,
    "dataset_params.f0_params.pyworld.fallback": PYWORLD_FALLBACKS,
    "dataset_params.f0_params.torchcrepe.model": CREPE_MODELS,
    "dataset_params.f0_params.praat.method": tuple(PRAAT_WINDOW_PERIODS),
    "dataset_params.f0_params.mode": LABEL_MODES,
    "dataset_params.dataloader.start_method": (None, "fork", "spawn", "forkserver"),
}
_F0 = "dataset_params.f0_params"
_SYNTH = "dataset_params.synthetic_data"
POSITIVE = ("epochs", "batch_size", "save_freq", "optimizer_params.lr", "optimizer_params.f0_head_lr_scale",
            "dataset_params.max_mel_length",
            "training.plot_every", "training.max_nonfinite_steps", "loss_params.vuv_calibration_steps",
            f"{_F0}.consensus.min_agree", f"{_F0}.consensus.tolerance_cents",
            "optimizer_params.div_factor", "optimizer_params.final_div_factor",
            "model_params.seq_len", "model_params.lstm.hidden_size",
            "model_params.lstm.num_layers", "model_params.transformer.d_model", "model_params.transformer.num_layers",
            "model_params.transformer.num_heads", "model_params.transformer.ff_dim",
            "model_params.transformer.pos_kernel_size",
            f"{_F0}.pyworld.f0_floor", f"{_F0}.pyworld.f0_ceil", f"{_F0}.torchcrepe.step_size_ms",
            f"{_F0}.torchcrepe.fmin", f"{_F0}.torchcrepe.fmax", f"{_F0}.torchcrepe.batch_size",
            f"{_F0}.swiftf0.fmin", f"{_F0}.swiftf0.fmax", f"{_F0}.praat.min_pitch", f"{_F0}.praat.max_pitch",
            f"{_SYNTH}.pool_size", f"{_SYNTH}.pool_refresh_epochs",
            "dataset_params.augmentation.noise_bank_seconds")
NON_NEGATIVE = ("num_workers", "loss_params.lambda_vuv", "training.grad_clip", "training.plot_clips",
                f"{_F0}.min_voiced_frames", "training.max_minutes", "optimizer_params.weight_decay",
                "optimizer_params.eps", "optimizer_params.min_lr", f"{_F0}.torchcrepe.median_filter_size",
                "model_params.f0_init_hz",
                f"{_SYNTH}.pitch_shift.weight", f"{_SYNTH}.world.weight",
                f"{_SYNTH}.resynthesis.weight", f"{_SYNTH}.resynthesis.smoothing_frames")
FRACTIONS = ("loss_params.vuv_initial_threshold", f"{_SYNTH}.proportion", f"{_F0}.pyworld.d4c_threshold",
             "optimizer_params.pct_start", "optimizer_params.warmup_pct", "model_params.cnn_dropout",
             "model_params.lstm.dropout", "model_params.transformer.dropout", f"{_F0}.torchcrepe.periodicity_threshold",
             f"{_F0}.swiftf0.confidence_threshold", f"{_F0}.praat.silence_threshold", f"{_F0}.praat.voicing_threshold",
             f"{_SYNTH}.pitch_shift.min_voiced_fraction", f"{_SYNTH}.resynthesis.min_voiced_fraction",
             f"{_SYNTH}.world.creak_probability",
             "dataset_params.augmentation.probability")
# (low, high) pairs that must be ordered: low < high.
ORDERED = ((f"{_F0}.pyworld.f0_floor", f"{_F0}.pyworld.f0_ceil"), (f"{_F0}.torchcrepe.fmin", f"{_F0}.torchcrepe.fmax"),
           (f"{_F0}.swiftf0.fmin", f"{_F0}.swiftf0.fmax"), (f"{_F0}.praat.min_pitch", f"{_F0}.praat.max_pitch"))
# Keys that may be null although their default is not (null has a meaning there, see Configs/config.yml).
NULLABLE = (f"{_F0}.pyworld.fallback", "dataset_params.augmentation.snr_db_range",
            "dataset_params.augmentation.gain_db_range", "dataset_params.augmentation.lowpass_hz",
            "dataset_params.augmentation.highpass_hz")
# Keys that may hold a non-finite number (swiftf0 writes unvoiced_value to unvoiced frames: .nan is allowed).
NON_FINITE_OK = (f"{_F0}.swiftf0.unvoiced_value",)
NON_EMPTY_TEXT = ("log_dir", "device", "train_data", "val_data")


class ConfigError(ValueError):
    """A bad config key or value; the message is one line naming the key and the fix."""


def load_config(path, overrides=()):
    """The checked config: defaults, then the file at `path`, then `key.path=value` overrides."""
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a folder; pass a config file, e.g. --config_path Configs/config.yml")
    try:
        with open(path, "rb") as f:
            text = "".join(decode_lines(f.read(), path, "config"))
        user = yaml.safe_load(text) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; pass --config_path Configs/config.yml") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config ({err.strerror or err})") from None
    except ValueError as err:  # not UTF-8 (decode_lines names the line)
        raise ConfigError(str(err)) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(user, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    config = merge(copy.deepcopy(DEFAULTS), user, source=path)  # a copy: overrides must not change DEFAULTS
    for item in overrides:
        apply_override(config, item)
    check_values(config)
    return config


def merge(defaults, user, source, prefix=""):
    """defaults updated by user, refusing keys the defaults do not have and type changes."""
    merged = dict(defaults)
    for key, value in user.items():
        dotted = prefix + str(key)
        if key not in defaults:
            raise ConfigError(f"{source}: unknown key `{dotted}`; known here: {', '.join(sorted(defaults))}")
        default = defaults[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: `{dotted}` must be a mapping of its sub-keys")
            merged[key] = merge(default, value, source, dotted + ".")
        else:
            merged[key] = checked_type(dotted, default, value, source)
    return merged


def checked_type(dotted, default, value, source):
    if default is None:
        return value
    if value is None:
        if dotted in NULLABLE:
            return value
        raise ConfigError(f"{source}: `{dotted}` is empty (null); give it a value, like the default {default!r}")
    if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
        value = numeric_text(value)  # PyYAML reads `1e-3` (no dot) as text: take what users write
    elif isinstance(default, list) and isinstance(value, list) and all(isinstance(x, float) for x in default):
        value = [numeric_text(x) if isinstance(x, str) else x for x in value]
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok and isinstance(default, float) else value
        ok = ok and (isinstance(default, float) or float(value).is_integer())
        value = int(value) if ok and isinstance(default, int) else value
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{source}: `{dotted}` = {value!r} must be a {type(default).__name__} "
                          f"(like the default {default!r})")
    return value


def numeric_text(text):
    """A number written as text (`1e-3`, which YAML 1.1 reads as a string) as a float; other text unchanged."""
    try:
        return float(text.strip())
    except ValueError:
        return text


def apply_override(config, item):
    """Apply one `a.b.c=value` (value parsed as YAML) to config in place."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set training.grad_clip=1.0")
    dotted, text = item.split("=", 1)
    node, default = config, DEFAULTS
    *parents, leaf = dotted.strip().split(".")
    for key in parents:
        if not isinstance(default.get(key), dict):
            raise ConfigError(f"--set {dotted}: unknown key `{key}`")
        node, default = node[key], default[key]
    if leaf not in default or isinstance(default[leaf], dict):
        raise ConfigError(f"--set {dotted}: unknown key `{leaf}`; known here: {', '.join(sorted(default))}")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {dotted}: {text!r} is not a YAML value ({str(err).splitlines()[0]})") from None
    node[leaf] = checked_type(dotted.strip(), default[leaf], value, "--set")


def get(config, dotted):
    for key in dotted.split("."):
        config = config[key]
    return config


def leaves(node, prefix=""):
    """(dotted key, value) of every non-mapping value under node."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_values(config):
    def fail(key, message):
        raise ConfigError(f"`{key}` = {get(config, key)!r}: {message}")

    for key, value in leaves(config):  # .inf / .nan anywhere, lists included
        numbers = value if isinstance(value, list) else [value]
        if key not in NON_FINITE_OK and any(is_number(x) and not math.isfinite(x) for x in numbers):
            fail(key, "must be a finite number")
    for key in NON_EMPTY_TEXT:
        if not str(get(config, key)).strip():
            fail(key, "must not be empty")
    for key, allowed in CHOICES.items():
        if get(config, key) not in allowed:
            fail(key, f"must be one of {', '.join(map(str, allowed))}")
    device = config["device"]
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        fail("device", "must be auto, cpu, cuda or cuda:N")
    for key in POSITIVE:
        if not get(config, key) > 0:
            fail(key, "must be > 0")
    for key in NON_NEGATIVE:
        if not get(config, key) >= 0:
            fail(key, "must be >= 0")
    for key in FRACTIONS:
        if not 0 <= get(config, key) <= 1:
            fail(key, "must lie in [0, 1]")
    for low, high in ORDERED:
        if not get(config, low) < get(config, high):
            fail(low, f"must be below `{high}` = {get(config, high)!r}")
    for key, default in leaves(DEFAULTS):  # [low, high] ranges (null where NULLABLE allows it)
        value = get(config, key)
        if key == "optimizer_params.betas" or not (isinstance(default, list) and len(default) == 2
                                                   and all(is_number(x) for x in default)) or value is None:
            continue
        if len(value) != 2 or not all(is_number(x) for x in value) or value[0] > value[1]:
            fail(key, "must be a range [low, high] of two numbers, low <= high")
    for kind in ("pitch_shift", "resynthesis"):  # null by default: a range in Hz when given
        target = config["dataset_params"]["synthetic_data"][kind]["target_pitch_range"]
        if target is not None and not (isinstance(target, list) and len(target) == 2
                                       and all(is_number(x) for x in target) and 0 < target[0] <= target[1]):
            fail(f"{_SYNTH}.{kind}.target_pitch_range", "must be null or a range [low, high] in Hz, 0 < low <= high, "
                                                         "like [50, 1000]")
    betas = config["optimizer_params"]["betas"]
    if len(betas) != 2 or not all(is_number(b) and 0 <= b < 1 for b in betas):
        fail("optimizer_params.betas", "must be two numbers in [0, 1), like [0.9, 0.98]")
    if config["dataset_params"]["sr"] != SAMPLE_RATE:
        fail("dataset_params.sr", f"must be {SAMPLE_RATE}: the model and the hosts work at 24 kHz; any other "
                                  "rate is resampled to it when the audio is read")
    median = config["dataset_params"]["f0_params"]["torchcrepe"]["median_filter_size"]
    if median > 1 and median % 2 == 0:
        fail(f"{_F0}.torchcrepe.median_filter_size", "must be odd (0 or 1: no smoothing)")
    smoothing = config["dataset_params"]["synthetic_data"]["resynthesis"]["smoothing_frames"]
    if smoothing > 1 and smoothing % 2 == 0:
        fail(f"{_SYNTH}.resynthesis.smoothing_frames", "must be odd (0 or 1: no smoothing)")
    noise = config["dataset_params"]["augmentation"]["noise_types"]
    if any(kind not in NOISE_TYPES for kind in noise):
        fail("dataset_params.augmentation.noise_types", f"must list noise types from {', '.join(NOISE_TYPES)}")
    model = config["model_params"]
    if model["num_class"] != 1:
        fail("model_params.num_class", "must be 1 (F0 regression, as the hosts build JDCNet)")
    if model["sequence_model"] == "transformer":
        if model["transformer"]["d_model"] % model["transformer"]["num_heads"]:
            fail("model_params.transformer.num_heads",
                 f"must divide model_params.transformer.d_model ({model['transformer']['d_model']})")
        if model["transformer"]["pos_kernel_size"] % 2 == 0:
            fail("model_params.transformer.pos_kernel_size", "must be odd")
    candidates = config["loss_params"]["lambda_vuv_candidates"]
    if not all(isinstance(x, (int, float)) and x >= 0 and math.isfinite(x) for x in candidates):
        fail("loss_params.lambda_vuv_candidates", "must be a list of numbers >= 0 (or [] for one run)")
    order = config["dataset_params"]["f0_params"]["backend_order"]
    unknown = [b for b in order if b not in BACKENDS]
    if unknown or not order:
        fail("dataset_params.f0_params.backend_order", f"must list backends from {', '.join(BACKENDS)}")
    dry_build(config)
    return config


def dry_build(config):
    """Build the model (without memory: on the meta device) and the optimizer on one parameter, so whatever
    torch itself refuses in model_params or optimizer_params is a ConfigError before any work."""
    for block, build in (("model_params", lambda: build_model(config["model_params"])),
                         ("optimizer_params", lambda: build_optimizer(
                             [torch.nn.Parameter(torch.zeros(1))], config["optimizer_params"], config["epochs"], 1))):
        try:
            with torch.device("meta") if block == "model_params" else contextlib.nullcontext():
                build()
        except (ValueError, RuntimeError, TypeError) as err:
            raise ConfigError(f"`{block}`: {(str(err).splitlines() or [type(err).__name__])[0]}") from None
