"""Data: readers, splits, templates, tokenization, packing, the content-addressed caches and the
DataModules each task trains on (labelled text, causal LM, preference pairs and unpaired
examples). Vision inputs (images beside the text) will live here too, with their encoders under
ftexp.builders. May import ftexp.config and ftexp.runs; imported by ftexp.tasks and the commands."""
