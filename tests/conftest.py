"""Shared fixtures: demo checkpoints built once per session into a temp folder, real temporary databases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from krea2.quiet import quiet_libraries

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Two threads for the one process of a plain run. Under pytest-xdist (scripts/test.sh runs `-n 2` on a 2-core machine)
# one each, for the workers and the apps, CLIs and benchmarks they start (OMP_NUM_THREADS): two 2-thread processes on
# two cores spin against each other, and a demo generation took 94 s instead of 22 s alone (27 s on one thread).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(2)
# As the app, the CLI and the benchmarks do at start-up; without it, whichever test first imports diffusers gets
# torchao's "Unable to import" line in its captured stderr (test_cli's one-line checks failed when run alone).
quiet_libraries()
pytest_plugins = ("pytester",)  # tests/test_markers.py runs pytest on small suites


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked slow run only when asked for: with --slow, or a -m expression that names them (`-m slow`,
    `-m "slow and browser"`). A default `-m 'not slow'` in addopts was dropped by any other -m (`-m browser` ran the
    slow browser tests too)."""
    if config.getoption("--slow") or "slow" in (config.option.markexpr or ""):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, one per test module (the browser tests share it)."""
    from app_server import CHROMIUM, FLAGS
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def demo_sources(tmp_path_factory) -> dict[str, str]:
    from krea2.demo import demo_checkpoints

    return demo_checkpoints()


@pytest.fixture(scope="session")
def manager(demo_sources):
    from krea2.loading import PipelineLoader
    from krea2.manager import ModelManager

    mgr = ModelManager(PipelineLoader(demo_sources, torch.float32), demo=True)
    mgr.start(background=False)
    assert mgr.status().checkpoints["turbo"].state == "ready"
    return mgr


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory) -> Path:
    """The LoRA folder of `lora_manager`: tests write their LoRA files here, each under its own name."""
    return tmp_path_factory.mktemp("loras")


@pytest.fixture(scope="session")
def lora_manager(demo_sources, lora_dir):
    """A manager with a LoRA folder (the session's `manager` has none), on the demo checkpoints."""
    from krea2.loading import PipelineLoader
    from krea2.lora_library import LoraLibrary
    from krea2.manager import ModelManager

    mgr = ModelManager(PipelineLoader(demo_sources, torch.float32), demo=True, loras=LoraLibrary(lora_dir))
    mgr.start(background=False)
    return mgr


def postgres_url() -> str | None:
    return os.environ.get("KREA2_TEST_POSTGRES_URL")


@pytest.fixture(scope="session")
def worker_postgres_url() -> str | None:
    """KREA2_TEST_POSTGRES_URL, or under pytest-xdist a database of this worker's own beside it (krea2_test_gw0, ...),
    created on first use: each storage test drops and recreates the public schema, which must not pull the tables
    from under a test on another worker."""
    url, worker = postgres_url(), os.environ.get("PYTEST_XDIST_WORKER")
    if not url or not worker:
        return url
    from sqlalchemy import create_engine, make_url, text

    base = make_url(url)
    own = f"{base.database}_{worker}"
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        if not connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": own}).scalar():
            connection.execute(text(f'CREATE DATABASE "{own}"'))
    engine.dispose()
    return base.set(database=own).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path: Path) -> str:
    """Each storage test runs on a fresh SQLite file and, where a server is configured, a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.sqlite3'}"
    url = request.getfixturevalue("worker_postgres_url")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("KREA2_TEST_POSTGRES_URL is not set in CI")
        pytest.skip("no PostgreSQL server configured (set KREA2_TEST_POSTGRES_URL)")
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


@pytest.fixture
def store(tmp_path: Path, database_url: str):
    from storage import HistoryStore

    history = HistoryStore(tmp_path / "data", database_url).open()
    yield history
    history.close()


@pytest.fixture
def lora_handlers(lora_manager, tmp_path):
    """The page's handlers (ui/handlers.py) over a real StudioService: `lora_manager` and a fresh history store."""
    from storage import HistoryStore
    from studio.service import StudioService
    from ui.handlers import Handlers

    store = HistoryStore(tmp_path / "data").open()
    yield Handlers(StudioService(lora_manager, store))
    store.close()
