"""Downloading a model from the Hugging Face Hub into the standard Hugging Face cache, with
huggingface_hub: HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE are its own.

A pull is planned first (`plan_pull`: the repo's files and sizes from the Hub's metadata, the
files chosen by models/hub.py, one HEAD to learn whether they may be read), checked
(`check_room`: the budget and the free disk, before any byte), then fetched (`download`:
`snapshot_download` restricted to the chosen files). Offline, the plan comes from the tree
listing huggingface_hub cached at the last download, with the same files, so a partial
snapshot is never taken for a whole one. huggingface_hub writes each file to a temporary file
and moves it into place when complete (a failed file leaves nothing behind), resumes a file
whose connection dropped with a Range request, and keeps the files already complete for the
next pull.
"""

from __future__ import annotations

import contextlib
import fnmatch
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from chatd.models.errors import ModelFailed, ModelNotFound, NoDisk, NoWeights, PullRefused
from chatd.models.hub import HubRef, RemoteFile, choose_files

# How often the bytes on disk are measured while a download runs (seconds).
PROGRESS_INTERVAL = 0.2


@dataclass(frozen=True)
class PullPlan:
    ref: HubRef
    files: tuple[RemoteFile, ...]

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def patterns(self) -> list[str]:
        """Exact file names for allow_patterns (matched case-sensitively, like the files)."""
        return [f.path for f in self.files]

    @property
    def is_gguf(self) -> bool:
        return self.files[0].path.endswith(".gguf")

    def model_path(self, snapshot: Path) -> Path:
        """What a runner loads: the (first) GGUF file, or the snapshot folder."""
        return snapshot / self.files[0].path if self.is_gguf else snapshot


def may_pull(repo_id: str, pull: str, allowed: list[str]) -> None:
    """--pull and --pull-allow: raise unless a request may download `repo_id`."""
    if pull == "never":
        raise ModelNotFound(f"Model {repo_id} is not served here (and --pull is never)")
    if allowed and not any(fnmatch.fnmatchcase(repo_id.lower(), p.lower()) for p in allowed):
        raise PullRefused(
            f"Model {repo_id} may not be downloaded here: it matches no --pull-allow pattern "
            f"({', '.join(allowed)})"
        )


def plan_pull(ref: HubRef) -> PullPlan:
    """The files `ref` needs and their sizes, from the Hub (or, offline or when the Hub cannot
    be reached, from the cache's listing). Raises ModelNotFound, PullRefused or NoWeights."""
    from httpx2 import TransportError
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    try:
        with hub_errors(ref):
            info = HfApi().model_info(ref.repo_id, revision=ref.revision, files_metadata=True)
    except (OfflineModeIsEnabled, TransportError) as exc:
        cached = cached_plan(ref)
        if cached is None:
            raise ModelNotFound(
                f"Model {ref.id} is not in the local Hugging Face cache and the Hub cannot be "
                f"reached ({type(exc).__name__})"
            ) from None
        return cached
    files = [RemoteFile(s.rfilename, s.size or 0) for s in info.siblings or []]
    plan = PullPlan(ref, tuple(choose_files(ref, files)))
    _check_access(plan, info.sha)
    return plan


def cached_plan(ref: HubRef) -> PullPlan | None:
    """The plan from the tree listing cached by an earlier download, without the network."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        tree = get_cached_repo_tree(ref.repo_id, revision=ref.revision)
    except CachedRepoTreeNotFoundError:
        return None
    return PullPlan(ref, tuple(choose_files(ref, [RemoteFile(f.path, f.size) for f in tree])))


def local_path(ref: HubRef) -> Path | None:
    """The model's path when the cache holds every file it needs; None otherwise. Offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        plan = cached_plan(ref)
    except (ModelNotFound, NoWeights):  # the cached listing has no usable weights
        return None
    if plan is None:
        return None
    try:
        snapshot = snapshot_download(
            ref.repo_id, revision=ref.revision, allow_patterns=plan.patterns, local_files_only=True
        )
    except LocalEntryNotFoundError:  # IncompleteSnapshotError too: some files missing
        return None
    return plan.model_path(Path(snapshot))


