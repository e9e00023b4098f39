"""`trainer.compile=true`: torch.compile the task's network once it is built and placed."""

from __future__ import annotations

import logging

import lightning as L

log = logging.getLogger(__name__)


class CompileNetwork(L.Callback):
    """Compiles in place (`nn.Module.compile`), not by wrapping (`torch.compile(module)`), so
    parameter names — and with them checkpoints, predict and export — stay as without compile.
    On fit start the network exists (`configure_model`) and sits on its device."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        network = getattr(pl_module, "network", None)
        if network is not None and not getattr(network, "_ftexp_compiled", False):
            network.compile()
            network._ftexp_compiled = True
            log.info("network compiled with torch.compile (the first steps include compilation)")
