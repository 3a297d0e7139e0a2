"""WorkerPool: one ModelManager per device, and the routing of requests to them.

Each worker is a whole ModelManager on its own device (its placement plan chosen for that card by `plans.py`), so N
GPUs serve N generations at once: N users in parallel, or Compare's Raw and Turbo side by side. The pool stands where
the single manager stands for the service (`generate`, `status`, `loras`, ...), so the history, cancel, previews and
the queue limit work exactly as with one GPU; `concurrent_generations` tells the service and Gradio's queue how many
run at once.

Routing: a request goes to a free worker whose checkpoint is ready, preferring one that holds it on the GPU now (a
small-GPU plan swaps transformers; a large card holds both), then one whose transformer has the request's LoRAs folded
already, then the one that served least; with no worker free it waits in arrival order. A worker whose device fails
(a CUDA error poisons its context for good) is taken out of service, and the others go on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .checkpoints import CHECKPOINTS
from .errors import Cancelled, NotReady, error_summary
from .lora_fold import patcher_of
from .manager import CheckpointStatus, GenerationResult, ManagerStatus, ModelManager
from .request import GenerationRequest

if TYPE_CHECKING:
    from .content_filter import ContentPolicy
    from .lora_files import LoraContents
    from .lora_library import LoraFile, LoraLibrary
    from .preview import StepCallback

log = logging.getLogger(__name__)
WAIT_POLL_S = 0.05  # how often a request waiting for a worker looks at its cancel event


@dataclass(eq=False)
class Worker:
    """One device's manager and what the pool knows about it."""

    index: int
    manager: ModelManager
    busy: bool = False
    lost: str = ""  # why the worker was taken out of service ("" while it serves)
    served: int = 0  # generations routed to it

    @property
    def name(self) -> str:
        return f"worker {self.index} ({self.manager.device})"

    def ready_for(self, checkpoint: str) -> bool:
        return not self.lost and self.manager.checkpoint_state(checkpoint) == "ready"

    def holds(self, checkpoint: str) -> bool:
        """Whether the checkpoint's transformer is on the GPU now: always under a resident plan, only the active one
        under a swapping plan (`residency.py`)."""
        residency = self.manager.residency
        return residency is None or residency.active == checkpoint

    def has_loras_of(self, request: GenerationRequest) -> bool:
        """Whether the checkpoint's transformer has exactly the request's LoRAs folded in already (no refold)."""
        pipe = self.manager.pipes.get(request.checkpoint)
        patcher = patcher_of(pipe.transformer) if pipe is not None else None
        folded = {(weights.name, strength) for weights, strength in patcher.active} if patcher is not None else set()
        return folded == {(choice.name, choice.weight) for choice in request.active_loras if choice.weight != 0}


@dataclass(eq=False)
class _Ticket:
    """A request waiting for a worker (`worker` is set when the pool assigns one)."""

    request: GenerationRequest
    worker: Worker | None = None
    error: Exception | None = None


@dataclass
class PoolStatus:
    """The workers' statuses, as the status line shows them; `checkpoints` is what the pool can serve (a checkpoint is
    ready when one worker has it ready)."""

    workers: list[tuple[Worker, ManagerStatus]]
    checkpoints: dict[str, CheckpointStatus] = field(default_factory=dict)

    @property
    def settled(self) -> bool:
        return all(status.settled for _worker, status in self.workers)

    def summary(self) -> str:
        busy = sum(worker.busy for worker, _ in self.workers)
        parts = [f"{len(self.workers)} workers ({busy} busy)"]
        for worker, status in self.workers:
            state = f"OUT OF SERVICE ({worker.lost})" if worker.lost else status.summary()
            parts.append(f"worker {worker.index}: {state}")
        return " ‖ ".join(parts)


def device_lost(error: BaseException) -> bool:
    """Whether an error means the device itself failed (its CUDA context is unusable from now on), not the request."""
    return isinstance(error, torch.AcceleratorError) or "CUDA error" in str(error)


