"""Headless CLI: `python -m studio generate --prompt TEXT ...` writes a PNG, records it in history, prints JSON."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from krea2.checkpoints import CHECKPOINTS
from krea2.errors import Cancelled, InvalidRequest, Krea2Error
from krea2.placement import PLACEMENTS
from krea2.request import GenerationRequest


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit code 2, like every other bad input
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m studio", description="Krea 2 Studio headless tools")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    gen = sub.add_parser("generate", help="generate an image and print one JSON line")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--checkpoint", default="turbo", choices=sorted(CHECKPOINTS))
    gen.add_argument("--steps")
    gen.add_argument("--guidance")
    gen.add_argument("--width", default="1024")
    gen.add_argument("--height", default="1024")
    gen.add_argument("--seed")
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--num-images", default="1")
    gen.add_argument("--out", help="also copy the first image here (PNG, metadata intact)")
    gen.add_argument("--demo", action="store_true", help="use the built-in demo checkpoints")
    gen.add_argument("--placement", default="auto", choices=PLACEMENTS)
    gen.add_argument("--raw", help="Raw source: Hub repo id or local folder (env KREA2_RAW)")
    gen.add_argument("--turbo", help="Turbo source: Hub repo id or local folder (env KREA2_TURBO)")
    gen.add_argument("--data-dir", help="history data folder (env KREA2_DATA_DIR)")
    gen.add_argument("--no-history", action="store_true", help="do not record in the history database")
    return parser


def _generate(args: argparse.Namespace) -> int:
    request = GenerationRequest(
        prompt=args.prompt,
        checkpoint=args.checkpoint,
        negative_prompt=args.negative_prompt,
        steps=args.steps,
        guidance=args.guidance,
        width=args.width,
        height=args.height,
        seed=args.seed,
        num_images=args.num_images,
    )  # validated before any model loads: bad input fails in milliseconds

    from storage import HistoryStore

    from .recording import record_failure, record_result
    from .runtime import EngineSettings, build_manager

    try:
        settings = EngineSettings.from_env_and_args(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    store = None if args.no_history else HistoryStore(args.data_dir).open()
    manager = build_manager(settings)
    manager.start(background=False)
    try:
        result = manager.generate(request)
    except Cancelled as error:
        if store:
            record_failure(store, request, "cancelled", str(error))
        raise
    except Krea2Error as error:
        if store:
            record_failure(store, request, "failed", str(error))
        raise
    paths: list[str] = []
    generation_id = None
    if store:
        generation = record_result(store, result)
        generation_id = generation.id
        paths = [str(store.absolute(image.path).absolute()) for image in generation.images]
    if args.out:
        out = Path(args.out).absolute()  # both paths printed absolute, like the history copies
        out.parent.mkdir(parents=True, exist_ok=True)
        if paths:
            shutil.copyfile(paths[0], out)
        else:
            from storage.files import encode_png
            from storage.pnginfo import build_pnginfo

            from .recording import png_parameters

            params = {**png_parameters(result.request), "seed": result.seeds[0]}
            out.write_bytes(encode_png(result.images[0], build_pnginfo(params)))
        paths.insert(0, str(out))
    line = {
        "checkpoint": result.request.checkpoint,
        "seed": result.request.seed,
        "seeds": result.seeds,
        "timings": result.timings.as_ms(),
        "path": paths[0] if paths else None,
        "paths": paths,
        "generation_id": generation_id,
        "demo": manager.demo,
        "warnings": result.warnings,
    }
    print(json.dumps(line))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from krea2.quiet import quiet_libraries

    quiet_libraries()
    try:
        return _generate(args)
    except InvalidRequest as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Krea2Error as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        from storage import StorageError

        if isinstance(error, StorageError):
            print(f"error: {error}", file=sys.stderr)
            return 1
        raise
