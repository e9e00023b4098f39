"""The web UI: compose a run from the config groups, launch and watch it, compare finished runs,
and chat with or query a served run.

What lives here: pages and their handlers. May import ftexp.config (choices and checks come from
the schemas, never from copies), ftexp.runs, ftexp.reporting and ftexp.serving; nothing else in
ftexp imports it. Heavy UI packages are imported inside this package only.
"""
