"""The LoRA library: the LoRA folder (subfolders too), and the two ways files get into it, an upload and the Hub.

A LoRA's name is its path in the folder without `.safetensors`, with `/` between folders (`styles/ink`); the folder is
read again on every listing, so a file dropped in shows up at the next refresh. Hub LoRAs are downloaded through
huggingface_hub (into its cache, so a second request and an offline start find them there) and linked into the folder
under `hub/<owner>/<repo>/`, where they are listed, named and recorded like any other.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import InvalidRequest, LoraError
from .hub_errors import GATED, NO_FILE, NO_REVISION, NOT_FOUND, OFFLINE, hub_problem
from .lora_files import SUFFIX, LoraContents, autov3_hash, read_lora, require_safetensors, short_hash
from .lora_weights import LoraWeights, lora_weights
from .request import GenerationRequest, check_lora_name

log = logging.getLogger(__name__)
HUB_FOLDER = "hub"
# What an uploaded file's name may keep; anything else becomes "_".
_UPLOAD_NAME = re.compile(r"[^\w\-. ()+]")

LoraCheck = Callable[[LoraContents, str], None]  # raises LoraError when a new file cannot be used


@dataclass(frozen=True)
class LoraFile:
    name: str
    path: Path
    size: int
    modified_ns: int

    @property
    def identity(self) -> tuple[str, int, int]:
        """What changes when the file does: cached state and hashes are keyed by it."""
        return (str(self.path), self.size, self.modified_ns)


class LoraLibrary:
    def __init__(
        self,
        folder: Path | str,
        *,
        token: str | None = None,
        cache_dir: Path | str | None = None,
        builtin: Mapping[str, Path | str] | None = None,
    ) -> None:
        self.folder = Path(folder)
        # Read-only folders listed under a prefix beside the user's (the demo checkpoints' LoRAs as `demo/...`):
        # nothing is copied into the user's folder, and a file of the same name there wins.
        self.builtin = {prefix: Path(root) for prefix, root in (builtin or {}).items()}
        self.token = token  # None: huggingface_hub's own HF_TOKEN variable, else the saved login
        self.cache_dir = cache_dir  # None: huggingface_hub's cache (HF_HUB_CACHE)
        self._hashes: dict[tuple[str, int, int], str] = {}

    # ------------------------------------------------------------------------------------------------ listing
    def files(self) -> list[LoraFile]:
        """Every usable `.safetensors` file under the folder and the built-in ones, by name (read from disk on each
        call)."""
        found: dict[str, LoraFile] = {}
        for prefix, root in [("", self.folder), *((f"{p}/", root) for p, root in self.builtin.items())]:
            for file in self._scan(root, prefix)[0]:
                found.setdefault(file.name, file)  # the user's folder comes first
        return sorted(found.values(), key=lambda file: file.name)

    def unnamable(self) -> list[str]:
        """One sentence for each of the folder's `.safetensors` files left out of `files()` because its name cannot be
        written in a prompt or a PNG (`check_lora_name`): what the list's note and `lora list` say."""
        return [f"{path} is not listed: its name {problem}; rename the file." for path, problem in
                sorted(self._scan(self.folder, "")[1])]  # fmt: skip

    @staticmethod
    def _scan(root: Path, prefix: str) -> tuple[list[LoraFile], list[tuple[str, str]]]:
        if not root.is_dir():
            return [], []
        found, unnamable = [], []
        for path in root.rglob(f"*{SUFFIX}"):
            relative = path.relative_to(root)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue  # hidden files, half-written uploads (.tmp-...), broken links
            try:
                name = check_lora_name(prefix + PurePosixPath(*relative.parts).as_posix())
            except InvalidRequest as error:
                log.warning("LoRA file %s skipped: its name cannot be written in a prompt or a PNG", relative)
                unnamable.append((PurePosixPath(*relative.parts).as_posix(), error.problem))
                continue
            stat = path.stat()
            found.append(LoraFile(name, path, stat.st_size, stat.st_mtime_ns))
        return found, unnamable

    def names(self) -> list[str]:
        return [file.name for file in self.files()]

    def find(self, name: str, autov3: str | None = None) -> LoraFile | None:
        """The file `name` means: the one with that name; else, for a name written by another tool (A1111 names a
        LoRA by its file name alone), the only one with that last part; else the one with that hash (its AutoV3, or
        the first 12 digits of it), when given."""
        files = self.files()
        for file in files:
            if file.name == name:
                return file
        last = name.rpartition("/")[2]
        same_stem = [file for file in files if file.name.rpartition("/")[2] == last]
        if len(same_stem) == 1:
            return same_stem[0]
        return self.with_hash(autov3) if autov3 else None

    def with_hash(self, autov3: str) -> LoraFile | None:
        """The file whose AutoV3 hash is (or starts with: 12 digits are what PNGs carry) `autov3`, if any (a file
        that cannot be read has no hash to match)."""
        wanted = autov3.lower()
        return next((file for file in self.files() if self.hash_or_problem(file)[0].startswith(wanted)), None)

    def hash_or_problem(self, file: LoraFile) -> tuple[str, str | None]:
        """(the file's hash, None), or ("", why it cannot be read) for a damaged file (empty, cut off, not
        safetensors): one such file in the folder must not stop a listing or a search by hash; using it says why."""
        try:
            return self.hash(file), None
        except LoraError as error:
            return "", str(error)

    def get(self, name: str) -> LoraFile:
        file = self.find(name)
        if file is None:
            raise LoraError(
                f"There is no LoRA named {name} in the LoRA folder {self.folder} (refresh the list after adding files)."
            )
        return file

    def hash(self, file: LoraFile) -> str:
        """The file's AutoV3 hash (cached until the file changes)."""
        key = file.identity
        if key not in self._hashes:
            self._hashes[key] = autov3_hash(file.path, file.name)
        return self._hashes[key]

    def short_hash(self, file: LoraFile) -> str:
        return short_hash(self.hash(file))

    def weights(self, file: LoraFile, shapes: Mapping[str, tuple[int, int]]) -> LoraWeights:
        """The file read and checked against a transformer's LoRA targets (`lora_fold.target_shapes`)."""
        return lora_weights(read_lora(file.path, file.name), file.name, self.hash(file), shapes)

    # ------------------------------------------------------------------------------------------------ adding
    def add_upload(self, source: Path | str, filename: str, check: LoraCheck | None = None) -> LoraFile:
        """Put an uploaded file into the folder under its own name (made safe), after checking it can be used. The
        same file uploaded twice is kept once; another file of the same name gets a numbered name."""
        source = Path(source)
        filename = Path(filename or source.name).name
        require_safetensors(filename)
        stem = _UPLOAD_NAME.sub("_", filename[: -len(SUFFIX)]).strip(". ") or "lora"
        contents = read_lora(source, f"{stem}{SUFFIX}")
        if check is not None:
            check(contents, stem)
        incoming = autov3_hash(source, stem)
        for number in range(1, 1000):
            name = stem if number == 1 else f"{stem}-{number}"
            target = self.folder / f"{name}{SUFFIX}"
            if not target.exists():
                _copy_atomic(source, target)
                return self._file(target)
            existing = self._file(target)
            if self.hash(existing) == incoming:
                return existing
        raise LoraError(f"The LoRA folder already holds too many files named {stem}.")

    def add_from_hub(
        self, repo_id: str, filename: str | None = None, revision: str | None = None, check: LoraCheck | None = None
    ) -> LoraFile:
        """Download a LoRA from a Hub repo (the only `.safetensors` file in it, or `filename`) and link it into the
        folder as `hub/<owner>/<repo>/<file>`."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        repo_id = (repo_id or "").strip()
        try:
            validate_repo_id(repo_id)
        except HFValidationError:
            raise LoraError(f"{repo_id or 'That'} is not a Hub repo id (expected owner/name).") from None
        if "/" not in repo_id:
            raise LoraError(f"{repo_id} is not a Hub repo id (expected owner/name).")
        filename = (filename or "").strip().lstrip("/") or None
        if filename is not None:
            require_safetensors(filename)
        try:
            filename = filename or self._only_safetensors(repo_id, revision)
            cached = Path(
                hf_hub_download(repo_id, filename, revision=revision, token=self.token, cache_dir=self.cache_dir)
            )
        except LoraError:
            raise
        except Exception as error:
            raise explain_hub_error(error, repo_id, filename, self.folder) from error
        target = self.folder / HUB_FOLDER / repo_id / filename
        name = PurePosixPath(HUB_FOLDER, repo_id, filename).as_posix()
        contents = read_lora(cached, name)
        if check is not None:
            check(contents, name.removesuffix(SUFFIX))
        _link_or_copy(cached.resolve(), target)
        return self._file(target)

    def _only_safetensors(self, repo_id: str, revision: str | None) -> str:
        """The one `.safetensors` file of a repo, listed on the Hub, or in the local cache when offline."""
        from huggingface_hub import HfApi, snapshot_download

        try:
            names = HfApi(token=self.token).list_repo_files(repo_id, revision=revision)
        except Exception as error:  # noqa: BLE001 - offline or out of reach: what the cache holds of the repo, if any
            try:
                folder = snapshot_download(repo_id, revision=revision, cache_dir=self.cache_dir, local_files_only=True)
            except Exception:  # noqa: BLE001 - the Hub's own error says more than the cache's
                raise error from None
            names = [path.relative_to(folder).as_posix() for path in Path(folder).rglob(f"*{SUFFIX}")]
        candidates = sorted(name for name in names if name.endswith(SUFFIX))
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise LoraError(f"The Hub repo {repo_id} has no .safetensors file.")
        shown = ", ".join(candidates[:5]) + (", ..." if len(candidates) > 5 else "")
        raise LoraError(
            f"The Hub repo {repo_id} has {len(candidates)} .safetensors files ({shown}); name the one to use."
        )

    def _file(self, path: Path) -> LoraFile:
        stat = path.stat()
        name = PurePosixPath(*path.relative_to(self.folder).parts).as_posix().removesuffix(SUFFIX)
        return LoraFile(name, path, stat.st_size, stat.st_mtime_ns)


def explain_hub_error(error: BaseException, repo_id: str, filename: str | None, folder: Path) -> LoraError:
    """One sentence for whatever huggingface_hub raised, phrased as the checkpoints' loading errors are."""
    problem = hub_problem(error)
    sentences = {
        GATED: f"No access to the gated repo {repo_id}. Accept its terms on its Hub page (https://huggingface.co/"
        f"{repo_id}), then set HF_TOKEN or run `hf auth login`.",
        OFFLINE: f"The LoRA {repo_id} is not in the local Hub cache and the Hub cannot be reached. Connect once to "
        f"download it, or put the .safetensors file in the LoRA folder {folder}.",
        NO_REVISION: f"The Hub repo {repo_id} has no such revision (check the branch, tag or commit).",
        NO_FILE: f"The Hub repo {repo_id} has no file {filename}.",
        NOT_FOUND: f"The Hub repo {repo_id} was not found (or it is private: set HF_TOKEN).",
    }
    return LoraError(sentences.get(problem.kind, f"Could not download the LoRA {repo_id}: {problem.first_line}"))


