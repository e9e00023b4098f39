"""Pins the behaviour ftexp relies on where a dependency offers no public API, and checks the
public replacements give what the private ones did. Each private use sits behind one function:

- Lightning: `ftexp.runs.checkpoints.load_sharded_checkpoint` (FSDP sharded folder → one checkpoint);
- torchmetrics: `ftexp.tasks.base.set_update_count` (a resumed metric's batch count);
and the public replacements:
- transformers: `MODEL_MAPPING` in `ftexp.builders.strategy.transformer_block_classes`;
- Optuna: storage lookups in `hydra_plugins.ftexp_optuna_sweeper._study.study_id` / `trial_id`.
"""

from __future__ import annotations

import warnings

import optuna
import pytest
import torch
from torch import nn
from torchmetrics import MeanMetric, Metric

from ftexp.builders.strategy import transformer_block_classes
from ftexp.runs.checkpoints import consolidate, load_sharded_checkpoint
from ftexp.tasks.base import FinetuneTask, set_update_count
from hydra_plugins.ftexp_optuna_sweeper._study import open_storage, open_trial, study_id, trial_id

# -- Lightning: sharded FSDP checkpoints ------------------------------------------------------


def _sharded_folder(folder, weights, optimizers, extra):
    """The layout Lightning's FSDPStrategy writes with state_dict_type='sharded': a
    torch.distributed.checkpoint folder of `model` and `optimizer_<i>`, plus its metadata file."""
    import torch.distributed.checkpoint as dcp
    from lightning.fabric.utilities.load import _METADATA_FILENAME

    state = {"model": weights, **{f"optimizer_{i}": o for i, o in enumerate(optimizers)}}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(folder), no_dist=True)
    torch.save(extra, folder / _METADATA_FILENAME)


def test_a_sharded_folder_loads_in_the_trainers_checkpoint_format(tmp_path):
    weights = {"network.head.weight": torch.randn(2, 4), "network.backbone.w": torch.randn(3)}
    moments = {"exp_avg": torch.randn(2, 4), "step": torch.tensor(3.0)}
    optimizers = [{"state": {"network.head.weight": moments},
                   "param_groups": [{"lr": 0.1, "params": ["network.head.weight"]}]},
                  {"state": {}, "param_groups": [{"lr": 0.2, "params": []}]}]
    extra = {"epoch": 2, "global_step": 7, "loops": {"fit_loop": {"x": 1}},
             "hyper_parameters": {"adapter": {"method": "lora"}}}
    folder = tmp_path / "last.ckpt"
    _sharded_folder(folder, weights, optimizers, extra)

    checkpoint = load_sharded_checkpoint(folder)

    assert "model" not in checkpoint and not {"optimizer_0", "optimizer_1"} & set(checkpoint)
    assert set(checkpoint["state_dict"]) == set(weights)
    for name, tensor in weights.items():
        torch.testing.assert_close(checkpoint["state_dict"][name], tensor)
    states = checkpoint["optimizer_states"]  # a list in optimizer order, as the Trainer keeps them
    assert [s["param_groups"][0]["lr"] for s in states] == [0.1, 0.2]
    torch.testing.assert_close(states[0]["state"]["network.head.weight"]["exp_avg"],
                               optimizers[0]["state"]["network.head.weight"]["exp_avg"])
    assert {k: checkpoint[k] for k in extra} == extra

    consolidate(folder)  # one file of weights and metadata; optimizer states dropped
    saved = torch.load(folder, map_location="cpu", weights_only=True)
    assert set(saved) == {"state_dict", *extra}


# -- torchmetrics: running metric states across a resume ------------------------------------------


class _MeanReduced(Metric):
    """A state reduced by mean: forward() folds each batch into it weighted by the update count."""
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("level", torch.tensor(0.0), dist_reduce_fx="mean")

    def update(self, value: torch.Tensor) -> None:
        self.level = value.float().mean()

    def compute(self) -> torch.Tensor:
        return self.level


class _Holder(nn.Module):
    """Just what FinetuneTask's checkpoint hooks read: metric submodules, full-state saves."""
    saves_trainable_only = False

    def __init__(self) -> None:
        super().__init__()
        self.loss = MeanMetric()
        self.level = _MeanReduced()


def _feed(holder: _Holder, values) -> None:
    for v in values:
        holder.loss.update(torch.tensor(v))
        holder.level(torch.tensor(v))  # forward: the reduce-state path that uses the count


def test_a_metric_resumed_mid_epoch_computes_what_an_uninterrupted_one_does():
    before, after = [1.0, 2.0, 6.0], [3.0, 10.0]
    whole = _Holder()
    _feed(whole, before + after)

    first = _Holder()
    _feed(first, before)
    checkpoint = {"optimizer_states": [], "state_dict": {}}
    FinetuneTask.on_save_checkpoint(first, checkpoint)
    assert checkpoint["metric_states"]["loss"]["updates"] == 3
    checkpoint = torch.load(_roundtrip(checkpoint), weights_only=True)

    resumed = _Holder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # compute before any update
        resumed.loss.compute()  # a cached value the load must drop
    FinetuneTask.on_load_checkpoint(resumed, checkpoint)
    assert resumed.loss.update_count == 3 and resumed.loss.update_called
    torch.testing.assert_close(resumed.loss.compute(), first.loss.compute())  # not the cached value
    _feed(resumed, after)

    torch.testing.assert_close(resumed.loss.compute(), whole.loss.compute())
    torch.testing.assert_close(resumed.level.compute(), whole.level.compute())
    assert resumed.level.update_count == whole.level.update_count == 5


def _roundtrip(checkpoint):
    import io

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return buffer


def test_the_update_count_is_readable_but_settable_only_privately():
    metric = MeanMetric()
    metric.update(torch.tensor(1.0))
    assert metric.update_count == 1
    # No public setter: when one appears, set_update_count should use it.
    assert Metric.update_count.fset is None
    set_update_count(metric, 4)
    assert metric.update_count == 4 and metric.update_called
    metric.reset()
    assert metric.update_count == 0 and not metric.update_called


# -- transformers: model type → transformer block classes -------------------------------------


@pytest.mark.parametrize(("model_type", "block"), [("llama", "LlamaDecoderLayer"), ("bert", "BertLayer"),
                                                   ("gpt2", "GPT2Block")])
def test_the_block_classes_of_a_model_type_are_found_without_building_it(model_type, block):
    classes = transformer_block_classes(model_type)
    assert block in {cls.__name__ for cls in classes}
    assert all(issubclass(cls, nn.Module) for cls in classes)


# -- Optuna: storage ids of studies and trials ------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_storage_ids_of_studies_and_trials_match_optunas(tmp_path, kind):
    spec = f"sqlite:///{tmp_path / 'optuna.db'}" if kind == "sqlite" else str(tmp_path / "journal.log")
    storage = open_storage(spec)
    studies = [optuna.create_study(study_name=name, storage=storage) for name in ("a", "b")]
    for n, study in enumerate(studies):  # trial numbers restart per study; ids must not
        for _ in range(n + 2):
            study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    for study in studies:
        assert study_id(storage, study) == study._study_id
        for trial in study.trials:
            stored = storage.get_trial(trial_id(storage, study, trial.number))
            assert trial_id(storage, study, trial.number) == trial._trial_id
            assert (stored.number, stored.params) == (trial.number, trial.params)

    reopened = open_trial(spec, "b", 2)  # what a trial's pruning callback reports through
    reopened.report(0.5, step=1)
    assert studies[1].trials[2].intermediate_values == {1: 0.5}
    assert all(not t.intermediate_values for t in studies[0].trials)
