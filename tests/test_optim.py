"""Optimizers optimise, schedules follow their closed forms, and the LR helpers keep their contracts."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import compose_config, learning_seed
from ftexp.builders.optim import (
    auto_learning_rate,
    build_optimizer,
    parameter_groups,
    scale_learning_rate,
    use_fused_adamw,
)
from ftexp.builders.schedulers import build_scheduler, warmup_steps_for
from ftexp.cli import group_options
from ftexp.runs.errors import ConfigError
from ftexp.runs.paths import config_dir

SCHEDULES = group_options(config_dir())["scheduler"]  # the shipped options, by their file names


def option(group: str, name: str, **changes) -> dict:
    """A group option as the run gets it (its YAML over the schema's defaults), plain."""
    cfg = compose_config([f"{group}={name}"], resolve=False)
    return {**OmegaConf.to_container(cfg[group]), **changes}

LR, T = 1e-3, 100
CHECK_STEPS = (0, 5, 10, 55, 99, 100)


def _expected_lr(name: str, s: int, w: int) -> float:
    """The schedules written out, independent of transformers."""
    if name != "constant" and s < w:
        return LR * s / w
    if name == "linear":
        return LR * (T - s) / (T - w)
    if name == "cosine":
        return LR * 0.5 * (1 + math.cos(math.pi * (s - w) / (T - w)))
    return LR  # constant, constant_with_warmup after warmup


def _lrs_at(name: str, steps: tuple[int, ...], **warmup) -> dict[int, float]:
    optimizer = torch.optim.AdamW(nn.Linear(3, 2).parameters(), lr=LR)
    scheduler = build_scheduler(optimizer, option("scheduler", name, **warmup), T)
    seen = {}
    for s in range(max(steps) + 1):
        if s in steps:
            seen[s] = optimizer.param_groups[0]["lr"]
        optimizer.step()  # no grads: a no-op, but keeps the step-before-scheduler order torch expects
        scheduler.step()
    return seen


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_follows_its_formula(name):
    fraction = 0.0 if name == "constant" else 0.1
    w = 0 if name == "constant" else 10
    got = _lrs_at(name, CHECK_STEPS, warmup_fraction=fraction)
    for s in CHECK_STEPS:
        assert got[s] == pytest.approx(_expected_lr(name, s, w), abs=1e-12), (name, s)


TRANSFORMERS_SCHEDULES = {"constant": "get_constant_schedule",
                          "constant_with_warmup": "get_constant_schedule_with_warmup",
                          "linear": "get_linear_schedule_with_warmup",
                          "cosine": "get_cosine_schedule_with_warmup"}


# (option, the schedule's arguments): no warmup, a warmup, a total that is not a round number,
# the cosine's num_cycles.
SCHEDULE_CASES = [("constant", {})] + [
    (name, {"num_warmup_steps": w} | ({"num_training_steps": t} if name != "constant_with_warmup" else {}))
    for name in ("constant_with_warmup", "linear", "cosine") for w, t in ((0, 100), (10, 100), (7, 13))
] + [("cosine", {"num_warmup_steps": 3, "num_training_steps": 40, "num_cycles": 2.0})]


@pytest.mark.parametrize(("name", "args"), SCHEDULE_CASES)
def test_shipped_schedule_is_transformers_step_for_step(name, args):
    """The shipped options are ftexp's own functions (no transformers.optimization import at
    start-up): the same learning rate as transformers' schedule at every step, bit for bit, and
    past the end (a resumed run that trains longer)."""
    import transformers.optimization as hf

    from ftexp.builders import schedulers

    target = option("scheduler", name)["_target_"]
    assert target.startswith("ftexp.builders.schedulers."), target
    lrs = []
    for make in (getattr(schedulers, target.rsplit(".", 1)[1]), getattr(hf, TRANSFORMERS_SCHEDULES[name])):
        optimizer = torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=LR)
        scheduler = make(optimizer, **args)
        seen = []
        for _ in range(args.get("num_training_steps", 20) + 5):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        lrs.append(seen)
    assert lrs[0] == lrs[1]


def test_schedules_differ_where_they_should():
    # Guards against every name silently mapping to one schedule.
    at = {name: _lrs_at(name, (0, 30), warmup_fraction=0.0 if name == "constant" else 0.1)
          for name in SCHEDULES}
    assert at["linear"][0] == at["cosine"][0] == at["constant_with_warmup"][0] == 0.0
    assert at["constant"][0] == LR
    # Step 30, not the midpoint 55 where linear and cosine both sit at LR / 2.
    assert len({round(at[name][30], 15) for name in ("linear", "cosine", "constant_with_warmup")}) == 3


@pytest.mark.parametrize("name", ["linear", "cosine", "constant_with_warmup"])
def test_explicit_warmup_steps_override_the_fraction(name):
    got = _lrs_at(name, CHECK_STEPS + (3, 7), warmup_fraction=0.5, warmup_steps=7)
    for s in CHECK_STEPS + (3, 7):
        assert got[s] == pytest.approx(_expected_lr(name, s, 7), abs=1e-12), (name, s)