def check_room(plan: PullPlan, memory_budget: int, free_bytes: int | None = None) -> None:
    """Refuse a pull that could not be loaded (--memory-budget) or stored (free disk), before
    any byte is fetched. Files already in the cache need no room."""
    if memory_budget and plan.total > memory_budget:
        raise PullRefused(
            f"Model {plan.ref.id} ({_mb(plan.total)}) is larger than the memory budget "
            f"({_mb(memory_budget)})"
        )
    missing = plan.total - _bytes_on_disk(plan)
    free = _free_disk() if free_bytes is None else free_bytes
    if missing > free:
        raise NoDisk(
            f"Model {plan.ref.id} needs {_mb(missing)} more on disk; the Hugging Face cache "
            f"({cache_root()}) has {_mb(free)} free"
        )


def download(plan: PullPlan, on_progress: Callable[[int], None] | None = None) -> Path:
    """Fetch the plan's files (those not cached yet); `on_progress` gets the bytes on disk
    now and then. Returns the path a runner loads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # chatd shows its own progress, and /v1/models
    done = threading.Event()
    watcher = None
    if on_progress:
        watcher = threading.Thread(target=_watch, args=(plan, on_progress, done), daemon=True)
        watcher.start()
    try:
        with hub_errors(plan.ref):
            snapshot = snapshot_download(
                plan.ref.repo_id, revision=plan.ref.revision, allow_patterns=plan.patterns
            )
    finally:
        done.set()
        if watcher:
            watcher.join()
    if on_progress:
        on_progress(plan.total)
    return plan.model_path(Path(snapshot))


def pull(
    ref: HubRef,
    memory_budget: int = 0,
    on_plan: Callable[[PullPlan], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Path:
    """Plan, check and download: the cached path offline, the downloaded one online."""
    plan = plan_pull(ref)
    if on_plan:
        on_plan(plan)
    check_room(plan, memory_budget)
    return download(plan, on_progress)


@contextlib.contextmanager
def hub_errors(ref: HubRef) -> Iterator[None]:
    """huggingface_hub's exceptions as chatd's: told apart by type (the Hub's X-Error-Code),
    not by status, since the Hub answers 401 for a private or missing repo alike."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except GatedRepoError as exc:  # before RepositoryNotFoundError: it is one
        raise PullRefused(
            f"Model {ref.repo_id} is gated on the Hub ({_status(exc)}): accept its conditions "
            "on huggingface.co and give the server a token that has access (HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError as exc:
        raise ModelNotFound(
            f"Model {ref.repo_id} was not found on the Hub ({_status(exc)}; a private repo "
            "needs HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise ModelNotFound(
            f"Model {ref.repo_id} has no revision {ref.revision!r} on the Hub"
        ) from None
    except RemoteEntryNotFoundError as exc:
        raise ModelNotFound(f"Model {ref.repo_id}: a file is missing on the Hub ({exc})") from None
    except HfHubHTTPError as exc:  # the Hub is down or overloaded: worth another try later
        raise ModelFailed(
            f"Model {ref.repo_id}: the Hub failed ({_status(exc)})", retry_after=30
        ) from None


def _check_access(plan: PullPlan, commit: str | None) -> None:
    """One HEAD on the first file: a gated repo shows its metadata to anyone and refuses only
    its files, so find that out before starting."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(plan.ref.repo_id, plan.files[0].path, revision=commit or plan.ref.revision)
    with hub_errors(plan.ref):
        get_hf_file_metadata(url)


def cache_root() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _storage(plan: PullPlan) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache_root() / repo_folder_name(repo_id=plan.ref.repo_id, repo_type="model")


def _bytes_on_disk(plan: PullPlan) -> int:
    """The plan's bytes already in the cache: whole files in any snapshot, and the temporary
    files of downloads under way."""
    storage = _storage(plan)
    if not storage.is_dir():
        return 0
    names = set(plan.patterns)
    whole = {
        p.relative_to(s).as_posix(): p.stat().st_size
        for s in (storage / "snapshots").glob("*")
        for p in s.rglob("*")
        if p.is_file() and p.relative_to(s).as_posix() in names
    }
    partial = sum(p.stat().st_size for p in (storage / "blobs").glob("*.incomplete"))
    return sum(whole.values()) + partial


def _watch(plan: PullPlan, on_progress: Callable[[int], None], done: threading.Event) -> None:
    while not done.wait(PROGRESS_INTERVAL):
        with contextlib.suppress(OSError):  # a file moved while measured: next time
            on_progress(min(plan.total, _bytes_on_disk(plan)))


def _free_disk() -> int:
    folder = cache_root()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _status(exc) -> str:
    response = getattr(exc, "response", None)
    return f"HTTP {response.status_code}" if response is not None else type(exc).__name__


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
