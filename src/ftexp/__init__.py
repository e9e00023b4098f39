"""ftexp: Hydra-composed fine-tuning experiments for pretrained transformers."""

import logging

__version__ = "0.1.0"

# bitsandbytes warns at import, on every AVX512-BF16 CPU, that an optional kernel package from
# the Hub is missing; it falls back to its own kernel. Keep that off the one-line error channel.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
