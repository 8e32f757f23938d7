"""Model references and a small Hugging Face Hub client (over ``requests``).

A :class:`ModelRef` names what a host needs: a repository, a revision (branch,
tag or commit), include patterns and a destination directory.  :class:`HubClient`
resolves a reference to an immutable commit and the per-file size and sha256
that ``rigkit lock`` writes into the lockfile.

The client speaks the subset of the Hub's HTTP API that downloads use (see
``rigkit.mirror`` for a server of the same subset):

* ``GET /api/models/{repo}/revision/{rev}``         -> ``{"sha": ...}``
* ``GET /api/models/{repo}/tree/{sha}?recursive=1`` -> entries, paged by ``Link: rel="next"``
* ``GET /{repo}/resolve/{sha}/{path}``              -> file bytes (used to hash non-LFS files)

Tokens come from the token file the caller names (host data ``hf_token_file``,
``rigkit lock --token-file``), else ``HF_TOKEN``, else the default token file
(``HF_TOKEN_PATH``, else ``$HF_HOME/token``, else ``~/.cache/huggingface/token``); they
are only ever sent as an ``Authorization`` header, only over https (or to a mirror on
the loopback interface, :func:`rigkit.transport.may_carry_token`) and only to the
endpoint's own origin, and never appear in reprs, logs or exception messages.

Endpoints are checked by :func:`rigkit.transport.check_url`: https, or plain http (a
LAN mirror; host data opts in with ``hf_insecure_http: true``), never with a user name or
password in them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from rigkit.transport import UrlError, check_url, may_carry_token

DEFAULT_ENDPOINT = "https://huggingface.co"
REPO_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", re.ASCII)  # fullmatch
# A branch, tag or commit: git's ref characters, no whitespace, control characters or '..'.
REVISION_RE = re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._/-]{0,199}", re.ASCII)
# A glob over repository paths: no control characters, no absolute paths or '..' components.
INCLUDE_RE = re.compile(r"(?!/)(?!.*(^|/)\.\.(/|$))[\x20-\x7e]{1,200}", re.ASCII)
_SHA_RE = re.compile(r"[0-9a-f]{40}", re.ASCII)  # fullmatch
_SHARD_RE = re.compile(r"-0*1-of-([0-9]+)\.gguf$", re.ASCII)


class HubError(Exception):
    """A Hub request failed in a way the user has to fix (message says how)."""


class RepoNotFound(HubError):
    pass


class RevisionNotFound(HubError):
    pass


class EntryNotFound(HubError):
    pass


class HubAuthError(HubError):
    pass


class PatternMatchedNothing(HubError):
    pass


# --------------------------------------------------------------------------- #
# Model references
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class ModelRef:
    """What a host needs from the Hub.

    ``dest`` is the directory files are placed in, keeping their repository
    paths (``dest/UD-Q6_K_XL/model-00001-of-00002.gguf``).
    """

    repo: str
    revision: str = "main"
    include: tuple[str, ...] = ("*",)
    dest: str = ""
    endpoint: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.include, str):
            object.__setattr__(self, "include", (self.include,))
        elif isinstance(self.include, list):
            object.__setattr__(self, "include", tuple(self.include))
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.repo, str) or not REPO_RE.fullmatch(self.repo) or ".." in self.repo:
            raise ValueError(f"model 'repo': expected '<org>/<name>' (e.g. 'unsloth/Qwen3-8B-GGUF'), got {self.repo!r}")
        if not isinstance(self.revision, str) or not REVISION_RE.fullmatch(self.revision):
            raise ValueError(
                f"model 'revision' of {self.repo}: expected a branch, tag or 40-hex commit sha, got {self.revision!r}"
            )
        if (
            not isinstance(self.include, tuple)
            or not self.include
            or not all(isinstance(p, str) and p.strip() and INCLUDE_RE.fullmatch(p) for p in self.include)
        ):
            raise ValueError(
                f"model 'include' of {self.repo}: expected a non-empty list of glob patterns "
                f"(e.g. ['UD-Q6_K_XL/*.gguf']), got {self.include!r}"
            )
        if not isinstance(self.dest, str) or not _normal_abspath(self.dest):
            raise ValueError(
                f"model 'dest' of {self.repo}: expected an absolute directory path on the host, got {self.dest!r}"
            )
        if self.endpoint is not None:
            try:  # http is a host's choice (hf_insecure_http), checked with host data; the rest here
                check_url(self.endpoint, allow_http=True)
            except UrlError as exc:
                raise ValueError(f"model 'endpoint' of {self.repo}: expected {exc}, got {self.endpoint!r}") from None

    @property
    def key(self) -> str:
        """Stable lockfile key: what is fetched (not where it goes, nor from which mirror)."""
        return f"{self.repo}@{self.revision}:{','.join(self.include)}"


def _normal_abspath(path: str) -> bool:
    """Absolute and normalised: no '..', '.', '//', trailing '/' or control characters."""
    return (
        path.startswith("/")
        and path != "/"
        and posixpath.normpath(path) == path
        and not path.startswith("//")
        and not re.search(r"[\x00-\x1f\x7f]", path)
    )


def first_shard(paths: Iterable[str]) -> str:
    """The file llama-server's ``-m`` must name: the ``-00001-of-N`` shard, or the only GGUF."""
    paths = sorted(paths)
    firsts = [p for p in paths if _SHARD_RE.search(p)]
    if len(firsts) == 1:
        return firsts[0]
    ggufs = [p for p in paths if p.endswith(".gguf")]
    if not firsts and len(ggufs) == 1:
        return ggufs[0]
    raise ValueError(
        f"cannot pick the first shard: expected one '*-00001-of-N.gguf' or a single .gguf among {paths}; "
        "narrow the model's 'include' patterns"
    )


