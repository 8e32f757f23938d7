"""
Prompts of an exact number of tokens from real text, available offline.

The text is Python's own documentation, shipped with every CPython: the language reference
topics of ``pydoc_data.topics`` (what ``help("if")`` prints), then the module docstrings of
the standard library's sources, in file-name order. It is prose and code, like a real
prompt, never one token repeated (repeated tokens flatter speculative decoding and prompt
lookup). Which text a run gets is fixed by its seed, and the corpus' sha256 goes into the
result's provenance, so two machines with the same Python build the same prompts.

Each prompt starts with a prefix unique to the sweep and the run (``[bench 3f9a21c0 d4096
r2]``) and takes its body from another place of the corpus, so no run shares a cached
prefix with another; llama-server is also asked not to cache (``cache_prompt: false``).

Token counts come from the server's own tokenizer (``/tokenize`` of llama-server and
vLLM): the body is cut in token space and turned back into text with ``/detokenize``, and
the finished prompt is counted again.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol


class Tokenizer(Protocol):
    def tokenize(self, text: str, add_special: bool = False) -> list[int]: ...
    def detokenize(self, tokens: list[int]) -> str: ...


@lru_cache(maxsize=1)
def corpus() -> str:
    """The offline text: pydoc topics, then stdlib module docstrings (deterministic order)."""
    parts: list[str] = []
    try:
        from pydoc_data.topics import topics

        parts += [topics[k].strip() for k in sorted(topics)]
    except ImportError:  # some distributions split pydoc_data off
        pass
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8", errors="replace")))
        except (SyntaxError, ValueError, OSError):
            continue
        if doc and len(doc) > 200:
            parts.append(doc.strip())
    text = "\n\n".join(parts)
    if len(text) < 100_000:
        raise RuntimeError(
            f"the Python standard library's documentation text is missing (found {len(text)} characters under {stdlib})"
        )
    return text


def corpus_sha256() -> str:
    return hashlib.sha256(corpus().encode()).hexdigest()


@dataclass
class Prompt:
    text: str
    target_tokens: int
    tokens: int  # counted by the server's tokenizer, special tokens (BOS) included
    offset: int  # where in the corpus (in tokens) the body starts
    prefix: str


class PromptMaker:
    """Prompts of ``n`` tokens for one sweep; the corpus is tokenized once, on demand."""

    def __init__(self, tokenizer: Tokenizer, sweep_id: str, seed: int = 0):
        self.tok = tokenizer
        self.sweep_id = sweep_id
        self.seed = seed
        self._ids: list[int] = []
        self._chars = 0  # corpus characters tokenized so far
        self._special: int | None = None  # tokens the server adds (BOS) to a prompt

    def _corpus_ids(self, need: int) -> list[int]:
        text = corpus()
        while len(self._ids) < need:
            if self._chars >= len(text):
                self._chars = 0  # wrap: the corpus again, its tokens after the first pass
            chunk_end = min(len(text), self._chars + max(200_000, (need - len(self._ids)) * 5))
            # cut at a paragraph boundary so no token is split between two chunks
            cut = text.rfind("\n\n", self._chars + 1, chunk_end) if chunk_end < len(text) else -1
            end = cut if cut > self._chars else chunk_end
            self._ids += self.tok.tokenize(text[self._chars : end])
            self._chars = end
        return self._ids

    def special_tokens(self) -> int:
        if self._special is None:
            probe = "hello world"
            self._special = max(0, len(self.tok.tokenize(probe, add_special=True)) - len(self.tok.tokenize(probe)))
        return self._special

    def make(self, n: int, run: int) -> Prompt:
        """A prompt of ``n`` tokens (as the server counts them) for run ``run``."""
        prefix = f"[bench {self.sweep_id} d{n} r{run}]\n"
        fixed = len(self.tok.tokenize(prefix)) + self.special_tokens()
        body_n = max(1, n - fixed)
        ids = self._corpus_ids(body_n + 65536)
        span = len(ids) - body_n - 1
        # a different stretch of the corpus for every (depth, run): a large prime stride
        offset = ((self.seed * 7919 + run * 104729 + n * 31) % span) if span > 0 else 0
        body = self.tok.detokenize(ids[offset : offset + body_n])
        text = prefix + body
        count = len(self.tok.tokenize(text, add_special=True))
        for _ in range(8):  # retokenizing at the seams may shift a token or two
            if count == n:
                break
            body_n += n - count
            body = self.tok.detokenize(ids[offset : offset + body_n])
            text = prefix + body
            count = len(self.tok.tokenize(text, add_special=True))
        return Prompt(text=text, target_tokens=n, tokens=count, offset=offset, prefix=prefix)
