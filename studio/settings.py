"""Every setting of Krea 2 Studio, defined once: its environment variable, its command-line flag (where it has one),
what values it takes, its default and what it does.

`Settings` is the table: one field per setting, each field carrying its `Setting` description. `load_settings` reads
them with one rule, a flag given on the command line, then the environment variable, then the default, and parses
strictly: a value it cannot read (`KREA2_COMPILE=ture`) is a `SettingError` naming the variable and what it accepts,
never a silent fallback. An empty variable counts as unset. The README's settings table is generated from this one:

    python -m studio.settings --markdown

Only this module reads the environment for the app; the engine (`krea2/`) and the history (`storage/`) get plain
typed values as arguments (`studio/runtime.py` maps the speed-up settings into the engine's options).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from krea2.checkpoints import RAW, TURBO
from krea2.placement import PLACEMENTS

APP, GENERATE = "app", "generate"  # the command lines with flags: `python app.py` and `python -m studio generate`
LORA = "lora"  # `python -m studio lora ...`
ON_WORDS, OFF_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class SettingError(ValueError):
    """A setting's value cannot be read; the message is one line naming the variable (or flag) and what it takes."""


# ------------------------------------------------------------------------------------------------ value kinds
@dataclass(frozen=True)
class Kind:
    """How a setting's value is written: `parse` turns the text into the value or raises ValueError saying what the
    text must be ("must be ..."); `values` describes it in the README."""

    values: str
    parse: Callable[[str], Any]
    secret: bool = False  # never quote the text back (a password)


def _switch(text: str) -> bool:
    word = text.strip().lower()
    if word in ON_WORDS:
        return True
    if word in OFF_WORDS:
        return False
    raise ValueError(f"must be one of {', '.join(ON_WORDS + OFF_WORDS)}")


