"""python -m ftexp.serve --backend vllm: which directory vLLM gets and its command line — a LoRA run
on a base vLLM can load by name is that base plus the run's adapter as a LoRA module under the
run's name; other runs are exported merged — and the one line on a machine without CUDA. (vLLM
itself serving it needs a CUDA machine with vLLM installed: not exercised here.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from conftest import assert_one_line
from ftexp.serving.vllm_backend import ADAPTER_DIR, MERGED_DIR, command, plan


def _run(tmp_path: Path, name: str, method: str = "lora", random_init: dict | None = None) -> Path:
    run = tmp_path / name
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({
        "model": {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "random_init": random_init, "init_from": None,
                  "export_base": None},
        "adapter": {"method": method, "r": 24}}))
    return run


def test_a_lora_run_on_a_named_base_is_served_as_a_lora_module(tmp_path: Path):
    run = _run(tmp_path, "my-sft")
    served = plan(run)
    assert served.model == "Qwen/Qwen2.5-0.5B-Instruct" and served.adapter_only
    assert served.lora == served.export == run / ADAPTER_DIR
    argv = command(served, "my-sft", "127.0.0.1", 8001, "k", max_batch=8)
    assert argv[1:4] == ["-m", "vllm.entrypoints.openai.api_server", "--model"]
    joined = " ".join(argv)
    assert f"--enable-lora --lora-modules my-sft={run / ADAPTER_DIR} --max-lora-rank 32" in joined  # 24 → 32
    assert "--served-model-name Qwen2.5-0.5B-Instruct" in joined and "--api-key k" in joined
    assert "--host 127.0.0.1 --port 8001 --max-num-seqs 8" in joined
    (run / ADAPTER_DIR).mkdir()
    (run / ADAPTER_DIR / "adapter_config.json").write_text("{}")
    assert plan(run).export is None  # exported once, reused by a later start


@pytest.mark.parametrize("method, random_init",
                         [("dora", None), ("none", None), ("lora", {"model_type": "llama"})])
def test_other_runs_are_served_merged_under_the_run_name(tmp_path: Path, method, random_init):
    run = _run(tmp_path, "run", method, random_init)
    served = plan(run)
    assert (served.model, served.lora, served.export) == (str(run / MERGED_DIR), None, run / MERGED_DIR)
    argv = command(served, "run", "127.0.0.1", 8000, None, max_batch=4)
    assert "--enable-lora" not in argv and "--api-key" not in argv
    assert argv[argv.index("--served-model-name") + 1] == "run"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_without_cuda_the_vllm_backend_is_one_line(tmp_path: Path, capsys):
    from ftexp.serve import main

    with pytest.raises(SystemExit) as stop:
        main([str(_run(tmp_path, "run")), "--backend", "vllm"])
    assert stop.value.code == 2
    assert_one_line(capsys.readouterr().err, "--backend vllm needs a CUDA GPU, and none is visible")
