"""Optimizers that split the model by its structure (optimizer=galore, apollo, badam, muon,
adam_mini) on the tiny Llama: each lowers the loss of a fixed batch, and keeps the optimizer state
its method promises (the expected numbers computed here from the rank and the weight shapes),
against AdamW's."""

from __future__ import annotations

import copy
import warnings

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import compose_config, learning_seed
from ftexp.builders.backbone import load_backbone
from ftexp.builders.muon import MuonWithAdamW, muon_parameters
from ftexp.builders.optim import build_optimizer, projected_weights, transformer_block_names
from ftexp.runs.errors import ConfigError

pytest.importorskip("galore_torch")
pytest.importorskip("apollo_torch")
pytest.importorskip("badam")
pytest.importorskip("adam_mini")

RANK = 8
VOCAB = 1024
pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 8


def optimizer_settings(name: str, *overrides: str) -> dict:
    cfg = compose_config(["model=tiny_llama", f"optimizer={name}",
                          "optimizer.weight_decay=0.0", *overrides], resolve=False)
    return OmegaConf.to_container(cfg.optimizer)


def tiny_llama() -> nn.Module:
    """conf/model/tiny_llama's architecture with a 1,024-token vocabulary: its 30k-row embedding
    and LM head would dominate the compute, and are not what these optimizers act on."""
    cfg = compose_config(["model=tiny_llama"], resolve=False)
    random_init = {**OmegaConf.to_container(cfg.model.random_init), "vocab_size": VOCAB}
    return load_backbone("random-init", random_init=random_init, causal_lm=True).train()


def fixed_batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (4, 24), generator=torch.Generator().manual_seed(0))


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids).loss


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = STEPS) -> tuple[float, float]:
    ids = fixed_batch()
    first = lm_loss(model, ids).item()
    for _ in range(steps):
        optimizer.zero_grad()
        lm_loss(model, ids).backward()
        optimizer.step()
    return first, lm_loss(model, ids).item()


def _tensors(value) -> list[torch.Tensor]:
    """The tensors a state entry holds: itself, or a projector's projection matrix (or pair)."""
    if isinstance(value, torch.Tensor):
        return [value]
    matrix = getattr(value, "ortho_matrix", None)
    return [] if matrix is None else [matrix] if isinstance(matrix, torch.Tensor) else list(matrix)


def state_numel(optimizer: torch.optim.Optimizer) -> int:
    """Numbers the optimizer keeps: moments and projections (scalar counters left out)."""
    inner = getattr(optimizer, "base_optimizer", optimizer)  # BAdam keeps its state in the base
    return sum(t.numel() for state in inner.state.values() for v in state.values()
               for t in _tensors(v) if t.ndim > 0)


def adamw_state_numel(model: nn.Module) -> int:
    """AdamW's two moments for every weight (full fine-tuning; BAdam unsets requires_grad itself)."""
    return sum(2 * p.numel() for p in model.parameters())


def projected_state_numel(m: int, n: int, rank: int) -> int:
    """GaLore's `std` projection of an m×n gradient: the smaller side goes to `rank`; the two
    moments are the projected gradient's size, plus the projection matrix itself."""
    low_rank = rank * max(m, n)
    projection = rank * min(m, n)
    return 2 * low_rank + projection


@pytest.mark.parametrize("name", ["galore", "apollo"])
def test_low_rank_optimizer_learns_with_the_promised_state(name, margin):
    torch.manual_seed(learning_seed(0))
    model = tiny_llama()
    settings = optimizer_settings(name, f"optimizer.projection.rank={RANK}",
                                  "optimizer.projection.update_proj_gap=4")
    lr = 3e-3 if name == "galore" else 1e-2
    optimizer = build_optimizer(model, settings, learning_rate=lr)
    first, last = train(model, optimizer)
    margin.above("loss fall over the steps", first - last, 0.5, (first, last))

    chosen = projected_weights(model, settings["projection"])
    # The attention and MLP weights of both layers (7 each in Llama), nothing else.
    assert len(chosen) == 14 and all(".layers." in n for n, _ in chosen)
    chosen_ids = {id(p) for _, p in chosen}
    plain = sum(2 * p.numel() for p in model.parameters() if id(p) not in chosen_ids)
    low_rank = sum(projected_state_numel(*p.shape, RANK) for _, p in chosen)
    assert state_numel(optimizer) == plain + low_rank
    # On the projected weights the state shrinks by the factor the shapes and rank give: per
    # layer q, o (64×64) 1,536 each, k, v (32×64) 1,280 each, gate, up, down (128×64) 2,560 each,
    # 13,312 numbers against AdamW's 73,728: 18%.
    full = sum(2 * p.numel() for _, p in chosen)
    assert low_rank / full == pytest.approx(13312 / 73728)
    assert state_numel(optimizer) < adamw_state_numel(model)


