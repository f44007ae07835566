#!/usr/bin/env python3
"""Generate Tests/LoRAKitTests/Fixtures/chat/templates.json for the ChatTemplate tests.

Renders real chat templates (copied verbatim from the models' tokenizer_config.json / GGUF metadata; they are
data) over several conversations with Python jinja2, in the Environment transformers uses for
`apply_chat_template` (ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
extensions=[loopcontrols]), HF's `tojson`, `raise_exception`, `namespace`). When transformers is installed, every
case is also rendered with transformers' own `render_jinja_template` and must match.

Also renders small Jinja snippets that exercise the expression evaluator, filters, tests and whitespace control.

Usage: python3 scripts/gen_chat_fixtures.py   (needs jinja2>=3.1; transformers optional)
"""
import json
import os
import sys

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "LoRAKitTests", "Fixtures", "chat",
                   "templates.json")


def make_env():
    # Same settings as transformers.utils.chat_template_utils._cached_compile_jinja_template.
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class Generation(jinja2.ext.Extension):
        # transformers' AssistantTracker: {% generation %}…{% endgeneration %} renders its body (as a call block).
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


ENV = make_env()

# ---------------------------------------------------------------------------------------------------------------
# Templates, as the JSON string values of `chat_template` in each model's tokenizer_config.json.

TEMPLATES_JSON = {
    # HuggingFaceTB/SmolLM2-135M-Instruct (GGUF tokenizer.chat_template)
    "smollm2": r'''"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"''',
    # Qwen/Qwen2.5-7B-Instruct (ChatML with a tools branch)
    "qwen2.5": r'''"{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"''',
    # meta-llama/Meta-Llama-3-8B-Instruct
    "llama3": r'''"{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"''',
    # meta-llama/Llama-2-13b-chat-hf
    "llama2": r'''"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"''',
    # mistralai/Mixtral-8x7B-Instruct-v0.1 (and the first Mistral-7B-Instruct-v0.2 template)
    "mistral": r'''"{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"''',
    # mistralai/Mistral-7B-Instruct-v0.2 (later mistralai "v1" template with an optional system message)
    "mistral_v1": r'''"{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n    {%- endif %}\n    {%- if message['role'] == 'user' %}\n        {%- if loop.first and system_message is defined %}\n            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n    {%- else %}\n        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n    {%- endif %}\n{%- endfor %}\n"''',
    # HuggingFaceH4/zephyr-7b-beta (also TinyLlama-1.1B-Chat)
    "zephyr": r'''"{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"''',
    # google/gemma-7b-it (gemma-2 uses the same template)
    "gemma": r'''"{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"''',
    # microsoft/Phi-3-mini-4k-instruct
    "phi3": r'''"{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"''',
}
TEMPLATES = {k: json.loads(v) for k, v in TEMPLATES_JSON.items()}

# The brief's copy of SmolLM2's template must be the same string.
assert TEMPLATES["smollm2"].startswith("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}")

SPECIAL_TOKENS = {
    "smollm2": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"},
    "qwen2.5": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama2": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "mistral": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "mistral_v1": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "zephyr": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "gemma": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
    "phi3": {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>"},
}


def m(role, content):
    return {"role": role, "content": content}


TRICKY = "  Line one\nLine \"two\" and 'three'\n\tTabbed — ünïcödé 日本語 🚀 \\n not a newline  "
CONVERSATIONS = {
    "user": [m("user", "Hello!")],
    "system_user": [m("system", "You are a pirate."), m("user", "Hi")],
    "multi": [m("user", "What is 2+2?"), m("assistant", "4"), m("user", "And 3+3?")],
    "system_multi": [m("system", "Be terse."), m("user", "Hi"), m("assistant", "Hello."), m("user", "Bye")],
    "tricky": [m("user", TRICKY), m("assistant", "  It's \"fine\" ✓\n\n"), m("user", "{{ not a template }} {% raw %}")],
    "ends_with_assistant": [m("user", "Hi"), m("assistant", "Hello!")],
    "double_user": [m("user", "one"), m("user", "two")],
    "assistant_first": [m("assistant", "I start"), m("user", "ok")],
    "system_only": [m("system", "Only a system prompt")],
    "tool_role": [m("user", "Weather?"), m("tool", "sunny")],
    "empty": [],
}

QWEN_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the weather in a city",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string", "description": "City name, e.g. Zürich"},
                                          "days": {"type": "integer", "default": 1}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "noop", "description": "Does \"nothing\"", "parameters": {}}},
]
QWEN_TOOL_MESSAGES = [
    m("system", "You are a weather bot."),
    m("user", "Weather in Zürich and Paris?"),
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}}},
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    m("tool", "{\"temp\": 21.5}"),
    m("tool", "{\"temp\": 18}"),
    m("assistant", "Zürich: 21.5°C, Paris: 18°C."),
    m("user", "Thanks"),
]


