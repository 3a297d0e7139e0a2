"""StudioService: everything the UI and the API do, without any Gradio layout.

It runs generations on the ModelManager (in a worker thread, so progress can stream), records every outcome in the
HistoryStore, and turns history rows into plain data for display. Errors surface as Krea2Error / StorageError with
user-facing messages; the UI layer shows them, never a traceback.
"""

from __future__ import annotations

import collections
import io
import logging
import queue
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from krea2 import CHECKPOINTS, Cancelled, GenerationRequest, Krea2Error, NotReady
from krea2.manager import GenerationResult, ModelManager
from krea2.request import HistoryQuery
from storage import HistoryFilter, HistoryStore, Page, StorageError
from storage.files import STATIC_DIR
from storage.models import Generation
from storage.models import Image as ImageRow
from storage.pnginfo import read_parameters

from .recording import record_failure, record_result, record_start
from .sources import store_source

log = logging.getLogger(__name__)
HISTORY_PAGE_SIZE = HistoryQuery.limit  # thumbnails per history page (UI pager and the API's default)
MAX_CANCELLED_JOBS = 10_000  # remembered cancelled event ids (a job cancelled while queued may start later)


@dataclass
class StepEvent:
    step: int
    total: int
    preview: Image.Image
    label: str = ""


@dataclass
class DoneEvent:
    result: GenerationResult
    generation: Generation
    label: str = ""


@dataclass
class IdleEvent:
    """No step finished for `idle` seconds: lets a consumer that asked for it check whether its caller is still
    there (Gradio only notices a cancel or a disconnect between two items of a stream)."""