def test_galore_state_survives_a_weights_only_checkpoint(tmp_path):
    # Resume checkpoints load with weights_only=True; GaLore keeps projector objects in its state.
    model = tiny_llama()
    optimizer = build_optimizer(model, optimizer_settings("galore", f"optimizer.projection.rank={RANK}"),
                                learning_rate=1e-3)
    train(model, optimizer, steps=1)
    torch.save(optimizer.state_dict(), tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    first = next(s for s in loaded["state"].values() if "projector" in s)
    assert first["projector"].ortho_matrix.shape[0] == RANK


@pytest.fixture
def no_full_gc(monkeypatch):
    """BAdam runs gc.collect() at every block switch, which costs about a second each in a test
    process holding many objects; nothing here depends on it."""
    import badam.block_optim

    monkeypatch.setattr(badam.block_optim.gc, "collect", lambda *args: 0)


def test_badam_trains_one_block_at_a_time(no_full_gc, margin):
    torch.manual_seed(learning_seed(0))
    model = tiny_llama()
    settings = optimizer_settings("badam", "optimizer.blocks.switch_block_every=4",
                                  "optimizer.blocks.switch_mode=ascending")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "BAdam expect model")  # fp32 tiny model: expected here
        optimizer = build_optimizer(model, settings, learning_rate=3e-3)
    layers = transformer_block_names(model)
    assert optimizer.block_prefix_list == [[f"{name}."] for name in layers]

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = fixed_batch()
    first = lm_loss(model, ids).item()
    # BAdam switches when (steps taken + 1) is a multiple of switch_block_every: the first block
    # gets 3 steps here, every later one 4.
    for _ in range(2):
        optimizer.zero_grad()
        lm_loss(model, ids).backward()
        optimizer.step()
    active = sum(p.numel() for n, p in model.named_parameters() if n.startswith(f"{layers[0]}."))
    # Only the active block has state: AdamW's two moments for its parameters, nothing else.
    assert state_numel(optimizer) == 2 * active
    total = sum(p.numel() for p in model.parameters())
    assert state_numel(optimizer) / adamw_state_numel(model) == pytest.approx(active / total)
    assert active / total < 0.2
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(f"{layers[0]}.") for n in changed)
    for _ in range(STEPS - 2):
        optimizer.zero_grad()
        lm_loss(model, ids).backward()
        optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith(f"{layers[1]}.") for n in changed)  # switched to the second block
    assert not any("embed_tokens" in n or "lm_head" in n for n in changed)  # BAdam's default
    margin.above("loss fall over the steps", first - lm_loss(model, ids).item(), 0.1)


def test_badam_resumes_the_block_it_was_on(no_full_gc):
    # A resumed run rebuilds the optimizer (at its first block) and loads the saved state: it must
    # continue the saved block, with that block's moments, and switch when the saved run would.
    torch.manual_seed(0)
    model = tiny_llama()
    settings = optimizer_settings("badam", "optimizer.blocks.switch_block_every=2",
                                  "optimizer.blocks.switch_mode=random")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "BAdam expect model")
        optimizer = build_optimizer(model, settings, learning_rate=3e-3)
        ids = fixed_batch()

        def step(net, opt):
            opt.zero_grad()
            lm_loss(net, ids).backward()
            opt.step()

        for _ in range(2):  # past the first switch (after step 1), in the second block
            step(model, optimizer)
        saved = copy.deepcopy(optimizer.state_dict())
        twin = copy.deepcopy(model).requires_grad_(True)  # as a resumed run builds it
        resumed = build_optimizer(twin, settings, learning_rate=3e-3)
        resumed.load_state_dict(saved)
    assert resumed.active_block == optimizer.active_block
    for _ in range(4):  # across two more switches
        step(model, optimizer)
        step(twin, resumed)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


class _FixedBatchLM(L.LightningModule):
    """The smallest Lightning module over the tiny Llama: one fixed batch, ftexp's optimizer."""

    def __init__(self, settings: dict):
        super().__init__()
        self.model, self.settings, self.losses = tiny_llama(), settings, []

    def training_step(self, batch, batch_idx):
        loss = lm_loss(self.model, batch[0])
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return build_optimizer(self.model, self.settings, learning_rate=3e-3)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(fixed_batch()), batch_size=4)


