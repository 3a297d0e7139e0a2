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

from krea2.placement import PLACEMENTS

log = logging.getLogger("krea2.app")
ON_SPACES = bool(os.environ.get("SPACE_ID"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from studio.runtime import env_flag  # here, not at the top: main() quiets the libraries before they load

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


def build_app(args: argparse.Namespace):
    """The Gradio app and its launch arguments, from parsed flags and the environment. Raises SystemExit(code) with
    a one-line message on stderr when the settings are unusable."""
    from starlette.middleware import Middleware

    from storage import HistoryStore, StorageError
    from studio.service import StudioService
    from ui.cancel import CancelRelay
    from ui.layout import CSS, KEYS_JS, build_ui
    from ui.security import LoginGuard, SameOriginGuard, allowed_origins_from_env

    auth = parse_auth(os.environ.get("KREA2_AUTH"))
    try:
        store = HistoryStore(args.data_dir).open()
    except StorageError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    from studio.runtime import EngineSettings, build_manager, use_compile_cache
    from studio.zerogpu import adapt_settings, wrap_service, zero_gpu

    try:
        settings = EngineSettings.from_env_and_args(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
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
    launch = {
        "server_name": args.host,
        "server_port": args.port,
        "auth": auth,
        # Only image folders are served; the database never is.
        "allowed_paths": [str(data / "images"), str(data / "thumbs"), str(data / "static")],
        "blocked_paths": db_files,
        "max_file_size": "20mb",
        "ssr_mode": False,
        "show_error": False,
        "css": CSS,
        "js": KEYS_JS,
        "footer_links": ["api"],
        # Outermost first: cross-site requests are refused before anything else, then anything without a login
        # (with auth on), and only then may a cancel reach the service.
        "app_kwargs": {
            "middleware": [
                Middleware(SameOriginGuard, allowed_origins=allowed_origins_from_env()),
                Middleware(LoginGuard),
                Middleware(CancelRelay, on_cancel=service.cancel_job),
            ]
        },
    }
    return app, launch


def main(argv: list[str] | None = None) -> int:
    from krea2.quiet import quiet_libraries

    quiet_libraries()  # before anything imports transformers or diffusers
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if port_taken(args.host, args.port):
        print(f"error: port {args.port} on {args.host} is already in use; choose another with --port", file=sys.stderr)
        return 1
    try:
        app, launch = build_app(args)
    except SystemExit as exit_:
        if isinstance(exit_.code, str):  # parse_auth's message
            print(exit_.code, file=sys.stderr)
            return 2
        return int(exit_.code or 1)
    try:
        app.launch(prevent_thread_lock=True, **launch)
    except OSError as error:  # the port was taken between the check and the bind
        print(f"error: cannot serve on {args.host}:{args.port}: {error.strerror or error}", file=sys.stderr)
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