# --------------------------------------------------------------------------- #
# Tokens and endpoints
# --------------------------------------------------------------------------- #


def token_file_path() -> str:
    if os.environ.get("HF_TOKEN_PATH"):
        return os.environ["HF_TOKEN_PATH"]
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(hf_home, "token")


def read_token(token_file: str | None = None) -> str | None:
    """The token of ``token_file`` when one is named (host data ``hf_token_file`` beats the
    environment, as the README says), else ``HF_TOKEN``, else the default token file;
    ``None`` when there is none."""
    if not token_file:
        tok = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
        if tok and tok.strip():
            return tok.strip()
    path = os.path.expanduser(token_file) if token_file else token_file_path()
    try:
        with open(path, encoding="utf-8") as f:
            tok = f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise HubError(f"cannot read token file {path}: {e.strerror}") from None
    return tok or None


def resolve_endpoint(ref_endpoint: str | None = None) -> str:
    return (ref_endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


# --------------------------------------------------------------------------- #
# Client
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Resolved:
    repo: str
    revision: str
    sha: str
    files: tuple[RemoteFile, ...]


class Secret:
    """A string that never shows itself in repr/str/logs; ``reveal()`` gives it back."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


class HubClient:
    """Minimal Hub API client. ``repr()`` never shows the token."""

    def __init__(
        self, endpoint: str | None = None, token: str | None = None, *, timeout: float = 30.0, session: Any = None
    ):
        import requests

        self.endpoint = resolve_endpoint(endpoint)
        try:
            check_url(self.endpoint, allow_http=True)
        except UrlError as exc:
            raise HubError(f"Hub endpoint: expected {exc}, got {self.endpoint!r}") from None
        if token and not may_carry_token(self.endpoint):
            raise HubError(
                f"refusing to send the Hub token to {self.endpoint}: plain http would carry it in the clear "
                "(use https, or no token for an http mirror)"
            )
        self.timeout = timeout
        self._session = session or requests.Session()
        self._session.trust_env = True
        self._token = Secret(token) if token else None

    def __repr__(self) -> str:
        return f"HubClient(endpoint={self.endpoint!r}, token={'<set>' if self._token else None})"

    # -- HTTP ---------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        h = {"User-Agent": "rigkit-hub/0.1", "Accept-Encoding": "identity"}
        if self._token:
            h["Authorization"] = f"Bearer {self._token.reveal()}"
        return h

    def _get(
        self,
        url: str,
        *,
        what: str,
        repo: str,
        revision: str | None = None,
        stream: bool = False,
        params: dict | None = None,
    ):
        import requests

        try:
            r = self._session.get(
                url, headers=self._headers(), timeout=self.timeout, stream=stream, params=params, allow_redirects=False
            )
            # Follow redirects ourselves: drop the token when leaving the Hub's origin (CDN / LFS storage).
            for _ in range(5):
                if r.status_code not in (301, 302, 303, 307, 308) or "Location" not in r.headers:
                    break
                loc = requests.compat.urljoin(url, r.headers["Location"])
                headers = self._headers()
                if _origin(loc) != _origin(url) or not may_carry_token(loc):
                    headers.pop("Authorization", None)
                r.close()
                r = self._session.get(loc, headers=headers, timeout=self.timeout, stream=stream, allow_redirects=False)
        except requests.RequestException as e:
            raise HubError(f"{what}: cannot reach {self.endpoint}: {type(e).__name__}") from None
        self._raise_for_status(r, what=what, repo=repo, revision=revision)
        return r

    def _raise_for_status(self, r, *, what: str, repo: str, revision: str | None) -> None:
        if r.status_code < 400:
            return
        code = r.headers.get("X-Error-Code", "")
        at = f" at {self.endpoint}"
        if r.status_code in (401, 403) and code not in ("RevisionNotFound", "EntryNotFound"):
            hint = (
                "the token was rejected or lacks access"
                if self._token
                else "no token was found: set HF_TOKEN or write the token to " + token_file_path()
            )
            raise HubAuthError(f"{what}: HTTP {r.status_code} for repository {repo}{at}: {hint}")
        if code == "RepoNotFound" or (r.status_code == 404 and not code and revision is None):
            raise RepoNotFound(
                f"{what}: repository {repo} not found{at} (check 'repo' spelling; private repos need a token)"
            )
        if code == "RevisionNotFound":
            raise RevisionNotFound(f"{what}: revision {revision!r} not found in {repo}{at} (check 'revision')")
        if code == "EntryNotFound":
            raise EntryNotFound(f"{what}: file not found in {repo}@{revision}{at}")
        if r.status_code == 404:
            raise RepoNotFound(f"{what}: HTTP 404 for {repo}@{revision}{at}")
        raise HubError(f"{what}: HTTP {r.status_code} from {self.endpoint} for {repo}")

    # -- API ----------------------------------------------------------------

    def resolve_revision(self, repo: str, revision: str) -> str:
        url = f"{self.endpoint}/api/models/{repo}/revision/{quote(revision, safe='')}"
        r = self._get(url, what="resolve revision", repo=repo, revision=revision)
        try:
            sha = r.json()["sha"]
        except (ValueError, KeyError, TypeError):
            raise HubError(f"resolve revision: {self.endpoint} gave no commit sha for {repo}@{revision}") from None
        if not isinstance(sha, str) or not _SHA_RE.fullmatch(sha):
            raise HubError(f"resolve revision: {self.endpoint} gave an invalid commit sha for {repo}@{revision}")
        return sha

    def list_files(self, repo: str, sha: str) -> list[dict]:
        """All file entries of the tree at ``sha`` (following ``Link: rel=next`` pages)."""
        url: str | None = f"{self.endpoint}/api/models/{repo}/tree/{quote(sha, safe='')}"
        params: dict | None = {"recursive": "true"}
        out: list[dict] = []
        pages = 0
        while url:
            r = self._get(url, what="list files", repo=repo, revision=sha, params=params)
            try:
                page = r.json()
            except ValueError:
                raise HubError(f"list files: {self.endpoint} returned no JSON for {repo}@{sha}") from None
            out.extend(e for e in page if e.get("type") == "file")
            url = r.links.get("next", {}).get("url")
            params = None  # the next link carries its own query
            pages += 1
            if pages > 100000:
                raise HubError("list files: too many pages")
        return out

    def hash_remote(self, repo: str, sha: str, path: str) -> tuple[int, str]:
        url = f"{self.endpoint}/{repo}/resolve/{sha}/{quote(path)}"
        r = self._get(url, what=f"hash {path}", repo=repo, revision=sha, stream=True)
        h = hashlib.sha256()
        n = 0
        for chunk in r.iter_content(1 << 20):
            h.update(chunk)
            n += len(chunk)
        return n, h.hexdigest()

    def resolve(self, ref: ModelRef) -> Resolved:
        """Commit sha plus size and sha256 of every file matching ``ref.include``."""
        sha = self.resolve_revision(ref.repo, ref.revision)
        entries = self.list_files(ref.repo, sha)
        paths = [e["path"] for e in entries]
        matched: dict[str, dict] = {}
        for pat in ref.include:
            hits = [e for e in entries if match_pattern(e["path"], pat)]
            if not hits:
                sample = ", ".join(sorted(paths)[:8]) + (" ..." if len(paths) > 8 else "")
                raise PatternMatchedNothing(
                    f"include pattern {pat!r} matched no file in {ref.repo}@{sha[:12]} "
                    f"(revision {ref.revision}); files there: {sample or '(none)'}"
                )
            for e in hits:
                matched[e["path"]] = e
        files = []
        for path in sorted(matched):
            e = matched[path]
            lfs = e.get("lfs")
            if lfs and lfs.get("oid"):
                files.append(RemoteFile(path=path, size=int(lfs.get("size", e["size"])), sha256=lfs["oid"]))
            else:  # small git file: the API only gives its git sha1, so hash the bytes
                size, digest = self.hash_remote(ref.repo, sha, path)
                files.append(RemoteFile(path=path, size=size, sha256=digest))
        return Resolved(repo=ref.repo, revision=ref.revision, sha=sha, files=tuple(files))


def match_pattern(path: str, pattern: str) -> bool:
    """fnmatch as huggingface_hub's allow_patterns does (``dir/`` means ``dir/*``)."""
    if pattern.endswith("/"):
        pattern += "*"
    return fnmatch.fnmatchcase(path, pattern)


def _origin(url: str) -> tuple[str, str]:
    """(scheme, host:port) of a URL; a URL with userinfo or a bad port (a redirect's
    ``Location`` is the server's to write) is no origin the token goes to."""
    u = urlsplit(url)
    try:
        port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError:
        return ("invalid", url)
    if "@" in u.netloc:
        return ("userinfo", url)
    return (u.scheme, f"{(u.hostname or '').lower()}:{port}")
