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
from typing import TYPE_CHECKING, Any

from PIL import Image

from krea2 import CHECKPOINTS, Cancelled, GenerationRequest, Krea2Error, NotReady
from krea2.errors import ContentBlocked, InvalidRequest, LoraError
from krea2.lora_library import LoraFile
from krea2.lora_weights import check_is_lora
from krea2.manager import GenerationResult, ManagerStatus, ModelManager
from krea2.request import MAX_PROMPT_CHARS, HistoryQuery, LoraChoice
from storage import HistoryFilter, HistoryStore, Page, StorageError
from storage.archive import Progress
from storage.files import STATIC_DIR
from storage.models import Generation
from storage.models import Image as ImageRow
from storage.pnginfo import read_parameters
from storage.provenance import read_provenance

from .recording import record_blocked, record_failure, record_result, record_start
from .safety import ImportScreen
from .sources import store_source

if TYPE_CHECKING:
    from krea2.workers import PoolStatus, WorkerPool

log = logging.getLogger(__name__)
HISTORY_PAGE_SIZE = HistoryQuery.limit  # thumbnails per history page (UI pager and the API's default)
WITHOUT_LORAS, WITH_LORAS = "without", "with"  # the labels of a with-vs-without-LoRAs comparison
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
    def __init__(self, manager: ModelManager | WorkerPool, store: HistoryStore) -> None:
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
        # A page's runs that were asked for and wait in Gradio's queue (`expect`), oldest first: Cancel marks them,
        # and each then stops when its handler takes its mark (`started`). Without them a Cancel clicked while a run
        # waited found nothing to stop, and the run went ahead (a hostile pass saw it finish and be recorded).
        self._waiting: dict[str, collections.deque[threading.Event]] = {}
        self._job_events: dict[str, threading.Event] = {}  # Gradio event id -> its generation's cancel event
        self._cancelled_jobs: collections.OrderedDict[str, None] = collections.OrderedDict()  # cancelled, newest last
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ status
    def status_line(self) -> str:
        status = self.manager.status()
        return status.summary()

    def status(self) -> ManagerStatus | PoolStatus:
        return self.manager.status()

    @property
    def demo(self) -> bool:
        return self.manager.demo

    @property
    def concurrent_generations(self) -> int:
        """Generations that run at once: 1 on one GPU, one per worker of a pool (krea2/workers.py)."""
        return self.manager.concurrent_generations

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

    def expect(self, session: str) -> None:
        """A run for `session` was just asked for (its page's button was clicked) and may wait in the queue: until its
        handler calls `started(session)`, `cancel(session)` stops it from starting."""
        with self._lock:
            self._waiting.setdefault(session, collections.deque()).append(threading.Event())

    def started(self, session: str) -> bool:
        """The oldest run `session` asked for has left the queue: takes its mark (whatever the handler does next, so
        no mark outlives its run) and says whether it was cancelled while it waited. Runs without a mark (the API's,
        which cancel by job) were not."""
        with self._lock:
            marks = self._waiting.get(session)
            mark = marks.popleft() if marks else None
            if marks is not None and not marks:
                del self._waiting[session]
        return mark is not None and mark.is_set()

    def cancel(self, session: str) -> bool:
        """Stop `session`'s run: the one running, or else the ones it asked for that have not started yet. Returns
        whether there was one to stop."""
        with self._lock:
            running = self._cancel_events.get(session)
            events = [running] if running is not None and not running.is_set() else list(self._waiting.get(session, ()))
        events = [event for event in events if not event.is_set()]
        for event in events:
            event.set()
        return bool(events)

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
            self.store.delete(running.id, even_running=True)  # nothing ran: not a generation
            raise
        except ContentBlocked as error:  # the row says `blocked` and why; no image was made, none is saved
            log.info("Generation #%s blocked: %s", running.id, error)
            seen = error.request if isinstance(error.request, GenerationRequest) else request
            try:
                record_blocked(self.store, seen, str(error), comparison_id, running)
            except StorageError:
                log.exception("Could not record the outcome of generation %s", running.id)
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
        an IdleEvent after `idle` seconds without either, when given). With several workers (krea2/workers.py) they
        run side by side instead, and the stream ends once all have finished (`run_side_by_side`).

        If the consumer goes away (browser closed, Gradio cancel), the running generation is cancelled too, and so it
        is when `cancel_job(job)` names this stream's Gradio event (before it started: nothing runs, nothing is
        recorded)."""
        for _label, request in requests:  # a LoRA the folder lacks is refused like any other field: nothing recorded
            self.manager.lora_files(request)
        if len(requests) > 1:  # and one the model cannot take, before the first run (Compare's second side)
            for _label, request in requests:
                self.manager.check_request_loras(request)
        cancel_event = self._cancel_event(session)
        if job is not None:
            with self._lock:
                if job in self._cancelled_jobs:
                    raise Cancelled()
                self._job_events[job] = cancel_event
        events: queue.Queue = queue.Queue()
        finished = object()

        def run(label: str, request: GenerationRequest) -> None:
            on_step = lambda i, n, preview: events.put(StepEvent(i, n, preview, label))  # noqa: E731
            result, generation = self._run_recorded(request, on_step, cancel_event, comparison_id)
            events.put(DoneEvent(result, generation, label))

        def work() -> None:
            try:
                if len(requests) > 1 and self.concurrent_generations > 1:
                    run_side_by_side(requests, run)
                else:
                    for label, request in requests:
                        run(label, request)
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

    def compare_loras(
        self, request: GenerationRequest, session: str, idle: float | None = None, job: str | None = None
    ) -> Iterator[StepEvent | DoneEvent | IdleEvent]:
        """The same request without its LoRAs and with them, same seed, linked in history (labels WITHOUT_LORAS and
        WITH_LORAS): what the LoRAs do, alone."""
        if not request.active_loras:
            raise InvalidRequest("loras", [], "must name a LoRA for this checkpoint, to compare without and with it")
        request = request.seeded()
        runs = [(WITHOUT_LORAS, request.without_loras()), (WITH_LORAS, request)]
        return self.stream(runs, session, uuid.uuid4().hex, idle, job)

    # ------------------------------------------------------------------------------------------------ LoRAs
    def lora_files(self) -> list[LoraFile]:
        """The LoRA folder's files (read again on every call: the list's refresh)."""
        return self.manager.loras.files() if self.manager.loras is not None else []

    def lora_names(self) -> list[str]:
        return [file.name for file in self.lora_files()]

    def lora_unnamable(self) -> list[str]:
        """A sentence for each LoRA folder file left out of the list for its name (LoraLibrary.unnamable)."""
        return self.manager.loras.unnamable() if self.manager.loras is not None else []

    def lora_hash_or_problem(self, file: LoraFile) -> tuple[str, str | None]:
        """The file's hash, or why it cannot be read (LoraLibrary.hash_or_problem)."""
        return self._library().hash_or_problem(file)

    def _library(self):
        if self.manager.loras is None:
            raise LoraError("This app has no LoRA folder.")
        return self.manager.loras

    def add_lora_upload(self, path: str | Path, filename: str) -> LoraFile:
        """Keep an uploaded LoRA in the folder, once it is known to fit the loaded transformer."""
        return self._library().add_upload(path, filename, check=self._lora_check())

    def add_lora_from_hub(self, repo_id: str, filename: str | None = None) -> LoraFile:
        return self._library().add_from_hub(repo_id, filename, check=self._lora_check())

    def _lora_check(self):
        """The loaded transformer checks a new LoRA (module names, sizes); while models load, the file's format alone
        is checked now and the rest when it is first used."""
        ready = any(status.state == "ready" for status in self.manager.status().checkpoints.values())
        return self.manager.check_lora if ready else check_is_lora

    def restore_loras(self, loras: list[dict[str, Any]]) -> tuple[list[LoraChoice], list[str]]:
        """LoRAs recorded in history or a PNG ({"name", "weight", "hash"}) as the folder has them now, and one
        sentence for each that is missing or now goes by another name: none is dropped without a word."""
        choices, notes = [], []
        for lora in loras:
            if not isinstance(lora, dict):
                continue  # nothing recognisable as a LoRA (PNG metadata can hold anything)
            name, digest = str(lora.get("name") or ""), str(lora.get("hash") or "")
            library = self.manager.loras
            file = library.find(name, digest or None) if library is not None else None
            shown = f"{name} ({digest[:12]})" if digest else name
            if file is None:
                notes.append(f"The LoRA {shown} is not in the LoRA folder; add it to use these settings as they were.")
                continue
            now, problem = library.hash_or_problem(file)
            if problem:
                notes.append(f"{problem} It was left out.")
                continue
            if digest and not now.startswith(digest.lower()):  # the name now holds another file
                file = library.with_hash(digest) or file
                now = library.hash(file)
                if not now.startswith(digest.lower()):
                    notes.append(f"The LoRA {name} has changed since ({digest[:12]} then, {now[:12]} now): the "
                                 "folder's file is used, so the picture may differ.")  # fmt: skip
            if file.name != name:
                notes.append(f"The LoRA {name} was found as {file.name}.")
            try:
                choices.append(LoraChoice(file.name, lora.get("weight", 1.0)))
            except Krea2Error as error:
                notes.append(f"The LoRA {shown} was left out: {error}.")
        return choices, notes

    # ------------------------------------------------------------------------------------------------ history
    def lora_names_in_history(self) -> list[str]:
        return self.store.lora_names()

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

    def export(self, generation_ids: list[int] | None = None, on_progress: Progress | None = None) -> tuple[Path, int]:
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
        return target, self.store.export_archive(target, generation_ids, on_progress)

    def import_archive(self, path: str | Path, on_progress: Progress | None = None) -> tuple[int, int]:
        """`on_progress(done, total)`: after each entry (storage's HistoryStore.import_archive)."""
        screen = ImportScreen(self.manager.content_policy)
        return self.store.import_archive(Path(path), check=check_imported, screen=screen, on_progress=on_progress)

    # ------------------------------------------------------------------------------------------------ PNG info
    def png_info(self, path: str | Path) -> dict[str, Any]:
        return read_parameters(path)

    def png_provenance(self, path: str | Path) -> dict[str, Any]:
        """{"ai_generated", "xmp", "c2pa"}: what the PNG says about its origin (storage/provenance.py)."""
        return read_provenance(path)