class StudioService:
    def __init__(self, manager: ModelManager, store: HistoryStore) -> None:
        self.manager = manager
        self.store = store
        # History rows without images (failed, cancelled) need something to show in a gallery.
        self.placeholder = store.data_dir / STATIC_DIR / "no-image.webp"
        if not self.placeholder.exists():
            from storage.files import write_atomic

            buffer = io.BytesIO()
            Image.new("RGB", (256, 256), (60, 60, 66)).save(buffer, format="WEBP")
            write_atomic(self.placeholder, buffer.getvalue())
        self._cancel_events: dict[str, threading.Event] = {}
        self._job_events: dict[str, threading.Event] = {}  # Gradio event id -> its generation's cancel event
        self._cancelled_jobs: collections.OrderedDict[str, None] = collections.OrderedDict()  # cancelled, newest last
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ status
    def status_line(self) -> str:
        status = self.manager.status()
        return status.summary()

    @property
    def demo(self) -> bool:
        return self.manager.demo

    # ------------------------------------------------------------------------------------------------ generation
    def _cancel_event(self, session: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._cancel_events[session] = event
        return event

    def cancel_job(self, job: str) -> bool:
        """Cancel the generation of one Gradio event (its `/cancel`): stop it if running, refuse it if it starts
        later. Returns whether it was running."""
        with self._lock:
            self._cancelled_jobs[job] = None
            while len(self._cancelled_jobs) > MAX_CANCELLED_JOBS:
                self._cancelled_jobs.popitem(last=False)
            event = self._job_events.get(job)
        if event is None:
            return False
        event.set()
        return True

    def cancel(self, session: str) -> bool:
        with self._lock:
            event = self._cancel_events.get(session)
        if event is None or event.is_set():
            return False
        event.set()
        return True

    def _run_recorded(
        self, request: GenerationRequest, on_step, cancel_event: threading.Event, comparison_id: str | None
    ) -> tuple[GenerationResult, Generation]:
        """Generate and record the outcome. The row is written as `running` first (a crash leaves a trace), then
        finalised: ok with its images, or failed / cancelled without. An init image is kept in the data folder first
        (the row names it)."""
        if request.source is not None:
            store_source(self.store, request.source)
        running = record_start(self.store, request, comparison_id)

        def fail(status: str, message: str) -> None:
            log.info("Generation #%s %s: %s", running.id, status, message)
            try:
                record_failure(self.store, request, status, message, comparison_id, running)
            except StorageError:  # the first error is the one to report; repair marks the row at the next start
                log.exception("Could not record the outcome of generation %s", running.id)

        try:
            result = self.manager.generate(request, on_step, cancel_event)
        except NotReady:
            self.store.delete(running.id)  # nothing ran: not a generation
            raise
        except Cancelled as error:
            fail("cancelled", str(error))
            raise
        except Krea2Error as error:
            fail("failed", str(error))
            raise
        except Exception as error:
            log.exception("Generation failed unexpectedly")
            message = f"Generation failed unexpectedly ({type(error).__name__})."
            fail("failed", message)
            raise Krea2Error(message) from error
        try:
            generation = record_result(self.store, result, comparison_id, running)
        except StorageError as error:  # e.g. disk full: the row says so, and no file was left behind
            fail("failed", str(error))
            raise
        log_generation(generation, result)
        return result, generation

    def stream(
        self,
        requests: list[tuple[str, GenerationRequest]],
        session: str,
        comparison_id: str | None = None,
        idle: float | None = None,
        job: str | None = None,
    ) -> Iterator[StepEvent | DoneEvent | IdleEvent]:
        """Run requests one after the other in a worker thread, yielding step previews and results as they come (and
        an IdleEvent after `idle` seconds without either, when given).

        If the consumer goes away (browser closed, Gradio cancel), the running generation is cancelled too, and so it
        is when `cancel_job(job)` names this stream's Gradio event (before it started: nothing runs, nothing is
        recorded)."""
        cancel_event = self._cancel_event(session)
        if job is not None:
            with self._lock:
                if job in self._cancelled_jobs:
                    raise Cancelled()
                self._job_events[job] = cancel_event
        events: queue.Queue = queue.Queue()
        finished = object()

        def work() -> None:
            try:
                for label, request in requests:
                    on_step = lambda i, n, preview, label=label: events.put(StepEvent(i, n, preview, label))  # noqa: E731
                    result, generation = self._run_recorded(request, on_step, cancel_event, comparison_id)
                    events.put(DoneEvent(result, generation, label))
            except (Krea2Error, StorageError) as error:
                events.put(error)
            except Exception as error:  # never let the worker die silently: the caller would wait for a result
                log.exception("Generation worker failed unexpectedly")
                events.put(Krea2Error(f"Generation failed unexpectedly ({type(error).__name__})."))
            finally:
                events.put(finished)

        threading.Thread(target=work, name="krea2-generation", daemon=True).start()
        done = False
        try:
            while True:
                try:
                    item = events.get(timeout=idle)
                except queue.Empty:
                    yield IdleEvent()
                    continue
                if item is finished:
                    done = True
                    return
                if isinstance(item, Exception):
                    done = True
                    raise item
                yield item
        finally:
            if not done:
                cancel_event.set()
            with self._lock:  # forget this run's cancel handles (sessions come and go)
                if self._cancel_events.get(session) is cancel_event:
                    del self._cancel_events[session]
                if job is not None:
                    self._job_events.pop(job, None)

    def generate(
        self, request: GenerationRequest, session: str, idle: float | None = None, job: str | None = None
    ) -> Iterator[StepEvent | DoneEvent | IdleEvent]:
        return self.stream([(request.checkpoint, request)], session, idle=idle, job=job)

    def compare(
        self,
        raw: GenerationRequest,
        turbo: GenerationRequest,
        session: str,
        idle: float | None = None,
        job: str | None = None,
    ):
        """Raw and Turbo on the same prompt and seed, linked in history. The prompt is encoded once (cache)."""
        raw = raw.seeded()  # the one place seeds are drawn; Turbo gets Raw's
        turbo = turbo.with_seed(raw.seed)
        comparison_id = uuid.uuid4().hex
        return self.stream([(raw.checkpoint, raw), (turbo.checkpoint, turbo)], session, comparison_id, idle, job)

    # ------------------------------------------------------------------------------------------------ history
    def page(self, filters: HistoryFilter, cursor: int | None, limit: int = HISTORY_PAGE_SIZE) -> Page:
        return self.store.page(cursor=cursor, limit=limit, filters=filters)

    def count(self, filters: HistoryFilter) -> int:
        return self.store.count(filters)

    def get(self, generation_id: int) -> Generation:
        generation = self.store.get(int(generation_id))
        if generation is None:
            raise StorageError(f"Generation {generation_id} no longer exists.")
        return generation

    def image_path(self, generation: Generation, position: int = 0) -> str | None:
        if not generation.images:
            return None
        return str(self.store.absolute(generation.images[min(position, len(generation.images) - 1)].path))

    def image_file(self, image: ImageRow) -> str:
        """The PNG file of one image of a history row."""
        return str(self.store.absolute(image.path))

    def thumb_path(self, generation: Generation, position: int = 0) -> str | None:
        if not generation.images:
            return None
        return str(self.store.absolute(generation.images[min(position, len(generation.images) - 1)].thumb_path))

    def toggle_favorite(self, generation_id: int) -> bool:
        return self.store.toggle_favorite(int(generation_id))

    def delete(self, generation_id: int) -> bool:
        return self.store.delete(int(generation_id))

    def set_favorite(self, generation_ids: list[int], favorite: bool = True) -> int:
        return self.store.set_favorite(generation_ids, favorite)

    def delete_many(self, generation_ids: list[int]) -> int:
        return self.store.delete_many(generation_ids)

    def export(self, generation_ids: list[int] | None = None) -> tuple[Path, int]:
        """A zip of these generations (or all) in a temporary folder Gradio may serve. Exports older than an hour
        are removed first: each is a copy of the history and would otherwise pile up."""
        import tempfile
        import time

        folder = Path(tempfile.gettempdir()) / "krea2-exports"
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.zip"):
            if time.time() - old.stat().st_mtime > 3600:
                old.unlink(missing_ok=True)
        what = "all" if generation_ids is None else f"{len(generation_ids)}-selected"
        target = folder / f"krea2-history-{what}-{uuid.uuid4().hex[:8]}.zip"
        return target, self.store.export_archive(target, generation_ids)

    def import_archive(self, path: str | Path) -> tuple[int, int]:
        return self.store.import_archive(Path(path))

    # ------------------------------------------------------------------------------------------------ PNG info
    def png_info(self, path: str | Path) -> dict[str, Any]:
        return read_parameters(path)


def log_generation(generation: Generation, result: GenerationResult) -> None:
    """One line per generation in the server's log: what a person running the app wants to see scroll by."""
    request = result.request
    spec = CHECKPOINTS.get(request.checkpoint)
    log.info(
        "Generation #%d: %s, %d×%d, %d steps, %d image%s, %.2f s",
        generation.id, spec.display_name if spec else request.checkpoint, request.width, request.height,
        request.steps, len(result.images), "" if len(result.images) == 1 else "s", result.timings.total_s,
    )  # fmt: skip
