"""The web UI's run and chat logic without a browser: a launched run is the CLI's own subprocess
with its run dir where the UI put it, its status follows the process (finished, stopped by the
stop button's SIGTERM, failed), the log tail shows a progress bar's latest state, the curves are
csv/metrics.csv in long form, the runs table reads the run dirs, and a chat reply is what the
serving code generates for the same conversation."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from ftexp.ui.runs import Launcher, curves, log_tail, loss_curves

# A stand-in for `python -m ftexp`: writes a run dir where hydra.run.dir says, then behaves as
# asked by its first argument (finish, wait for SIGTERM and exit 2 as a stopped run does, or fail).
FAKE_RUN = r"""
import pathlib, signal, sys, time
mode, out = sys.argv[1], pathlib.Path(sys.argv[-1].split("=", 1)[1])
(out / ".hydra").mkdir(parents=True)
(out / "config.yaml").write_text("task: {name: classification}\n")
(out / ".hydra" / "hydra.yaml").write_text(
    "hydra: {runtime: {choices: {adapter: lora, model: minilm, paths: default, hydra/sweeper: basic}}}\n")
for i in range(3):
    print(f"\rEpoch 0: {i + 1}/3", end="", flush=True)
print("\ndone with the epoch", flush=True)
if mode == "wait":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))
    print("waiting", flush=True)
    time.sleep(60)
if mode == "fail":
    sys.exit(1)
(out / "metrics.json").write_text('{"test_accuracy": 0.75, "kind": "train"}')
"""


def _fake(tmp_path: Path) -> Launcher:
    return Launcher(tmp_path / "runs", tmp_path / "logs", program=[sys.executable, "-c", FAKE_RUN])


def _wait(predicate, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_launched_run_is_followed_from_running_to_its_end(tmp_path: Path):
    launcher = _fake(tmp_path)
    done, failed = launcher.launch(["finish"]), launcher.launch(["fail"])
    assert done.name != failed.name and done.path.parent == tmp_path / "runs"
    assert done.argv == ["finish"] and done.log.parent == tmp_path / "logs"  # the log is not in the run dir
    _wait(lambda: done.process.poll() is not None and failed.process.poll() is not None)
    assert (done.status, failed.status) == ("finished", "failed (exit 1)")
    assert log_tail(done.log).splitlines() == ["Epoch 0: 3/3", "done with the epoch"]

    table = launcher.table().set_index("run")
    assert table.loc[done.name, "status"] == "finished" and table.loc[done.name, "test_accuracy"] == 0.75
    assert table.loc[failed.name, "status"] == "failed (exit 1)"
    assert table.loc[done.name, "model"] == "minilm" and table.loc[done.name, "adapter"] == "lora"
    assert list(table.columns[:3]) == ["status", "model", "adapter"]  # the groups in the compose page's order
    # Another UI (or the CLI) sees the same dirs: the finished one by its metrics, the other incomplete.
    other = Launcher(tmp_path / "runs", tmp_path / "logs").table().set_index("run")
    assert other["status"].to_dict() == {done.name: "finished", failed.name: "incomplete"}


def test_the_stop_button_sends_sigterm_and_the_run_counts_as_stopped(tmp_path: Path):
    launcher = _fake(tmp_path)
    run = launcher.launch(["wait"])
    _wait(lambda: "waiting" in log_tail(run.log))
    assert run.status == "running"
    launcher.stop(run.name)
    run.process.wait(timeout=30)
    assert run.status == "stopped"
    assert run.process.returncode == 2


def test_curves_keep_each_metric_on_the_rows_it_was_logged(tmp_path: Path):
    (tmp_path / "csv").mkdir()
    assert curves(tmp_path).empty  # nothing logged yet
    (tmp_path / "csv" / "metrics.csv").write_text(
        "epoch,step,train_loss,val_loss\n0,0,2.5,\n0,1,2.0,\n0,1,,1.9\n0,2,1.5,\n")
    frame = curves(tmp_path)
    assert list(frame.columns) == ["step", "value", "metric"]
    by_metric = {m: list(zip(g["step"], g["value"], strict=True)) for m, g in frame.groupby("metric")}
    assert by_metric == {"train_loss": [(0, 2.5), (1, 2.0), (2, 1.5)], "val_loss": [(1, 1.9)]}
    (tmp_path / "csv" / "metrics.csv").write_text("")  # caught as the logger rewrites it
    assert curves(tmp_path).empty


@pytest.mark.usefixtures("one_thread")
def test_a_real_launch_trains_and_the_chat_answers_as_the_server_would(tmp_path: Path):
    from ftexp.serving.engine import Engine
    from ftexp.ui.chat import Chats

    launcher = Launcher(tmp_path / "runs", tmp_path / "logs")
    run = launcher.launch(["model=tiny_llama", "task=causal_lm", "adapter=lora", "data=code_alpaca",
                           "trainer=smoke", "trainer.max_steps=3", "trainer.precision=32",
                           "trainer.enable_progress_bar=false"])
    run.process.wait(timeout=300)
    assert run.status == "finished", log_tail(run.log)
    assert (run.path / "checkpoints" / "best.ckpt").is_file()
    logged = curves(run.path)
    losses, others = loss_curves(logged)
    assert {"train/loss_step", "val/loss"} <= set(losses["metric"]) and losses["step"].max() >= 1
    assert "val/perplexity" in set(others["metric"]) and "lr-AdamW/pg1" not in set(others["metric"])
    row = launcher.table().set_index("run").loc[run.name]
    assert (row["status"], row["model"], row["task"], row["adapter"]) == ("finished", "tiny_llama",
                                                                          "causal_lm", "lora")

    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    answer = Chats().reply(run.path, history, "Write a loop.", max_tokens=8)
    engine = Engine.from_path(run.path)
    assert engine.single_turn  # trained through the Alpaca prompt template: each message on its own
    prompt = engine.chat_ids([{"role": "user", "content": "Write a loop."}])
    assert answer == engine.generate([prompt], engine.settings(8, 0.0, None, len(prompt)), [])[0].text


def test_the_ui_command_refuses_a_bad_auth_and_a_missing_gradio_in_one_line(monkeypatch, capsys):
    import builtins

    from conftest import assert_one_line
    from ftexp.ui.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["--auth", "no-password"])
    assert stop.value.code == 2
    assert_one_line(capsys.readouterr().err, "--auth takes USER:PASSWORD")

    real_import = builtins.__import__

    def without_gradio(name, *args, **kwargs):
        if name == "gradio" or name.startswith("gradio."):
            raise ImportError("No module named 'gradio'", name="gradio")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "ftexp.ui.app", raising=False)
    monkeypatch.setattr(builtins, "__import__", without_gradio)
    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 2
    assert_one_line(capsys.readouterr().err,
                    "the web UI needs gradio, which is not installed; run: pip install 'ftexp[ui]'.")
