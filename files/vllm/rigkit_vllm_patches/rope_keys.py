"""
Seed 002's fix: vLLM's Qwen3.5 configs declared ``ignore_keys_at_rope_validation`` as a
list; transformers 5 takes a set (``TypeError`` while parsing the config). vLLM 0.19 has the
set already, and an open upstream change wants a list back for newer huggingface_hub, so
the patch goes by what the file says: it rewrites the list form to the set form and leaves
any other form alone.
"""

from __future__ import annotations

import re

KEY = "ignore_keys_at_rope_validation"
# kwargs["ignore_keys_at_rope_validation"] = [ "a", "b", ]   (any layout, string items only)
LIST_FORM = re.compile(
    r'(?P<lhs>\[\s*["\']' + KEY + r'["\']\s*\]\s*=\s*)\[(?P<items>(?:\s*["\'][A-Za-z0-9_]+["\']\s*,?)+\s*)\]'
)
SET_FORM = re.compile(r'\[\s*["\']' + KEY + r'["\']\s*\]\s*=\s*(?:\{|set\(|frozenset\()')


def has_list_form(text: str) -> bool:
    return bool(LIST_FORM.search(text))


def has_set_form(text: str) -> bool:
    return bool(SET_FORM.search(text))


def fix(text: str) -> str | None:
    """The text with every list form turned into a set; None when there is no list form."""
    if not has_list_form(text):
        return None
    return LIST_FORM.sub(lambda m: f"{m.group('lhs')}{{{m.group('items')}}}", text)


def check(text: str) -> bool:
    """After the patch: no list form is left (the set form, or a file without the key)."""
    return not has_list_form(text)
