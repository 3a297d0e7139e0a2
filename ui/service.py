"""StudioService: everything the UI and the API do, without any Gradio layout.

It runs generations on the ModelManager (in a worker thread, so progress can stream), records every outcome in the
HistoryStore, and turns history rows into plain data for display. Errors surface as Krea2Error / StorageError with
user-facing messages; the UI layer shows them, never a traceback.
"""

from __future__ import annotations

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
from storage import HistoryFilter, HistoryStore, Page, StorageError
from storage.models import Generation
from storage.pnginfo import read_parameters
from storage.recording import record_failure, record_result

log = logging.getLogger(__name__)
HISTORY_PAGE_SIZE = 24  # thumbnails per history page (UI pager and the API's default)


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


class StudioService:
    def __init__(self, manager: ModelManager, store: HistoryStore) -> None:
        self.manager = manager
        self.store = store
        # History rows without images (failed, cancelled) need something to show in a gallery.
        self.placeholder = store.data_dir / "static" / "no-image.webp"
        if not self.placeholder.exists():
            from storage.files import write_atomic

            buffer = io.BytesIO()
            Image.new("RGB", (256, 256), (60, 60, 66)).save(buffer, format="WEBP")
            write_atomic(self.placeholder, buffer.getvalue())
        self._cancel_events: dict[str, threading.Event] = {}
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
        """Generate and record the outcome: ok with its images, or failed / cancelled without."""
        try:
            result = self.manager.generate(request, on_step, cancel_event)
        except NotReady:
            raise  # nothing ran: not a generation
        except Cancelled as error:
            record_failure(self.store, request, "cancelled", str(error), comparison_id)
            raise
        except Krea2Error as error:
            record_failure(self.store, request, "failed", str(error), comparison_id)
            raise
        except Exception as error:
            log.exception("Generation failed unexpectedly")
            message = f"Generation failed unexpectedly ({type(error).__name__})."
            record_failure(self.store, request, "failed", message, comparison_id)
            raise Krea2Error(message) from error
        return result, record_result(self.store, result, comparison_id)

    def stream(
        self, requests: list[tuple[str, GenerationRequest]], session: str, comparison_id: str | None = None
    ) -> Iterator[StepEvent | DoneEvent]:
        """Run requests one after the other in a worker thread, yielding step previews and results as they come.

        If the consumer goes away (browser closed, Gradio cancel), the running generation is cancelled too."""
        cancel_event = self._cancel_event(session)
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
            finally:
                events.put(finished)

        threading.Thread(target=work, name="krea2-generation", daemon=True).start()
        done = False
        try:
            while True:
                item = events.get()
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
            with self._lock:  # forget this run's cancel handle (sessions come and go)
                if self._cancel_events.get(session) is cancel_event:
                    del self._cancel_events[session]

    def generate(self, request: GenerationRequest, session: str) -> Iterator[StepEvent | DoneEvent]:
        return self.stream([(request.checkpoint, request)], session)

    def compare(self, raw: GenerationRequest, turbo: GenerationRequest, session: str):
        """Raw and Turbo on the same prompt and seed, linked in history. The prompt is encoded once (cache)."""
        if raw.seed is None:
            from krea2.request import random_seed

            seed = random_seed()
            raw, turbo = raw.with_seed(seed), turbo.with_seed(seed)
        comparison_id = uuid.uuid4().hex
        return self.stream([("raw", raw), ("turbo", turbo)], session, comparison_id)

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

    def thumb_path(self, generation: Generation) -> str | None:
        return str(self.store.absolute(generation.images[0].thumb_path)) if generation.images else None

    def toggle_favorite(self, generation_id: int) -> bool:
        return self.store.toggle_favorite(int(generation_id))

    def delete(self, generation_id: int) -> bool:
        return self.store.delete(int(generation_id))

    # ------------------------------------------------------------------------------------------------ PNG info
    def png_info(self, path: str | Path) -> dict[str, Any]:
        return read_parameters(path)


def describe(generation: Generation) -> str:
    """Markdown of every parameter and timing of a history row."""
    spec = CHECKPOINTS.get(generation.checkpoint)
    rows = [
        ("Status", generation.status + (f": {generation.error}" if generation.error else "")),
        ("Checkpoint", spec.display_name if spec else generation.checkpoint),
        ("Prompt", generation.prompt),
        ("Negative prompt", generation.negative_prompt or "—"),
        ("Seed", generation.seed),
        ("Steps", generation.steps),
        ("Guidance", generation.guidance),
        ("Size", f"{generation.width}×{generation.height}"),
        ("Images", generation.num_images),
        ("Created", generation.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("Timings", ", ".join(f"{k[:-3]} {v} ms" for k, v in generation.timings_ms().items() if v is not None) or "—"),
        ("Device", f"{generation.device} ({generation.placement})" if generation.device else "—"),
    ]
    if generation.comparison_id:
        rows.append(("Comparison", generation.comparison_id[:8]))
    if generation.files_missing:
        rows.append(("Files", "missing on disk"))
    escape = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return "| | |\n|---|---|\n" + "\n".join(f"| **{k}** | {escape(v)} |" for k, v in rows)