def render_env(template, messages, add_generation_prompt, extra):
    variables = {"messages": messages, "tools": None, "documents": None, "add_generation_prompt": add_generation_prompt}
    variables.update(extra)
    return ENV.from_string(template).render(**variables)


def render_hf(template, messages, add_generation_prompt, extra):
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
    except Exception:
        return None
    extra = dict(extra)
    tools = extra.pop("tools", None)
    msgs = extra.pop("messages", messages)
    rendered, _ = render_jinja_template(conversations=[msgs], tools=tools, chat_template=template,
                                        add_generation_prompt=add_generation_prompt, **extra)
    return rendered[0]


def run_case(template, messages, add_generation_prompt, extra):
    """Returns {"output": …} or {"raise": message} or {"error": exception type}."""
    msgs = extra.get("messages", messages)
    try:
        out = render_env(template, msgs, add_generation_prompt, {k: v for k, v in extra.items() if k != "messages"})
        result = {"output": out}
    except jinja2.exceptions.UndefinedError as e:
        result = {"error": type(e).__name__, "message": str(e)}
    except jinja2.exceptions.TemplateError as e:
        # raise_exception raises a plain TemplateError.
        if type(e) is jinja2.exceptions.TemplateError:
            result = {"raise": str(e)}
        else:
            result = {"error": type(e).__name__, "message": str(e)}
    except Exception as e:
        result = {"error": type(e).__name__, "message": str(e)}
    try:
        hf = render_hf(template, messages, add_generation_prompt, extra)
        if hf is not None:
            assert "output" in result and hf == result["output"], ("transformers disagrees", hf, result)
    except AssertionError:
        raise
    except Exception as e:
        assert "output" not in result, ("transformers failed where jinja2 rendered", e, result)
    return result


def template_cases():
    cases = []
    for fam, tmpl in TEMPLATES.items():
        for conv_name, conv in CONVERSATIONS.items():
            for agp in (False, True):
                extra = dict(SPECIAL_TOKENS[fam])
                r = run_case(tmpl, conv, agp, extra)
                cases.append({"template": fam, "name": f"{fam}/{conv_name}/agp={agp}", "messages": conv,
                              "add_generation_prompt": agp, "extra": extra, **r})
    # Qwen2.5 with tools, tool calls and tool responses (messages passed through `extra`).
    for agp in (False, True):
        for with_tools in (False, True):
            extra = dict(SPECIAL_TOKENS["qwen2.5"])
            if with_tools:
                extra["tools"] = QWEN_TOOLS
            extra["messages"] = QWEN_TOOL_MESSAGES
            r = run_case(TEMPLATES["qwen2.5"], [], agp, extra)
            cases.append({"template": "qwen2.5", "name": f"qwen2.5/tool_calls/tools={with_tools}/agp={agp}",
                          "messages": [], "add_generation_prompt": agp, "extra": extra, **r})
    # Missing bos_token/eos_token: undefined variables render as "".
    for fam in ("llama2", "gemma"):
        r = run_case(TEMPLATES[fam], CONVERSATIONS["multi"], True, {})
        cases.append({"template": fam, "name": f"{fam}/multi/no_special_tokens", "messages": CONVERSATIONS["multi"],
                      "add_generation_prompt": True, "extra": {}, **r})
    return cases


# ---------------------------------------------------------------------------------------------------------------
# Snippets: small templates with variables, rendered the same way.

SNIPPET_VARS = {
    "s": "  Hello, World  ", "n": 7, "f": 2.5, "items": [3, 1, 2], "words": ["b", "A", "c"],
    "d": {"b": 1, "a": [1, 2], "c": {"x": None}}, "msgs": [{"role": "user", "content": "x"},
                                                       {"role": "assistant", "content": "y"},
                                                       {"role": "user", "content": "z"}],
    "e": "", "u": "ünï🚀", "t": True, "none_val": None,
}