def test_badam_steps_under_lightning(no_full_gc, margin):
    # Lightning hands step() a closure that runs forward and backward; BAdam needs the gradients
    # before it steps, so the closure must run first (a plain BlockOptimizer asserts there).
    torch.manual_seed(learning_seed(0))
    module = _FixedBatchLM(optimizer_settings("badam", "optimizer.blocks.switch_block_every=2"))
    trainer = L.Trainer(max_steps=24, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "BAdam expect model")
        trainer.fit(module)
    assert trainer.global_step == 24
    margin.below("loss last / first step", module.losses[-1] / module.losses[0], 1.0, module.losses)


@pytest.mark.parametrize(("overrides", "message"), [
    (["optimizer=galore", "adapter=lora"],
     "projects the gradients of full weight matrices, but adapter=lora trains low-rank"),
    (["optimizer=apollo", "strategy=fsdp"], "which strategy=fsdp shards"),
    (["optimizer=badam", "adapter=freeze", "adapter.last_n_layers=1"],
     "optimizer.blocks (BAdam) chooses which layers train itself"),
    (["optimizer=badam", "strategy=ddp"], "optimizer.blocks (BAdam) trains on one device"),
    (["optimizer=badam", "optimizer.blocks.switch_mode=round_robin"],
     "'optimizer.blocks.switch_mode=round_robin' is not a valid choice."),
    (["optimizer=galore", "optimizer.projection.rank=0"], "optimizer.projection.rank=0 must be at least 1."),
    (["optimizer=galore", "+optimizer.projection.proj=random"],
     "optimizer.projection.proj is an APOLLO setting"),
    (["optimizer=apollo", "optimizer.projection.proj=null"], "optimizer.projection.proj must be set"),
    (["optimizer=galore", "optimizer._target_=torch.optim.AdamW"],
     "optimizer.projection is read by GaLore / APOLLO optimizers only"),
    (["optimizer=galore", "optimizer.projection=null"], "needs optimizer.projection"),
    (["optimizer=muon", "adapter=lora", "optimizer.loraplus_lr_ratio=16"],
     "optimizer=muon builds its own parameter groups, so optimizer.loraplus_lr_ratio"),
    (["optimizer=badam", "optimizer._target_=adam_mini.Adam_mini"],
     "optimizer=adam_mini builds its own parameter groups, so optimizer.blocks"),
])
def test_impossible_combinations_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        compose_config(["model=tiny_llama", *overrides], resolve=False)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_projection_key_is_refused():
    with pytest.raises(ConfigError, match="unknown config key 'optimizer.projection.rnak'. "
                                          "Did you mean 'optimizer.projection.rank'"):
        compose_config(["optimizer=galore", "+optimizer.projection.rnak=4"], resolve=False)


def test_rank_above_every_weight_is_refused_with_the_fix():
    settings = optimizer_settings("galore")  # rank 128 > the tiny model's 64-wide weights
    with pytest.raises(ConfigError, match="leaves no weight to project.*lower the rank"):
        build_optimizer(tiny_llama(), settings, learning_rate=1e-3)


# -- Muon and Adam-mini ---------------------------------------------------------------------------

# The tiny Llama per layer: q, o 64×64, k, v 32×64, gate, up 128×64, down 64×128.
LAYER_MATRICES = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64


def test_muon_orthogonalises_block_matrices_and_adamw_takes_the_rest(margin):
    torch.manual_seed(learning_seed(0))
    model = tiny_llama()
    optimizer = build_optimizer(model, optimizer_settings("muon"), learning_rate=3e-3)
    assert isinstance(optimizer, MuonWithAdamW)
    muon_names = {n for n, _ in muon_parameters(model)}
    # The 7 projections of both layers, nothing else: embeddings, LM head and norms go to AdamW.
    assert len(muon_names) == 14 and all(".layers." in n and n.endswith("proj.weight") for n in muon_names)
    by_rule = {rule: {id(p) for g in optimizer.param_groups if g["update_rule"] == rule for p in g["params"]}
               for rule in ("muon", "adamw")}
    named = dict(model.named_parameters())
    assert by_rule["muon"] == {id(named[n]) for n in muon_names}
    assert by_rule["adamw"] == {id(p) for n, p in named.items() if n not in muon_names}
    first, last = train(model, optimizer)
    margin.above("loss fall over the steps", first - last, 0.5, (first, last))
    # Muon keeps one momentum buffer per matrix, AdamW two moments for everything else.
    block = 2 * LAYER_MATRICES
    rest = sum(p.numel() for p in model.parameters()) - block
    assert state_numel(optimizer) == block + 2 * rest < adamw_state_numel(model)


