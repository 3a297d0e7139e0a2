"""Engine creation (SQLite pragmas) and Alembic migrations applied at start-up."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError

from .errors import StorageError

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_MS = 30_000
SQLITE_FILE = "history.sqlite3"  # in the data folder, unless another database URL is given
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")  # what SQLite keeps beside it


def default_database_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / SQLITE_FILE).resolve()}"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")  # a locked database waits instead of failing
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=FULL")  # a committed generation survives power loss
    cursor.close()


def _sqlite_transactional(engine: Engine) -> None:
    """pysqlite does not BEGIN before DDL, so a failed migration would leave half its tables behind. Let SQLAlchemy
    emit BEGIN itself (the documented pysqlite recipe) so each migration commits or rolls back whole."""

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, *, transactional_ddl: bool = False) -> Engine:
    is_sqlite = url.startswith("sqlite")
    kwargs: dict = {}
    if is_sqlite:
        kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
        if transactional_ddl:
            _sqlite_transactional(engine)
    return engine


def _dangling(connection: Connection) -> set[tuple]:
    """SQLite's `foreign_key_check`: (table, rowid, parent table, key index) of each row whose parent is gone."""
    return {tuple(row) for row in connection.exec_driver_sql("PRAGMA foreign_key_check")}


def _foreign_keys(connection: Connection, on: bool) -> None:
    """SQLite's foreign keys on or off for this connection. Run on the driver's connection, outside any transaction:
    inside one SQLite ignores the pragma (SQLAlchemy would begin one before a statement of its own)."""
    connection.connection.driver_connection.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def alembic_config(extra_version_locations: list[str] | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    locations = [str(MIGRATIONS / "versions"), *(extra_version_locations or [])]
    config.set_main_option("version_locations", " ".join(locations))
    config.set_main_option("path_separator", "space")
    return config


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


# What a database error means for the person who has to fix it (SQLite's and PostgreSQL's wording), without paths:
# the sentence may reach a page.
DATABASE_PROBLEMS = (
    (("readonly", "read-only"), "The history database is read-only (check the data folder's permissions)"),
    (("malformed", "not a database", "file is encrypted"),
     "The history database file is damaged (move it aside to start a new history, or restore a backup)"),
    (("database is locked", "could not obtain lock"),
     "The history database is locked by another process (a second Krea 2 Studio on this data folder?)"),
    (("disk is full", "no space left"), "The disk holding the history database is full"),
)  # fmt: skip


def database_problem(error: SQLAlchemyError) -> str:
    """One sentence for a database error: what is wrong where it is known, else the error's kind."""
    text = str(getattr(error, "orig", None) or error).lower()
    for words, sentence in DATABASE_PROBLEMS:
        if any(word in text for word in words):
            return sentence
    return f"The history database failed ({type(error).__name__})"


def migrate(url: str, extra_version_locations: list[str] | None = None) -> None:
    """Upgrade to the newest schema, each migration in one transaction: on failure the previous schema and data
    stay as they were and StorageError says why."""
    config = alembic_config(extra_version_locations)
    head = ScriptDirectory.from_config(config).get_current_head()
    engine = make_engine(url, transactional_ddl=True)
    try:
        before = current_revision(engine)
        if before == head:
            return
        log.info("Migrating history database %s -> %s", before or "empty", head)
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:  # a table rebuild drops the old table, which would cascade to its images with foreign keys on
                _foreign_keys(connection, on=False)
            try:
                with connection.begin():
                    # Rows already pointing nowhere (written with foreign keys off, e.g. by the sqlite3 shell) are
                    # start-up repair's to handle; only ones the migration made would stop it.
                    dangling = _dangling(connection) if sqlite else set()
                    config.attributes["connection"] = connection
                    command.upgrade(config, "head")
                    if sqlite and (made := _dangling(connection) - dangling):
                        tables = ", ".join(sorted({table for table, *_ in made}))
                        raise RuntimeError(f"the upgrade left rows of {tables} pointing at rows that are gone")
            finally:
                if sqlite:
                    _foreign_keys(connection, on=True)
    except SQLAlchemyError as error:
        raise StorageError(f"{database_problem(error)}; it was left as it was.") from error
    except (OSError, RuntimeError, ValueError) as error:
        raise StorageError(
            f"The history database could not be upgraded ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "it was left as it was."
        ) from error
    finally:
        engine.dispose()
