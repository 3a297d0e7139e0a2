"""The LoRA library: the folder (subfolders, refresh, names), uploads, and LoRAs from the Hub through huggingface_hub's
cache (this machine is offline, as the tests are: HF_HUB_OFFLINE=1, so the Hub's answers come from a real cache)."""

from __future__ import annotations

import os

import httpx
import pytest
from huggingface_hub.errors import GatedRepoError
from lora_helpers import random_factors, write_lora

from krea2.demo import build_transformer
from krea2.errors import LoraError
from krea2.lora_library import LoraLibrary, explain_hub_error

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def factors():
    return random_factors(build_transformer(), ["img_in"])


def test_the_folder_lists_subfolders_and_skips_what_cannot_be_named(tmp_path, factors):
    for name in ("ink", "styles/watercolor", "styles/.hidden", ".tmp-upload", "bad:name"):
        write_lora(tmp_path / f"{name}.safetensors", factors, "kohya")
    (tmp_path / "notes.txt").write_text("not a LoRA")
    library = LoraLibrary(tmp_path)
    assert library.names() == ["ink", "styles/watercolor"]
    # What the list's note and `lora list` say about it (hidden and temporary files are not mentioned).
    assert library.unnamable() == ['bad:name.safetensors is not listed: its name must be a LoRA name from the LoRA '
                                   'list (no : , < > " \\ or ..); rename the file.']  # fmt: skip
    write_lora(tmp_path / "later" / "new.safetensors", factors, "diffusers")
    assert library.names() == ["ink", "later/new", "styles/watercolor"]  # read again: a refresh sees it
    assert LoraLibrary(tmp_path / "missing").names() == []


def test_a_name_from_another_tool_is_found_by_file_name_or_hash(tmp_path, factors):
    write_lora(tmp_path / "styles" / "ink.safetensors", factors, "kohya")
    write_lora(tmp_path / "a" / "twin.safetensors", factors, "krea")
    write_lora(tmp_path / "b" / "twin.safetensors", factors, "diffusers")
    library = LoraLibrary(tmp_path)
    assert library.find("ink").name == "styles/ink"  # A1111 writes <lora:ink:0.8>
    assert library.find("twin") is None  # two files of that name: neither is guessed
    b = library.get("b/twin")
    assert library.find("twin", library.short_hash(b)).name == "b/twin"  # its hash decides
    assert len(library.short_hash(b)) == 12 and library.hash(b).startswith(library.short_hash(b))
    with pytest.raises(LoraError, match="There is no LoRA named gone in the LoRA folder"):
        library.get("gone")


def test_a_damaged_file_in_the_folder_stops_nothing_but_itself(tmp_path, factors):
    """A hostile pass: an empty `.safetensors` file in the folder made every search by hash fail with its error (a
    PNG's or a history row's LoRA missing by name could no longer be looked for). It is listed with its problem and
    skipped by a search; using it still says why."""
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00")
    ink = write_lora(tmp_path / "ink.safetensors", factors, "kohya")
    library = LoraLibrary(tmp_path)
    assert library.names() == ["cut", "empty", "ink"]
    assert library.find("ghost", library.short_hash(library.get("ink"))).name == "ink"
    assert library.find("ghost", "0123456789ab") is None
    digest, problem = library.hash_or_problem(library.get("empty"))
    assert digest == "" and problem == "The LoRA empty is an empty file."
    assert library.hash_or_problem(library.get("ink")) == (library.hash(library.get("ink")), None)
    assert ink.exists()
    with pytest.raises(LoraError, match="The LoRA cut"):
        library.hash(library.get("cut"))
    # A header of the right length that is not JSON was listed with the hash of no data and no problem.
    garbage = b"not json at all!"
    (tmp_path / "garbage.safetensors").write_bytes(len(garbage).to_bytes(8, "little") + garbage)
    library = LoraLibrary(tmp_path)
    assert library.hash_or_problem(library.get("garbage")) == (
        "",
        "The LoRA garbage is not a .safetensors file (its header is not valid JSON).",
    )