def test_muon_resumes_exactly_from_a_weights_only_checkpoint(tmp_path):
    # A resumed run builds a fresh optimizer and loads the saved state, which replaces its groups
    # and state: both parts must step on what was loaded (momentum buffers and AdamW's moments).
    torch.manual_seed(0)
    model = tiny_llama()
    settings = optimizer_settings("muon")
    optimizer = build_optimizer(model, settings, learning_rate=3e-3)
    train(model, optimizer, steps=2)
    torch.save(optimizer.state_dict(), tmp_path / "state.pt")
    twin = copy.deepcopy(model)
    resumed = build_optimizer(twin, settings, learning_rate=3e-3)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    train(model, optimizer, steps=3)
    train(twin, resumed, steps=3)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_adam_mini_learns_with_one_second_moment_per_head_and_neuron(margin):
    torch.manual_seed(learning_seed(0))
    model = tiny_llama()
    optimizer = build_optimizer(model, optimizer_settings("adam_mini"), learning_rate=3e-3)
    first, last = train(model, optimizer)
    margin.above("loss fall over the steps", first - last, 0.5, (first, last))
    # First moments for every weight; second moments per layer: 4 query heads, 2 key heads (GQA),
    # 32 value and 64 output-projection neurons, 128 + 128 + 64 MLP neurons; one per embedding
    # and LM-head row (1,024 each); the norms' single ones are scalars (not counted here).
    total = sum(p.numel() for p in model.parameters())
    per_layer = 4 + 2 + 32 + 64 + 128 + 128 + 64
    assert state_numel(optimizer) == total + 2 * per_layer + 2 * VOCAB
    assert state_numel(optimizer) / adamw_state_numel(model) < 0.51


def test_muon_and_adam_mini_train_a_whole_run_and_report_their_state(tmp_path):
    # Through the training job (schedule, fused AdamW part, clipping, checkpoint): each run trains
    # and reports its optimizer state, Muon's and Adam-mini's below AdamW's.
    from conftest import sentiment_rows, tiny_overrides
    from ftexp.train import train as train_job

    data = tmp_path / "toy.csv"
    sentiment_rows(64, seed=2).to_csv(data, index=False)
    state = {}
    for name in ("adamw", "muon", "adam_mini"):
        cfg = compose_config(tiny_overrides(data, f"optimizer={name}", "trainer.max_epochs=1",
                                            "adapter=none", "trainer.gradient_clip_val=1.0"),
                             output_dir=tmp_path / name)
        metrics = train_job(cfg)
        assert metrics["global_steps"] > 0 and torch.isfinite(torch.tensor(metrics["val/loss"]))
        state[name] = metrics["optimizer_state_mib"]
    assert 0.5 * state["adamw"] < state["muon"] < state["adamw"]
    assert 0.5 * state["adamw"] <= state["adam_mini"] < 0.55 * state["adamw"]


def test_muon_without_block_matrices_to_update_is_refused_in_one_line():
    model = tiny_llama().requires_grad_(False)
    model.model.norm.weight.requires_grad_(True)  # what a vector-only adapter leaves trainable
    with pytest.raises(ConfigError, match="found no trainable 2-D weight inside the transformer blocks"):
        build_optimizer(model, optimizer_settings("muon"), learning_rate=1e-3)


@pytest.mark.parametrize(("overrides", "message"), [
    (["optimizer=muon", "adapter=prompt_tuning"], "optimizer=muon updates the matrices inside the"),
    (["optimizer=muon", "strategy=fsdp"], "which strategy=fsdp shards"),
    (["optimizer=muon", "optimizer.muon.adjust_lr_fn=keller"],
     "'optimizer.muon.adjust_lr_fn=keller' is not a valid choice."),
    (["optimizer=muon", "optimizer.muon.momentum=1.0"], "optimizer.muon.momentum=1.0 must be in [0, 1)"),
    (["optimizer=muon", "optimizer.muon=null"], "needs optimizer.muon"),
    (["optimizer=muon", "optimizer._target_=torch.optim.AdamW"], "optimizer.muon is read by optimizer=muon"),
    (["optimizer=adam_mini", "adapter=lora"], "optimizer=adam_mini partitions the model's own weights"),
    (["optimizer=adam_mini", "strategy=deepspeed_zero2"], "not strategy=deepspeed"),
])
def test_muon_and_adam_mini_misuse_is_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        compose_config(["model=tiny_llama", *overrides], resolve=False)
    assert message in str(info.value) and "\n" not in str(info.value)
