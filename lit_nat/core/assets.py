"""Where an asset's bytes come from: a local path, a Hugging Face hub id, or a URL with its sha256.

An *asset* is a file or folder of weights lit_nat reads but never trains: the VQGAN checkpoint, aMUSEd's ``vqvae/``,
a CLIP folder, the FID Inception weights. Its *location* is one string, resolved the way its library resolves it:

- a local path that exists: used as it is (always works, also offline);
- ``hf://org/name[@revision][/sub/folder]`` (huggingface_hub's URI syntax), or a bare hub id ``org/name`` that is not
  a local path (as ``from_pretrained`` reads it): ``huggingface_hub.snapshot_download`` into its cache
  (``$HF_HUB_CACHE``, default ``$HF_HOME/hub``), from the cache alone when ``HF_HUB_OFFLINE=1``;
- ``https://...`` (or ``file://...``) with a sha256, written ``URL#sha256=<hex>``: ``torch.hub.download_url_to_file``
  into torch.hub's cache (``$TORCH_HOME/hub/checkpoints/<file name>``), checked against the hash. ``HF_HUB_OFFLINE=1``
  stops these downloads too (one offline switch for every asset).

Nothing here downloads by itself: the two libraries do, into their own caches. A checkpoint records an asset by its
location and its :func:`sha256_of` (of the file, or of a folder's weight, config and vocabulary files); whatever a
location resolves to is checked against that hash (:func:`check_sha256`), and each file is hashed once per process.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lit_nat.core.errors import CheckpointError, UsageError
from lit_nat.core.io import file_sha256, file_version

#: the files of a folder that its digest covers: weights, configs and tokenizer vocabularies (not READMEs, not the
#: TF/Flax weights torch never reads, not hidden folders such as ``.cache``)
DIGEST_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".txt", ".model")
#: what a hub snapshot fetches: what torch code reads (no TF/Flax/ONNX weights, no fp16 duplicates)
HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]
HUB_IGNORED = ["*.fp16.safetensors", "*.h5", "*.msgpack", "*.onnx"]
URL_SCHEMES = ("http", "https", "file")
HASH_FRAGMENT = re.compile(r"^sha256=([0-9a-fA-F]{8,64})$")



class MissingAssetError(UsageError, FileNotFoundError):
    """An asset's location that resolves to nothing here (a moved file, an empty cache offline): one line naming it,
    where it would go, and the option that points elsewhere. Also a ``FileNotFoundError``, as callers expect."""


_DIGESTS: dict[tuple, str] = {}  # (path, inode, size, mtime) of a file, or of every file of a folder -> sha256


# ----------------------------------------------------------------------------------------------------------------------
# Hashes
def _file_digest(path: Path) -> str:
    key = file_version(path)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path)[1]
    return _DIGESTS[key]


def digest_files(folder: Path) -> list[Path]:
    """The files of ``folder`` its digest covers (see :data:`DIGEST_SUFFIXES`), sorted by relative path."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in files if f.endswith(DIGEST_SUFFIXES) and not f.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def sha256_of(path: str | os.PathLike) -> str:
    """The sha256 of a file, or of a folder: of the lines ``<relative path> <file sha256>`` of its
    :func:`digest_files`. Cached per process by path, size and modification time, so a file is read once."""
    path = Path(path)
    if path.is_file():
        return _file_digest(path)
    lines = "".join(f"{p.relative_to(path).as_posix()} {_file_digest(p)}\n" for p in digest_files(path))
    return hashlib.sha256(lines.encode()).hexdigest()


def check_sha256(path: str | os.PathLike, expected: str | None, what: str, flag: str) -> None:
    """``path`` must hash to ``expected`` (a full sha256 or a prefix); None checks nothing."""
    if not expected:
        return
    actual = sha256_of(path)
    if not actual.startswith(expected.lower()):
        raise CheckpointError(f"{what} {path} has sha256 {actual}, but {expected} was recorded: it is not the file "
                              f"the checkpoint was made with; pass that one with {flag}")  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# Kinds of location
def is_url(location: str) -> bool:
    return urlsplit(str(location)).scheme in URL_SCHEMES


def split_url(location: str) -> tuple[str, str | None]:
    """``URL#sha256=<hex>`` -> ``(URL, hex)``; a URL without the fragment gives ``(URL, None)``."""
    parts = urlsplit(location)
    match = HASH_FRAGMENT.match(parts.fragment)
    if parts.fragment and not match:
        raise UsageError(f"{location}: expected URL#sha256=<hex digest> after the '#'")
    return parts._replace(fragment="").geturl(), None if match is None else match.group(1).lower()


def hub_uri(location: str) -> Any:
    """The parsed ``huggingface_hub.HfUri`` of an ``hf://`` location or of a bare hub id that is no local path;
    None for anything else."""
    from huggingface_hub import parse_hf_uri
    from huggingface_hub.errors import HfUriError

    location = str(location)
    if not location.startswith("hf://"):
        if is_url(location) or Path(location).exists() or location.count("/") != 1 or location.startswith(("/", ".")):
            return None
        location = f"hf://{location}"
    try:
        uri = parse_hf_uri(location)
    except HfUriError:
        return None
    return uri if uri.type == "model" else None


