import io
import math
from pathlib import Path

import pytest
import torch
import yaml

from optimizers import SCHEDULERS, build_optimizer, group_lr_scales, parameter_groups

EPOCHS, STEPS_PER_EPOCH = 4, 5
TOTAL = EPOCHS * STEPS_PER_EPOCH

UPSTREAM = {
    "lr": 3e-4, "weight_decay": 5e-4, "betas": [0.9, 0.98], "eps": 1e-9, "scheduler": "onecycle",
    "pct_start": 0.0, "div_factor": 1.0, "final_div_factor": 1.0, "warmup_pct": 0.0, "min_lr": 0.0,
}


def params_with(**changes):
    return {**UPSTREAM, **changes}


def toy_model():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def train_steps(model, optimizer, scheduler, steps):
    """Run `steps` optimizer steps; return the lr each step used."""
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.zero_grad()
        model(torch.ones(4, 3)).square().sum().backward()
        optimizer.step()
        scheduler.step()
    return lrs


def lr_sequence(optimizer_params):
    model = toy_model()
    return train_steps(model, *build_optimizer(model.parameters(), optimizer_params, EPOCHS, STEPS_PER_EPOCH), TOTAL)


def test_adamw_takes_its_settings_from_the_config():
    optimizer, _ = build_optimizer(toy_model().parameters(), params_with(eps=1e-7), EPOCHS, STEPS_PER_EPOCH)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (3e-4, 5e-4, (0.9, 0.98), 1e-7)


def test_upstream_onecycle_is_constant_and_keeps_the_betas():
    model = toy_model()
    optimizer, scheduler = build_optimizer(model.parameters(), UPSTREAM, EPOCHS, STEPS_PER_EPOCH)
    assert train_steps(model, optimizer, scheduler, TOTAL) == pytest.approx([3e-4] * TOTAL)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.98)


def test_onecycle_warms_up_and_anneals():
    lrs = lr_sequence(params_with(pct_start=0.25, div_factor=10.0, final_div_factor=100.0))
    assert lrs[0] == pytest.approx(3e-5)
    assert max(lrs) == pytest.approx(3e-4) and lrs.index(max(lrs)) == 4  # peak at step 0.25 · 20 − 1
    assert lrs[-1] == pytest.approx(3e-7)


def test_cosine_with_warmup():
    lrs = lr_sequence(params_with(scheduler="cosine", warmup_pct=0.2, min_lr=3e-6))
    assert lrs[:5] == pytest.approx([0.6e-4, 1.2e-4, 1.8e-4, 2.4e-4, 3e-4])  # 4 warm-up steps, then the peak
    assert lrs[4 + 8] == pytest.approx(3e-6 + (3e-4 - 3e-6) * 0.5 * (1 + math.cos(math.pi * 8 / 15)))
    assert lrs[-1] == pytest.approx(3e-6)
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))


def test_cosine_without_warmup_starts_at_lr():
    lrs = lr_sequence(params_with(scheduler="cosine"))
    assert lrs[0] == pytest.approx(3e-4) and lrs[-1] == pytest.approx(0.0)


def test_constant():
    assert lr_sequence(params_with(scheduler="constant")) == pytest.approx([3e-4] * TOTAL)


def test_unknown_scheduler():
    with pytest.raises(ValueError, match=r"^unknown scheduler 'step', expected one of .*constant.*$"):
        build_optimizer(toy_model().parameters(), params_with(scheduler="step"), EPOCHS, STEPS_PER_EPOCH)


def schedules():
    return [
        params_with(pct_start=0.3, div_factor=25.0, final_div_factor=1e3),
        params_with(scheduler="cosine", warmup_pct=0.1, min_lr=1e-6),
        params_with(scheduler="constant"),
    ]


@pytest.mark.parametrize("optimizer_params", schedules(), ids=SCHEDULERS)
def test_resume_from_state_dicts_continues_identically(optimizer_params):
    model = toy_model()
    optimizer, scheduler = build_optimizer(model.parameters(), optimizer_params, EPOCHS, STEPS_PER_EPOCH)
    train_steps(model, optimizer, scheduler, 7)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, buffer)
    expected_lrs = train_steps(model, optimizer, scheduler, TOTAL - 7)

    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = toy_model()
    resumed.load_state_dict(saved["model"])
    optimizer, scheduler = build_optimizer(resumed.parameters(), optimizer_params, EPOCHS, STEPS_PER_EPOCH)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    assert train_steps(resumed, optimizer, scheduler, TOTAL - 7) == expected_lrs
    assert len(set(expected_lrs)) > 1 or optimizer_params["scheduler"] == "constant"
    for a, b in zip(resumed.parameters(), model.parameters()):
        assert torch.equal(a, b)


class BodyAndHead(torch.nn.Module):
    """A body and an F0 head named as JDCNet's (`classifier`)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body, self.classifier = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)

    def forward(self, x):
        return self.classifier(torch.tanh(self.body(x)))


@pytest.mark.parametrize("optimizer_params", schedules(), ids=SCHEDULERS)
def test_the_f0_head_learns_at_its_scaled_rate_under_every_schedule(optimizer_params):
    model = BodyAndHead()
    optimizer, scheduler = build_optimizer(parameter_groups(model, 20.0), optimizer_params, EPOCHS, STEPS_PER_EPOCH)
    body, head = optimizer.param_groups
    assert [id(p) for p in head["params"]] == [id(p) for p in model.classifier.parameters()]
    assert [id(p) for p in body["params"]] == [id(p) for p in model.body.parameters()]
    pairs = []
    for _ in range(TOTAL):
        pairs.append((body["lr"], head["lr"]))
        optimizer.zero_grad()
        model(torch.ones(4, 3)).square().sum().backward()
        optimizer.step()
        scheduler.step()
    assert [h for _, h in pairs] == pytest.approx([20 * b for b, _ in pairs])
    assert group_lr_scales(optimizer.state_dict()) == [1.0, 20.0]


def test_at_scale_one_every_parameter_is_in_one_group_as_before_the_option():
    model = BodyAndHead()
    optimizer, _ = build_optimizer(parameter_groups(model, 1.0), UPSTREAM, EPOCHS, STEPS_PER_EPOCH)
    assert len(optimizer.param_groups) == 1 and len(optimizer.param_groups[0]["params"]) == 4
    # A state saved before groups had an lr_scale reads as one group at scale 1.
    state = optimizer.state_dict()
    del state["param_groups"][0]["lr_scale"]
    assert group_lr_scales(state) == [1.0]


def test_the_shipped_config_builds_every_scheduler():
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "Configs" / "config.yml").read_text())
    for name in SCHEDULERS:
        optimizer_params = {**config["optimizer_params"], "scheduler": name}
        assert len(lr_sequence(optimizer_params)) == TOTAL
