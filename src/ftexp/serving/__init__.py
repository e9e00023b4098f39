"""Serving a trained run: an HTTP server (OpenAI-compatible routes for language-model runs, a
predict route for classifiers and reward models) over a run dir's network.

What lives here: the app, request / response schemas, batching. May import ftexp.config,
ftexp.runs, ftexp.builders and ftexp.tasks (to rebuild a run's network, as predict and generate
do); imported by the `serve` command and ftexp.ui only.
"""