@pytest.mark.parametrize(("args", "expected"), [
    ((100, 0.1, None), 10),
    ((100, 0.0, None), 0),
    ((10, 0.25, None), 3),      # 2.5 rounds up
    ((100, 0.07, None), 7),     # 0.07 * 100 is 7.000000000000001 in floats
    ((100, 0.1, 7), 7),         # explicit steps win
    ((100, 0.1, 0), 0),         # ... including an explicit 0
    ((100, 2.0, None), 100),    # capped at total_steps
    ((100, 0.0, 500), 100),
])
def test_warmup_steps_for(args, expected):
    assert warmup_steps_for(*args) == expected


def test_constant_with_warmup_is_refused():
    optimizer = torch.optim.AdamW(nn.Linear(3, 2).parameters(), lr=LR)
    with pytest.raises(ConfigError, match="has no warmup; use scheduler=constant_with_warmup"):
        build_scheduler(optimizer, option("scheduler", "constant", warmup_fraction=0.1), T)
    with pytest.raises(ConfigError, match="has no warmup; use scheduler=constant_with_warmup"):
        build_scheduler(optimizer, option("scheduler", "constant", warmup_steps=5), T)


def test_unknown_schedule_is_refused():
    optimizer = torch.optim.AdamW(nn.Linear(3, 2).parameters(), lr=LR)
    with pytest.raises(ConfigError, match="scheduler._target_=transformers.get_polynomial_schedul "
                                          "cannot be imported"):
        build_scheduler(optimizer, {"_target_": "transformers.get_polynomial_schedul"}, T)
    # Any function with a schedule's signature is an option away (here transformers' polynomial).
    polynomial = {"_target_": "transformers.get_polynomial_decay_schedule_with_warmup", "power": 2.0,
                  "warmup_fraction": 0.0}
    scheduler = build_scheduler(optimizer, polynomial, T)
    assert scheduler.get_last_lr()[0] == pytest.approx(LR)


def test_parameter_groups_split_decay_and_skip_frozen():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert ids(decay["params"]) == {id(model[0].weight)}
    assert ids(no_decay["params"]) == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                       id(model[2].bias)}