def _copy_atomic(source: Path, target: Path) -> None:
    """After this returns the file is complete under its final name; if it raises, no file is left at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # Created as open() creates a file (0666 less the umask): mkstemp's 0600 stayed after the rename.
    temporary = target.with_name(f".tmp-{secrets.token_hex(8)}{SUFFIX}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise LoraError(f"Could not save the LoRA {target.name}: {error.strerror or error}.") from error
    try:
        with os.fdopen(fd, "wb") as handle, source.open("rb") as incoming:
            shutil.copyfileobj(incoming, handle, 2**20)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        temporary = None
    except OSError as error:
        raise LoraError(f"Could not save the LoRA {target.name}: {error.strerror or error}.") from error
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


def _link_or_copy(cached: Path, target: Path) -> None:
    """A link to the Hub cache's file (no second copy on disk), or a copy where links cannot be made."""
    if target.is_symlink() and target.resolve() == cached:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    link = target.with_name(f".tmp-{target.name}")
    link.unlink(missing_ok=True)
    try:
        link.symlink_to(cached)
        os.replace(link, target)
    except OSError:
        link.unlink(missing_ok=True)
        _copy_atomic(cached, target)


def request_lora_files(library: LoraLibrary | None, request: GenerationRequest) -> list[LoraFile]:
    """The files of the request's LoRAs, or InvalidRequest naming one the LoRA folder does not hold: checked before a
    generation is recorded or a model loads, like every other field."""
    if request.active_loras and library is None:
        raise InvalidRequest("loras", request.active_loras[0].name, "must be empty: this app has no LoRA folder")
    files = []
    for choice in request.active_loras:
        file = library.find(choice.name) if library is not None else None
        if file is None:
            raise InvalidRequest(
                "loras", choice.name, f"must be in the LoRA folder, and {choice.name} is not (refresh the list?)"
            )
        files.append(file)
    return files
