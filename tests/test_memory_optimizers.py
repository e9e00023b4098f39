"""Memory-saving optimizers (optimizer=galore, apollo, badam) on the tiny Llama, fully fine-tuned:
each lowers the loss of a fixed batch, and keeps the optimizer state its method promises (the
expected numbers computed here from the rank and the weight shapes), against AdamW's."""

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
from ftexp.builders.optim import build_optimizer, projected_weights, transformer_block_names
from ftexp.runs.errors import ConfigError

pytest.importorskip("galore_torch")
pytest.importorskip("apollo_torch")
pytest.importorskip("badam")

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
