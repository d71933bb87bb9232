"""Train the JDC pitch extractor: `python train.py --config_path ./Configs/config.yml`.

With more than one `loss_params.lambda_vuv_candidates` value, one complete run per λ goes to
`<log_dir>/lambda_vuv_<λ>` and `<log_dir>/sweep_summary.csv` compares them; otherwise one run
goes to `log_dir`. `torchrun --nproc_per_node N train.py ...` trains with DDP (distributed.py); the
sweep's runs then follow one another inside the job.
"""
import copy
import csv
import io
import logging
import os
import sys

import click
import torch
import yaml
from torch.distributed.elastic.multiprocessing.errors import record

import distributed
from audio import read_file_list, write_atomically
from config import ConfigError, load_config
from demo_data import ensure_demo_corpus
from devices import resolve_device
from f0_labels import label_settings, precompute
from model import CheckpointError, build_model, load_checkpoint
from optimizers import group_lr_scales
from pack import Pack, is_pack
from trainer import Trainer, TrainingStopped, selection_key

SUMMARY_FIELDS = ("lambda_vuv", "best_epoch", "FFE", "RPA", "RCA", "GPE", "VUV_F1", "VUV_P", "VUV_R",
                  "MED_CENTS", "vuv_threshold", "checkpoint")


def setup_logging(folder):
    """The `pitchextractor` logger tree to the console and to `<folder>/train.log` (replacing an earlier file).

    Under torchrun only rank 0 writes train.log; the other ranks print their warnings, marked with their rank.
    """
    os.makedirs(folder, exist_ok=True)
    logger = logging.getLogger("pitchextractor")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stderr)
    logger.addHandler(console)
    if not distributed.is_main():
        logger.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter(f"[rank {distributed.rank()}] %(levelname)s %(message)s"))
        return logger
    logger.setLevel(logging.INFO)
    file_handler = logging.FileHandler(os.path.join(folder, "train.log"))
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(file_handler)
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
    Under torchrun each rank labels its share of the files with its share of the cores, and all ranks
    then pool what was skipped or failed. A split whose `*_data` names a pack (pack.py) was labelled when it
    was packed: it is opened (a one-line error if damaged) and used as it is.
    """
    data = config["dataset_params"]
    splits = (("train", "train_data"), ("val", "val_data"))
    packs = {split: Pack(config[key]) for split, key in splits if is_pack(config[key])}
    lists = {split: read_file_list(config[key]) for split, key in splits if split not in packs}
    every_file = list(dict.fromkeys(path for paths in lists.values() for path in paths))
    share = every_file[distributed.rank()::distributed.world_size()]
    summary = precompute(share, label_settings(data["f0_params"]), workers=distributed.local_cores(),
                         strict=data["strict"])
    skipped, failed = set(distributed.gather(summary["bad_files"])), set(distributed.gather(summary["failed_files"]))
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
    return {**usable, **packs}


def resume_path(config, run_dir, resume):
    """The checkpoint a run continues from: --resume, else <run>/last.pth under `resume: auto`, else None."""
    last = os.path.join(run_dir, "last.pth")
    if resume is None and config["resume"] == "auto" and os.path.exists(last):
        return last
    return resume


def check_starting_points(config, runs, resume):
    """Before any work: each checkpoint a run starts from is readable, has finite weights, fits the configured
    model, and (under onecycle) was trained for the same number of epochs. A CheckpointError/ValueError
    (one line) otherwise."""
    with torch.device("meta"):  # shapes only, no memory
        own = {key: tuple(value.shape) for key, value in build_model(config["model_params"]).state_dict().items()}
    starting_points = [(resume_path(run_config, run_dir, resume), True) for _, run_config, run_dir in runs]
    if config["pretrained_model"] and not all(path for path, _ in starting_points):
        starting_points.append((config["pretrained_model"], False))
    for path, resuming in starting_points:
        if not path:
            continue
        state = load_checkpoint(path)
        shapes = {key: tuple(value.shape) for key, value in state["net"].items()}
        matched = [key for key in own if shapes.get(key) == own[key]]
        if resuming and not len(matched) == len(own) == len(shapes):
            raise CheckpointError(f"{path}: its weights do not fit this config's model_params ({len(matched)} of "
                                  f"{len(own)} tensors match); resume with the model_params it was trained with, "
                                  "or start a new run (another log_dir, or resume: never)")
        if not matched:
            raise CheckpointError(f"pretrained_model {path}: none of its {len(shapes)} tensors fits this "
                                  f"{config['model_params']['sequence_model']} model; use a checkpoint of the same "
                                  "kind of model, or set pretrained_model: \"\"")
        continues = resuming or not config["load_only_params"] and len(matched) == len(own) and "optimizer" in state
        # The head's group is last. A state without groups is damaged: the trainer's restore reports that.
        saved_scales = group_lr_scales(state["optimizer"]) if continues else []
        if saved_scales and saved_scales[-1] != config["optimizer_params"]["f0_head_lr_scale"]:
            raise ValueError(f"{path} continues an optimizer saved with optimizer_params.f0_head_lr_scale = "
                             f"{saved_scales[-1]:g}, not {config['optimizer_params']['f0_head_lr_scale']:g}; resume "
                             f"with f0_head_lr_scale: {saved_scales[-1]:g}, or start a new run (another log_dir, or "
                             "resume: never / load_only_params: true)")
        saved_epochs = (state.get("config") or {}).get("epochs")
        if continues and config["optimizer_params"]["scheduler"] == "onecycle" \
                and saved_epochs not in (None, config["epochs"]):
            raise ValueError(f"`epochs` = {config['epochs']}, but {path} continues a onecycle schedule over "
                             f"{saved_epochs} epochs, which cannot be stretched; resume with epochs: {saved_epochs}, "
                             "or start a new run (another log_dir, or resume: never / load_only_params: true)")


def run_one(config, run_dir, data, resume):
    logger = setup_logging(run_dir)
    resume = resume_path(config, run_dir, resume)
    logger.info("run folder %s (λ_vuv = %g)%s", run_dir, config["loss_params"]["lambda_vuv"],
                f", resuming from {resume}" if resume else "")
    trainer = Trainer(config, run_dir, data, resume_from=resume)
    if distributed.is_main():  # only once the run really starts: a failed resume leaves the old one
        write_atomically(os.path.join(run_dir, "config.yml"),
                         yaml.safe_dump(config, sort_keys=False, allow_unicode=True).encode())
    best = trainer.fit()
    logger.info("best epoch %d: FFE %.2f RPA %.2f VUV_F1 %.2f (threshold %.3f) -> %s", best["epoch"],
                best["FFE"], best["RPA"], best["VUV_F1"], best["vuv_threshold"], best["checkpoint"])
    return best


def one_line(text):
    """The line of an error message that says what failed (a DataLoader worker's error carries its traceback)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return type(text).__name__ if isinstance(text, BaseException) else ""
    return lines[-1] if len(lines) > 1 and "Traceback" in str(text) else lines[0]


def os_error_line(err):
    """One line for a failed read or write: the file, the reason, what to check."""
    if err.filename is None:
        return one_line(err)  # our own OSErrors (f0_labels) already name the file and the fix
    return (f"{err.filename}: {err.strerror or err} — check that the folder exists and is writable and that "
            "the disk has space (a run resumes from its last.pth)")


def job_error(err):
    """The one-line message of an error that ends the run; under torchrun it names the rank."""
    err = os_error_line(err) if isinstance(err, OSError) else one_line(err)
    if distributed.world_size() == 1:
        return err
    if type(err) is RuntimeError:  # a collective failed (gloo/NCCL raise plain RuntimeErrors)
        return (f"rank {distributed.rank()}: {err} — another process of the job has probably failed or been "
                "killed; torchrun's report names the root cause")
    return f"rank {distributed.rank()}: {err}"


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
        distributed.start(resolve_device(config["device"]))
    except (ConfigError, ValueError) as err:
        raise click.ClickException(str(err))
    run_all(config, resume)
    distributed.stop()


def run_all(config, resume):
    """Every run the config asks for; under torchrun every rank runs this, rank 0 alone reports."""
    runs = sweep_runs(config)
    if resume and len(runs) > 1:
        raise click.ClickException("--resume continues one run; in a λ sweep each run resumes from its own "
                                   "last.pth automatically (resume: auto)")
    results = []
    try:
        check_starting_points(config, runs, resume)  # before any work: no labelling for a run that cannot start
        if config["demo_corpus"]["enabled"]:
            setup_logging(config["log_dir"])
            if distributed.is_main():
                ensure_demo_corpus(config["demo_corpus"], config["dataset_params"]["synthetic_data"]["world"],
                                   config["train_data"], config["val_data"])
            distributed.barrier()
        setup_logging(config["log_dir"])  # labelling's warnings go to <log_dir>/train.log, each run's to its own
        data = prepare_labels(config)
        for lam, run_config, run_dir in runs:
            results.append((lam, run_one(run_config, run_dir, data, resume)))
    except (TrainingStopped, ValueError, RuntimeError, OSError) as err:  # OSError: unwritable folder, full disk
        raise click.ClickException(job_error(err))
    if not distributed.is_main():
        return
    click.echo(results_table(results))
    if len(runs) > 1:
        path = write_sweep_summary(config["log_dir"], results)
        lam, best = min(results, key=lambda result: selection_key(result[1]))
        click.echo(f"sweep summary: {path}\nbest λ_vuv = {lam:g}: FFE {best['FFE']:.2f}, RPA {best['RPA']:.2f} "
                   f"-> {best['checkpoint']}")


if __name__ == "__main__":
    record(main)()  # under torchrun, a rank's crash is reported as the job's root cause
