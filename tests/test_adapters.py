"""Every adapter method on a tiny encoder and a tiny decoder: the loss falls on a learnable task,
the parameters meant to train change, and every other weight stays bit-identical."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from conftest import Margin, compose_config, learning_seed, sentiment_rows, tiny_overrides
from ftexp.builders.adapter import validate_adapter
from ftexp.config.adapter import ADAPTER_METHODS
from ftexp.data.labeled_text import LabeledTextDataModule
from ftexp.runs.errors import ConfigError
from ftexp.tasks.classification import ClassificationTask
from ftexp.train import task_settings

# Methods a given architecture cannot serve, refused up front (tested below).
NOT_FOR = {"tiny_bert": {"llama_adapter", "llama_pro"}}
CASES = [(model, method) for model in ("tiny_bert", "tiny_llama")
         for method in ADAPTER_METHODS if method not in NOT_FOR.get(model, set())]


# Updating whole weight matrices wants a smaller step than adapters and heads do; a head alone,
# IA3's scalings, OFT's rotations and AdaLoRA's budgeted ranks a larger one (at 1e-2 the tiny
# BERT's loss fell only to 0.74-0.79 of its start, against a bar of 0.8).
LEARNING_RATES = {"none": 3e-3, "freeze": 3e-3, "frozen": 3e-2, "ia3": 3e-2, "oft": 3e-2, "boft": 3e-2,
                  "adalora": 3e-2, "llama_pro": 3e-3}
# Soft prompts and prefixes steer a random-init backbone slowly (and shift the features the head
# learns from): more epochs, and only a fall of the loss is required of them.
SOFT_PROMPTS = {"prompt_tuning", "prefix_tuning"}
EPOCHS = {method: 40 for method in SOFT_PROMPTS}
# Settings a method needs on the 2-layer models: LLaMA Pro inserts one block after each layer.
EXTRA = {"llama_pro": ["adapter.num_expand_layers=2"]}


def training_set_loss(task: ClassificationTask, datamodule: LabeledTextDataModule) -> float:
    """Mean cross-entropy over the whole training split, in eval mode (no dropout noise)."""
    task.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in datamodule.train_dataloader():
            logits = task(batch)
            total += float(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
            count += batch["labels"].numel()
    return total / count


def train_and_check(model: str, method: str, tmp_path: Path, tokenizer, margin: Margin, *extra: str,
                    epochs: int | None = None) -> ClassificationTask:
    """Train a few epochs; assert the loss fell, trainable weights moved and the rest did not."""
    data = tmp_path / "toy.csv"
    sentiment_rows(320, seed=1).to_csv(data, index=False)
    cfg = compose_config(tiny_overrides(data, f"model={model}", f"adapter={method}",
                                        f"optimizer.learning_rate={LEARNING_RATES.get(method, 1e-2)}",
                                        "data.batch_size=32", *extra),
                         output_dir=tmp_path)
    datamodule = LabeledTextDataModule(OmegaConf.to_object(cfg.data), tokenizer)
    datamodule.setup()
    plain = task_settings(cfg)
    L.seed_everything(learning_seed(0), verbose=False)
    task = ClassificationTask(**plain, target=datamodule.targets.describe())
    task.configure_model()
    before = {n: p.detach().clone() for n, p in task.named_parameters()}
    loss_before = training_set_loss(task, datamodule)
    L.Trainer(max_epochs=epochs or EPOCHS.get(method, 10), logger=False, enable_checkpointing=False,
              enable_progress_bar=False, limit_val_batches=0, enable_model_summary=False,
              precision="32-true").fit(task, datamodule)

    loss_after = training_set_loss(task, datamodule)
    if method == "adalora":  # its rank budget may prune a module's singular values to zero
        assert any(not torch.equal(p, before[n]) for n, p in task.named_parameters() if "lora_E" in n)
    margin.below("training loss after / before", loss_after / loss_before,
                 0.99 if method in SOFT_PROMPTS else 0.8, (loss_before, loss_after))
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    assert trainable and len(trainable) < len(before) or method == "none"
    for name, param in task.named_parameters():
        if method == "adalora" and "lora_E" in name:
            continue  # checked above
        if name in trainable:
            assert not torch.equal(param, before[name]), f"{name} should train but did not change"
        else:
            assert torch.equal(param, before[name]), f"{name} is frozen but changed"
    return task


@pytest.mark.parametrize(("model", "method"), CASES, ids=[f"{m}-{a}" for m, a in CASES])
def test_adapter_trains_only_what_it_should(model: str, method: str, tmp_path: Path, minilm_tokenizer,
                                            margin):
    train_and_check(model, method, tmp_path, minilm_tokenizer, margin, *EXTRA.get(method, []))


@pytest.mark.parametrize(("quant", "layer_type", "extra"), [
    ("4bit", "Linear4bit", ["quant.compute_dtype=float32"]),
    ("4bit", "Linear4bit", ["quant.quant_type=fp4", "quant.double_quant=false"]),
    ("8bit", "Linear8bitLt", []),
], ids=["nf4", "fp4-bf16", "int8"])
def test_lora_on_a_kbit_decoder_trains_on_cpu(quant: str, layer_type: str, extra: list[str], tmp_path: Path,
                                              minilm_tokenizer, margin):
    pytest.importorskip("bitsandbytes")
    task = train_and_check("tiny_llama", "lora", tmp_path, minilm_tokenizer, margin, f"quant={quant}", *extra,
                           epochs=10)
    linear_types = {type(m).__name__ for m in task.network.backbone.modules()}
    assert layer_type in linear_types


def test_kbit_preparation_upcasts_norms_only(tmp_path: Path):
    pytest.importorskip("bitsandbytes")
    cfg = compose_config(tiny_overrides(tmp_path / "x.csv", "model=tiny_llama", "model.dtype=bfloat16",
                                        "adapter=lora", "quant=4bit"), output_dir=tmp_path)
    plain = task_settings(cfg)
    task = ClassificationTask(**plain, target={"kind": "single_label", "labels": [0, 1]})
    task.configure_model()
    dtypes = {n: p.dtype for n, p in task.network.backbone.named_parameters()}
    assert {d for n, d in dtypes.items() if "norm" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "embed_tokens" in n} == {torch.bfloat16}
    assert any(d == torch.uint8 for d in dtypes.values())  # packed 4-bit weights


def test_llama_adapter_is_refused_on_an_encoder_before_loading():
    with pytest.raises(ConfigError, match="works only on .*llama.* decoders, not 'bert'"):
        validate_adapter({"method": "llama_adapter", "adapter_len": 4}, "bert")


def test_freeze_trains_the_last_layers_only(tmp_path: Path):
    cfg = compose_config(tiny_overrides(tmp_path / "x.csv", "adapter=freeze",
                                        "adapter.last_n_layers=1"), output_dir=tmp_path)
    plain = task_settings(cfg)
    task = ClassificationTask(**plain, target={"kind": "single_label", "labels": [0, 1]})
    task.configure_model()
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    assert any(".layer.1." in n for n in trainable)
    assert not any(".layer.0." in n or "embeddings" in n for n in trainable)
    assert {"network.head.weight", "network.head.bias"} <= trainable


def test_adapter_run_saves_only_adapter_and_head_and_predict_restores_it(tmp_path: Path):
    from ftexp.predict import load_trained
    from ftexp.runs import run_dir
    from ftexp.train import train

    data = tmp_path / "toy.csv"
    sentiment_rows(160).to_csv(data, index=False)
    out = tmp_path / "run"
    # MiniLM (pretrained) so the frozen base is reloaded from its weights, not the checkpoint.
    cfg = compose_config(["data=custom", f"data.path={data}", "data.text_columns=[text]",
                          "adapter=lora", "trainer=smoke", "trainer.enable_progress_bar=false"],
                         output_dir=out)
    metrics = train(cfg)
    saved = torch.load(out / run_dir.BEST_CHECKPOINT, map_location="cpu", weights_only=True)
    names = set(saved["state_dict"])
    assert names and all("lora_" in n or n.startswith("network.head.") for n in names)
    assert metrics["checkpoint_mb"] < 5  # the full MiniLM would be ~87 MB

    task, _, _ = load_trained(out)
    state = task.state_dict()
    for name, value in saved["state_dict"].items():
        assert torch.equal(state[name], value), name


def test_adalora_penalty_is_the_one_peft_adds_to_a_model_computed_loss():
    from types import SimpleNamespace

    from ftexp.builders.adapter import adalora_orthogonal_penalty, apply_adapter
    from ftexp.builders.backbone import load_backbone

    backbone = load_backbone("tiny", random_init={"model_type": "llama", "vocab_size": 100,
                                                  "hidden_size": 32, "num_hidden_layers": 1,
                                                  "num_attention_heads": 2, "intermediate_size": 64})
    model = apply_adapter(backbone, {"method": "adalora", "init_r": 4, "target_r": 2,
                                     "total_step": 10, "orth_reg_weight": 0.5})
    ours = adalora_orthogonal_penalty(model)
    # PEFT adds its penalty when the wrapped model returns a loss: make it return zero.
    model.base_model.model.forward = lambda *a, **k: SimpleNamespace(loss=torch.tensor(0.0))
    assert float(ours) > 0
    assert torch.allclose(ours, model.base_model.forward().loss)


# In a fresh process: pytest's own may have loaded bitsandbytes already.
LORA_THEN_KBIT_LORA = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from conftest import compose_config, sentiment_rows, tiny_overrides
from ftexp.tasks.classification import ClassificationTask
from ftexp.train import task_settings

out = Path(sys.argv[2])
sentiment_rows(32).to_csv(out / "toy.csv", index=False)

def lora_layer_types(*extra):
    cfg = compose_config(tiny_overrides(out / "toy.csv", "model=tiny_llama", "adapter=lora", *extra),
                         output_dir=out)
    task = ClassificationTask(**task_settings(cfg), target={"kind": "single_label", "labels": [0, 1]})
    task.configure_model()
    return sorted({type(m).__module__ + "." + type(m).__name__ for m in task.network.modules()
                   if type(m).__module__.startswith("peft.tuners.lora.") and type(m).__name__ != "LoraModel"})

plain = lora_layer_types()
loaded_for_plain = "bitsandbytes" in sys.modules
print(json.dumps({"plain": plain, "loaded_for_plain": loaded_for_plain,
                  "kbit": lora_layer_types("quant=4bit", "quant.compute_dtype=float32")}))
"""


def test_plain_lora_leaves_bitsandbytes_unloaded_and_a_kbit_lora_after_it_still_gets_kbit_layers(
        tmp_path: Path):
    pytest.importorskip("bitsandbytes")
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", LORA_THEN_KBIT_LORA, str(Path(__file__).parent),
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["plain"] == ["peft.tuners.lora.layer.Linear"]
    assert result["loaded_for_plain"] is False  # ~0.75 s of start-up saved (builders/adapter.py)
    assert "peft.tuners.lora.bnb.Linear4bit" in result["kbit"]  # one process, as in a sweep