SNIPPETS = [
    # literals and arithmetic
    "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 2 ** -1 }}",
    "{{ 7 / 2 }} {{ 4 / 2 }} {{ 1 / 3 }} {{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1e15 }} {{ 1.5e-7 }} {{ 0.0001 }} {{ -0.0 }} {{ 3.0 * 2 }}",
    "{{ 1_000 + 0x10 + 0o10 + 0b10 }} {{ 1.5 // 1 }} {{ -1.5 % 1 }} {{ 5 % -3 }} {{ true + 1 }} {{ -n }} {{ +f }}",
    "{{ 'a' + 'b' }} {{ 'ab' * 3 }} {{ 2 * 'xy' }} {{ [1] + [2, 3] }} {{ [0] * 3 }} {{ 'x' ~ 1 ~ none ~ true ~ undefined_thing }}",
    "{{ \"it's\" }} {{ 'say \"hi\"' }} {{ 'tab\\there' }} {{ 'uni\\u00e9\\x41\\U0001F680' }} {{ 'back\\\\slash' }} {{ 'keep\\d' }} {{ 'a' 'b' \"c\" }}",
    "{{ [1, 'two', 3.0, none, true, false, [], {}] }} {{ {'k': 'v', 'n': [1, {'x': none}]} }} {{ (1, 2) | list }} {{ ('single',) | list }}",
    "{{ ['it\\'s', 'q\"', 'both\\'\"', 'nl\\n', 'tab\\t', 'bell\\x07', 'é', '\\u2028'] }}",
    # comparisons and logic
    "{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 'B' < 'a' }} {{ 1 != 2 }} {{ none == none }}",
    "{{ 'ell' in 'hello' }} {{ 2 in items }} {{ 'a' in d }} {{ 'z' not in d }} {{ 5 not in items }} {{ '' in 'x' }}",
    "{{ true and 'x' }} {{ false or 'y' }} {{ none or 0 or '' or 'last' }} {{ not 0 }} {{ not not 'a' }} {{ 0 and 1 }} {{ [] or {} }}",
    "{{ 'yes' if t else 'no' }} {{ 'yes' if none_val else 'no' }} [{{ 'x' if false }}] {{ 1 if false else 2 if false else 3 }}",
    # variables, attributes, subscripts, slices
    "{{ d.b }} {{ d['a'][1] }} {{ d.a.0 }} {{ d.c.x }} {{ msgs[-1].content }} {{ msgs[0]['role'] }} [{{ d.missing }}] [{{ nope }}]",
    "{{ items[1:] }} {{ items[:-1] }} {{ items[::-1] }} {{ items[::2] }} {{ s[2:7] }} {{ u[::-1] }} {{ u[1] }} {{ items[5:9] }} {{ items[-10:1] }}",
    "{{ msgs[1:] | map(attribute='content') | join('|') }} {{ msgs | length }} {{ u | length }} {{ d | length }}",
    # tests
    "{{ nope is defined }} {{ nope is undefined }} {{ d is defined }} {{ none_val is none }} {{ 0 is none }} {{ d.missing is defined }}",
    "{{ 's' is string }} {{ 1 is string }} {{ d is mapping }} {{ items is mapping }} {{ items is iterable }} {{ 'x' is iterable }} {{ 3 is iterable }} {{ nope is iterable }}",
    "{{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(4) }} {{ 1 is number }} {{ 1.5 is float }} {{ true is boolean }} {{ 1 is integer }} {{ true is integer }}",
    "{{ 1 is eq 1 }} {{ 2 is gt 1 }} {{ 'a' is in 'abc' }} {{ 'abc' is lower }} {{ 'ABC' is upper }} {{ none is sameas none }} {{ n is not none }} {{ raise_exception is callable }}",
    # filters
    "[{{ s | trim }}] [{{ s | upper }}] [{{ s | lower }}] [{{ 'hello world-foo(bar) x' | title }}] [{{ 'hELLO wORLD' | capitalize }}] [{{ 'xxhixx' | trim('x') }}]",
    "{{ 'aaa' | replace('a', 'b') }} {{ 'aaa' | replace('a', 'b', 2) }} {{ nope | default('dflt') }} {{ '' | default('dflt') }} {{ '' | default('dflt', true) }} {{ none_val | d('x') }}",
    "{{ items | first }} {{ items | last }} {{ 'abc' | first }} {{ words | join(', ') }} {{ items | join }} {{ items | sort | list }} {{ words | sort }} {{ words | sort(reverse=true) }}",
    "{{ words | sort(case_sensitive=true) }} {{ [3, 1, 3, 2, 1] | unique | list }} {{ items | reverse | list }} {{ 'abc' | reverse }} {{ items | sum }} {{ items | min }} {{ items | max }}",
    "{{ '42' | int }} {{ '4.7' | int }} {{ 'x' | int }} {{ 'x' | int(5) }} {{ 3.9 | int }} {{ '0x1A' | int(0, 16) }} {{ '2.5' | float }} {{ 3 | float }} {{ 'q' | float }}",
    "{{ 3.14159 | round(2) }} {{ 2.5 | round }} {{ 3.5 | round }} {{ 2.1 | round(0, 'ceil') }} {{ -3 | abs }} {{ 42 | string }} {{ none_val | string }} {{ [1, 'a'] | string }}",
    "{{ d | items | map('first') | list }} {{ d.items() | map('last') | list }} {{ d.keys() | list }} {{ d.values() | list }} {{ d.get('b') }} {{ d.get('zz', 'def') }} {{ d.get('zz') }}",
    "{{ 'abc' | list }} {{ d | list }} {{ d | dictsort | map('first') | join }} {{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='content') | list }}",
    "{{ msgs | rejectattr('role', 'eq', 'user') | list | length }} {{ [0, 1, '', 'a', none] | select | list }} {{ [1, 2, 3, 4] | reject('odd') | list }} {{ items | map('string') | join('-') }}",
    "{{ msgs | selectattr('missing') | list }} {{ msgs | map(attribute='missing', default='?') | join }} {{ [[1, 2], [3]] | map('length') | list }} {{ [3, 1] | sort | first }}",
    "{{ d | tojson }} {{ msgs[0] | tojson }} {{ u | tojson }} {{ u | tojson(ensure_ascii=true) }} {{ [1.0, 2.5, none, true, 'q\"\\\\\\n\\t\\x01'] | tojson }}",
    "{{ d | tojson(indent=2) }}|{{ d | tojson(indent=2, separators=(', ', ' = ')) }}|{{ d | tojson(sort_keys=true) }}|{{ [] | tojson(indent=2) }}|{{ {'a': {}} | tojson(indent='\t') }}",
    "{{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent(2, blank=true) }}|{{ '<a href=\"x\">&</a>' | e }}|{{ 'x' | safe }}",
    # string methods
    "[{{ s.strip() }}] [{{ s.lstrip() }}] [{{ s.rstrip() }}] [{{ 'xxhixx'.strip('x') }}] [{{ s.upper() }}] [{{ s.lower() }}] [{{ \"they're bill's friends\".title() }}] [{{ 'hELLO'.capitalize() }}]",
    "{{ s.strip().startswith('Hello') }} {{ s.endswith('  ') }} {{ 'abc'.startswith(('x', 'a')) }} {{ 'a,b,,c'.split(',') }} {{ '  a  b c '.split() }} {{ 'a b c'.split(' ', 1) }} {{ ' a b c '.split(none, 1) }}",
    "{{ 'a-b-c'.rsplit('-', 1) }} {{ 'x\\ny\\r\\nz'.splitlines() }} {{ 'aXbXc'.replace('X', '_') }} {{ 'hello'.find('l') }} {{ 'hello'.rfind('l') }} {{ 'hello'.count('l') }} {{ ', '.join(['a', 'b']) }}",
    "{{ '123'.isdigit() }} {{ 'abc'.isalpha() }} {{ ' '.isspace() }} {{ 'abc'.islower() }} {{ 'ABC'.isupper() }} {{ '{} and {}'.format('a', 1) }} {{ '%s is %d' % ('x', 3) }} {{ items.index(1) }} {{ items.count(3) }}",
    # statements and whitespace control
    "{% for x in items %}{{ loop.index }}:{{ x }}{{ ',' if not loop.last }}{% endfor %}|{% for x in items %}{{ loop.index0 }}{{ loop.first }}{{ loop.length }}{{ loop.revindex }}{% endfor %}",
    "{% for x in items if x > 1 %}{{ x }}{{ loop.length }}{% else %}none{% endfor %}|{% for x in [] %}x{% else %}empty{% endfor %}|{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}",
    "{% for x in items %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}|{% for x in 'ab' %}{{ loop.cycle('odd', 'even') }}{% endfor %}",
    "{% for x in items %}{{ loop.previtem | default('-') }}{{ loop.nextitem | default('-') }} {% endfor %}|{% for a in [[1, 2], [3, 4]] %}{% for b in a %}{{ loop.index }}{{ b }}{% endfor %};{% endfor %}",
    "{% set x = 1 %}{% for i in items %}{% set x = x + i %}{{ x }}{% endfor %}|{{ x }}|{% if true %}{% set y = 5 %}{% endif %}{{ y }}",
    "{% set ns = namespace(total=0, names=[]) %}{% for i in items %}{% set ns.total = ns.total + i %}{% endfor %}{{ ns.total }} {{ ns.names }} {% set ns.flag = true %}{{ ns.flag }}",
    "{% set a, b = 1, 2 %}{{ a }}{{ b }} {% set t = (3, 4) %}{{ t | list }} {% set block_var %}inner {{ n }}{% endset %}[{{ block_var }}] {% set up | upper %}shout{% endset %}{{ up }}",
    "{% macro greet(name, punct='!') %}Hello {{ name }}{{ punct }}{% endmacro %}{{ greet('Bob') }} {{ greet('Al', '?') }} {{ greet(punct='.', name='Cy') }}",
    "{# a comment #}A{#- trimmed -#}  B {#+ kept +#}  C\n{# line comment #}\nD",
    "{% filter upper %}loud {{ n }}{% endfilter %} {% raw %}{{ not rendered }} {% if %}{% endraw %}",
    "{% if n > 5 %}big{% elif n > 2 %}mid{% else %}small{% endif %} {% if e %}E{% elif not e %}notE{% endif %} {{ range(3) | list }} {{ range(1, 7, 2) | list }} {{ dict(a=1) }}",
    "  {% if true %}\n    indented\n  {% endif %}\n  {{ n }}  \n{% for i in items %}\n  - {{ i }}\n{% endfor %}\nend\n",
    "a  {{- n -}}  b  {%- if true -%}  c  {%- endif -%}  d {{+ n }}   {%+ if true %}e{% endif +%}\nf",
    "line1\n    {%- if true %}\n    x\n    {% endif -%}\n    line2\r\nline3\rline4\n\n",
    "{% for m in msgs %}\n{% if m.role == 'user' %}\nU: {{ m.content }}\n{% else %}\nA: {{ m.content }}\n{% endif %}\n{% endfor %}\n",
    "{%- for m in msgs -%}\n  {{- m.role | upper -}}\n  {%- if not loop.last %}, {% endif -%}\n{%- endfor %}\n",
    "{{ 'x' }}\n\n{% generation %}gen {{ n }}{% endgeneration %}\n",
    # errors from Python (recorded; Swift must throw)
    "{{ nope.attr }}", "{{ nope + 1 }}", "{{ 1 + 'a' }}", "{{ 'a' < 1 }}", "{{ 1 / 0 }}", "{{ d.missing.deeper }}",
    "{{ raise_exception('custom failure: ' ~ n) }}", "{{ none_val | length }}", "{{ range(1000000) | length }}",
    "{% for x in 5 %}{% endfor %}", "{% set z = nope['k'] %}", "{{ 'a'.split('') }}", "{{ items[1:2:0] }}",
]


def snippet_cases():
    cases = []
    for src in SNIPPETS:
        r = run_case(src, [], False, dict(SNIPPET_VARS))
        cases.append({"source": src, **r})
    return cases


def main():
    data = {
        "generator": "scripts/gen_chat_fixtures.py",
        "jinja2": jinja2.__version__,
        "environment": "ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]) "
                       "+ HF tojson/raise_exception (as transformers.apply_chat_template)",
        "templates": TEMPLATES,
        "cases": template_cases(),
        "snippet_vars": SNIPPET_VARS,
        "snippets": snippet_cases(),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
        f.write("\n")
    n_out = sum(1 for c in data["cases"] if "output" in c)
    n_raise = sum(1 for c in data["cases"] if "raise" in c)
    print(f"wrote {OUT}: {len(data['cases'])} template cases ({n_out} rendered, {n_raise} raise_exception, "
          f"{len(data['cases']) - n_out - n_raise} other errors), {len(data['snippets'])} snippets", file=sys.stderr)


if __name__ == "__main__":
    main()
