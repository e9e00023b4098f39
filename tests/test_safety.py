"""Safety defaults and determinism: no remote code unless asked, safetensors weights unless asked,
checkpoints unpickled with weights_only, no secret in any file a run writes, and a seeded CPU run
that repeats bit for bit."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config, tiny_overrides
from ftexp.builders.backbone import load_backbone, load_configured_backbone, model_type_of
from ftexp.config.model import ModelConfig
from ftexp.runs import run_dir
from ftexp.runs.errors import ConfigError, FtexpError
from ftexp.runs.paths import config_dir
from test_bad_input import _tiny_model_dir, run_in_process

# -- remote code ------------------------------------------------------------------------------------


def test_trust_remote_code_is_off_unless_set(tmp_path: Path):
    assert ModelConfig.trust_remote_code is False
    for path in sorted((config_dir() / "model").glob("*.yaml")):
        assert OmegaConf.load(path).get("trust_remote_code", False) is False, path
    assert compose_config([], output_dir=tmp_path).model.trust_remote_code is False


def test_remote_code_is_refused_and_never_run(tmp_path: Path):
    folder = _tiny_model_dir(tmp_path, remote_code=True)
    with pytest.raises(ConfigError, match="set model.trust_remote_code=true"):
        model_type_of(str(folder))
    assert not (tmp_path / "remote_code_ran").exists()


# -- weights: safetensors unless the user opts in ---------------------------------------------------


def test_pickled_weights_are_refused_unless_allowed(tmp_path: Path):
    folder = _tiny_model_dir(tmp_path, weights="bin")
    with pytest.raises(ConfigError, match=r"only pickled ones \(pytorch_model.bin\).*"
                                          r"set model.allow_pickled_weights=true"):
        load_backbone(str(folder))
    assert ModelConfig.allow_pickled_weights is False
    model = load_configured_backbone({"name_or_path": str(folder), "dtype": "float32",
                                      "trust_remote_code": False, "allow_pickled_weights": True})
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    assert torch.equal(model.embeddings.word_embeddings.weight, state["embeddings.word_embeddings.weight"])
    # The key's default lives in the schema, so every model option has it without listing it.
    cfg = compose_config(["model=tiny_bert", "model.allow_pickled_weights=true"], output_dir=tmp_path)
    assert cfg.model.allow_pickled_weights is True


def test_safetensors_win_over_pickled_weights_in_the_same_directory(tmp_path: Path):
    folder = _tiny_model_dir(tmp_path)  # model.safetensors
    other = {k: torch.zeros_like(v) for k, v in load_backbone(str(folder)).state_dict().items()}
    torch.save(other, folder / "pytorch_model.bin")
    model = load_backbone(str(folder))
    assert model.embeddings.word_embeddings.weight.abs().sum() > 0  # not the zeros of the .bin


# -- checkpoints: weights_only ----------------------------------------------------------------------


class _RunsCode:
    """Unpickling this creates a file: the proof that a checkpoint ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _tampered_run(tmp_path: Path) -> tuple[Path, Path]:
    run, marker = tmp_path / "run", tmp_path / "code_ran"
    (run / "checkpoints").mkdir(parents=True)
    (run / run_dir.CONFIG_FILE).write_text("model: {}\n")
    torch.save({"state_dict": {}, "hyper_parameters": {"payload": _RunsCode(marker)}},
               run / run_dir.BEST_CHECKPOINT)
    return run, marker


