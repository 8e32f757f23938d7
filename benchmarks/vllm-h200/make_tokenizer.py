#!/usr/bin/env python3
"""
The tiny models' tokenizer: a byte-level BPE of 8192 tokens trained with the ``tokenizers``
library on the text rigkit's bench prompts are cut from (CPython's pydoc topics), with
Qwen3.5's special and added tokens (``<|im_start|>``, ``<|im_end|>``, ``<think>``,
``<tool_call>``, the vision markers ...) and a Qwen3.5-style chat template (Qwen3-Coder's
XML tool-call format, which vLLM's ``qwen3_coder`` parser reads and the ``qwen3`` reasoning
parser's ``<think>`` tokens).

    make_tokenizer.py OUT_DIR        (committed output: benchmarks/vllm-h200/tokenizer/)

Needs ``tokenizers``; run once, its output is committed, so the GPU run trains nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VOCAB = 8192
SPECIAL = [  # (content, special): Qwen's own split; the non-special ones stay in decoded text
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]

# Qwen3.5's template in short: system + tools (Qwen3-Coder XML format), messages, assistant
# tool calls as <tool_call><function=...><parameter=...>, tool results as <tool_response>,
# reasoning in <think>...</think>; add_generation_prompt opens the assistant turn.
CHAT_TEMPLATE = r"""{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}
{{- "# Tools\n\nYou have access to the following functions:\n\n<tools>" }}
{%- for tool in tools %}{{- "\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\n</tools>\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n</function>\n</tool_call><|im_end|>\n" }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'system' and loop.first %}
{%- elif message.role == 'user' or message.role == 'system' %}
{{- '<|im_start|>' + message.role + '\n' + (message.content if message.content is string else '') + '<|im_end|>\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant\n' }}
{%- if message.reasoning_content is defined and message.reasoning_content %}{{- '<think>\n' + message.reasoning_content + '\n</think>\n\n' }}{%- endif %}
{{- message.content if message.content is string else '' }}
{%- if message.tool_calls %}
{%- for tool_call in message.tool_calls %}
{%- set tc = tool_call.function if tool_call.function is defined else tool_call %}
{{- '\n<tool_call>\n<function=' + tc.name + '>\n' }}
{%- if tc.arguments is mapping %}
{%- for k, v in tc.arguments.items() %}{{- '<parameter=' + k + '>\n' + (v if v is string else v | tojson) + '\n</parameter>\n' }}{%- endfor %}
{%- else %}
{{- '<parameter=arguments>\n' + (tc.arguments | string) + '\n</parameter>\n' }}
{%- endif %}
{{- '</function>\n</tool_call>' }}
{%- endfor %}
{%- endif %}
{{- '<|im_end|>\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\n<tool_response>\n' + (message.content if message.content is string else message.content | tojson) + '\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\n<think>\n' }}
{%- endif %}"""


def corpus() -> list[str]:
    from pydoc_data import topics

    return [t for t in topics.topics.values() if t.strip()]


def main(out: Path) -> int:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - len(SPECIAL),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.add_tokens([AddedToken(c, special=s, normalized=False) for c, s in SPECIAL if not s])
    tok.add_special_tokens([AddedToken(c, special=True, normalized=False) for c, s in SPECIAL if s])
    assert tok.get_vocab_size() <= VOCAB, tok.get_vocab_size()
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE + "\n")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": 262144,
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "add_bos_token": False,
                "clean_up_tokenization_spaces": False,
                "chat_template": CHAT_TEMPLATE,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"{out}: {tok.get_vocab_size()} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