def _least_squares(in_features: int, out_features: int) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """A realisable regression: the targets come from a hidden linear map."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, in_features, generator=g)
    y = x @ torch.randn(in_features, out_features, generator=g) + torch.randn(out_features, generator=g)
    torch.manual_seed(learning_seed(0))
    return nn.Linear(in_features, out_features), x, y


def _loss_ratio(model: nn.Linear, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                steps: int = 50) -> float:
    def loss() -> torch.Tensor:
        return nn.functional.mse_loss(model(x), y)

    first = loss().item()
    for _ in range(steps):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    return first / loss().item()


@pytest.mark.parametrize(("name", "lr"), [("adamw", 0.1), ("adafactor", 0.1)])
def test_optimizer_drives_loss_down(name, lr, margin):
    model, x, y = _least_squares(8, 2)
    optimizer = build_optimizer(model, option("optimizer", name, weight_decay=0.0), learning_rate=lr)
    margin.above("loss first / last", _loss_ratio(model, optimizer, x, y), 10)


def test_adamw_passes_its_hyperparameters():
    model = nn.Linear(4, 2)
    optimizer = build_optimizer(model, option("optimizer", "adamw", weight_decay=0.05, betas=(0.8, 0.95),
                                              eps=1e-6), 3e-4)
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    hyper = (group["lr"], group["betas"], group["eps"], group["weight_decay"])
    assert hyper == (3e-4, (0.8, 0.95), 1e-6, 0.05)
    assert not group["fused"]


def test_adamw_8bit_drives_loss_down(margin):
    bnb = pytest.importorskip("bitsandbytes")
    # 8-bit state is kept only for tensors of >= 4096 elements; 128 x 64 = 8192 qualifies.
    model, x, y = _least_squares(128, 64)
    settings = option("optimizer", "adamw_8bit", weight_decay=0.0)
    optimizer = build_optimizer(model, settings, learning_rate=0.05)
    assert isinstance(optimizer, bnb.optim.AdamW8bit)
    try:
        ratio = _loss_ratio(model, optimizer, x, y)
    except (RuntimeError, NotImplementedError, AttributeError) as err:
        pytest.skip(f"bitsandbytes 8-bit AdamW cannot step on this device: {err}")
    assert optimizer.state[model.weight]["state1"].dtype == torch.uint8  # really 8-bit
    margin.above("loss first / last", ratio, 10)


def test_adamw_8bit_without_bitsandbytes_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(ConfigError, match="pip install") as info:
        build_optimizer(nn.Linear(4, 2), option("optimizer", "adamw_8bit"), 1e-3)
    assert "\n" not in str(info.value) and "ftexp[quant]" in str(info.value)


def test_optimizer_target_keys_are_checked_against_its_signature():
    # Any torch optimizer is an option away; a key it does not take is named with a did-you-mean.
    sgd = {"_target_": "torch.optim.SGD", "momentum": 0.9, "weight_decay": 0.0}
    assert isinstance(build_optimizer(nn.Linear(4, 2), sgd, 1e-3), torch.optim.SGD)
    with pytest.raises(ConfigError, match="unknown key 'optimizer.momentun' for torch.optim.SGD. "
                                          "Did you mean 'optimizer.momentum'"):
        build_optimizer(nn.Linear(4, 2), {**sgd, "momentun": 0.9, "momentum": None}, 1e-3)
    with pytest.raises(ConfigError, match="optimizer._target_=torch.optim.Sgdd cannot be imported: "
                                          "module 'torch.optim' has no attribute 'Sgdd'. "
                                          "Did you mean 'torch.optim.SGD'"):
        build_optimizer(nn.Linear(4, 2), {"_target_": "torch.optim.Sgdd"}, 1e-3)


@pytest.mark.parametrize(("method", "lr"), [
    ("none", 2e-5), ("freeze", 2e-5), ("frozen", 1e-3), ("lora", 2e-4), ("dora", 2e-4),
    ("peft", 2e-4), ("ia3", 3e-3), ("prefix_tuning", 1e-2), ("prompt_tuning", 1e-2),
    ("some_new_adapter", 2e-4),
])
def test_auto_learning_rate(method, lr):
    assert auto_learning_rate(method) == lr


@pytest.mark.parametrize(("rule", "expected"), [("linear", 8e-4), ("sqrt", 4e-4), ("none", 2e-4)])
def test_scale_learning_rate(rule, expected):
    assert scale_learning_rate(2e-4, 4, rule) == pytest.approx(expected, rel=1e-12)


def test_scale_learning_rate_refuses_unknown_rules():
    with pytest.raises(ValueError, match="sqrt"):
        scale_learning_rate(2e-4, 4, "cubic")


@pytest.mark.parametrize(("device", "precision", "clip", "expected"), [
    ("cpu", "32", None, True),
    ("cpu", "32", 1.0, True),
    ("cpu", "bf16-mixed", 1.0, True),  # no gradient scaler: see allow_clipping_without_scaler
    ("mps", "32", None, False),
    ("cuda", "bf16-mixed", 1.0, True),
    ("cuda", "16-mixed", 1.0, False),  # the scaler must unscale before clipping
    ("cuda", "16-mixed", None, True),
    ("cuda", "16-mixed", 0.0, True),
    ("cuda", "32", 1.0, True),
    ("cuda", "bf16-true", 1.0, True),
])
def test_use_fused_adamw(device, precision, clip, expected):
    assert use_fused_adamw(device, precision, clip) is expected


# -- LoRA+ ------------------------------------------------------------------------------------------


def _lora_network() -> nn.Module:
    from ftexp.builders.adapter import import_peft

    peft = import_peft()

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.head = nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.head(torch.tanh(self.proj(x)))

    torch.manual_seed(0)
    # head trains in full (modules_to_save): its weight stays with A, its bias (1-D) goes with B.
    return peft.get_peft_model(Toy(), peft.LoraConfig(r=2, target_modules=["proj"], modules_to_save=["head"]))


def test_loraplus_gives_b_matrices_ratio_times_the_learning_rate():
    network = _lora_network()
    optimizer = build_optimizer(network, option("optimizer", "adamw", loraplus_lr_ratio=16.0), 1e-3)
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(network.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert {id(named[n]) for n in trainable} == set(rate)  # every trainable parameter, once
    for name in trainable:
        expected = 16e-3 if "lora_B" in name or named[name].ndim == 1 else 1e-3
        assert rate[id(named[name])] == pytest.approx(expected), name
    assert any("lora_B" in n for n in trainable) and any("lora_A" in n for n in trainable)
    lora_a = next(n for n in trainable if "lora_A" in n)
    bias = next(n for n in trainable if n.endswith("bias"))
    assert decay[id(named[lora_a])] == 0.01 and decay[id(named[bias])] == 0
    plain = build_optimizer(network, option("optimizer", "adamw"), 1e-3)
    assert {g["lr"] for g in plain.param_groups} == {1e-3}


def test_loraplus_keeps_its_ratio_through_the_schedule_and_is_refused_without_lora(tmp_path):
    network = _lora_network()
    optimizer = build_optimizer(network, option("optimizer", "adamw", loraplus_lr_ratio=4.0), 1e-3)
    scheduler = build_scheduler(optimizer, option("scheduler", "linear", warmup_steps=2), 10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    rates = sorted({round(g["lr"] / optimizer.param_groups[0]["lr"], 9) for g in optimizer.param_groups
                    if g["params"]})
    assert rates == [1.0, 4.0]
    for override, message in (("adapter=ia3", "adapter=ia3 does not have"),
                              ("adapter=none", "adapter=none does not have")):
        with pytest.raises(ConfigError) as err:
            compose_config([override, "optimizer.loraplus_lr_ratio=16"], output_dir=tmp_path)
        assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"optimizer.loraplus_lr_ratio=-1.0 must be a positive number"):
        compose_config(["adapter=lora", "optimizer.loraplus_lr_ratio=-1"], output_dir=tmp_path)
    cfg = compose_config(["adapter=lora", "optimizer.loraplus_lr_ratio=16"], output_dir=tmp_path)
    assert cfg.optimizer.loraplus_lr_ratio == 16
