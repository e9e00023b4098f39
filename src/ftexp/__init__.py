"""ftexp: Hydra-composed fine-tuning experiments for pretrained transformers."""

__version__ = "0.1.0"
