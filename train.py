"""Train the JDC pitch extractor: `python train.py --config_path ./Configs/config.yml`.

With more than one `loss_params.lambda_vuv_candidates` value, one complete run per λ goes to
`<log_dir>/lambda_vuv_<λ>` and `<log_dir>/sweep_summary.csv` compares them; otherwise one run
goes to `log_dir`.
"""
import copy
import csv
import io
import logging
import os
import sys

import click
import yaml

from audio import read_file_list, write_atomically
from config import ConfigError, load_config
from demo_data import ensure_demo_corpus
from f0_labels import label_settings, precompute
from trainer import Trainer, TrainingStopped, selection_key

SUMMARY_FIELDS = ("lambda_vuv", "best_epoch", "FFE", "RPA", "RCA", "GPE", "VUV_F1", "VUV_P", "VUV_R",
                  "MED_CENTS", "vuv_threshold", "checkpoint")


def setup_logging(folder):
    """The `pitchextractor` logger tree to the console and to `<folder>/train.log` (replacing an earlier file)."""
    os.makedirs(folder, exist_ok=True)
    logger = logging.getLogger("pitchextractor")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    file_handler = logging.FileHandler(os.path.join(folder, "train.log"))
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(file_handler)
    logger.addHandler(console)
    return logger


def sweep_runs(config):
    """(lambda_vuv, run config, run folder) for each run this config asks for."""
    candidates = config["loss_params"]["lambda_vuv_candidates"]
    if len(candidates) <= 1:
        lam = candidates[0] if candidates else config["loss_params"]["lambda_vuv"]
        return [(lam, with_lambda(config, lam), config["log_dir"])]
    return [(lam, with_lambda(config, lam), os.path.join(config["log_dir"], f"lambda_vuv_{lam:g}"))
            for lam in candidates]


def with_lambda(config, lam):
    config = copy.deepcopy(config)
    config["loss_params"]["lambda_vuv"] = float(lam)
    return config


def prepare_labels(config):
    """Label every listed file once, for all runs of a sweep: {'train': paths, 'val': paths} of usable audio.

    Unreadable audio is left out (or stops the run with dataset_params.strict). A split none of whose
    files got a label (every backend found too little voicing) stops the run before any training.
    """
    data = config["dataset_params"]
    lists = {split: read_file_list(config[key]) for split, key in (("train", "train_data"), ("val", "val_data"))}
    summary = precompute(lists["train"] + lists["val"], label_settings(data["f0_params"]), workers=None,
                         strict=data["strict"])
    skipped, failed = set(summary["bad_files"]), set(summary["failed_files"])
    usable = {split: [path for path in paths if path not in skipped] for split, paths in lists.items()}
    for split, paths in usable.items():
        key = f"{split}_data"
        if not paths:
            raise ValueError(f"{config[key]}: none of its {len(lists[split])} files is readable audio "
                             "(listed above); fix the files or the list")
        if all(path in failed for path in paths):
            raise ValueError(
                f"{config[key]}: all {len(paths)} files got no F0 label (no backend found "
                f"{data['f0_params']['min_voiced_frames']} voiced frames: silent or unpitched audio); "
                "check the recordings, or enable more backends in dataset_params.f0_params")
    return usable


def run_one(config, run_dir, data, resume):
    logger = setup_logging(run_dir)
    with open(os.path.join(run_dir, "config.yml"), "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    last = os.path.join(run_dir, "last.pth")
    if resume is None and config["resume"] == "auto" and os.path.exists(last):
        resume = last
    logger.info("run folder %s (λ_vuv = %g)%s", run_dir, config["loss_params"]["lambda_vuv"],
                f", resuming from {resume}" if resume else "")
    best = Trainer(config, run_dir, data, resume_from=resume).fit()
    logger.info("best epoch %d: FFE %.2f RPA %.2f VUV_F1 %.2f (threshold %.3f) -> %s", best["epoch"],
                best["FFE"], best["RPA"], best["VUV_F1"], best["vuv_threshold"], best["checkpoint"])
    return best


def write_sweep_summary(log_dir, results):
    path = os.path.join(log_dir, "sweep_summary.csv")
    text = io.StringIO()
    writer = csv.DictWriter(text, SUMMARY_FIELDS)
    writer.writeheader()
    for lam, best in results:
        writer.writerow({"lambda_vuv": lam, "best_epoch": best["epoch"], **{k: best[k] for k in SUMMARY_FIELDS[2:]}})
    write_atomically(path, text.getvalue().encode())
    return path


def results_table(results):
    """The best validation metrics of each run, as a small text table."""
    lines = [f"{'λ_vuv':>6} {'epoch':>5} {'RPA':>6} {'RCA':>6} {'GPE':>6} {'VUV_F1':>6} {'FFE':>6} "
             f"{'cents':>6} {'thr':>5}  best checkpoint"]
    for lam, best in results:
        lines.append(f"{lam:6g} {best['epoch']:5d} {best['RPA']:6.2f} {best['RCA']:6.2f} {best['GPE']:6.2f} "
                     f"{best['VUV_F1']:6.2f} {best['FFE']:6.2f} {best['MED_CENTS']:6.1f} "
                     f"{best['vuv_threshold']:5.3f}  {best['checkpoint']}")
    return "\n".join(lines)


@click.command()
@click.option("--config_path", "-p", required=True, help="YAML config, e.g. ./Configs/config.yml")
@click.option("--resume", "resume", default=None, help="checkpoint (last.pth) to continue from")
@click.option("--set", "overrides", multiple=True, help="override a config value: --set training.grad_clip=1.0")
def main(config_path, resume, overrides):
    try:
        config = load_config(config_path, overrides)
    except ConfigError as err:
        raise click.ClickException(str(err))
    if config["demo_corpus"]["enabled"]:
        setup_logging(config["log_dir"])
        ensure_demo_corpus(config["demo_corpus"], config["dataset_params"]["synthetic_data"]["world"],
                           config["train_data"], config["val_data"])
    runs = sweep_runs(config)
    if resume and len(runs) > 1:
        raise click.ClickException("--resume continues one run; in a λ sweep each run resumes from its own "
                                   "last.pth automatically (resume: auto)")
    results = []
    try:
        setup_logging(config["log_dir"])  # labelling's warnings go to <log_dir>/train.log, each run's to its own
        data = prepare_labels(config)
        for lam, run_config, run_dir in runs:
            results.append((lam, run_one(run_config, run_dir, data, resume)))
    except (TrainingStopped, ValueError, RuntimeError, FileNotFoundError) as err:
        raise click.ClickException(str(err))
    click.echo(results_table(results))
    if len(runs) > 1:
        path = write_sweep_summary(config["log_dir"], results)
        lam, best = min(results, key=lambda result: selection_key(result[1]))
        click.echo(f"sweep summary: {path}\nbest λ_vuv = {lam:g}: FFE {best['FFE']:.2f}, RPA {best['RPA']:.2f} "
                   f"-> {best['checkpoint']}")


if __name__ == "__main__":
    main()
