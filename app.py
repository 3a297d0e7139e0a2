"""Krea 2 Studio: `python app.py [--host H] [--port P] [--demo] [--placement auto|gpu|offload|cpu]`.

This file only wires things together: settings -> model manager + history store -> service -> UI -> server.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

from studio.settings import APP, SettingError, Settings, add_flags, load_settings

if TYPE_CHECKING:
    from krea2.context_parallel import ProcessGroup

log = logging.getLogger("krea2.app")


def read_settings(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """The app's settings: its flags, then the environment, then the defaults (studio/settings.py). Raises
    SettingError for a value it cannot read; a bad flag exits with argparse's usage line."""
    parser = argparse.ArgumentParser(description="Krea 2 Studio web app")
    add_flags(parser, APP)
    return load_settings(environ, parser.parse_args(argv))


def port_taken(host: str, port: int) -> bool:
    """Whether another process already listens on host:port. Checked before anything starts: Gradio's own failure
    comes after the models load, as a traceback, and the interpreter then aborts with loader threads running."""
    import socket

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # an unknown host is Gradio's to report
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is not "taken"
        try:
            probe.bind(address)
        except OSError:
            return True
    return False


def build_app(settings: Settings, group: ProcessGroup | None = None):
    """The Gradio app and its launch arguments. Raises SystemExit(1) with a one-line message on stderr when the
    history cannot be opened or the demo checkpoints are missing. `group`: this process is rank 0 of a
    context-parallel group (studio/devices.py)."""
    from starlette.middleware import Middleware

    from krea2.errors import LoadError
    from storage import HistoryStore, StorageError
    from storage.database import SQLITE_FILE, SQLITE_SIDE_FILES
    from storage.files import SERVED_DIRS
    from studio.devices import build_engine
    from studio.runtime import compile_cache_dir, lora_library, use_compile_cache
    from studio.safety import content_policy, reachable_from
    from studio.service import StudioService
    from studio.signing import png_signer
    from studio.zerogpu import adapt_settings, wrap_service, zero_gpu
    from ui.cancel import CancelRelay
    from ui.layout import CSS, KEYS_JS, build_ui
    from ui.security import LoginGuard, SameOriginGuard

    try:  # the content policy and the C2PA signer, checked before anything loads (studio/safety.py, signing.py)
        policy, sign_png = content_policy(settings), png_signer(settings)
    except SettingError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        store = HistoryStore(settings.data_dir, settings.database_url, sign_png).open()
    except StorageError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    spaces = zero_gpu(settings)
    if spaces is not None:
        settings = adapt_settings(settings)
    use_compile_cache(settings, store.data_dir)
    try:  # one manager, or one per device of KREA2_DEVICES (studio/devices.py)
        manager = build_engine(
            settings,
            prepare_on_cpu=spaces is not None,
            compile_cache_folder=compile_cache_dir(store.data_dir),
            loras=lora_library(settings, store.data_dir),
            content_policy=policy,
            cuda_count=1 if spaces is not None else None,  # ZeroGPU lends one GPU per call
            group=group,
        )
    except SettingError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except LoadError as error:  # found before loading starts (the demo checkpoints' folder): one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    # The page is usable while models load (the status line says how far); ZeroGPU needs them loaded up front, and
    # so do the ranks of a context-parallel group, which then stop with the app.
    manager.start(background=spaces is None and group is None)
    if group is not None:
        import atexit

        from krea2.context_parallel import ready_everywhere

        ready_everywhere(manager, group)
        atexit.register(manager.stop_followers)
    service = StudioService(manager, store)
    if spaces is not None:
        wrap_service(service, spaces)
    app = build_ui(service)
    app.queue(max_size=settings.queue_size, default_concurrency_limit=8)
    data = store.data_dir.resolve()
    db_files = [str(data / f"{SQLITE_FILE}{suffix}") for suffix in ("", *SQLITE_SIDE_FILES)]
    launch = {
        "server_name": settings.server_host,
        "server_port": settings.port,
        "auth": [settings.auth] if settings.auth else None,
        # Only image folders are served; the database never is.
        "allowed_paths": [str(data / folder) for folder in SERVED_DIRS],
        "blocked_paths": db_files,
        "max_file_size": f"{settings.max_upload_mb}mb",
        "ssr_mode": False,
        "show_error": False,
        "css": CSS,
        "js": KEYS_JS,
        "footer_links": ["api"],
        # Outermost first: cross-site requests are refused before anything else, then anything without a login
        # (with auth on), and only then may a cancel reach the service.
        "app_kwargs": {
            "middleware": [
                Middleware(
                    SameOriginGuard,
                    allowed_origins=settings.allowed_origins,
                    local_only=reachable_from(settings) is None,
                ),
                Middleware(LoginGuard),
                Middleware(CancelRelay, on_cancel=service.cancel_job),
            ]
        },
    }
    return app, launch


def main(argv: list[str] | None = None) -> int:
    from krea2.quiet import quiet_libraries

    quiet_libraries()  # before anything imports transformers or diffusers (reading KREA2_ATTENTION does)
    try:
        settings = read_settings(argv)
    except SettingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from studio.devices import follow, join_group

    try:  # KREA2_CONTEXT_PARALLEL: one process per GPU (torchrun); rank 0 serves, the others follow it
        group = join_group(settings)
    except SettingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if group is not None and not group.lead:
        return follow(settings, group)
    host, port = settings.server_host, settings.port
    if port_taken(host, port):
        print(f"error: port {port} on {host} is already in use; choose another with --port", file=sys.stderr)
        return 1
    try:
        app, launch = build_app(settings, group)
    except SystemExit as exit_:
        return int(exit_.code or 1)
    try:
        app.launch(prevent_thread_lock=True, **launch)
    except OSError as error:  # the port was taken between the check and the bind
        print(f"error: cannot serve on {host}:{port}: {error.strerror or error}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)  # loader/warm-up threads are running: a normal exit would abort inside them
    serve_until_stopped(app)
    return 0


def serve_until_stopped(app) -> None:
    """Block until Ctrl+C or SIGTERM (what `docker stop` and service managers send), then close the server and say
    so: without this a SIGTERM ended the process mid-line, and Ctrl+C printed Gradio's "Keyboard interruption"."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
        reason = "SIGTERM"
    except KeyboardInterrupt:
        reason = "Ctrl+C"
    log.info("Shutting down (%s)…", reason)
    app.close()
    log.info("Krea 2 Studio stopped cleanly.")


if __name__ == "__main__":
    raise SystemExit(main())
