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

__all__ = ["FakeHubApi", "LocalHub", "http_error", "point_client_at"]

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


# ---------------------------------------------------------------------- a hub on localhost, for the real client
def offline_hub(tmp_path: Path, monkeypatch: Any) -> FakeHubApi:
    """A :class:`FakeHubApi` writing a hub cache that the client reads offline, as after a download.

    Both the environment and the client's constants (read when it was imported) point at the
    cache, through ``monkeypatch`` so a test leaves them as found.
    """
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return FakeHubApi(cache)


def point_client_at(url: str, tmp_path: Path, monkeypatch: Any) -> Path:
    """Point the real huggingface_hub client at the hub ``url``, online, with a fresh cache; returns the cache.

    Both the environment (for a ``cosegkit`` started in a new process) and the client's constants
    (read when it was imported) are set, through ``monkeypatch`` so a test leaves them as found.
    """
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    return cache


class LocalHub:
    """A hub server on ``127.0.0.1`` with the endpoints the real ``HfApi`` uses to create a repository, a
    branch and a commit of regular files, and to download a snapshot (repo info, tree, resolve).

    Point the client at it (``HF_ENDPOINT``, or ``huggingface_hub.constants.ENDPOINT`` once imported)
    and the real ``HfApi.upload_folder`` and ``snapshot_download`` talk HTTP to it. Every file is
    answered ``"regular"`` by the preupload endpoint, so no LFS or Xet storage is involved. Requests
    it does not implement are answered 404 and listed in :attr:`unhandled`.

    Use as a context manager: ``with LocalHub(token) as hub: hub.url ...``.
    """

    def __init__(self, token: str = "hf_fake_write_token") -> None:
        self.token = token
        self.repos: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.validated: list[str] = []
        self.url = ""
        self._server: Any = None
        self._thread: Any = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalHub:
        import threading
        from http.server import ThreadingHTTPServer

        hub = self

        from http.server import BaseHTTPRequestHandler

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                hub._handle(self, "GET")

            def do_HEAD(self) -> None:
                hub._handle(self, "HEAD")

            def do_POST(self) -> None:
                hub._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # ------------------------------------------------------------------ state
    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        """The files of ``repo_id`` at the head of ``branch``, by path."""
        repo = self.repos[repo_id]
        return dict(repo["commits"][repo["branches"][branch]])

    def _commit(self, repo_id: str, branch: str, changes: dict[str, bytes | None], message: str) -> str:
        repo = self.repos[repo_id]
        parent = repo["branches"].get(branch)
        tree = dict(repo["commits"][parent]) if parent else {}
        for path, data in changes.items():
            if data is None:
                tree.pop(path, None)
            else:
                tree[path] = data
        digest = hashlib.sha1(f"{parent}\0{message}\0{len(repo['commits'])}".encode())
        for path in sorted(tree):
            digest.update(path.encode() + b"\0" + _blob_id(tree[path]).encode())
        commit = digest.hexdigest()
        repo["commits"][commit] = tree
        repo["branches"][branch] = commit
        return commit

    def _resolve(self, repo_id: str, revision: str) -> str | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        if revision in repo["branches"]:
            return repo["branches"][revision]
        return revision if revision in repo["commits"] else None

    # ------------------------------------------------------------------ HTTP
    def _handle(self, request: Any, method: str) -> None:
        import json
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(request.path)
        path = unquote(parts.path)
        self.requests.append((method, path))
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        authorised = request.headers.get("Authorization") == f"Bearer {self.token}"
        segments = path.strip("/").split("/")
        try:
            if method == "POST" and path == "/api/validate-yaml":
                return self._validate_yaml(request, json.loads(body))
            if method == "POST" and path == "/api/repos/create":
                return self._create_repo(request, json.loads(body), authorised)
            if segments[:2] == ["api", "models"] and len(segments) == 4 and method == "GET":  # repo_info at main
                return self._api(request, method, "/".join(segments[2:4]), "revision", "main", body, authorised)
            if segments[:2] == ["api", "models"] and len(segments) >= 6:
                repo_id, action, rest = "/".join(segments[2:4]), segments[4], "/".join(segments[5:])
                return self._api(request, method, repo_id, action, rest, body, authorised)
            if len(segments) >= 5 and segments[2] == "resolve" and method in ("GET", "HEAD"):
                repo_id, revision, file = "/".join(segments[:2]), segments[3], "/".join(segments[4:])
                return self._resolve_file(request, method, repo_id, revision, file, authorised)
        except Exception as err:  # a bug here shows as a 500 with its message
            return self._send(request, 500, {"error": f"{type(err).__name__}: {err}"})
        if path != "/api/agent-harnesses":  # the client's optional, best-effort look-up for its user agent
            self.unhandled.append((method, path))
        return self._send(request, 404, {"error": f"not implemented by LocalHub: {method} {path}"})

    def _send(self, request: Any, status: int, payload: Any = None, headers: dict[str, str] | None = None,
              raw: bytes | None = None, head: bool = False) -> None:  # fmt: skip
        import json

        data = raw if raw is not None else json.dumps(payload).encode()
        request.send_response(status)
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        if raw is None:
            request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if not head:
            request.wfile.write(data)

    def _refuse(self, request: Any, status: int, message: str, code: str | None = None) -> None:
        headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})}
        self._send(request, status, {"error": message}, headers)

    def _validate_yaml(self, request: Any, payload: dict[str, Any]) -> None:
        """The card's front matter, read as the hub's own client reads it (model-index included)."""
        from huggingface_hub import ModelCard

        self.validated.append(payload["content"])
        try:
            data = ModelCard(payload["content"], ignore_metadata_errors=False).data.to_dict()
        except Exception as err:
            return self._send(request, 400, {"errors": [{"message": f"{type(err).__name__}: {err}"}]})
        warnings = [] if data else [{"message": "Empty or missing yaml metadata in repo card"}]
        return self._send(request, 200, {"errors": [], "warnings": warnings})

    def _create_repo(self, request: Any, payload: dict[str, Any], authorised: bool) -> None:
        if not authorised:
            return self._refuse(request, 401, "Invalid credentials in Authorization header")
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if repo_id in self.repos:
            return self._send(
                request, 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
            )
        private = payload.get("visibility", "private" if payload.get("private") else "public") == "private"
        self.repos[repo_id] = {"private": private, "branches": {}, "commits": {}}
        self._commit(
            repo_id,
            "main",
            {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
            "initial commit",
        )
        return self._send(request, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id})

    def _api(
        self, request: Any, method: str, repo_id: str, action: str, rest: str, body: bytes, authorised: bool
    ) -> None:
        import base64
        import json

        repo = self.repos.get(repo_id)
        if repo is None or (repo["private"] and not authorised):
            return self._refuse(request, 401 if not authorised else 404, "Repository not found", "RepoNotFound")
        if method == "POST" and not authorised:
            return self._refuse(request, 401, "Invalid credentials in Authorization header")
        if method == "POST" and action == "branch":
            if rest in repo["branches"]:
                return self._refuse(request, 409, "Reference already exists")
            start = json.loads(body or b"{}").get("startingPoint") or "main"
            repo["branches"][rest] = self._resolve(repo_id, start)
            return self._send(request, 200, {})
        revision = rest.split("/")[0]
        commit = self._resolve(repo_id, revision)
        if commit is None:
            return self._refuse(request, 404, f"Invalid rev id: {revision}", "RevisionNotFound")
        if method == "POST" and action == "preupload":
            files = json.loads(body)["files"]
            answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]
            return self._send(request, 200, {"files": answer, "commitOid": commit})
        if method == "POST" and action == "commit":
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            header = next(line["value"] for line in lines if line["key"] == "header")
            changes: dict[str, bytes | None] = {}
            for line in lines:
                if line["key"] == "file":
                    changes[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                elif line["key"] == "deletedFile":
                    changes[line["value"]["path"]] = None
                elif line["key"] != "header":
                    return self._refuse(request, 400, f"LocalHub does not store {line['key']} entries")
            new = self._commit(repo_id, revision, changes, header["summary"])
            return self._send(
                request, 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{new}", "commitOid": new, "success": True}
            )
        if method == "GET" and action == "revision":
            tree = repo["commits"][commit]
            siblings = [{"rfilename": p} for p in sorted(tree)]
            info = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": repo["private"], "siblings": siblings}
            return self._send(request, 200, info)
        if method == "GET" and action == "tree":
            tree = repo["commits"][commit]
            entries = [
                {"type": "file", "oid": _blob_id(data), "size": len(data), "path": p}
                for p, data in sorted(tree.items())
            ]
            return self._send(request, 200, entries)
        self.unhandled.append((method, request.path))
        return self._refuse(request, 404, f"not implemented by LocalHub: {method} {action}")

    def _resolve_file(
        self, request: Any, method: str, repo_id: str, revision: str, file: str, authorised: bool
    ) -> None:
        repo = self.repos.get(repo_id)
        if repo is None or (repo["private"] and not authorised):
            return self._refuse(request, 401, "Repository not found", "RepoNotFound")
        commit = self._resolve(repo_id, revision)
        if commit is None:
            return self._refuse(request, 404, f"Invalid rev id: {revision}", "RevisionNotFound")
        data = repo["commits"][commit].get(file)
        if data is None:
            return self._refuse(request, 404, "Entry not found", "EntryNotFound")
        headers = {"X-Repo-Commit": commit, "ETag": f'"{_blob_id(data)}"'}
        return self._send(request, 200, headers=headers, raw=data, head=method == "HEAD")


def _blob_id(data: bytes) -> str:
    """The git blob id of ``data``, as the hub gives a file's ``oid``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
