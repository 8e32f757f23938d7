#!/usr/bin/env python3
"""
The image's entrypoint: runs its command, which must be ``python3 -m sglang.launch_server``
and the service's flags, in this process. SGLang reads its key only from ``--api-key``, so the
key comes from the file mounted read-only (``RIGKIT_API_KEY_FILE``) into the parsed argv
(``sys.argv`` of this process), never into an exec: it appears on no command line
(``/proc/<pid>/cmdline``, which every local user can read), in no unit, in no environment and
in no ``docker inspect``. SGLang logs its ServerArgs at start: their repr is redacted here.

``--selfcheck`` (the image build) checks that the base has what this relies on.
"""

import dataclasses
import os
import runpy
import sys

LAUNCH = ["python3", "-m", "sglang.launch_server"]
SECRETS = ("api_key", "admin_api_key", "ssl_keyfile_password")


def redact_server_args():
    """ServerArgs' repr without its secrets (engine.py logs ``f"{server_args=}"``)."""
    from sglang.srt import server_args

    cls = server_args.ServerArgs

    def redacted(self):
        fields = ", ".join(
            f"{f.name}={'<redacted>' if f.name in SECRETS and getattr(self, f.name) else repr(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if f.repr
        )
        return f"{type(self).__name__}({fields})"

    cls.__repr__ = redacted
    return server_args


def selfcheck():
    server_args = redact_server_args()
    names = {f.name for f in dataclasses.fields(server_args.ServerArgs)}
    missing = [n for n in ("api_key", "model_path", "served_model_name") if n not in names]
    if missing or not hasattr(server_args, "prepare_server_args"):
        sys.exit(f"rigkit: this SGLang lacks {missing or 'prepare_server_args'}")
    import importlib.util

    if importlib.util.find_spec("sglang.launch_server") is None:
        sys.exit("rigkit: this SGLang has no sglang.launch_server")
    print("rigkit: sglang entrypoint selfcheck ok")


def main(argv):
    if argv == ["--selfcheck"]:
        selfcheck()
        return
    if argv[: len(LAUNCH)] != LAUNCH:
        sys.exit(f"rigkit: the command must start with {' '.join(LAUNCH)}")
    args = argv[len(LAUNCH) :]
    key_file = os.environ.pop("RIGKIT_API_KEY_FILE", None)
    if key_file:
        with open(key_file) as f:
            key = f.read().strip()
        if not key:
            sys.exit(f"rigkit: the key file {key_file} is empty")
        # First, so no option of the service's (nargs "+" ones included) can take it as a value.
        args = ["--api-key", key, *args]
    redact_server_args()
    sys.argv = ["sglang.launch_server", *args]
    runpy.run_module("sglang.launch_server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
