"""Headless CLI: `python -m studio generate --prompt TEXT ...` writes a PNG, records it in history, prints JSON;
`python -m studio lora list` lists the LoRA folder, `python -m studio lora pull OWNER/REPO` adds a Hub LoRA to it."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from krea2.checkpoints import CHECKPOINTS
from krea2.content_filter import ContentPolicy
from krea2.demo import default_size
from krea2.errors import Cancelled, ContentBlocked, FilterUnavailable, InvalidRequest, Krea2Error
from krea2.image_input import DEFAULT_STRENGTH, MASKED_STRENGTH, InvalidImage, parse_feather, parse_outpaint
from krea2.request import GenerationRequest

if TYPE_CHECKING:
    from krea2.generation import GenerationResult
from storage import StorageError

from .settings import GENERATE, LORA, SettingError, Settings, add_flags, load_settings
from .sources import PreparedSource, image_source, start_size, store_source

BLOCKED_EXIT = 3  # the content policy refused the prompt or the image (a `blocked` row, no file)
# The request's fields the `generate` command takes; one left out takes GenerationRequest's own default.
REQUEST_OPTIONS = ("prompt", "checkpoint", "negative_prompt", "steps", "guidance", "width", "height", "seed",
                   "num_images")  # fmt: skip


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit code 2, like every other bad input
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m studio", description="Krea 2 Studio headless tools")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    gen = sub.add_parser("generate", help="generate an image and print one JSON line")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--checkpoint", choices=sorted(CHECKPOINTS))
    for option in REQUEST_OPTIONS[2:]:
        gen.add_argument("--" + option.replace("_", "-"), dest=option)
    start = gen.add_argument_group("start from an image (img2img, inpaint, outpaint)")
    start.add_argument("--image", help="init image: a PNG, JPEG, WebP or GIF file")
    start.add_argument("--mask", help="inpaint mask (white repaints, black keeps), same shape as the image")
    redrawn = f"default {DEFAULT_STRENGTH}; {MASKED_STRENGTH:g} with a mask or outpaint"
    start.add_argument("--strength", help=f"share of the schedule redrawn, above 0 up to 1 ({redrawn})")
    start.add_argument("--feather", default="0", help="blur the mask's edge by this many pixels")
    start.add_argument("--outpaint", metavar="L,R,T,B", help="extend the canvas by these pixels on each side")
    gen.add_argument("--out", help="also write the image here (a .png, metadata intact; more images of a batch as "
                     "NAME-2.png, NAME-3.png...)")  # fmt: skip
    gen.add_argument("--no-history", action="store_true",
                     help="do not record in the history database (needs --out)")  # fmt: skip
    gen.add_argument("--lora", action="append", dest="loras", metavar="NAME:WEIGHT",
                     help="a LoRA of the LoRA folder, weight -2..2 (default 1); repeat for up to 4")  # fmt: skip
    add_flags(gen, GENERATE)
    lora = sub.add_parser("lora", help="the LoRA folder").add_subparsers(dest="lora_command", required=True,
                                                                         parser_class=_Parser)  # fmt: skip
    listing = lora.add_parser("list", help="list the LoRAs in the LoRA folder (name, size, AutoV3 hash)")
    listing.add_argument("--json", action="store_true", help="one JSON object per LoRA")
    add_flags(listing, LORA)
    pull = lora.add_parser("pull", help="download a LoRA from the Hub into the LoRA folder")
    pull.add_argument("repo", metavar="OWNER/REPO")
    pull.add_argument("--file", help="the .safetensors file to take (needed when the repo has several)")
    add_flags(pull, LORA)
    return parser


def request_of(args: argparse.Namespace, default: tuple[int, int]) -> GenerationRequest:
    """The request the options describe, validated before any model loads: bad input fails in milliseconds.
    `default`: text-to-image's size where --width or --height is not given (krea2.demo.default_size)."""
    given = {name: getattr(args, name) for name in REQUEST_OPTIONS if getattr(args, name, None) is not None}
    if getattr(args, "image", None):
        prepared = source_of(args, given)
        args.notes = list(prepared.notes)
        given.update(source=prepared.source, width=prepared.size[0], height=prepared.size[1])
    elif any(getattr(args, name, None) for name in ("mask", "strength", "outpaint")) or parse_feather(
        getattr(args, "feather", None) or 0
    ):
        raise InvalidRequest("image", None, "is needed by --mask, --strength, --outpaint and --feather")
    else:
        given = {"width": default[0], "height": default[1], **given}
    return GenerationRequest(**given, loras=getattr(args, "loras", None) or ())