def check_imported(entry: dict[str, Any]) -> None:
    """An imported history entry as this app would have made it: its settings within a request's ranges and choices
    (a row is recorded only for a request that passed them), so History, Reuse and Upscale never meet a size of -5
    or a checkpoint it does not have. The prompts are checked for length only: rows of older versions kept
    `<lora:...>` tags and control tokens that today's requests take out or refuse, and their exports must still
    import. Raises ValueError naming the field (storage.archive.EntryCheck)."""
    for field in ("prompt", "negative_prompt"):
        if len(entry[field]) > MAX_PROMPT_CHARS:
            raise ValueError(field)
    try:
        loras = [LoraChoice(lora["name"], lora["weight"], lora["checkpoint"]) for lora in entry["loras"]]
        GenerationRequest(
            prompt="-", checkpoint=entry["checkpoint"], steps=entry["steps"], guidance=entry["guidance"],
            width=entry["width"], height=entry["height"], seed=entry["seed"], num_images=entry["num_images"],
            loras=loras,
        )  # fmt: skip
    except InvalidRequest as error:
        raise ValueError(error.field.replace("lora_", "LoRA ")) from None  # an export's LoRA "checkpoint": its target


def run_side_by_side(requests: list[tuple[str, GenerationRequest]], run) -> None:
    """`run(label, request)` for every request at once, one thread each (the worker pool gives each a worker), then
    the first failure in request order, if any. Every request runs to its end and is recorded: one side failing does
    not stop the other (a cancel stops both, through their shared cancel event)."""
    failures: dict[int, BaseException] = {}

    def one(position: int, label: str, request: GenerationRequest) -> None:
        try:
            run(label, request)
        except Exception as error:  # noqa: BLE001 - handed to the caller's thread below
            failures[position] = error

    threads = [
        threading.Thread(target=one, args=(position, label, request), name="krea2-generation", daemon=True)
        for position, (label, request) in enumerate(requests)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[min(failures)]


def log_generation(generation: Generation, result: GenerationResult) -> None:
    """One line per generation in the server's log: what a person running the app wants to see scroll by."""
    request = result.request
    spec = CHECKPOINTS.get(request.checkpoint)
    log.info(
        "Generation #%d: %s, %d×%d, %d steps, %d image%s, %.2f s",
        generation.id, spec.display_name if spec else request.checkpoint, request.width, request.height,
        request.steps, len(result.images), "" if len(result.images) == 1 else "s", result.timings.total_s,
    )  # fmt: skip
