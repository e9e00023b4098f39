"""Serving a trained run: an HTTP server (OpenAI-compatible routes for language-model runs, a
predict route for classifiers and reward models) over a run dir's network.

What lives here: the app (`app.py`), request / response schemas (`schemas.py`), the served
model with its prompt building, generation and batching (`engine.py`). May import ftexp.config,
ftexp.runs, ftexp.builders and ftexp.tasks, and the generate command's RunGenerator (a run is
rebuilt exactly as `ftexp.generate` rebuilds it); imported by the `serve` command and ftexp.ui only.
"""