def hf_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    values = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    if any(v is not None for v in values):
        return any(str(v).upper() in ("1", "ON", "YES", "TRUE") for v in values if v is not None)
    return bool(constants.HF_HUB_OFFLINE)


def hf_cache_dir() -> Path:
    """huggingface_hub's model cache as the environment says now: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


# ----------------------------------------------------------------------------------------------------------------------
# Resolution through the libraries' caches
def hub_folder(uri: Any, what: str, flag: str) -> Path:
    """The local folder of a hub location, from huggingface_hub's cache (downloaded into it unless offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    sub = uri.path_in_repo.strip("/")
    patterns = [f"{sub}/{p}" for p in HUB_PATTERNS] if sub else HUB_PATTERNS
    cache, offline = hf_cache_dir(), hf_offline()
    try:
        snapshot = snapshot_download(uri.id, revision=uri.revision, cache_dir=cache, local_files_only=offline,
                                     allow_patterns=patterns, ignore_patterns=HUB_IGNORED)  # fmt: skip
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as err:
        reason = "HF_HUB_OFFLINE is set" if offline else f"the hub cannot be reached ({type(err).__name__})"
        name = f"{uri.id}/{sub}" if sub else uri.id
        raise MissingAssetError(f"{what} {name} is not in the Hugging Face cache ({cache}) and {reason}: run `hf "
                                f"download {uri.id}` where there is network, with the same HF_HOME, or pass a local "
                                f"folder with {flag}") from None  # fmt: skip
    folder = Path(snapshot) / sub
    if not folder.is_dir():
        raise UsageError(f"{what}: hub repository {uri.id} has no folder {sub!r}")
    return folder


def torch_hub_file(url: str, sha256: str | None, what: str, flag: str) -> Path:
    """The file of ``url`` in torch.hub's cache (``$TORCH_HOME/hub/checkpoints/<its name>``), downloaded there by
    ``torch.hub.download_url_to_file`` (which checks ``sha256``) when missing and not offline."""
    from urllib.error import URLError

    import torch.hub

    name = Path(urlsplit(url).path).name
    dst = Path(torch.hub.get_dir()) / "checkpoints" / name
    if dst.is_file():
        return dst
    reason = "HF_HUB_OFFLINE is set" if hf_offline() else None
    if reason is None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(dst), hash_prefix=sha256, progress=False)
            return dst
        except (URLError, OSError) as err:
            reason = f"there is no network ({getattr(err, 'reason', None) or err})"
        except RuntimeError as err:  # torch.hub's hash check: the partial file is removed
            raise CheckpointError(f"{what}: {url} downloaded, but {str(err).splitlines()[0]}") from None
    verb = "are" if what.endswith("weights") else "is"
    raise MissingAssetError(f"{what} {verb} not in the torch.hub cache ({dst}) and {reason}: download {url} there, or "
                            f"pass {flag}")  # fmt: skip


def resolve(location: str | os.PathLike, what: str, flag: str, sha256: str | None = None,
            kinds: tuple[str, ...] = ("path", "hub", "url")) -> Path:  # fmt: skip
    """The local file or folder of an asset's location (see the module docstring), checked against ``sha256`` (a
    ``URL#sha256=`` fragment counts as one). ``what`` and ``flag`` name the asset and the option that overrides it in
    the one-line errors; ``kinds`` are the kinds of location it accepts."""
    location = os.fspath(location)
    if is_url(location):
        url, pinned = split_url(location)
        sha256 = sha256 or pinned
        if "url" not in kinds:
            raise UsageError(f"{what} {location}: a URL is not accepted here; pass a local path with {flag}")
        if not sha256:
            raise UsageError(f"{what} {url}: a URL needs its sha256, written {url}#sha256=<hex>")
        path = torch_hub_file(url, sha256, what, flag)
    elif Path(location).exists():
        path = Path(location)
    else:
        uri = hub_uri(location) if "hub" in kinds else None
        if uri is None:
            raise MissingAssetError(f"{what} {location} does not exist (moved, or made on another machine?): pass "
                                    f"its location here with {flag}")  # fmt: skip
        path = hub_folder(uri, what, flag)
    check_sha256(path, sha256, what, flag)
    return path


def pin(location: str | os.PathLike, sha256: str | None = None) -> tuple[str, str | None]:
    """``(location, sha256)`` to record for an asset: a local path that exists here made absolute, with its
    :func:`sha256_of` unless one is recorded already; a hub location or ``URL#sha256=`` as it is (they are references
    by themselves), and a path that does not exist here unchanged (it is checked where it is used)."""
    location = os.fspath(location)
    if is_url(location) or location.startswith("hf://") or not Path(location).exists():
        return location, sha256
    path = Path(location).resolve()
    return str(path), sha256 or sha256_of(path)
