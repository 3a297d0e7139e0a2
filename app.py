"""Krea 2 Studio: `python app.py [--host H] [--port P] [--demo] [--placement auto|gpu|offload|cpu]`.

This file only wires things together: settings -> model manager + history store -> service -> UI -> server.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from krea2.placement import PLACEMENTS
from krea2.runtime import EngineSettings, build_manager, env_flag, use_compile_cache

log = logging.getLogger("krea2.app")
ON_SPACES = bool(os.environ.get("SPACE_ID"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Krea 2 Studio web app")
    default_host = "0.0.0.0" if ON_SPACES else "127.0.0.1"
    parser.add_argument("--host", default=os.environ.get("KREA2_HOST", default_host))
    parser.add_argument("--port", type=int, default=int(os.environ.get("KREA2_PORT", "7860")))
    parser.add_argument("--demo", action="store_true", default=env_flag("KREA2_DEMO"))
    parser.add_argument("--placement", choices=PLACEMENTS, default=os.environ.get("KREA2_PLACEMENT", "auto"))
    parser.add_argument("--data-dir", default=os.environ.get("KREA2_DATA_DIR"))
    parser.add_argument("--raw", help="Raw source: Hub repo id or local folder (env KREA2_RAW)")
    parser.add_argument("--turbo", help="Turbo source: Hub repo id or local folder (env KREA2_TURBO)")
    parser.add_argument("--queue-size", type=int, default=int(os.environ.get("KREA2_QUEUE_SIZE", "32")))
    return parser.parse_args(argv)


def parse_auth(value: str | None) -> list[tuple[str, str]] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise SystemExit("error: KREA2_AUTH must look like user:password")
    return [(user, password)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from starlette.middleware import Middleware

    from storage import HistoryStore, StorageError
    from ui.layout import CSS, build_ui
    from ui.security import SameOriginGuard, allowed_origins_from_env
    from ui.service import StudioService

    try:
        store = HistoryStore(args.data_dir).open()
    except StorageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    from ui.zerogpu import adapt_settings, wrap_service, zero_gpu

    try:
        settings = EngineSettings.from_env_and_args(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    spaces = zero_gpu()
    if spaces is not None:
        adapt_settings(settings)
    use_compile_cache(store.data_dir)
    manager = build_manager(settings)
    # The page is usable while models load (the status line says how far); ZeroGPU needs them loaded up front.
    manager.start(background=spaces is None)
    service = StudioService(manager, store)
    if spaces is not None:
        wrap_service(service, spaces)
    app = build_ui(service)
    app.queue(max_size=args.queue_size, default_concurrency_limit=8)
    data = store.data_dir.resolve()
    db_files = [str(data / f"history.sqlite3{suffix}") for suffix in ("", "-wal", "-shm", "-journal")]
    app.launch(
        server_name=args.host,
        server_port=args.port,
        auth=parse_auth(os.environ.get("KREA2_AUTH")),
        # Only image folders are served; the database never is.
        allowed_paths=[str(data / "images"), str(data / "thumbs"), str(data / "static")],
        blocked_paths=db_files,
        max_file_size="20mb",
        ssr_mode=False,
        show_error=False,
        css=CSS,
        footer_links=["api"],
        app_kwargs={"middleware": [Middleware(SameOriginGuard, allowed_origins=allowed_origins_from_env())]},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