def _whole_number(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError("must be a whole number") from None
        if value < lo or (hi is not None and value > hi):
            raise ValueError(f"must be between {lo} and {hi}" if hi is not None else f"must be at least {lo}")
        return value

    return parse


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number such as 0.05") from None
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError("must be a finite number >= 0")
    return value


def _one_of(choices: Callable[[], Iterable[str]]) -> Callable[[str], str]:
    """A choice among names; `choices` is called only when a value is read (the attention names need diffusers)."""

    def parse(text: str) -> str:
        names = list(choices())
        if text.strip() not in names:
            raise ValueError(f"must be one of {', '.join(names)}")
        return text.strip()

    return parse


def _attention_names() -> list[str]:
    from diffusers.models.attention_dispatch import AttentionBackendName

    from krea2.speedups.attention import KERNEL_NAMES

    return [*KERNEL_NAMES, "sdpa", *(name.value for name in AttentionBackendName)]


def _repo_or_folder(text: str) -> str:
    """A Hub repo id (`owner/name`) or an existing folder; a single file cannot hold a text encoder and a VAE."""
    text = text.strip()
    if Path(text).expanduser().is_dir():
        return text
    if Path(text).suffix.lower() in (".safetensors", ".sft", ".gguf") or not re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        raise ValueError("must be a Hub repo id (owner/name) or an existing folder with Turbo's layout")
    return text


def _login(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError("must look like user:password")
    return user, password


def _origins(text: str) -> tuple[str, ...]:
    origins = tuple(part.strip().rstrip("/") for part in text.split(",") if part.strip())
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ValueError("must be origins such as https://studio.example.com, separated by commas")
    return origins


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number between 0 and 1 such as 0.5") from None
    if not 0 <= value <= 1:
        raise ValueError("must be a number between 0 and 1")
    return value


def _labels(text: str) -> tuple[str, ...]:
    labels = tuple(part.strip() for part in text.split(",") if part.strip())
    if not labels or any(not all(c.isalnum() or c in "_- " for c in label) for label in labels):
        raise ValueError("must be label names such as nsfw, separated by commas")
    return labels


CONTEXT_PARALLEL_MODES = ("off", "ulysses")  # krea2/context_parallel.py


def _devices(text: str) -> tuple[str, ...]:
    """`cpu` or CUDA devices (`cuda:1`, or just `1`), comma separated, each GPU once: the workers, one per entry. The
    machine's count is checked where the workers are built (studio/devices.py)."""
    devices = []
    for part in (part.strip().lower() for part in text.split(",")):
        if part == "cpu":
            devices.append("cpu")
            continue
        index = part.removeprefix("cuda:")
        if not index.isdigit():
            raise ValueError("must be `auto` or devices such as cuda:0,cuda:1 (or 0,1), or cpu, separated by commas")
        devices.append(f"cuda:{int(index)}")
    gpus = [device for device in devices if device != "cpu"]
    if len(set(gpus)) != len(gpus):
        raise ValueError("must name each GPU once")
    if gpus and len(gpus) != len(devices):
        raise ValueError("must be all GPUs or all cpu, not both")
    return tuple(devices)


def _devices_or_auto(text: str) -> tuple[str, ...] | None:
    return None if text.strip().lower() == "auto" else _devices(text)


DATABASES = ("sqlite", "postgresql")  # what storage/ is written and tested for


def _database_url(text: str) -> str:
    """A SQLAlchemy URL of a database the history supports, with a synchronous driver that is installed (checked
    here, so a typo or a missing driver stops the start with this sentence, not a traceback at the first query)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    usable = "must be a SQLite or PostgreSQL SQLAlchemy URL such as postgresql+psycopg://user:pass@host/db"
    try:
        url = make_url(text.strip())
        dialect = url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise ValueError(usable) from None
    if url.get_backend_name() not in DATABASES or getattr(dialect, "is_async", False):  # the store is synchronous
        raise ValueError(usable)
    try:
        dialect.import_dbapi()
    except ImportError:
        raise ValueError(f"names the driver {url.get_driver_name()}, which is not installed (postgresql+psycopg "
                         "is)") from None  # fmt: skip
    return text.strip()


def _existing_file(text: str) -> Path:
    path = Path(text.strip()).expanduser()
    if not path.is_file():
        raise ValueError("must be an existing file")
    return path


SWITCH = Kind("on/off", _switch)
TEXT = Kind("text", str.strip)
FOLDER = Kind("folder", lambda text: Path(text.strip()).expanduser())
PORT = Kind("port (1-65535)", _whole_number(1, 65535))
COUNT = Kind("whole number ≥ 1", _whole_number(1))
PLACEMENT = Kind(", ".join(f"`{name}`" for name in PLACEMENTS), _one_of(lambda: PLACEMENTS))
ATTENTION = Kind("`flash4`, `cudnn-fp8`, `sdpa` or a diffusers attention backend name", _one_of(_attention_names))
THRESHOLD = Kind("number ≥ 0", _threshold)
LOGIN = Kind("`user:password`", _login, secret=True)
ORIGINS = Kind("origins, comma separated", _origins)
SOURCE = Kind("Hub repo id, folder or `.safetensors` file", str.strip)
REPO_OR_FOLDER = Kind("Hub repo id or folder", str.strip)  # transformers' from_pretrained: no single file
COMPONENTS = Kind("Hub repo id or folder", lambda text: _repo_or_folder(text))
DATABASE = Kind("SQLAlchemy URL", _database_url, secret=True)  # a URL may hold a password
PROBABILITY = Kind("number 0-1", _probability)
LABELS = Kind("labels, comma separated", _labels)
FILE = Kind("file", _existing_file)
DEVICES = Kind("`auto`, or devices: `cuda:0,cuda:1` (or `0,1`), `cpu`", _devices_or_auto)
CONTEXT_PARALLEL = Kind(", ".join(f"`{mode}`" for mode in CONTEXT_PARALLEL_MODES),
                        _one_of(lambda: CONTEXT_PARALLEL_MODES))  # fmt: skip


# ------------------------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Setting:
    env: str
    kind: Kind
    help: str
    default_text: str  # the default as the README states it
    flag: str | None = None
    commands: tuple[str, ...] = ()  # the command lines that have the flag

    def read(self, text: str) -> Any:
        try:
            return self.kind.parse(text)
        except ValueError as error:
            got = "" if self.kind.secret else f", got {text!r}"
            raise SettingError(f"{self.env} {error}{got}") from None


def setting(default: Any, env: str, kind: Kind, help: str, default_text: str, flag: str | None = None,
            commands: tuple[str, ...] = (APP, GENERATE)) -> Any:  # fmt: skip
    described = Setting(env, kind, help, default_text, flag, commands if flag else ())
    return field(default=default, metadata={"setting": described})


@dataclass(frozen=True)
class Settings:
    # --------------------------------------------------------------------------------------------- server
    host: str | None = setting(
        None, "KREA2_HOST", TEXT, "interface to bind", "`127.0.0.1` (`0.0.0.0` on Spaces/Docker)", "--host", (APP,)
    )
    port: int = setting(7860, "KREA2_PORT", PORT, "port", "`7860`", "--port", (APP,))
    queue_size: int = setting(
        32, "KREA2_QUEUE_SIZE", COUNT, 'waiting requests before "queue is full"', "`32`", "--queue-size", (APP,)
    )
    auth: tuple[str, str] | None = setting(None, "KREA2_AUTH", LOGIN, "login for the page and the API", "off")
    allowed_origins: tuple[str, ...] = setting(
        (), "KREA2_ALLOWED_ORIGINS", ORIGINS,
        "other sites allowed to send requests, e.g. a reverse proxy's public URL (same-origin requests always are)",
        "none",
    )  # fmt: skip
    # --------------------------------------------------------------------------------------------- models
    demo: bool = setting(
        False, "KREA2_DEMO", SWITCH, "use the built-in demo checkpoints", "off (on without CUDA)", "--demo"
    )
    demo_checkpoints: Path | None = setting(
        None, "KREA2_DEMO_CHECKPOINTS", FOLDER,
        "folder holding `Krea-2-Turbo-demo/` and `Krea-2-Raw-demo/` (e.g. a retrained pair)", "`demo/checkpoints`",
    )  # fmt: skip
    placement: str = setting(
        "auto", "KREA2_PLACEMENT", PLACEMENT,
        "`gpu` (all resident), `offload` (weights in CPU RAM, streamed per layer), `cpu`; `auto` picks a plan from "
        "free GPU memory, small-GPU plans included (the status line names it)", "`auto`", "--placement",
    )  # fmt: skip
    raw: str = setting(
        RAW.default_source, RAW.source_env_var, SOURCE,
        "where Krea 2 Raw is loaded from (the Hub repo's layout, or Krea's or ComfyUI's single file, bf16 or fp8)",
        f"`{RAW.default_source}`", "--raw",
    )  # fmt: skip
    turbo: str = setting(
        TURBO.default_source, TURBO.source_env_var, SOURCE,
        "where Krea 2 Turbo is loaded from (the Hub repo's layout, or Krea's or ComfyUI's single file, bf16 or fp8)",
        f"`{TURBO.default_source}`", "--turbo",
    )  # fmt: skip
    components: str | None = setting(
        None, "KREA2_COMPONENTS", COMPONENTS,
        "where the text encoder, tokenizer, VAE and scheduler come from when `KREA2_TURBO` is a single file "
        "(Turbo's layout; its `transformer/` is not read)",
        f"`KREA2_TURBO`'s repo or folder, else `{TURBO.default_source}`", "--components",
    )  # fmt: skip
    # --------------------------------------------------------------------------------------------- history
    data_dir: Path | None = setting(
        None, "KREA2_DATA_DIR", FOLDER, "images and the history database",
        "`./data` (`/data` when it exists, e.g. Spaces storage)", "--data-dir",
    )  # fmt: skip
    database_url: str | None = setting(
        None, "KREA2_DATABASE_URL", DATABASE, "the history database, e.g. `postgresql+psycopg://...`",
        "SQLite in the data folder",
    )  # fmt: skip
    # --------------------------------------------------------------------------------------------- speed-ups
    compile: bool | None = setting(
        None, "KREA2_COMPILE", SWITCH, "regional `torch.compile` of the transformer blocks, warmed up at start-up",
        "on with CUDA",
    )  # fmt: skip
    kernel_tuning: bool = setting(
        False, "KREA2_KERNEL_TUNING", SWITCH,
        "with compile: inductor's coordinate-descent tuning of every compiled kernel (what torchao's fp8 recipe "
        "would switch on); on an H200 the cold warm-up took 5.7x as long with it, for no measurable speed", "off",
    )  # fmt: skip
    background_compile: bool | None = setting(
        None, "KREA2_BACKGROUND_COMPILE", SWITCH,
        "compile beside requests at start-up (they run uncompiled meanwhile), then capture CUDA graphs between them",
        "on with compile where the weights stay on the GPU",
    )  # fmt: skip
    fp8: bool | None = setting(
        None, "KREA2_FP8", SWITCH,
        "fused projections + fp8 transformer weights and activations (needs `torchao`, compute capability ≥ 8.9)",
        "on where supported",
    )  # fmt: skip
    attention: str | None = setting(
        None, "KREA2_ATTENTION", ATTENTION,
        "`flash4` (FlashAttention-4, `requirements-gpu.txt`), `cudnn-fp8` (fp8 attention, faster at 2048², "
        "approximate), `sdpa` (PyTorch)", "`flash4` where it runs, else `sdpa`",
    )  # fmt: skip
    step_cache: float | None = setting(
        None, "KREA2_STEP_CACHE", THRESHOLD, "Raw's first-block cache threshold, e.g. `0.05` (faster, approximate)",
        "off",
    )  # fmt: skip
    text_graphs: bool | None = setting(
        None, "KREA2_TEXT_GRAPHS", SWITCH, "the text encoder replayed from CUDA graphs (exact)",
        "on where the encoder stays on a GPU",
    )  # fmt: skip
    denoiser_graphs: bool | None = setting(
        None, "KREA2_DENOISER_GRAPHS", SWITCH, "compiled transformer calls replayed from CUDA graphs (exact)",
        "on with compile on a resident GPU",
    )  # fmt: skip
    inductor_cache_dir: Path | None = setting(
        None, "TORCHINDUCTOR_CACHE_DIR", FOLDER, "torch.compile's kernel cache (PyTorch's own variable)",
        "`<data>/compile-cache/inductor`",
    )  # fmt: skip
    triton_cache_dir: Path | None = setting(
        None, "TRITON_CACHE_DIR", FOLDER, "Triton's kernel cache (Triton's own variable)",
        "`<data>/compile-cache/triton`",
    )  # fmt: skip
    # --------------------------------------------------------------------------------------------- platform
    space_id: str | None = setting(
        None, "SPACE_ID", TEXT, "set by Hugging Face Spaces: the app then binds `0.0.0.0`", "unset"
    )
    zero_gpu: bool = setting(
        False, "SPACES_ZERO_GPU", SWITCH,
        "set by ZeroGPU Spaces: both checkpoints load at start-up in fp8, no compile, each generation in `spaces.GPU`",
        "unset",
    )  # fmt: skip
    # --------------------------------------------------------------------------------------------- LoRAs
    lora_dir: Path | None = setting(
        None, "KREA2_LORA_DIR", FOLDER, "the LoRA folder: `.safetensors` LoRAs, subfolders too (Hub LoRAs are linked "
        "into its `hub/`)", "`<data>/loras`", "--lora-dir", (APP, GENERATE, LORA),
    )  # fmt: skip
    lora_masters: bool = setting(
        True, "KREA2_LORAS", SWITCH,
        "LoRAs on fp8 weights: the transformer blocks' bf16 weights stay in CPU memory (~25 GB per checkpoint) for "
        "LoRAs to fold into before quantising; off frees that memory, and fp8 then refuses LoRAs", "on",
    )  # fmt: skip
    max_upload_mb: int = setting(
        1024, "KREA2_MAX_UPLOAD_MB", COUNT, "the largest file the page takes (LoRA uploads, PNGs, history imports), MB",
        "`1024`", "--max-upload-mb", (APP,),
    )  # fmt: skip

    # --------------------------------------------------------------------------------------------- hosting
    content_filter: bool | None = setting(
        None, "KREA2_CONTENT_FILTER", SWITCH,
        "the image classifier every generated image passes before it is shown, saved or returned (studio/safety.py); "
        "`off` is refused unless the app listens on loopback only",
        "on, and required (generation refused if it cannot load) when reachable beyond loopback: a non-loopback "
        "`--host`, Spaces, the Docker image, a public `KREA2_ALLOWED_ORIGINS`; locally on when its model loads",
    )  # fmt: skip
    filter_model: str = setting(
        "Falconsai/nsfw_image_detection", "KREA2_FILTER_MODEL", REPO_OR_FOLDER,
        "the content filter's image classifier (any `transformers` image-classification model)",
        "`Falconsai/nsfw_image_detection`",
    )  # fmt: skip
    filter_labels: tuple[str, ...] = setting(
        ("nsfw",), "KREA2_FILTER_LABELS", LABELS, "the classifier's labels that block an image", "`nsfw`"
    )
    filter_threshold: float = setting(
        0.5, "KREA2_FILTER_THRESHOLD", PROBABILITY,
        "an image is blocked when a blocking label's probability reaches this", "`0.5`",
    )  # fmt: skip
    prompt_blocklist: Path | None = setting(
        None, "KREA2_PROMPT_BLOCKLIST", FILE,
        "words, phrases or `re:` regular expressions, one per line, refused in prompts before any GPU work", "none",
    )  # fmt: skip
    c2pa_certificate: Path | None = setting(
        None, "KREA2_C2PA_CERT", FILE,
        "PEM certificate chain for a signed C2PA manifest in every PNG (with `KREA2_C2PA_KEY`)", "off",
    )  # fmt: skip
    c2pa_key: Path | None = setting(
        None, "KREA2_C2PA_KEY", FILE, "the PEM private key of `KREA2_C2PA_CERT` (unencrypted)", "off"
    )

    # --------------------------------------------------------------------------------------------- several GPUs
    devices: tuple[str, ...] | None = setting(
        None, "KREA2_DEVICES", DEVICES,
        "the devices generations run on, one worker (a whole Raw + Turbo manager) per device; requests go to a free "
        "worker, Compare runs Raw and Turbo side by side (README: More than one GPU)",
        "`auto`: every visible CUDA GPU, else one CPU worker", "--devices", (APP,),
    )  # fmt: skip
    context_parallel: str = setting(
        "off", "KREA2_CONTEXT_PARALLEL", CONTEXT_PARALLEL,
        "`ulysses`: one image across all GPUs (Ulysses attention over the heads, diffusers' parallelism API); needs "
        "one process per GPU (`torchrun`, README: More than one GPU)", "`off`",
    )  # fmt: skip

    @property
    def server_host(self) -> str:
        return self.host or ("0.0.0.0" if self.space_id else "127.0.0.1")


def table() -> list[tuple[str, Setting]]:
    """(field name, setting) of every setting, in the order of the README's table."""
    return [(item.name, item.metadata["setting"]) for item in fields(Settings)]


# ------------------------------------------------------------------------------------------------ reading
def add_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of `command` ("app" or "generate"). A flag left out stays absent from the parsed arguments, so the
    environment and the default still apply (flag > environment variable > default)."""
    for name, spec in table():
        if command not in spec.commands:
            continue
        described = f"{spec.help} (env {spec.env}; default {spec.default_text})".replace("`", "")
        if spec.kind is SWITCH:
            parser.add_argument(spec.flag, dest=name, action="store_const", const=True, default=argparse.SUPPRESS,
                                help=described)  # fmt: skip
        else:
            metavar = spec.flag.removeprefix("--").upper().replace("-", "_")
            parser.add_argument(spec.flag, dest=name, type=_flag_type(spec), default=argparse.SUPPRESS,
                                metavar=metavar, help=described)  # fmt: skip


def _flag_type(spec: Setting) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return spec.kind.parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{error}, got {text!r}") from None

    return parse


def load_settings(environ: Mapping[str, str] | None = None, flags: argparse.Namespace | None = None) -> Settings:
    """The settings from the flags given (parsed by a parser with `add_flags`), then the environment (`os.environ`
    unless given), then the defaults. Raises SettingError for a value it cannot read."""
    environ = os.environ if environ is None else environ
    given = vars(flags) if flags is not None else {}
    values: dict[str, Any] = {}
    for name, spec in table():
        if name in given:
            values[name] = given[name]
        elif text := environ.get(spec.env, "").strip():
            values[name] = spec.read(text)
    return Settings(**values)


# ------------------------------------------------------------------------------------------------ documentation
README_BEGIN = "<!-- generated by `python -m studio.settings --markdown`; tests/test_settings.py checks it -->"
README_END = "<!-- end of settings -->"


def markdown() -> str:
    """The README's settings table, between its two marker comments."""
    lines = [
        README_BEGIN,
        "| env | flag | values | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for _name, spec in table():
        flag = f"`{spec.flag}`" if spec.flag else ""
        if spec.flag and spec.commands == (APP,):
            flag += " (app)"
        lines.append(f"| `{spec.env}` | {flag} | {spec.kind.values} | {spec.default_text} | {spec.help} |")
    lines += [
        "",
        f"A flag wins over its variable, a variable over the default; an empty variable counts as unset. on/off "
        f"values are {', '.join(f'`{w}`' for w in ON_WORDS)} or {', '.join(f'`{w}`' for w in OFF_WORDS)}. A value "
        "the columns do not allow stops the app (or the CLI) with one line naming the variable. Flags marked (app) are "
        "`app.py`'s; the others work with `python -m studio generate` too.",
        README_END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.settings", description="Krea 2 Studio's settings")
    parser.add_argument("--markdown", action="store_true", help="print the README's settings table")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown())
        return 0
    try:
        settings = load_settings()
    except SettingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, spec in table():
        value = getattr(settings, name)
        shown = "(set)" if spec.kind.secret and value is not None else value
        print(f"{spec.env}={shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
