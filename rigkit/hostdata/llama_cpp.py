"""Host data ``llama_cpp``: the pinned llama.cpp build (ref, source, CUDA, flags)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rigkit.hostdata.gpus import CUDA_ARCH, Gpus
from rigkit.hostdata.schema import HostDataError, NumericText, build, check_path, check_pattern
from rigkit.scripts.build_cache import URL as CACHE_URL

UPSTREAM_LLAMA_CPP = "https://github.com/ggml-org/llama.cpp"
BUILD_TAG = re.compile(r"b\d+", re.ASCII)
COMMIT_SHA = re.compile(r"[0-9a-f]{7,40}", re.ASCII)
PIN = re.compile(rf"{BUILD_TAG.pattern}|{COMMIT_SHA.pattern}", re.ASCII)
# A cmake cache entry: -DNAME=VALUE or -DNAME:TYPE=VALUE, the value free of shell and list syntax.
CMAKE_FLAG = re.compile(r"-D(?P<name>[A-Za-z_][A-Za-z0-9_]*)(:[A-Z]+)?=[A-Za-z0-9_.,;+/:=-]*", re.ASCII)
#: The cache entries a build may set: llama.cpp's and ggml's own options, and the few CMake
#: variables that choose what is built. Nothing that makes the root build read a file or run a
#: program the host data names (CMAKE_PROJECT_INCLUDE, CMAKE_TOOLCHAIN_FILE, *_COMPILER_LAUNCHER).
CMAKE_NAME = re.compile(r"(?:GGML|LLAMA)_[A-Z0-9_]+", re.ASCII)
CMAKE_VARIABLES = frozenset(
    {
        "CMAKE_BUILD_TYPE",
        "CMAKE_CUDA_ARCHITECTURES",
        "BUILD_SHARED_LIBS",
        "CMAKE_POSITION_INDEPENDENT_CODE",
        "CMAKE_INTERPROCEDURAL_OPTIMIZATION",
    }
)
TARGET = re.compile(r"[a-z][a-z0-9_-]{0,63}", re.ASCII)
# git clone URLs: http(s), git, ssh, or an absolute local path; no whitespace or shell syntax.
GIT_URL = re.compile(r"(https?|git|ssh)://[A-Za-z0-9._~:/@%+-]+|/[A-Za-z0-9._/+-]+", re.ASCII)


@dataclass(frozen=True)
class LlamaCpp:
    ref: str  # a build tag (b8137) or a commit sha; never a branch
    git_url: str = UPSTREAM_LLAMA_CPP
    cuda: bool = True
    cuda_arch: tuple[NumericText, ...] = ()  # default: the host's gpus.cuda_arch
    fa_all_quants: bool = True
    cmake_flags: tuple[str, ...] = ()
    targets: tuple[str, ...] = ("llama-server",)
    keep_builds: int = 3
    root: str = "/opt/rigkit/llama.cpp"
    # The fleet's build cache (`rigkit cache serve`), e.g. http://10.0.0.2:8093: one compile per
    # build identity, fetched and verified by every other host.
    build_cache: str | None = None
    # The cache's publish token, a file on the deploying machine (`rigkit cache serve
    # --publish-token-file`): placed 0400 root on the host, never on a command line.
    build_cache_token_file: str | None = None


def parse_llama_cpp(host: str, raw: Any, gpus: Gpus) -> LlamaCpp:
    llama = build(LlamaCpp, raw, host, "llama_cpp")
    check_pattern(
        llama.ref,
        PIN,
        host,
        "llama_cpp.ref",
        "a pinned build tag such as b8137 or a commit sha (7-40 hex digits), not a moving ref like a branch",
    )
    check_pattern(
        llama.git_url, GIT_URL, host, "llama_cpp.git_url", "a git URL (https://, git://, ssh://) or an absolute path"
    )
    check_path(llama.root, host, "llama_cpp.root", "an absolute directory on the host")
    if llama.build_cache is not None:
        check_pattern(
            llama.build_cache,
            CACHE_URL,
            host,
            "llama_cpp.build_cache",
            "an http(s) URL of a `rigkit cache serve` (http://HOST:PORT), no credentials or query",
        )
    if llama.build_cache_token_file is not None and (
        not llama.build_cache_token_file or "\x00" in llama.build_cache_token_file or llama.build_cache is None
    ):
        raise HostDataError(
            host,
            "llama_cpp.build_cache_token_file",
            "a file on the deploying machine, with llama_cpp.build_cache set",
            llama.build_cache_token_file,
        )
    for i, arch in enumerate(llama.cuda_arch):
        check_pattern(arch, CUDA_ARCH, host, f"llama_cpp.cuda_arch[{i}]", 'a CUDA architecture like "86"')
    if llama.cuda and not (llama.cuda_arch or gpus.cuda_arch or gpus.count):
        raise HostDataError(
            host,
            "gpus",
            "gpus.count or gpus.cuda_arch when llama_cpp.cuda is on (or set llama_cpp.cuda: false for a CPU build)",
        )
    if llama.keep_builds < 2:
        raise HostDataError(host, "llama_cpp.keep_builds", "at least 2 (current and previous)", llama.keep_builds)
    for i, flag in enumerate(llama.cmake_flags):
        check_pattern(
            flag,
            CMAKE_FLAG,
            host,
            f"llama_cpp.cmake_flags[{i}]",
            "a -DNAME=VALUE cmake flag (value: letters, digits and . , ; + / : = _ -)",
        )
        name = flag[2:].split("=", 1)[0].split(":", 1)[0]
        if not (CMAKE_NAME.fullmatch(name) or name in CMAKE_VARIABLES):
            raise HostDataError(
                host,
                f"llama_cpp.cmake_flags[{i}]",
                f"a llama.cpp or ggml option (GGML_*, LLAMA_*) or one of {', '.join(sorted(CMAKE_VARIABLES))}",
                flag,
            )
    if not llama.targets:
        raise HostDataError(host, "llama_cpp.targets", "at least one cmake target (llama-server)")
    for i, target in enumerate(llama.targets):
        check_pattern(target, TARGET, host, f"llama_cpp.targets[{i}]", "a cmake target name such as llama-server")
    return llama
