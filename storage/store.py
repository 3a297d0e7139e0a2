"""HistoryStore: generations and their image files, kept consistent.

Files are written atomically *before* the row that points at them is committed; if the commit fails the files are
removed again. So a crash can leave at worst a complete file with no row (start-up repair moves it to orphans/),
never a row without its file or a half-written PNG under a final name.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy import Select, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from .archive import ArchiveReader, EntryCheck, ImportScreen, Progress, write_archive
from .database import database_problem, default_database_url, make_engine, migrate
from .errors import StorageError
from .files import (
    IMAGES_DIR,
    THUMBS_DIR,
    default_data_dir,
    encode_png,
    encode_thumbnail,
    remove_quietly,
    sha256,
    source_file,
    write_atomic,
)
from .folder_lock import FolderLock
from .models import Generation, GenerationLora, Image, utcnow
from .pnginfo import DEFAULT_CREATOR_TOOL, build_pnginfo, undisclosed
from .records import NewGeneration
from .repair import RepairReport, repair_files
from .xmp import xmp_packet

log = logging.getLogger(__name__)
# `running` rows are written when a generation starts, so a crash leaves a trace; start-up repair turns the ones it
# finds into `interrupted` (storage/repair.py).
RUNNING = "running"  # a row whose run has not finished: no image yet, and not to be deleted under it
STATUSES = (RUNNING, "ok", "failed", "cancelled", "interrupted", "blocked")
FINAL_STATUSES = ("ok", "failed", "cancelled", "blocked")  # blocked: refused by the content filter, never any image
PngSigner = Callable[[bytes], bytes]  # PNG bytes -> the same PNG with a signed C2PA manifest (storage/c2pa_manifest.py)
WORD = re.compile(r"\w*[^\W_]\w*")  # with a letter or digit: "_" alone is punctuation, "snake_case" one word
# Scripts written without spaces between words: kana (half-width too), CJK ideographs, Thai, Lao, Myanmar, Khmer.
UNSPACED_SCRIPT = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff65-\uff9f\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]"
)
# A word in those scripts keeps its combining marks (Thai, Lao, Myanmar and Khmer vowels and signs, kana voicing marks
# are not word characters: splitting at them left fragments such as 'สว' that matched nearly any prompt in the script).
UNSPACED_WORD = re.compile(r"(?:\w|[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3099-\u309c])+")


def search_words(typed: str) -> list[str]:
    """The words of a search, 16 at most: runs of word characters (`UNSPACED_WORD`'s in the unspaced scripts)."""
    words = []
    for part in typed.split():
        words += (UNSPACED_WORD if UNSPACED_SCRIPT.search(part) else WORD).findall(part)
    return words[:16]


@dataclass(frozen=True)
class HistoryFilter:
    checkpoint: str | None = None
    favorites_only: bool = False
    comparisons_only: bool = False
    text: str = ""
    lora: str = ""  # generations that ran with the LoRA of this name


@dataclass
class Page:
    items: list[Generation]
    next_cursor: int | None  # pass back as `cursor` for the next (older) page


def naive_utc(moment: datetime) -> datetime:
    """A time as naive UTC: SQLite returns stored times without a zone, PostgreSQL in the session's zone."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def sources_of(rows: list[Generation]) -> set[str]:
    """The init images and masks these generations name (content addresses)."""
    return {digest for g in rows for digest in (g.source_sha256, g.mask_sha256) if digest is not None}


class HistoryStore:
    def __init__(
        self, data_dir: Path | str | None = None, database_url: str | None = None, sign_png: PngSigner | None = None
    ) -> None:
        self.sign_png = sign_png  # every PNG this store encodes is signed before it is written (None: not signed)
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.database_url = database_url or default_database_url(self.data_dir)
        self.dialect = self.database_url.split(":", 1)[0].split("+", 1)[0]
        self._engine = None
        self._sessions: sessionmaker[Session] | None = None
        self.repair_report: RepairReport | None = None  # what the start-up repair of `open` found (None: not run)
        self._lock = FolderLock(self.data_dir)  # `open` repairs only a folder no other process has open
        # One import at a time: each reads the rows already here once, at its start, so two of the same zip at once
        # both added every row (a hostile pass: 796 rows of 400). Another process's import is not covered.
        self._import_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ lifecycle
    def open(self, *, repair: bool = True) -> HistoryStore:
        """Create the data folder, migrate the database, then repair files against rows, unless another process
        has the folder open (storage/folder_lock.py). A process alone holds the folder's lock exclusively while it
        migrates and repairs; one that is not waits for that first."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(f"Cannot create the data folder {self.data_dir}: {error.strerror}.") from error
        alone = self._lock.claim()
        try:
            if not alone:
                self._lock.share()  # waits while another process starting beside this one migrates or repairs
            migrate(self.database_url)
            self._engine = make_engine(self.database_url)
            self._sessions = sessionmaker(self._engine, expire_on_commit=False)
            if repair and alone:
                self.repair()
            elif repair:
                log.warning(
                    "Another process (a server, or the command line) is using %s: start-up repair is left to the "
                    "next process that starts alone.", self.data_dir,
                )  # fmt: skip
        except BaseException:  # a store that failed to open holds no lock: a later open in this process is alone
            self._lock.release()
            raise
        self._lock.share()
        return self

    def repair(self) -> RepairReport:
        """Make files and rows agree again (storage/repair.py); the report is kept as `repair_report`."""
        self.repair_report = repair_files(self.data_dir, self.session)
        return self.repair_report

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        self._lock.release()

    @contextmanager
    def session(self) -> Iterator[Session]:
        if self._sessions is None:
            raise StorageError("The history store is not open.")
        try:
            with self._sessions() as session:
                yield session
        except SQLAlchemyError as error:
            log.exception("History database error")
            raise StorageError(f"{database_problem(error)}; nothing was changed.") from error

    def absolute(self, relative: str) -> Path:
        return self.data_dir / relative

    # ------------------------------------------------------------------------------------------------ writes
    def _write_images(self, new: NewGeneration, created_at: datetime, written: list[Path]) -> list[Image]:
        """Write each image and its thumbnail atomically; `written` collects the paths so a caller can remove them."""
        day = created_at.strftime("%Y/%m/%d")
        rows: list[Image] = []
        for position, item in enumerate(new.images):
            image_id = uuid.uuid4().hex
            params = {**new.png_parameters, "seed": item.seed}
            png = item.png
            if png is None:
                png = encode_png(item.image, build_pnginfo(params))
                if self.sign_png is not None:
                    png = self.sign_png(png)
            elif (disclosure := undisclosed(item.image)) is not None:
                # An imported PNG without the AI disclosure: the XMP added (its pixels, text and colour profile kept),
                # but not this server's C2PA signature, which would vouch for a picture it did not make.
                png = encode_png(item.image, disclosure)
            rel_png, rel_thumb = f"{IMAGES_DIR}/{day}/{image_id}.png", f"{THUMBS_DIR}/{day}/{image_id}.webp"
            write_atomic(self.absolute(rel_png), png)
            written.append(self.absolute(rel_png))
            creator = str(new.png_parameters.get("app") or DEFAULT_CREATOR_TOOL)
            write_atomic(self.absolute(rel_thumb), encode_thumbnail(item.image, xmp_packet(creator)))
            written.append(self.absolute(rel_thumb))
            rows.append(
                Image(
                    id=image_id,
                    position=position,
                    seed=item.seed,
                    path=rel_png,
                    thumb_path=rel_thumb,
                    sha256=sha256(png),
                    bytes=len(png),
                    width=item.image.width,
                    height=item.image.height,
                )
            )
        return rows

    def add(self, new: NewGeneration) -> Generation:
        """Write the images (atomically), then commit the generation and its image rows in one transaction."""
        status = new.fields.get("status", "ok")
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        created_at: datetime = new.fields.get("created_at") or utcnow()
        written: list[Path] = []
        try:
            rows = self._write_images(new, created_at, written)
            generation = Generation(
                **{
                    **new.fields,
                    "created_at": created_at,
                    "status": status,
                    "favorite": bool(new.fields.get("favorite", False)),
                },
                files_missing=False,
            )
            generation.images = rows
            generation.loras = lora_rows(new.loras or [])
            with self.session() as session:
                session.add(generation)
                session.commit()
            return generation
        except BaseException:
            remove_quietly(written)  # no row points at them: never leave them behind
            raise

    def start(self, fields: dict[str, Any], loras: list[dict[str, Any]] | None = None) -> Generation:
        """Record a generation that is starting: a `running` row without images (and the LoRAs it asks for),
        finalised by `finish`."""
        return self.add(NewGeneration({**fields, "status": RUNNING, "error": None}, loras=loras))

    def finish(self, generation_id: int, new: NewGeneration) -> Generation:
        """Finalise a `running` row: write the images, then update the row and add its image rows in one transaction.
        If anything fails the row stays `running` (the caller records the failure) and no file is left behind."""
        status = new.fields.get("status", "ok")
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {FINAL_STATUSES}")
        written: list[Path] = []
        try:
            with self.session() as session:
                generation = session.get(Generation, generation_id)
                if generation is None:
                    raise StorageError(f"Generation {generation_id} no longer exists; nothing was saved.")
                rows = self._write_images(new, generation.created_at, written)
                # An error a start-up repair wrote meanwhile (a second server on this folder marked the row
                # interrupted) goes with the outcome that replaces it.
                for name, value in {"error": None, **new.fields, "status": status}.items():
                    setattr(generation, name, value)
                generation.images = rows
                if new.loras is not None:
                    generation.loras = lora_rows(new.loras)
                session.commit()
                return generation
        except BaseException:
            remove_quietly(written)
            raise

    def toggle_favorite(self, generation_id: int) -> bool:
        with self.session() as session:
            generation = session.get(Generation, generation_id)
            if generation is None:
                raise StorageError(f"Generation {generation_id} does not exist.")
            generation.favorite = not generation.favorite
            session.commit()
            return generation.favorite

    def delete(self, generation_id: int, *, even_running: bool = False) -> bool:
        """Delete the rows, then the files (a file left by a crash in between becomes an orphan at repair).
        `even_running`: the caller's own `running` row of a start that never ran (the checkpoint was not ready)."""
        with self.session() as session:
            generation = session.get(Generation, generation_id)
            if generation is None:
                return False
            if generation.status == RUNNING and not even_running:  # its run would go on, then drop its image
                raise StorageError(f"Generation #{generation_id} is still running; cancel it or let it finish, then "
                                   "delete it.")  # fmt: skip
            paths = [self.absolute(p) for image in generation.images for p in (image.path, image.thumb_path)]
            sources = sources_of([generation])
            session.delete(generation)
            session.commit()
        remove_quietly(paths)
        self.forget_sources(sources)
        return True

    def set_favorite(self, generation_ids: list[int], favorite: bool) -> int:
        """Mark several generations at once (one transaction); returns how many exist."""
        with self.session() as session:
            rows = list(session.scalars(select(Generation).where(Generation.id.in_(generation_ids))))
            for generation in rows:
                generation.favorite = favorite
            session.commit()
            return len(rows)

    def delete_many(self, generation_ids: list[int]) -> int:
        """Delete several generations in one transaction, then their files (as `delete`); returns how many. Rows still
        running are kept (as `delete` refuses them)."""
        with self.session() as session:
            chosen = Generation.id.in_(generation_ids) & (Generation.status != RUNNING)
            rows = list(session.scalars(select(Generation).where(chosen)))
            paths = [self.absolute(p) for g in rows for image in g.images for p in (image.path, image.thumb_path)]
            sources = sources_of(rows)
            for generation in rows:
                session.delete(generation)
            session.commit()
        remove_quietly(paths)
        self.forget_sources(sources)
        return len(rows)

    def export_archive(
        self, target: Path, generation_ids: list[int] | None = None, on_progress: Progress | None = None
    ) -> int:
        """Write a zip of the history (all of it, or the generations named) to `target`, atomically: history.json
        and history.csv (one row per generation) and every PNG as stored, metadata intact. Returns the count.
        `on_progress(done, total)`: after each generation written."""
        if generation_ids is None:
            with self.session() as session:
                rows = list(session.scalars(select(Generation).order_by(Generation.id)))
        else:
            with self.session() as session:
                query = select(Generation).where(Generation.id.in_(generation_ids)).order_by(Generation.id)
                rows = list(session.scalars(query))
        write_archive(target, rows, self.absolute, self.source_path, on_progress)
        return len(rows)

    def import_archive(
        self,
        source: Path,
        check: EntryCheck | None = None,
        screen: ImportScreen | None = None,
        on_progress: Progress | None = None,
    ) -> tuple[int, int]:
        """Add the generations of an export (new ids; images and thumbnails written atomically as by `add`).
        Ones already here (same time, prompt and seed) are skipped, so importing twice adds nothing. The init images
        and masks they started from are written first (atomically, each once: one already here is kept), every one
        checked before any is. Returns (added, skipped); raises StorageError naming the problem when the file is not
        a history export, and then nothing of it stays (rows added and sources written so far are removed). Each row
        is its own transaction, so a long import never holds the database from the generations running beside it: a
        server killed mid-import keeps the rows added so far (their files too), and importing the zip again adds the
        rest.
        `screen`: the app's content policy on each entry before it is added, and on each init image and mask before it
        is written (studio.safety.ImportScreen). A `blocked` entry is added without images or init image, as the app
        records one; init images no added row names are not kept.
        `on_progress(done, total)`: after each entry added or skipped."""
        with self._import_lock:
            return self._import_archive(source, check, screen, on_progress)

    def _import_archive(
        self, source: Path, check: EntryCheck | None, screen: ImportScreen | None, on_progress: Progress | None
    ) -> tuple[int, int]:
        with self.session() as session:
            seen = {(naive_utc(at), prompt, seed) for at, prompt, seed in
                    session.execute(select(Generation.created_at, Generation.prompt, Generation.seed))}  # fmt: skip
        added_ids: list[int] = []
        written: list[Path] = []
        skipped = 0
        with ArchiveReader(source, check) as archive:
            try:
                refused = self._import_sources(archive, written, screen)
                for done, new in enumerate(archive.generations(), start=1):
                    key = (naive_utc(new.fields["created_at"]), new.fields["prompt"], new.fields.get("seed"))
                    if key in seen:
                        skipped += 1
                    else:
                        new = screen(new) if screen is not None else new
                        unlinked = {**new.fields, "source_sha256": None, "mask_sha256": None}
                        if new.fields["status"] == "blocked":  # never an image, nor the picture it started from
                            new = replace(new, fields=unlinked, images=[])
                        elif {new.fields["source_sha256"], new.fields["mask_sha256"]} & refused:  # a flagged one
                            new = replace(new, fields=unlinked)
                        added_ids.append(self.add(new).id)
                        seen.add(key)
                    if on_progress is not None:
                        on_progress(done, len(archive))
            except BaseException:
                self._undo_import(added_ids, written)
                raise
        self.forget_sources({path.stem for path in written})
        return len(added_ids), skipped

    def _import_sources(self, archive: ArchiveReader, written: list[Path], screen: ImportScreen | None) -> set[str]:
        """Write the archive's init images and masks that this data folder lacks, after checking all of them (a
        missing or corrupt one refuses the import before any file is written); `written` collects the new files.
        Returns the addresses `screen` refused (not written)."""
        paths = {digest: self.source_path(digest) for digest in archive.sources()}
        # Content-addressed: a file already here under the same address is the same picture, and is kept.
        needed = {digest: path for digest, path in paths.items() if not path.is_file()}
        for digest in needed:  # every one checked before the first is written
            archive.source_png(digest)
        refused = set()
        for digest, path in needed.items():
            png = archive.source_png(digest)
            if screen is not None and screen.flagged(PILImage.open(io.BytesIO(png))):
                refused.add(digest)
                continue
            write_atomic(path, png)
            written.append(path)
        return refused

    def _undo_import(self, added_ids: list[int], written: list[Path]) -> None:
        """Remove what a failed import added: its rows (and their image files), then the sources it wrote."""
        try:
            if added_ids:
                self.delete_many(added_ids)
        except StorageError:
            log.exception("Could not remove the %d generations of a failed import", len(added_ids))
        remove_quietly(written)

    # ------------------------------------------------------------------------------------------------ sources
    def source_path(self, digest: str) -> Path:
        """The file of a stored init image or mask."""
        return self.absolute(self.source_relative(digest))

    def source_relative(self, digest: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", digest or ""):
            raise StorageError("That is not the address of a stored init image.")
        return source_file(digest)

    def put_source(self, image: PILImage.Image) -> str:
        """Store an init image or mask once, under the sha256 of its PNG (written atomically, before any row points
        at it), and return that address. Storing the same picture again writes nothing."""
        png = encode_png(image, None)
        digest = sha256(png)  # = files.png_address(image)
        path = self.source_path(digest)
        if not path.is_file():
            write_atomic(path, png)
        return digest

    def forget_sources(self, digests: set[str]) -> None:
        """Remove the stored init images and masks among `digests` that no row names any more (a deleted or blocked
        generation's; each is kept once however many rows share it). A generation starting from the same picture at
        that very moment (stored, its row not yet written) would find it gone: the window is one row's write, or an
        import's whole run for the sources it writes before its rows."""
        if not digests:
            return
        with self.session() as session:
            named = set(session.scalars(select(Generation.source_sha256).where(Generation.source_sha256.in_(digests))))
            named |= set(session.scalars(select(Generation.mask_sha256).where(Generation.mask_sha256.in_(digests))))
        remove_quietly([self.source_path(digest) for digest in digests - named])

    def load_source(self, digest: str) -> PILImage.Image:
        """A stored init image or mask, decoded (refused with a sentence when it is gone)."""
        path = self.source_path(digest)
        try:
            with PILImage.open(path) as image:
                image.load()
                return image.copy()
        except FileNotFoundError:
            raise StorageError(f"The init image {digest[:10]} is no longer in the data folder.") from None
        except OSError as error:
            raise StorageError(f"The init image {digest[:10]} could not be read ({error}).") from None

    # ------------------------------------------------------------------------------------------------ reads
    def get(self, generation_id: int) -> Generation | None:
        with self.session() as session:
            return session.get(Generation, generation_id)

    def _filtered(self, query: Select, filters: HistoryFilter) -> Select:
        if filters.checkpoint:
            query = query.where(Generation.checkpoint == filters.checkpoint)
        if filters.favorites_only:
            query = query.where(Generation.favorite.is_(True))
        if filters.comparisons_only:
            query = query.where(Generation.comparison_id.is_not(None))
        if filters.lora:
            with_lora = select(GenerationLora.generation_id).where(GenerationLora.name == filters.lora)
            query = query.where(Generation.id.in_(with_lora))
        words = search_words(filters.text or "")
        # The search index splits at spaces and punctuation, so a Japanese or Chinese sentence is one long token and a
        # word in its middle was never found: a word in such a script is matched anywhere in the prompt instead.
        indexed = [w for w in words if not UNSPACED_SCRIPT.search(w)] if self.dialect == "sqlite" else []
        if indexed:
            match = " ".join(f'"{w}"*' for w in indexed)  # every word, as a prefix: "fox sno" finds "fox in the snow"
            ids = text("SELECT rowid FROM generations_fts WHERE generations_fts MATCH :match").bindparams(match=match)
            query = query.where(Generation.id.in_(ids))
        for word in (w for w in words if w not in indexed):  # "_" is a LIKE wildcard: escaped, it matches only itself
            query = query.where(Generation.prompt.icontains(word, autoescape=True))
        typed = (filters.text or "").strip()
        if typed and not words:  # only punctuation or emoji ("%", "🦊"): matched as typed, not dropped to "everything"
            query = query.where(Generation.prompt.contains(typed[:100], autoescape=True))
        return query

    def page(self, cursor: int | None = None, limit: int = 24, filters: HistoryFilter | None = None) -> Page:
        """Newest first, keyset-paginated on id (ids grow with time), so page 1000 costs what page 1 costs."""
        limit = max(1, min(int(limit), 200))
        query = self._filtered(select(Generation), filters or HistoryFilter())
        if cursor is not None:
            query = query.where(Generation.id < cursor)
        query = query.order_by(Generation.id.desc()).limit(limit + 1)
        with self.session() as session:
            items = list(session.scalars(query))
        next_cursor = items[limit - 1].id if len(items) > limit else None
        return Page(items[:limit], next_cursor)

    def count(self, filters: HistoryFilter | None = None) -> int:
        query = self._filtered(select(func.count()).select_from(Generation), filters or HistoryFilter())
        with self.session() as session:
            return int(session.scalar(query) or 0)

    def lora_names(self) -> list[str]:
        """Every LoRA name in the history (for its filter)."""
        with self.session() as session:
            return list(session.scalars(select(GenerationLora.name).distinct().order_by(GenerationLora.name)))

    def comparison(self, comparison_id: str) -> list[Generation]:
        with self.session() as session:
            query = select(Generation).where(Generation.comparison_id == comparison_id).order_by(Generation.id)
            return list(session.scalars(query))


def lora_rows(loras: list[dict[str, Any]]) -> list[GenerationLora]:
    return [
        GenerationLora(
            position=position,
            name=lora["name"],
            hash=lora.get("hash") or "",
            weight=float(lora["weight"]),
            checkpoint=lora["checkpoint"],
        )
        for position, lora in enumerate(loras)
    ]