def test_an_upload_is_kept_once_under_a_safe_name(tmp_path, factors):
    incoming = tmp_path / "incoming"
    first = write_lora(incoming / "upload-1", factors, "kohya")
    other = write_lora(incoming / "upload-2", random_factors(build_transformer(), ["img_in"], seed=4), "kohya")
    library = LoraLibrary(tmp_path / "loras")
    added = library.add_upload(first, "My Style!.safetensors")
    assert added.name == "My Style_" and added.path.read_bytes() == first.read_bytes()
    assert library.add_upload(first, "My Style!.safetensors") == added  # the same file again: kept once
    assert library.add_upload(other, "My Style!.safetensors").name == "My Style_-2"
    assert library.names() == ["My Style_", "My Style_-2"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert added.path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600 (a hostile pass)
    assert not list((tmp_path / "loras").glob(".tmp-*"))


def test_uploads_that_cannot_be_used_leave_nothing(tmp_path, factors):
    library = LoraLibrary(tmp_path / "loras")
    pickle = tmp_path / "style.ckpt"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(LoraError, match=r"only \.safetensors LoRAs are taken"):
        library.add_upload(pickle, "style.ckpt")
    good = write_lora(tmp_path / "up.safetensors", factors, "kohya")

    def refuse(contents, name):
        raise LoraError(f"The LoRA {name} does not fit.")

    with pytest.raises(LoraError, match="does not fit"):
        library.add_upload(good, "style.safetensors", check=refuse)
    assert library.names() == [] and not any((tmp_path / "loras").glob("**/*.safetensors"))


def fill_hub_cache(cache, repo: str, files: dict) -> None:
    """A Hub cache as huggingface_hub leaves it after a download: the branch's commit, the files of that snapshot."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    for name, source in files.items():
        target = folder / "snapshots" / COMMIT / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())


def test_hub_loras_come_from_huggingface_hubs_cache_and_are_linked_into_the_folder(tmp_path, factors):
    cache = tmp_path / "hub-cache"
    source = write_lora(tmp_path / "src" / "krea2-ink.safetensors", factors, "diffusers")
    fill_hub_cache(cache, "someone/krea2-ink", {"krea2-ink.safetensors": source, "README.md": source})
    fill_hub_cache(cache, "someone/two-epochs", {"e1.safetensors": source, "e2.safetensors": source})
    library = LoraLibrary(tmp_path / "loras", cache_dir=cache)
    added = library.add_from_hub("someone/krea2-ink")  # the repo's only .safetensors file
    assert added.name == "hub/someone/krea2-ink/krea2-ink" and added.path.is_symlink()
    assert added.path.read_bytes() == source.read_bytes() and library.names() == [added.name]
    assert library.add_from_hub("someone/krea2-ink", "krea2-ink.safetensors") == added  # again: the same link
    with pytest.raises(LoraError, match=r"has 2 .safetensors files \(e1.safetensors, e2.safetensors\); name the one"):
        library.add_from_hub("someone/two-epochs")
    assert library.add_from_hub("someone/two-epochs", "e2.safetensors").name == "hub/someone/two-epochs/e2"


@pytest.mark.parametrize(
    ("repo", "filename", "needle"),
    [
        ("someone/not-downloaded", None, "is not in the local Hub cache and the Hub cannot be reached"),
        ("someone/not-downloaded", "style.safetensors", "is not in the local Hub cache and the Hub cannot be reached"),
        ("not a repo id", None, "is not a Hub repo id (expected owner/name)"),
        ("someone/repo", "weights.bin", "only .safetensors LoRAs are taken"),
    ],
)
def test_hub_failures_are_one_sentence(tmp_path, repo, filename, needle):
    library = LoraLibrary(tmp_path / "loras", cache_dir=tmp_path / "empty-cache")
    with pytest.raises(LoraError) as caught:
        library.add_from_hub(repo, filename)
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    assert library.names() == []


def test_a_gated_repo_says_how_to_get_access(tmp_path):
    response = httpx.Response(401, request=httpx.Request("GET", "https://huggingface.co/krea/style"))
    error = explain_hub_error(GatedRepoError("Access to model krea/style is restricted", response=response),
                              "krea/style", None, tmp_path)  # fmt: skip
    assert str(error) == (
        "No access to the gated repo krea/style. Accept its terms on its Hub page (https://huggingface.co/krea/style),"
        " then set HF_TOKEN or run `hf auth login`."
    )
