"""Which worker runs a trial, and what becomes of trials whose worker is gone.

Each trial records its worker (host, pid) and a heartbeat in its system attributes while it runs;
a sweep that starts or continues on the same storage finds trials left RUNNING by a worker whose
process has ended (same host) or that sent no heartbeat for several intervals (any host), marks
them failed (they count for nothing) and queues their parameters again, so the study still gets
`n_trials` real trials.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ._study import trial_id

log = logging.getLogger(__name__)

# Trial system attributes: which worker runs the trial, and when it last said it still does.
HOST_ATTR, PID_ATTR, HEARTBEAT_ATTR = "ftexp:host", "ftexp:pid", "ftexp:heartbeat"
# Trial user attributes: why a trial's worker stopped while it ran (the trial counts for nothing),
# and, on the queued rerun, the number of the trial it repeats.
INTERRUPTED_ATTR, RETRY_ATTR = "interrupted", "retry_of"
STALE_AFTER_HEARTBEATS = 4


def claim(storage: Any, trial_id_: int) -> None:
    """Record that this process runs the trial, with a first heartbeat."""
    for key, value in ((HOST_ATTR, socket.gethostname()), (PID_ATTR, os.getpid()),
                       (HEARTBEAT_ATTR, time.time())):
        storage.set_trial_system_attr(trial_id_, key, value)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):  # a zombie (killed, not yet reaped) is gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


class Heartbeat:
    """Records, every `interval` seconds, that this worker still runs `trial_ids`."""

    def __init__(self, storage: Any, trial_ids: list[int], interval: float) -> None:
        self.storage, self.trial_ids, self.interval = storage, trial_ids, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ftexp-sweep-heartbeat", daemon=True)

    def beat(self) -> None:
        for id_ in self.trial_ids:
            self.storage.set_trial_system_attr(id_, HEARTBEAT_ATTR, time.time())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as err:  # a busy database must not end the trial
                log.debug("heartbeat not recorded: %s", err)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def excluded(trial: FrozenTrial) -> bool:
    """A trial whose worker stopped while it ran: not one of the study's n_trials."""
    return trial.state == TrialState.FAIL and bool(trial.user_attrs.get(INTERRUPTED_ATTR))


def requeue(storage: Any, study: optuna.Study, trial: FrozenTrial, why: str) -> None:
    """Mark a trial whose worker stopped as failed (it counts for nothing) and queue its
    parameters again, so the study still gets n_trials real trials."""
    if trial.state != TrialState.RUNNING:
        return
    storage.set_trial_user_attr(trial_id(storage, study, trial.number), INTERRUPTED_ATTR, why)
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number})
    log.warning("trial %d: %s; marked failed, its parameters queued again", trial.number, why)


def recover(storage: Any, study: optuna.Study, heartbeat_interval: float) -> None:
    """Trials left RUNNING by a worker that is gone: its process has ended (same host), or it
    has not recorded a heartbeat for several intervals (any host)."""
    host, now = socket.gethostname(), time.time()
    stale_after = STALE_AFTER_HEARTBEATS * heartbeat_interval
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.system_attrs
        if HOST_ATTR not in attrs or (attrs[HOST_ATTR] == host and attrs.get(PID_ATTR) == os.getpid()):
            continue
        if attrs[HOST_ATTR] == host:
            if process_alive(int(attrs.get(PID_ATTR, -1))):
                continue
            why = f"its sweep process ({host}, pid {attrs.get(PID_ATTR)}) is gone"
        elif now - float(attrs.get(HEARTBEAT_ATTR, 0)) > stale_after:
            why = f"its worker on {attrs[HOST_ATTR]} sent no heartbeat for {stale_after} s"
        else:
            continue
        requeue(storage, study, trial, why)
