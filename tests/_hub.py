"""A stand-in for the Hugging Face hub, for tests that push without a network.

:class:`FakeHubApi` has the methods of :class:`huggingface_hub.HfApi` that :func:`cosegkit.hub.push_to_hub`
calls. Every call's arguments are bound to the real method's signature first, so a call the real
client would refuse fails here too. Uploads land in a folder laid out as the hub cache
(``models--ORG--NAME/snapshots/<commit>/...``, ``refs/<branch>``), so that
``from_pretrained("ORG/NAME")`` with ``HF_HUB_CACHE`` pointed at it and ``HF_HUB_OFFLINE=1``
reads back what was pushed, through the real ``snapshot_download``.
"""

from __future__ import annotations

import hashlib
import inspect
import shutil
from pathlib import Path
from typing import Any

__all__ = ["FakeHubApi", "http_error"]

ENDPOINT = "https://huggingface.co"


def http_error(status: int, method: str, url: str, message: str) -> Exception:
    """The exception the real client raises for a hub answer ``status``: built from a response, as it does."""
    import httpx2
    from huggingface_hub.utils import hf_raise_for_status

    response = httpx2.Response(status, request=httpx2.Request(method, url), json={"error": message})
    try:
        hf_raise_for_status(response)
    except Exception as err:
        return err
    raise AssertionError(f"hf_raise_for_status let status {status} pass")


class FakeHubApi:
    """The hub as :class:`huggingface_hub.HfApi` sees it, kept in ``cache`` (a hub cache folder).

    Args:
        cache: the folder uploads are written to, laid out as ``HF_HUB_CACHE``.
        token: the one token the fake hub accepts for writing; any other gets a 401, as from the hub.
    """

    def __init__(self, cache: Path, *, token: str = "hf_fake_write_token") -> None:
        self.cache = Path(cache)
        self.token = token
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.private: dict[str, bool] = {}

    # ------------------------------------------------------------------ plumbing
    def _bind(self, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        from huggingface_hub import HfApi

        bound = inspect.signature(getattr(HfApi, method)).bind(self, *args, **kwargs)  # TypeError as the real one
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("self")
        self.calls.append((method, arguments))
        return arguments

    def _authorise(self, token: Any, method: str, url: str) -> None:
        if token != self.token:
            raise http_error(401, method, url, "Invalid credentials in Authorization header")

    def _repo(self, repo_id: str) -> Path:
        return self.cache / f"models--{repo_id.replace('/', '--')}"

    def _head(self, repo_id: str, branch: str) -> str | None:
        ref = self._repo(repo_id) / "refs" / branch
        return ref.read_text().strip() if ref.is_file() else None

    def _commit(self, repo_id: str, branch: str, files: dict[str, bytes], message: str) -> str:
        """A commit on ``branch``: the parent's files, then ``files`` written over them; returns its hash."""
        repo = self._repo(repo_id)
        parent = self._head(repo_id, branch)
        tree: dict[str, bytes] = {}
        if parent is not None:
            root = repo / "snapshots" / parent
            tree = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        tree.update(files)
        digest = hashlib.sha1((parent or "").encode() + message.encode())
        for name in sorted(tree):
            digest.update(name.encode() + b"\0" + hashlib.sha256(tree[name]).digest())
        commit = digest.hexdigest()
        snapshot = repo / "snapshots" / commit
        for name, data in tree.items():
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / name).write_bytes(data)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / branch).write_text(commit)
        return commit

    # ------------------------------------------------------------------ the HfApi methods push_to_hub calls
    def create_repo(self, *args: Any, **kwargs: Any) -> Any:
        from huggingface_hub import RepoUrl

        a = self._bind("create_repo", *args, **kwargs)
        repo_id = a["repo_id"]
        self._authorise(a["token"], "POST", f"{ENDPOINT}/api/repos/create")
        if self._head(repo_id, "main") is not None:
            if not a["exist_ok"]:
                raise http_error(409, "POST", f"{ENDPOINT}/api/repos/create", "You already created this model repo")
        else:  # the hub starts a repository with a commit of .gitattributes
            self.private[repo_id] = bool(a["private"])
            self._commit(
                repo_id,
                "main",
                {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                "initial commit",
            )
        return RepoUrl(f"{ENDPOINT}/{repo_id}", endpoint=ENDPOINT)

    def create_branch(self, *args: Any, **kwargs: Any) -> None:
        a = self._bind("create_branch", *args, **kwargs)
        repo_id, branch = a["repo_id"], a["branch"]
        url = f"{ENDPOINT}/api/models/{repo_id}/branch/{branch}"
        self._authorise(a["token"], "POST", url)
        main = self._head(repo_id, "main")
        if main is None:
            raise http_error(404, "POST", url, "Repository not found")
        if self._head(repo_id, branch) is not None:
            if not a["exist_ok"]:
                raise http_error(409, "POST", url, "Reference already exists")
            return
        (self._repo(repo_id) / "refs" / branch).write_text(self._head(repo_id, a["revision"] or "main") or main)

    def upload_folder(self, *args: Any, **kwargs: Any) -> Any:
        from huggingface_hub import CommitInfo

        a = self._bind("upload_folder", *args, **kwargs)
        repo_id, branch = a["repo_id"], a["revision"] or "main"
        url = f"{ENDPOINT}/api/models/{repo_id}/commit/{branch}"
        self._authorise(a["token"], "POST", url)
        if self._head(repo_id, "main") is None:
            raise http_error(404, "POST", url, "Repository not found")
        if self._head(repo_id, branch) is None:
            raise http_error(404, "POST", url, f"Invalid rev id: {branch}")
        root = Path(a["folder_path"])
        prefix = (a["path_in_repo"] or "").strip("/")
        files = {
            "/".join(filter(None, [prefix, p.relative_to(root).as_posix()])): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }
        commit = self._commit(repo_id, branch, files, a["commit_message"] or "Upload folder using huggingface_hub")
        return CommitInfo(
            commit_url=f"{ENDPOINT}/{repo_id}/commit/{commit}",
            commit_message=a["commit_message"] or "",
            commit_description=a["commit_description"] or "",
            oid=commit,
        )

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        """The files of ``repo_id`` at the head of ``branch``, by path."""
        root = self._repo(repo_id) / "snapshots" / (self._head(repo_id, branch) or "missing")
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    def clear(self) -> None:
        """Forget every repository."""
        shutil.rmtree(self.cache, ignore_errors=True)