def source_of(args: argparse.Namespace, given: dict) -> PreparedSource:
    """--image and its companions, prepared (the size: --width and --height, or neither for the image's own)."""
    outpaint = parse_outpaint(args.outpaint) if args.outpaint else None
    strength = args.strength if args.strength not in (None, "") else None  # ImageInput parses it
    feather = parse_feather(args.feather)
    size = start_size(given.get("width"), given.get("height"))  # checked before any file is read
    return image_source(args.image, strength=strength, mask=args.mask, feather=feather, outpaint=outpaint, size=size)


def check_out(args: argparse.Namespace, count: int) -> None:
    """`--out` for a batch of `count` images, as far as it can be checked before a model loads: a hostile pass got a
    PNG inside `c.jpg`, an image made and thrown away (`--no-history` alone), and an unwritable path found only after
    the run. `--out` itself is written over, as always; a batch's further files (NAME-2.png...) are not."""
    out = getattr(args, "out", None)
    if getattr(args, "no_history", False) and not out:
        raise InvalidRequest("--out", None, "is needed with --no-history (the image would be made and thrown away)")
    if not out:
        return
    path = Path(out)
    if path.is_dir():
        raise InvalidRequest("--out", out, "is a folder; give the file to write, e.g. picture.png")
    if path.suffix.lower() != ".png":
        raise InvalidRequest("--out", out, "must end in .png (the image is written as a PNG, its metadata in it)")
    taken = [other.name for other in out_paths(path, count)[1:] if other.exists()]
    if taken:
        raise InvalidRequest("--out", out, f"would write the batch's other images over {', '.join(taken)}; choose "
                                           "another name")  # fmt: skip
    try:  # the folder made and a file written there now, as the image will be
        path.absolute().parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.absolute().parent):
            pass
    except OSError as error:
        raise InvalidRequest("--out", out, f"cannot be written there ({error.strerror or error})") from None


def out_paths(out: Path, count: int) -> list[Path]:
    """Where `--out` puts each image of a batch: the first at `out`, the others beside it (`a.png`, `a-2.png`...)."""
    return [out, *(out.with_name(f"{out.stem}-{number}{out.suffix}") for number in range(2, count + 1))]


def _write_out(
    out: Path, paths: list[str], result: GenerationResult, sign_png: Callable[[bytes], bytes] | None
) -> list[Path]:
    """`--out`: the history's copy of each image, or (with `--no-history`) each image encoded with its metadata,
    each written whole or not at all (StorageError names the file otherwise). Returns the files written."""
    from storage.files import atomic_file, encode_png
    from storage.pnginfo import build_pnginfo

    from .recording import png_parameters

    written = []
    for index, target in enumerate(out_paths(out, len(result.images))):
        try:
            if paths:
                data = Path(paths[index]).read_bytes()
            else:
                params = {**png_parameters(result.request, result.loras), "seed": result.seeds[index]}
                png = encode_png(result.images[index], build_pnginfo(params))
                data = sign_png(png) if sign_png is not None else png
            with atomic_file(target) as handle:
                handle.write(data)
        except OSError as error:
            raise StorageError(f"--out {target} could not be written ({error.strerror or error}).") from None
        written.append(target)
    return written


