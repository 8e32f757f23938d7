"""
Place model files (GGUF shards, safetensors) on a host, pinned by the lockfile.

Files are fetched on the host by ``rigkit/scripts/fetch_shards.py`` (python3
stdlib only): free-space check first, parallel downloads (a large file in several
ranges at once) with HTTP Range resume, sha256 as the bytes land, atomic rename, a
state file so re-runs skip verified files without hashing. Its progress shows in
pyinfra's default output (``StreamedCommand``). A download may run in the background
(``shards(background=True)``, a transient unit on the host) while the deploy builds, and
``downloaded`` waits for it before anything uses the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from importlib.resources import files as package_files
from io import StringIO
from pathlib import Path
from urllib.parse import quote

from pyinfra import host
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand, operation
from pyinfra.operations import files

from rigkit.facts.models import ShardsVerified
from rigkit.host_paths import STATE_DIR
from rigkit.models.hub import ModelRef, read_token, resolve_endpoint
from rigkit.operations import rendered
from rigkit.operations.secrets import secret_file
from rigkit.operations.streamed import StreamedCommand
from rigkit.scripts.fetch_shards import STATE_NAME
from rigkit.transport import may_carry_token

REMOTE_DIR = STATE_DIR  # the fetch script, the token and the manifests on the host


def manifest_for(
    ref: ModelRef,
    lock_entry,
    *,
    endpoint: str | None = None,
    token_file: str | None = None,
    parallel: int = 4,
    margin_bytes: int = 2 << 30,
    reverify: bool = False,
) -> dict:
    """The JSON manifest fetch_shards.py reads (also usable without pyinfra). ``token_file``
    goes into it only for an endpoint that may carry the token (https, or a mirror on the
    host's loopback): never for plain http across a network."""
    ep = resolve_endpoint(ref.endpoint or endpoint)
    if lock_entry.repo != ref.repo:
        raise ValueError(f"lock entry is for {lock_entry.repo}, not {ref.repo}")
    m = {
        "files": [
            {
                "url": f"{ep}/{ref.repo}/resolve/{lock_entry.sha}/{quote(f.path)}",
                "size": f.size,
                "sha256": f.sha256,
                "dest": posixpath.join(ref.dest, f.path),
            }
            for f in lock_entry.files
        ],
        "parallel": parallel,
        "margin_bytes": margin_bytes,
        "reverify": reverify,
        "root": ref.dest,
        "state_file": posixpath.join(ref.dest, STATE_NAME),
        "repo_meta": {"dir": ref.dest, "repo": ref.repo, "revision": ref.revision, "sha": lock_entry.sha},
    }
    if token_file and may_carry_token(ep):
        m["token_file"] = token_file
    return m


@operation()
def fetcher(token_file: str | None = None, use_token: bool = True, remote_dir: str = REMOTE_DIR):
    """
    Upload the fetch script (and ``token_origin.py``, the token's rules it imports), and the
    Hub token when there is one, once per host for all ``shards`` operations.

    + token_file: local file with the Hub token (default: ``$HF_TOKEN`` or ``~/.cache/huggingface/token``)
    + use_token: send a token at all (uploaded mode 0600, sent only as a header)
    + remote_dir: where the fetch script, manifests and token live on the host

    .. code:: python

        models.fetcher(token_file="~/.hf-token")
    """
    token = read_token(token_file) if use_token else None
    if token:  # a secret: placed without any hash of it in pyinfra's output
        yield from secret_file._inner(
            src=(token + "\n").encode(),
            dest=posixpath.join(remote_dir, "hf-token"),
            user="root",
            group="root",
            mode="600",
        )
    scripts = package_files("rigkit") / "scripts"
    batch = (posixpath.join(remote_dir, "token_origin.py"), posixpath.join(remote_dir, "fetch_shards.py"))
    yield from rendered.put._inner(  # the token's rules, which fetch_shards.py imports
        content=Path(str(scripts / "token_origin.py")), dest=batch[0], mode="644", batch=batch
    )
    yield from rendered.put._inner(
        content=Path(str(scripts / "fetch_shards.py")), dest=batch[1], mode="755", batch=batch
    )


def manifest_path(ref: ModelRef, remote_dir: str = REMOTE_DIR) -> str:
    """Where the host keeps ``ref``'s manifest (and its background download's log beside it)."""
    name = hashlib.sha256(f"{ref.key}\0{ref.dest}".encode()).hexdigest()[:16] + ".json"
    return posixpath.join(remote_dir, "manifests", name)


@operation()
def shards(
    ref: ModelRef,
    lock_entry,
    endpoint: str | None = None,
    token_file: str | None = None,
    use_token: bool = True,
    remote_dir: str = REMOTE_DIR,
    parallel: int = 4,
    margin_bytes: int = 2 << 30,
    reverify: bool = False,
    background: bool = False,
):
    """
    Download and verify the files of a locked model reference into ``ref.dest``, with the
    script (and token) that ``fetcher`` uploaded to ``remote_dir``.

    + ref: the ``rigkit.hub.ModelRef`` (repo, revision, include, dest, endpoint)
    + lock_entry: its ``rigkit.lockfile.LockEntry`` (commit sha, files with size and sha256)
    + endpoint: Hub or mirror URL when ``ref.endpoint`` has none (default: host data
      ``hf_endpoint``, ``$HF_ENDPOINT``)
    + token_file, use_token: as given to ``fetcher`` (whether the download sends the token)
    + remote_dir: as given to ``fetcher``
    + parallel: files downloaded at once
    + margin_bytes: free space required beyond the bytes still missing
    + reverify: re-hash every placed file and repair mismatches
    + background: check the manifest and free space, then download in a transient unit
      (``rigkit-fetch-<id>.service``) while the deploy goes on; ``downloaded`` waits for it

    The operation is a no-op when every file is recorded as verified (nothing hashed).

    **Example:**

    .. code:: python

        models.fetcher()
        models.shards(
            name="Qwen3 Q6 shards",
            ref=ref,
            lock_entry=lock[ref.key],
        )
    """
    wanted = [(posixpath.join(ref.dest, f.path), f.size, f.sha256) for f in lock_entry.files]
    if not reverify:
        status = host.get_fact(ShardsVerified, state_file=posixpath.join(ref.dest, STATE_NAME), files=wanted)
        if status and all(status.get(d) == "verified" for d, _, _ in wanted):
            host.noop(f"{ref.repo}@{lock_entry.sha[:12]}: {len(wanted)} file(s) already verified in {ref.dest}")
            return

    endpoint = endpoint or host.data.get("hf_endpoint")
    carries = may_carry_token(resolve_endpoint(ref.endpoint or endpoint))
    remote_token = posixpath.join(remote_dir, "hf-token") if use_token and carries and read_token(token_file) else None
    manifest = manifest_for(
        ref,
        lock_entry,
        endpoint=endpoint,
        token_file=remote_token,
        parallel=parallel,
        margin_bytes=margin_bytes,
        reverify=reverify,
    )
    remote_manifest = manifest_path(ref, remote_dir)
    yield from files.put._inner(
        src=StringIO(json.dumps(manifest, indent=1)), dest=remote_manifest, mode="600", create_remote_dir=True
    )
    # Shown as it runs (the model's bytes and rate every 5 s, a line per verified file), its
    # stderr on stdout so that pyinfra does not colour the progress as an error.
    script = QuoteString(posixpath.join(remote_dir, "fetch_shards.py"))
    if background:
        yield StreamedCommand("python3", script, "start", QuoteString(remote_manifest), "2>&1")
    else:
        yield StreamedCommand("python3", script, QuoteString(remote_manifest), "2>&1")


@operation(is_idempotent=False)
def downloaded(ref: ModelRef, remote_dir: str = REMOTE_DIR):
    """
    Wait for the background download that ``shards(background=True)`` started for ``ref``:
    its lines shown as they come (the latest progress line every 5 s, a line per verified
    file), failing as it failed. Run it only after that start (``_if=started.did_change``).

    + ref: the ``rigkit.hub.ModelRef`` given to ``shards``
    + remote_dir: as given to ``shards``

    **Example:**

    .. code:: python

        started = models.shards(name="Qwen3 Q6 shards", ref=ref, lock_entry=lock[ref.key], background=True)
        ...  # the build, meanwhile
        models.downloaded(name="Wait for the Qwen3 Q6 shards", ref=ref, _if=started.did_change)
    """
    yield StreamedCommand(
        "python3",
        QuoteString(posixpath.join(remote_dir, "fetch_shards.py")),
        "wait",
        QuoteString(manifest_path(ref, remote_dir)),
        "2>&1",
    )


LOCAL_HASHES = Path(os.environ.get("RIGKIT_HASH_CACHE", "~/.cache/rigkit/upload-sha256.json")).expanduser()


def local_sha256(path: Path) -> str:
    """sha256 of a local file, cached by (path, size, mtime): hashed once per change, not per run."""
    st = path.stat()
    key = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    try:
        cache = json.loads(LOCAL_HASHES.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        cache[key] = digest.hexdigest()
        LOCAL_HASHES.parent.mkdir(parents=True, exist_ok=True)
        tmp = LOCAL_HASHES.with_suffix(".new")
        tmp.write_text(json.dumps(cache))
        tmp.rename(LOCAL_HASHES)
    return cache[key]


@operation()
def uploaded(src: str, dest: str, remote_dir: str = REMOTE_DIR):
    """
    Copy the files of the local directory ``src`` into ``dest`` on the host, recorded like
    fetched Hub files (size, mtime, sha256 in ``dest/.rigkit-verified.json``): a re-run with
    nothing changed hashes nothing on the host and each local file once per change. Needs the
    fetch script (``fetcher``).

    .. code:: python

        models.fetcher()
        models.uploaded(src="~/models/tiny", dest="/srv/models/tiny")
    """
    local = sorted(p for p in Path(src).expanduser().iterdir() if p.is_file())
    wanted = [(posixpath.join(dest, p.name), p.stat().st_size, local_sha256(p)) for p in local]
    state_file = posixpath.join(dest, STATE_NAME)
    status = host.get_fact(ShardsVerified, state_file=state_file, files=wanted)
    todo = [(p, w) for p, w in zip(local, wanted) if status.get(w[0]) != "verified"]
    if not todo:
        host.noop(f"{len(wanted)} file(s) already verified in {dest}")
        return
    yield StringCommand("mkdir", "-p", QuoteString(dest))
    for path, (target, size, sha) in todo:
        staged = posixpath.join(dest, f".{path.name}.rigkit-upload")
        yield FileUploadCommand(str(path), staged)
        yield StringCommand(
            "python3",
            QuoteString(posixpath.join(remote_dir, "fetch_shards.py")),
            "record-upload",
            QuoteString(state_file),
            QuoteString(staged),
            QuoteString(target),
            str(size),
            QuoteString(sha),
        )