class WorkerPool:
    """Managers on several devices behind one `generate`. Build it with the managers (not started); `start` loads
    them one after another, so host RAM holds one device's weights in transit at a time and the first worker serves
    while the next loads."""

    def __init__(self, managers: Sequence[ModelManager]) -> None:
        if not managers:
            raise ValueError("a worker pool needs at least one manager")
        self.workers = [Worker(index, manager) for index, manager in enumerate(managers)]
        self._changed = threading.Condition()
        self._waiting: list[_Ticket] = []  # arrival order
        self._loader: threading.Thread | None = None
        self._all_started = threading.Event()

    # ----------------------------------------------------------------------------------------------- the manager's face
    @property
    def concurrent_generations(self) -> int:
        return len(self.workers)

    @property
    def demo(self) -> bool:
        return self.workers[0].manager.demo

    @property
    def loras(self) -> LoraLibrary | None:
        """The LoRA library (one folder for every worker: `studio.devices.build_engine` gives them the same)."""
        return self.workers[0].manager.loras

    @property
    def placement(self) -> str:
        return ", ".join(dict.fromkeys(str(worker.manager.placement) for worker in self.workers))

    def start(self, background: bool = True) -> None:
        if background:
            self._loader = threading.Thread(target=self._start_all, name="krea2-workers", daemon=True)
            self._loader.start()
        else:
            self._start_all()

    def _start_all(self) -> None:
        for worker in self.workers:
            worker.manager.start(background=False)  # a failure is the worker's status, never the pool's end
            with self._changed:
                self._dispatch()  # requests waiting for this checkpoint may go now
        self._all_started.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Whether every worker finished loading (ready or failed) within `timeout`."""
        return self._all_started.wait(timeout)

    def status(self) -> PoolStatus:
        statuses = [(worker, worker.manager.status()) for worker in self.workers]
        checkpoints = {}
        for key in CHECKPOINTS:
            mine = [status.checkpoints[key] for worker, status in statuses if not worker.lost]
            ready = [s for s in mine if s.state == "ready"]
            loading = [s for s in mine if s.state == "loading"]
            failed = [s for s in mine if s.state == "failed"]
            if ready:
                checkpoints[key] = CheckpointStatus("ready")
            elif loading or not mine:
                checkpoints[key] = CheckpointStatus("loading" if loading else "failed", "" if loading else "no worker")
            else:
                checkpoints[key] = CheckpointStatus("failed", failed[0].reason)
        return PoolStatus(statuses, checkpoints)

    @property
    def content_policy(self) -> ContentPolicy | None:
        """The policy for work outside a generation (a history import's screening): every worker's has the same
        block list and settings (studio/devices.py gives each card its own copy, its classifier on that card), so
        the first worker in service whose classifier is ready, else the first in service (its sentence says why the
        filter is not ready), else the first. A lost worker's card failed: its classifier would fail with it."""
        serving = [worker.manager.content_policy for worker in self.workers if not worker.lost]
        ready = [policy for policy in serving if policy is not None and policy.state == "ready"]
        return (ready or serving or [self.workers[0].manager.content_policy])[0]

    def lora_files(self, request: GenerationRequest) -> list[LoraFile]:
        return self.workers[0].manager.lora_files(request)

    def _checking_worker(self) -> Worker:
        """A worker with a checkpoint ready (else the first): the same model on every card, one check serves all."""
        return next((w for w in self.workers if any(w.ready_for(key) for key in CHECKPOINTS)), self.workers[0])

    def check_request_loras(self, request: GenerationRequest) -> None:
        self._checking_worker().manager.check_request_loras(request)

    def check_lora(self, contents: LoraContents, name: str) -> None:
        self._checking_worker().manager.check_lora(contents, name)

    def clear_lora_cache(self) -> None:
        for worker in self.workers:
            worker.manager.clear_lora_cache()

    def cancel(self) -> bool:
        """Stop every running generation within one step (the service cancels one request by its own event)."""
        return any([worker.manager.cancel() for worker in self.workers])

    # ----------------------------------------------------------------------------------------------- generation
    def generate(
        self,
        request: GenerationRequest,
        on_step: StepCallback | None = None,
        cancel_event: threading.Event | None = None,
    ) -> GenerationResult:
        """Run `request` on a worker: the best free one for it, else the first to become free (in arrival order).
        Raises NotReady at once when no worker can serve its checkpoint, Cancelled when `cancel_event` is set while
        it waits; a running generation is cancelled by its manager as on one GPU."""
        cancel_event = cancel_event or threading.Event()
        policy = self.content_policy  # every worker has the same block list: check it first
        if policy is not None:
            policy.check_prompt(request)
        worker = self._acquire(request, cancel_event)
        try:
            return worker.manager.generate(request, on_step, cancel_event)
        except Exception as error:
            if device_lost(error):
                self._retire(worker, error)
            raise
        finally:
            self._release(worker)

    def _acquire(self, request: GenerationRequest, cancel_event: threading.Event) -> Worker:
        ticket = _Ticket(request)
        with self._changed:
            self._refuse_unservable(request.checkpoint)
            self._waiting.append(ticket)
            self._dispatch()
            while ticket.worker is None and ticket.error is None:
                if cancel_event.is_set():
                    self._waiting.remove(ticket)
                    raise Cancelled()
                self._changed.wait(WAIT_POLL_S)
            if ticket.error is not None:
                raise ticket.error
            return ticket.worker

    def _release(self, worker: Worker) -> None:
        with self._changed:
            worker.busy = False
            self._dispatch()

    def _retire(self, worker: Worker, error: BaseException) -> None:
        reason = error_summary(error)
        log.error("%s is out of service: its device failed (%s); the other workers go on", worker.name, reason)
        with self._changed:
            worker.lost = reason
            self._dispatch()

    def _refuse_unservable(self, checkpoint: str) -> None:
        """NotReady when no worker has the checkpoint ready, as one manager says it (loading: try again)."""
        if any(worker.ready_for(checkpoint) for worker in self.workers):
            return
        name = CHECKPOINTS[checkpoint].display_name
        serving = [worker for worker in self.workers if not worker.lost]
        states = [worker.manager.checkpoint_state(checkpoint) for worker in serving]
        if "loading" in states:
            raise NotReady(f"{name} is loading; try again.")
        reasons = [worker.manager.status().checkpoints[checkpoint].reason for worker in serving]
        raise NotReady(f"{name} is failed: " + (reasons[0] if reasons else "every worker is out of service"))

    def _dispatch(self) -> None:
        """Give free workers to waiting requests, earliest first; the caller holds `_changed`. A request no worker
        can serve any more (its workers failed) gets NotReady."""
        for ticket in list(self._waiting):
            checkpoint = ticket.request.checkpoint
            candidates = [worker for worker in self.workers if worker.ready_for(checkpoint)]
            if not candidates and not any(
                not worker.lost and worker.manager.checkpoint_state(checkpoint) == "loading" for worker in self.workers
            ):
                ticket.error = NotReady(f"{CHECKPOINTS[checkpoint].display_name} is failed on every worker.")
                self._waiting.remove(ticket)
                continue
            free = [worker for worker in candidates if not worker.busy]
            if not free:
                continue
            best = min(free, key=lambda worker: self._preference(worker, ticket.request))
            best.busy = True
            best.served += 1
            ticket.worker = best
            self._waiting.remove(ticket)
            log.debug("%s %s -> %s", ticket.request.checkpoint, ticket.request.prompt[:40], best.name)
        self._changed.notify_all()

    @staticmethod
    def _preference(worker: Worker, request: GenerationRequest) -> tuple:
        """Lower is better: the checkpoint on the GPU now, its LoRAs folded already, fewest served, lowest index."""
        return (not worker.holds(request.checkpoint), not worker.has_loras_of(request), worker.served, worker.index)