def test_predict_export_and_lightning_refuse_a_checkpoint_that_runs_code(tmp_path: Path, capsys):
    from lightning.fabric.utilities.cloud_io import _load as lightning_load

    from ftexp.export import export_run
    from ftexp.predict import load_trained, main

    run, marker = _tampered_run(tmp_path)
    with pytest.raises(FtexpError, match="holds objects other than tensors and plain containers"):
        load_trained(run)  # predict and generate load runs through this
    with pytest.raises(FtexpError, match="holds objects other than tensors and plain containers"):
        export_run(run, tmp_path / "export")
    # trainer.test(ckpt_path=…) in the training job loads through Lightning, whose default is
    # torch's: weights_only=True since torch 2.6.
    with pytest.raises(pickle.UnpicklingError):
        lightning_load(run / run_dir.BEST_CHECKPOINT)
    with pytest.raises(SystemExit) as stop:
        main([str(run), str(tmp_path / "new.csv")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(f"ftexp: error: checkpoint '{run / run_dir.BEST_CHECKPOINT}'")
    assert not marker.exists()


# -- secrets ---------------------------------------------------------------------------------------

SECRETS = {
    "HF_TOKEN": "hf_FakeFakeFake0123456789abcdefXYZ",
    "HUGGING_FACE_HUB_TOKEN": "hub-fake-token-5550123",
    "WANDB_API_KEY": "wandb-fake-key-0123456789abcdef",
    "MY_DB_PASSWORD": "db-fake-password-8675309",
}
OVERRIDE_SECRET = "sk-fake-override-secret-4242"
URL_PASSWORD = "pg-fake-url-password-31337"


def test_no_secret_reaches_any_file_of_the_run(toy_csv: Path, tmp_path: Path, monkeypatch, capsys):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OPENAI_API_KEY", "")  # Hydra's env_set sets it; undone after the test
    args = [*tiny_overrides(toy_csv, "trainer.max_epochs=1"),
            f"+hydra.job.env_set.OPENAI_API_KEY={OVERRIDE_SECRET}",  # a secret-named override
            f"trial.storage=postgresql://optuna:{URL_PASSWORD}@db.internal/optuna",
            f"hydra.run.dir={tmp_path / 'run'}"]
    code, stderr = run_in_process(args, monkeypatch, capsys)
    assert code == 0, stderr
    run = tmp_path / "run"
    assert (run / run_dir.METRICS_FILE).is_file()
    secrets = [*SECRETS.values(), OVERRIDE_SECRET, URL_PASSWORD]
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {".hydra/hydra.yaml", "config.yaml", "environment.json", "ftexp.log"} <= {
        p.relative_to(run).as_posix() for p in files}
    for path in files:
        content = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in content, f"{secret} written to {path.relative_to(run)}"
    command = json.loads((run / run_dir.ENVIRONMENT_FILE).read_text())["command"]
    assert f"+hydra.job.env_set.OPENAI_API_KEY={run_dir.REDACTED}" in command
    saved = OmegaConf.load(run / run_dir.CONFIG_FILE)
    assert saved.trial.storage == f"postgresql://optuna:{run_dir.REDACTED}@db.internal/optuna"
    assert saved.data.path == str(toy_csv)  # the rest as it was


def test_redaction_rules():
    assert run_dir.is_secret_name("HF_TOKEN") and run_dir.is_secret_name("wandb_api_key")
    assert run_dir.is_secret_name("AWS_SECRET_ACCESS_KEY") and run_dir.is_secret_name("PGPASSWORD")
    assert not run_dir.is_secret_name("TOKENIZERS_PARALLELISM")
    assert not run_dir.is_secret_name("max_new_tokens") and not run_dir.is_secret_name("tokenizer")
    payload = {"hub_token": "abc", "token_dim": 768, "notes": ["api_key=xyz", "generation.max_new_tokens=5"]}
    assert run_dir.redact(payload, set()) == {"hub_token": run_dir.REDACTED, "token_dim": 768,
                                              "notes": [f"api_key={run_dir.REDACTED}",
                                                        "generation.max_new_tokens=5"]}
    # Short values of secret-named variables (flags like =1) are not hunted through the text.
    assert run_dir.secret_values({"HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}, []) == set()


# -- determinism -----------------------------------------------------------------------------------

# Wall-clock and cache bookkeeping: everything else in metrics.json must repeat exactly.
# Timings, and what names the run rather than what it computed (`group` hashes the config, which
# trainer.deterministic changes; `seed` differs on purpose).
NOT_REPEATABLE = {"fit_seconds", "train_samples_per_second", "train_tokens_per_second",
                  "train_seconds_per_epoch", "peak_memory_gib", "cache_tokenized", "group", "seed"}


def _seeded_run(toy_csv: Path, out: Path, seed: int, *extra: str) -> tuple[dict, dict]:
    from ftexp.train import train

    # 48 training rows, batch 16, 2 epochs: 6 optimizer steps with dropout and shuffling.
    cfg = compose_config(tiny_overrides(toy_csv, f"seed={seed}", "trainer.max_epochs=2",
                                        "data.max_train_samples=48", "data.eval_batch_size=16",
                                        *extra), output_dir=out)
    train(cfg)
    metrics = json.loads((out / run_dir.METRICS_FILE).read_text())
    state = torch.load(out / run_dir.BEST_CHECKPOINT, weights_only=True)["state_dict"]
    return {k: v for k, v in metrics.items() if k not in NOT_REPEATABLE}, state


def test_same_seed_repeats_bit_for_bit_and_another_seed_differs(toy_csv: Path, tmp_path: Path,
                                                                monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # Lightning sets it when deterministic
    try:
        first, first_state = _seeded_run(toy_csv, tmp_path / "a", 7)
        # The repeat also asks Lightning for deterministic algorithms, and gets them.
        again, again_state = _seeded_run(toy_csv, tmp_path / "b", 7, "trainer.deterministic=true")
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    other, _ = _seeded_run(toy_csv, tmp_path / "c", 8)
    assert set(first) >= {"val/loss", "test/loss", "train/loss", "global_steps"}
    assert first == again  # exactly: floats compared bit for bit
    assert first_state.keys() == again_state.keys()
    assert all(torch.equal(first_state[k], again_state[k]) for k in first_state)
    assert other["val/loss"] != first["val/loss"] and other["train/loss"] != first["train/loss"]
