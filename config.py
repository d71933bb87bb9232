"""Read and check a training config once: unknown keys and bad values are one-line errors.

A config file may give any subset of the keys; the rest take the defaults below (the values in
Configs/config.yml, which a test keeps identical). `--set a.b=value` overrides are applied before
the checks, so they are checked too.
"""
import math

import yaml

from config_defaults import DEFAULTS
from f0_backends import BACKENDS, CREPE_MODELS, PRAAT_WINDOW_PERIODS, PYWORLD_ALGORITHMS, PYWORLD_FALLBACKS
from losses import F0_LOSS_KINDS
from model import SEQUENCE_MODELS
from optimizers import SCHEDULERS

AMP_DTYPES = ("float16", "bfloat16")  # what training.amp_dtype may name (trainer.amp_settings maps them)
CHOICES = {
    "resume": ("auto", "never"),
    "optimizer_params.scheduler": SCHEDULERS,
    "loss_params.f0_loss": F0_LOSS_KINDS,
    "training.amp_dtype": AMP_DTYPES,
    "model_params.sequence_model": SEQUENCE_MODELS,
    "dataset_params.f0_params.pyworld.algorithm": PYWORLD_ALGORITHMS,
    "dataset_params.f0_params.pyworld.fallback": PYWORLD_FALLBACKS,
    "dataset_params.f0_params.torchcrepe.model": CREPE_MODELS,
    "dataset_params.f0_params.praat.method": tuple(PRAAT_WINDOW_PERIODS),
    "dataset_params.dataloader.start_method": (None, "fork", "spawn", "forkserver"),
}
POSITIVE = ("epochs", "batch_size", "save_freq", "optimizer_params.lr", "dataset_params.max_mel_length",
            "training.plot_every", "training.max_nonfinite_steps", "loss_params.vuv_calibration_steps")
NON_NEGATIVE = ("num_workers", "loss_params.lambda_vuv", "training.grad_clip", "training.plot_clips",
                "dataset_params.f0_params.min_voiced_frames")
FRACTIONS = ("loss_params.vuv_initial_threshold", "dataset_params.synthetic_data.proportion",
             "dataset_params.f0_params.pyworld.d4c_threshold")


class ConfigError(ValueError):
    """A bad config key or value; the message is one line naming the key and the fix."""


def load_config(path, overrides=()):
    """The checked config: defaults, then the file at `path`, then `key.path=value` overrides."""
    try:
        with open(path) as f:
            user = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; pass --config_path Configs/config.yml") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(user, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    config = merge(DEFAULTS, user, source=path)
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
    if value is None or default is None:
        return value
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
    node[leaf] = checked_type(dotted, default[leaf], yaml.safe_load(text), "--set")


def get(config, dotted):
    for key in dotted.split("."):
        config = config[key]
    return config


def check_values(config):
    def fail(key, message):
        raise ConfigError(f"`{key}` = {get(config, key)!r}: {message}")

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
    candidates = config["loss_params"]["lambda_vuv_candidates"]
    if not all(isinstance(x, (int, float)) and x >= 0 and math.isfinite(x) for x in candidates):
        fail("loss_params.lambda_vuv_candidates", "must be a list of numbers >= 0 (or [] for one run)")
    order = config["dataset_params"]["f0_params"]["backend_order"]
    unknown = [b for b in order if b not in BACKENDS]
    if unknown or not order:
        fail("dataset_params.f0_params.backend_order", f"must list backends from {', '.join(BACKENDS)}")
    return config
