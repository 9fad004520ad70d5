"""ChatML tokenizers built offline and chat templates in three real formats, for the chat tests.

The templates are written here from the published facts of each format (not copied):

- SmolLM2-Instruct: ChatML; a default system message when the conversation has none.
- Qwen2.5: ChatML; tools listed in the system message inside ``<tools></tools>``; calls as
  ``<tool_call>{"name", "arguments"}</tool_call>`` after the content; consecutive ``tool``
  messages grouped in one ``user`` turn, each inside ``<tool_response>``.
- Qwen3: Qwen2.5's tool format, plus thinking: an assistant turn after the latest user message
  keeps its ``<think>`` block, earlier ones lose it; ``enable_thinking=false`` puts an empty
  think block in the generation prompt.
"""

from __future__ import annotations

from typing import Any

SMOLLM2 = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_TOOLS_BLOCK = (
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": "
    "<function-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
)

_TOOL_CALLS = (
    "{%- for tc in message.tool_calls %}"
    "{%- set f = tc.function if tc.function is defined else tc %}"
    "{%- if (loop.first and content) or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' + f.name + '\", \"arguments\": ' + (f.arguments | tojson)"
    " + '}\\n</tool_call>' }}"
    "{%- endfor %}"
)

_TOOL_MESSAGE = (
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
)

QWEN25 = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}"
    "{%- else %}{{- 'You are a helpful assistant.\\n\\n' }}{%- endif %}" + _TOOLS_BLOCK +
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'user' or message.role == 'system' or "
    "(message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set content = message.content or '' %}"
    "{{- '<|im_start|>assistant' }}{%- if content %}{{- '\\n' + content }}{%- endif %}"
    + _TOOL_CALLS.replace("(loop.first and content) or not loop.first", "true") +
    "{{- '<|im_end|>\\n' }}" + _TOOL_MESSAGE +
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

QWEN3 = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    + _TOOLS_BLOCK +
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for message in messages %}{%- if message.role == 'user' %}"
    "{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'user' or message.role == 'system' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set content = message.content or '' %}{%- set reasoning = '' %}"
    "{%- if message.reasoning_content is defined and message.reasoning_content %}"
    "{%- set reasoning = message.reasoning_content %}"
    "{%- elif '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_user and (loop.last or reasoning) %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning + '\\n</think>\\n\\n' + content }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content }}{%- endif %}"
    "{%- if message.tool_calls %}" + _TOOL_CALLS + "{%- endif %}"
    "{{- '<|im_end|>\\n' }}" + _TOOL_MESSAGE +
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)

TEMPLATES = {"smollm2": SMOLLM2, "qwen2.5": QWEN25, "qwen3": QWEN3}
SPECIALS = ["<|pad|>", "<|im_end|>", "<|im_start|>", "<|endoftext|>"]
#: Added (not special) tokens: they survive ``skip_special_tokens`` like Qwen's.
MARKUP = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>",
          "</tool_response>"]

CORPUS = [
    "system user assistant tool You are a helpful assistant.",
    "Question: A bill of 120 dollars is split equally among 4 people.",
    '{"name": "calculate", "arguments": {"expression": "120 / 4"}}',
    '{"name": "answer", "arguments": {"text": "30"}}', "120 / 4 = 30",
    "Let me think about it. I should use the calculator first.",
    "Your answer is correct. Your answer is incorrect. Invalid tool call",
    "You are in room 0. go east go west take coin <action>go east</action>",
    "# Tools\n\nYou may call one or more functions", "\n\n", "\n\n\n",
] * 4


def chatml_tokenizer(template: str, vocab_size: int = 700) -> Any:
    """A byte-level BPE with ChatML specials (EOS = ``<|im_end|>``) and ``template``."""
    from agentrl.models import build_tiny_tokenizer

    return build_tiny_tokenizer(CORPUS, vocab_size, SPECIALS, "<|im_end|>", template,
                                tuple(MARKUP))