def _generate(
    request: GenerationRequest,
    settings: Settings,
    args: argparse.Namespace,
    policy: ContentPolicy,
    sign_png: Callable[[bytes], bytes] | None,
) -> int:
    from krea2.lora_library import request_lora_files
    from storage import HistoryStore
    from storage.files import default_data_dir

    from .recording import record_blocked, record_failure, record_result
    from .runtime import build_manager, lora_library

    store = None if args.no_history else HistoryStore(settings.data_dir, settings.database_url, sign_png).open()

    def blocked(error: ContentBlocked) -> None:
        if store:
            seen = error.request if isinstance(error.request, GenerationRequest) else request
            record_blocked(store, seen, str(error))

    try:
        policy.check_prompt(request)  # before any model loads
    except ContentBlocked as error:
        blocked(error)
        raise
    data_dir = store.data_dir if store else settings.data_dir or default_data_dir()
    library = lora_library(settings, data_dir)
    request_lora_files(library, request)  # a LoRA the folder lacks is bad input: exit 2, nothing loaded or recorded
    if store and request.source is not None:
        store_source(store, request.source)  # before the row that names it
    manager = build_manager(settings, loras=library, content_policy=policy)
    manager.start(background=False)
    try:
        result = manager.generate(request)
    except ContentBlocked as error:
        blocked(error)
        raise
    except FilterUnavailable:  # fail closed: nothing ran, nothing to record
        raise
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
    out_files: list[str] = []
    if args.out:
        out = Path(args.out).absolute()  # both paths printed absolute, like the history copies
        try:
            written = _write_out(out, paths, result, sign_png)
        except StorageError as error:  # the image is made (and in the history, when recorded): say where it is
            kept = f" The image is in the history as generation {generation_id}." if generation_id is not None else ""
            raise StorageError(f"{error}{kept}") from None
        out_files = [str(path) for path in written]
        paths[:0] = out_files
    line = {
        "checkpoint": result.request.checkpoint,
        "seed": result.request.seed,
        "seeds": result.seeds,
        "timings": result.timings.as_ms(),
        "path": paths[0] if paths else None,
        "paths": paths,  # --out's files first, then the history's copies
        "out_paths": out_files,
        "generation_id": generation_id,
        "demo": manager.demo,
        "warnings": result.warnings,
        "loras": [{"name": x.name, "hash": x.hash, "weight": x.weight} for x in result.loras],
        "notes": getattr(args, "notes", []),
    }
    print(json.dumps(line))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from krea2.quiet import quiet_libraries

    quiet_libraries()  # before the libraries load (reading KREA2_ATTENTION imports diffusers)
    return run(args)


def _lora(args: argparse.Namespace, settings: Settings) -> int:
    """`lora list` and `lora pull`: the LoRA folder, no model loaded."""
    from krea2.lora_files import short_hash
    from krea2.lora_weights import check_is_lora
    from storage.files import default_data_dir

    from .runtime import lora_library

    library = lora_library(settings, settings.data_dir or default_data_dir())
    if args.lora_command == "pull":  # the file's format is checked now, the rest against the model at first use
        added = library.add_from_hub(args.repo, args.file, check=check_is_lora)
        print(json.dumps({"name": added.name, "path": str(added.path.absolute()), "hash": library.hash(added)}))
        return 0
    folder = library.folder.absolute()
    if folder.exists() and not folder.is_dir():
        print(f"warning: the LoRA folder {folder} is a file, not a folder: nothing in it to list", file=sys.stderr)
    elif settings.lora_dir is not None and not folder.exists():  # a mistyped --lora-dir listed nothing, unsaid
        print(f"warning: the LoRA folder {folder} does not exist (yet): nothing in it to list", file=sys.stderr)
    files = library.files()
    unnamable = library.unnamable()
    for sentence in unnamable:  # a file copied in by hand may have a name a prompt cannot hold: said, not dropped
        print(f"warning: {sentence}", file=sys.stderr)
    checked = [(file, *library.hash_or_problem(file)) for file in files]  # a damaged file is listed with its problem
    if args.json:
        for file, digest, problem in checked:
            entry = {"name": file.name, "bytes": file.size, "hash": digest or None, "path": str(file.path.absolute())}
            print(json.dumps({**entry, **({"problem": problem} if problem else {})}))
        return 0
    if not files:
        print(f"No LoRAs in {library.folder.absolute()} (put .safetensors files there).")
        return 0
    width = max(len(file.name) for file in files)
    for file, digest, problem in checked:
        print(f"{file.name:<{width}}  {file.size / 2**20:8.1f} MB  {short_hash(digest) if digest else problem}")
    return 0


def run(args: argparse.Namespace, environ: dict[str, str] | None = None) -> int:
    """Run parsed arguments. Every failure is one line on stderr and an exit code: 2 for bad input or a bad setting
    (found before any model loads), 1 for a failure while loading, generating or recording, 3 when the content policy
    refused the prompt or the image (studio/safety.py)."""
    if args.command == "lora":
        try:
            return _lora(args, load_settings(environ, args))
        except SettingError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except Krea2Error as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    from .runtime import uses_demo
    from .safety import content_policy
    from .signing import png_signer

    try:
        settings = load_settings(environ, args)
        request = request_of(args, default_size(uses_demo(settings)))
        policy, sign_png = content_policy(settings), png_signer(settings)
        check_out(args, request.num_images)  # last of the checks (it may make --out's folder), before any model loads
    except (InvalidRequest, SettingError, InvalidImage) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _generate(request, settings, args, policy, sign_png)
    except ContentBlocked as error:
        print(f"error: {error}", file=sys.stderr)
        return BLOCKED_EXIT
    except InvalidRequest as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (Krea2Error, StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
