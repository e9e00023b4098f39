"""The web UI's pages (Gradio): Compose, Run, Runs & compare, Chat. Each handler is a thin call into
compose.py, runs.py, chat.py or the report command, so what a page shows is what the CLI does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from ftexp.runs.errors import FtexpError
from ftexp.ui import compose as composing
from ftexp.ui.chat import Chats
from ftexp.ui.runs import Launcher, curves, log_tail, loss_curves

# Refresh period of the run page (log tail, curves, status).
REFRESH_S = 1.0
# The console keeps the columns rich lays its tables out in.
CSS = ".console textarea { font-family: ui-monospace, monospace; font-size: 12px; white-space: pre; }"
# Tableau 10, the palette plotting libraries default to.
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac"]
KEY_COLUMNS = ["key", "type", "composed", "default", "allowed"]
# System fonts only: the page asks no font server for anything (it may have no network).
THEME_FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"],
                   font_mono=["ui-monospace", "SFMono-Regular", "monospace"])


def _keys_frame(group: str, config: str | None) -> pd.DataFrame:
    if not config:
        return pd.DataFrame(columns=KEY_COLUMNS)
    rows = [[k.name, k.type, repr(k.value) if isinstance(k.value, str) else str(k.value),
             str(k.default) if k.typed else "—", ", ".join(k.choices)] for k in composing.keys(group, config)]
    return pd.DataFrame(rows, columns=KEY_COLUMNS)


def _plot(frame: pd.DataFrame) -> Any:
    """A LinePlot update whose colours name every metric in the frame: the plot's colour scale
    otherwise stays that of its first frame (a metric logged later would get no line, and a first
    empty frame none at all). None (a blank plot) until something is logged."""
    if not len(frame):
        return None
    names = sorted(frame["metric"].unique())
    return gr.LinePlot(value=frame, color_map={n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)})


def _error_md(message: str | None) -> str:
    return f"**Cannot run:** {message}" if message else ""


def build(launcher: Launcher, reports_dir: Path) -> gr.Blocks:
    options, defaults = composing.group_options(), composing.default_choices()
    groups = list(options)
    chats = Chats()

    def compose(extra: str, key_group: str, *choices: str):
        try:
            argv = composing.overrides(dict(zip(groups, choices, strict=True)), extra)
        except FtexpError as err:
            return "", _error_md(str(err)), "", _keys_frame(key_group, None), None
        result = composing.compose(argv)
        return (result.config or "", _error_md(result.error), result.command,
                _keys_frame(key_group, result.config), result)

    def launch(extra: str, key_group: str, *choices: str):
        config, error, command, keys, result = compose(extra, key_group, *choices)
        if result is None or result.error:
            return config, error, command, keys, gr.update(), gr.update(), ""
        launched = launcher.launch(result.argv)
        names = list(reversed(launcher.launched))
        return (config, error, command, keys, gr.Tabs(selected="run"),
                gr.Dropdown(choices=names, value=launched.name), f"Launched **{launched.name}**.")

    shown: dict[str, tuple] = {}  # per browser session: what the run page last drew

    def refresh(name: str | None, request: gr.Request):
        if not name or name not in launcher.launched:
            return "No run launched yet: compose one and press Launch.", gr.skip(), gr.skip(), gr.skip()
        run = launcher.get(name)
        status = f"**{run.name}** · {run.status} · `{run.path}` · log `{run.log}`"
        tail, frame = log_tail(run.log), curves(run.path)
        # Redraw only what changed: a plot redrawn every tick blinks (and is blank half the time).
        key, state = getattr(request, "session_hash", None) or "", (name, tail, len(frame))
        if shown.get(key) == state:
            return status, gr.skip(), gr.skip(), gr.skip()
        shown[key] = state
        return status, tail, *(_plot(plot) for plot in loss_curves(frame))

    def stop(name: str | None) -> str:
        if not name or name not in launcher.launched:
            return "Nothing to stop."
        launcher.stop(name)
        return f"Sent SIGTERM to **{name}**: it saves its state at the next batch boundary."

    def table():
        frame = launcher.table()
        names = frame["run"].tolist() if len(frame) else []
        finished = frame[frame["status"] == "finished"]["run"].tolist() if len(frame) else []
        return (frame, gr.Dropdown(choices=names),
                gr.Dropdown(choices=finished, value=finished[0] if finished else None))

    def compare(names: list[str]):
        if not names:
            return "Select one or more runs first.", ""
        out = reports_dir / time.strftime("%Y-%m-%d_%H-%M-%S")
        from ftexp.report import write_report

        try:
            html, markdown = write_report([launcher.runs_dir / n for n in names], out)
        except FtexpError as err:
            return _error_md(str(err)), ""
        frame = (f'<iframe id="report-frame" src="/gradio_api/file={html.resolve()}" '
                 'style="width:100%;height:900px;border:1px solid #ddd"></iframe>')
        return markdown.read_text(encoding="utf-8"), frame

    def chat(run_name: str | None, message: str, history: list[dict[str, Any]]):
        history = list(history or [])
        if not run_name:
            raise gr.Error("Pick a finished run first.")
        try:
            answer = chats.reply(launcher.runs_dir / run_name, history, message)
        except FtexpError as err:
            raise gr.Error(" ".join(str(err).split())) from err
        return "", [*history, {"role": "user", "content": message},
                    {"role": "assistant", "content": answer}]

    with gr.Blocks(title="ftexp", analytics_enabled=False) as page:
        gr.Markdown("## ftexp — compose, run, compare and chat")
        with gr.Tabs() as tabs:
            with gr.Tab("Compose", id="compose"):
                with gr.Row():
                    pickers = [gr.Dropdown(options[g], value=defaults.get(g), label=g, elem_id=f"group-{g}",
                                           filterable=True, min_width=160) for g in groups]
                extra = gr.Textbox(label="Overrides (key=value ..., as on the command line)",
                                   placeholder="trainer.max_steps=20 optimizer.learning_rate=1e-4",
                                   elem_id="overrides")
                with gr.Row():
                    check_button = gr.Button("Compose", elem_id="compose-button")
                    launch_button = gr.Button("Launch", variant="primary", elem_id="launch-button")
                error = gr.Markdown(elem_id="compose-error")
                command = gr.Textbox(label="Command", buttons=["copy"], interactive=False,
                                     elem_id="command")
                with gr.Row():
                    with gr.Column(scale=3):
                        config = gr.Code(language="yaml", label="Composed config (as --cfg job prints it)",
                                         interactive=False, max_lines=40, elem_id="config")
                    with gr.Column(scale=2):
                        key_group = gr.Dropdown(groups, value="task", label="Keys of group",
                                                elem_id="key-group")
                        keys = gr.Dataframe(headers=KEY_COLUMNS, interactive=False, wrap=True, elem_id="keys",
                                            column_widths=["26%", "16%", "22%", "18%", "18%"])
            with gr.Tab("Run", id="run"):
                with gr.Row():
                    run_picker = gr.Dropdown([], label="Launched run", elem_id="run-picker", scale=3)
                    stop_button = gr.Button("Stop (saves its state)", variant="stop", elem_id="stop-button")
                launched_note = gr.Markdown()
                status = gr.Markdown(elem_id="run-status")
                with gr.Row():
                    losses = gr.LinePlot(x="step", y="value", color="metric", title="Losses",
                                         elem_id="loss-curves", height=300)
                    metrics = gr.LinePlot(x="step", y="value", color="metric", title="Other metrics",
                                          elem_id="metric-curves", height=300)
                log = gr.Textbox(label="Console", lines=18, max_lines=18, autoscroll=True, interactive=False,
                                 elem_id="log", elem_classes="console")
                gr.Timer(REFRESH_S).tick(refresh, [run_picker], [status, log, losses, metrics],
                                         show_progress="hidden")
            with gr.Tab("Runs & compare", id="runs") as runs_tab:
                refresh_button = gr.Button("Refresh", elem_id="refresh-runs")
                runs = gr.Dataframe(interactive=False, wrap=True, elem_id="runs-table")
                with gr.Row():
                    selected = gr.Dropdown([], multiselect=True, label="Runs to compare",
                                           elem_id="compare-picker", scale=3)
                    compare_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
                summary = gr.Markdown(elem_id="report-summary")
                report = gr.HTML(elem_id="report")
            with gr.Tab("Chat", id="chat") as chat_tab:
                chat_run = gr.Dropdown([], label="Finished run", elem_id="chat-run")
                chatbot = gr.Chatbot(elem_id="chatbot", height=360)
                message = gr.Textbox(label="Message", elem_id="chat-message", submit_btn=True)

        compose_inputs = [extra, key_group, *pickers]
        compose_outputs = [config, error, command, keys]
        check_button.click(lambda *a: compose(*a)[:4], compose_inputs, compose_outputs)
        extra.submit(lambda *a: compose(*a)[:4], compose_inputs, compose_outputs)
        key_group.change(_keys_frame, [key_group, config], [keys])
        launch_button.click(launch, compose_inputs, [*compose_outputs, tabs, run_picker, launched_note])
        stop_button.click(stop, [run_picker], [launched_note])
        for trigger in (refresh_button.click, runs_tab.select, chat_tab.select):
            trigger(table, None, [runs, selected, chat_run])
        compare_button.click(compare, [selected], [summary, report])
        message.submit(chat, [chat_run, message, chatbot], [message, chatbot])
        page.load(lambda *a: compose(*a)[:4], compose_inputs, compose_outputs)
    return page


def launch_kwargs(host: str, port: int, reports_dir: Path) -> dict[str, Any]:
    """Blocks.launch's arguments: the report folder may be served (the compare page's frame), the
    theme without web fonts."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    return dict(server_name=host, server_port=port, allowed_paths=[str(reports_dir.resolve())],
                theme=gr.themes.Default(**THEME_FONTS), css=CSS, show_error=True, quiet=True, footer_links=[])
