#!/usr/bin/env python3
"""Writes the golden chat-template fixtures of `data/tests/templates.rs` with Hugging Face transformers.

Input: the model publishers' chat templates in `data/tests/fixtures/templates/*.jinja` (from llama.cpp's
`models/templates`, see the README there). Output, in the same folder:

  <name>.tagged.jinja   a copy of each template with {% generation %}...{% endgeneration %} around what the
                        model generates after transformers' own generation prompt (the assistant content and
                        the end token; Qwen3: also its <think> block, unless enable_thinking=False put an empty
                        one into the prompt); the copy renders byte-identical text to the original for every
                        case below (asserted)
  golden_templates.json transformers_version, templates (name -> file, tagged_file, bos_token, eos_token: the
                        model's special tokens, passed to the template as `apply_chat_template` passes them),
                        cases and errors

Each case: name, template, messages, add_generation_prompt, kwargs (the extra template variables:
enable_thinking, date_string, tools), text (what transformers renders: `render_jinja_template`, the function
`tokenizer.apply_chat_template(..., tokenize=False)` calls, with the model's bos/eos tokens), and for
conversations that end with an answer (add_generation_prompt false) `answers`: the [start, end) UTF-8 byte
ranges of the tagged copy's generation blocks, i.e. `return_assistant_tokens_mask=True` before tokenization
(transformers reports code-point indices; converted here). A case with `today` rendered without date_string,
so the template called strftime_now("%d %b %Y"): `today` is that date, the same before and after rendering
(asserted), which the test replaces with its own today. Each error: template, messages and the message of the
exception the template raises.

Usage:
  ~/.cache/peft-bench/venv/bin/python scripts/make_template_fixtures.py [--dir data/tests/fixtures/templates]
"""
import argparse
import json
import os
from datetime import datetime

import transformers
from jinja2.exceptions import TemplateError
from transformers.utils.chat_template_utils import render_jinja_template

QWEN25 = "Qwen-Qwen2.5-7B-Instruct"
QWEN3 = "Qwen-Qwen3-0.6B"
LLAMA31 = "meta-llama-Llama-3.1-8B-Instruct"
LLAMA32 = "meta-llama-Llama-3.2-3B-Instruct"
NEMO = "mistralai-Mistral-Nemo-Instruct-2407"

# the special tokens of each model's tokenizer_config.json (None: the model has none)
SPECIAL_TOKENS = {
    QWEN25: (None, "<|im_end|>"),
    QWEN3: (None, "<|im_end|>"),
    LLAMA31: ("<|begin_of_text|>", "<|eot_id|>"),
    LLAMA32: ("<|begin_of_text|>", "<|eot_id|>"),
    NEMO: ("<s>", "</s>"),
}

# (old, new, count): the edits that make each tagged copy (raw strings: `\n` is the template's own escape)
QWEN25_TAGS = [(
    r"""        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}""",
    r"""        {%- if message.role == "assistant" %}
            {{- '<|im_start|>' + message.role + '\n' }}{% generation %}{{- message.content + '<|im_end|>' }}{% endgeneration %}{{- '\n' }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
        {%- endif %}""",
    1,
)]
QWEN3_TAGS = [
    (
        r"""        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}""",
        r"""        {{- '<|im_start|>' + message.role + '\n' }}
        {%- set think = '' %}
        {%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}
            {%- set think = '<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' %}
            {%- set content = content.lstrip('\n') %}
        {%- endif %}
        {%- if enable_thinking is defined and enable_thinking is false and think == '<think>\n\n</think>\n\n' %}
            {{- think }}
            {%- set think = '' %}
        {%- endif %}
        {%- generation %}
        {{- think + content }}""",
        1,
    ),
    (
        r"""        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}""",
        r"""        {{- '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\n' }}
    {%- elif message.role == "tool" %}""",
        1,
    ),
]
LLAMA_TAGS = [(
    r"""        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}""",
    r"""        {%- if message['role'] == 'assistant' %}
            {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}{% generation %}{{- message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}
        {%- else %}
            {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
        {%- endif %}""",
    1,
)]
NEMO_TAGS = [(
    r"""        {{- message["content"] + eos_token}}""",
    r"""        {% generation %}{{- message["content"] + eos_token}}{% endgeneration %}""",
    1,
)]
TAGS = {QWEN25: QWEN25_TAGS, QWEN3: QWEN3_TAGS, LLAMA31: LLAMA_TAGS, LLAMA32: LLAMA_TAGS, NEMO: NEMO_TAGS}

SYSTEM = {"role": "system", "content": "Du bist ein hilfreicher Assistent für Verwaltungsrecht."}
USER1 = {"role": "user", "content": "Was ist ein Verwaltungsakt?"}
ANSWER1 = {"role": "assistant", "content": "Eine hoheitliche Maßnahme einer Behörde zur Regelung eines Einzelfalls."}
USER2 = {"role": "user", "content": "Und wann wird er wirksam?"}
ANSWER2 = {"role": "assistant", "content": "Mit der Bekanntgabe (§ 43 Abs. 1 VwVfG)."}

# conversations that end with an answer: rendered with add_generation_prompt=False, answers marked
TRAINING = {
    "single": [USER1, ANSWER1],
    "system_single": [SYSTEM, USER1, ANSWER1],
    "multi": [SYSTEM, USER1, ANSWER1, USER2, ANSWER2],
    "multi_no_system": [USER1, ANSWER1, USER2, ANSWER2],
    "whitespace": [{"role": "user", "content": "  Frage mit Rand  "},
                   {"role": "assistant", "content": "\n Antwort mit Rand \n"}],
}
# conversations that end with a question: rendered with add_generation_prompt True and False
PROMPTS = {
    "prompt": [SYSTEM, USER1],
    "prompt_followup": [USER1, ANSWER1, USER2],
}
THINKING = {
    "think_single": [USER1, {"role": "assistant",
                             "content": "<think>\nDer Nutzer fragt nach § 35 VwVfG.\n</think>\n\n" + ANSWER1["content"]}],
    "think_multi": [USER1, {"role": "assistant", "content": "<think>\nErst überlegen.\n</think>\n\n" + ANSWER1["content"]},
                    USER2, {"role": "assistant", "content": "<think>\n§ 43 VwVfG.\n</think>\n\n" + ANSWER2["content"]}],
}

TOOL = {
    "type": "function",
    "function": {
        "name": "frist_berechnen",
        "description": "Berechnet das Ende einer Frist nach §§ 187 ff. BGB.",
        "parameters": {
            "type": "object",
            "properties": {
                "beginn": {"type": "string", "description": "Tag des Ereignisses, z. B. \"2024-07-05\""},
                "tage": {"type": "integer", "description": "Länge in Tagen", "minimum": 1, "default": 30},
                "faktor": {"type": "number", "default": 1.5},
                "werktage": {"type": "boolean", "default": False},
                "bundesland": {"type": ["string", "null"], "enum": ["BY", "NW", None]},
            },
            "required": ["beginn", "tage"],
        },
    },
}
TOOLS_KWARGS = {"tools": [TOOL]}
DATE_KWARGS = {"date_string": "05 Jul 2024"}

# template -> [(kwargs name, kwargs)] that every conversation is rendered with
KWARGS = {
    QWEN25: [("default", {}), ("tools", TOOLS_KWARGS)],
    QWEN3: [("default", {}), ("thinking", {"enable_thinking": True}), ("no_thinking", {"enable_thinking": False}),
            ("tools", TOOLS_KWARGS)],
    LLAMA31: [("default", {}), ("date", DATE_KWARGS), ("tools", TOOLS_KWARGS)],
    LLAMA32: [("date", DATE_KWARGS), ("tools", {**DATE_KWARGS, **TOOLS_KWARGS})],
    NEMO: [("default", {}), ("tools", TOOLS_KWARGS)],
}

ERRORS = [
    (NEMO, "not_alternating", [USER1, USER2]),
    (NEMO, "unknown_role", [USER1, {"role": "tool_caller", "content": "x"}]),
]


def render(template, name, messages, add_generation_prompt, kwargs, mask=False):
    bos, eos = SPECIAL_TOKENS[name]
    special = {k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v is not None}
    rendered, indices = render_jinja_template(
        conversations=[messages], chat_template=template, add_generation_prompt=add_generation_prompt,
        return_assistant_tokens_mask=mask, **special, **kwargs)
    return rendered[0], (indices[0] if mask else None)


def tagged(name, source):
    for old, new, count in TAGS[name]:
        assert source.count(old) == count, f"{name}: expected {count} of {old!r}"
        source = source.replace(old, new)
    return source


def byte_ranges(text, indices):
    """Code-point [start, end) indices as UTF-8 byte ranges."""
    to_byte = lambda i: len(text[:i].encode("utf-8"))
    return [[to_byte(start), to_byte(end)] for start, end in indices]


def conversations(name):
    training = dict(TRAINING, **(THINKING if name == QWEN3 else {}))
    for conv, messages in training.items():
        yield conv, messages, False
    for conv, messages in PROMPTS.items():
        for prompt in (False, True):
            yield f"{conv}_{'with' if prompt else 'without'}_generation_prompt", messages, prompt


def template_cases(name, original, tagged_source):
    cases = []
    _, eos = SPECIAL_TOKENS[name]
    for kwargs_name, kwargs in KWARGS[name]:
        for conv, messages, prompt in conversations(name):
            text, _ = render(original, name, messages, prompt, kwargs)
            tagged_text, indices = render(tagged_source, name, messages, prompt, kwargs, mask=True)
            assert tagged_text == text, f"{name}/{kwargs_name}/{conv}: the tagged copy renders differently"
            case = dict(name=f"{name}/{kwargs_name}/{conv}", template=name, messages=messages,
                        add_generation_prompt=prompt, kwargs=kwargs, text=text)
            if not prompt and messages[-1]["role"] == "assistant":
                answers = [text[s:e] for s, e in indices]
                assert len(answers) == sum(m["role"] == "assistant" for m in messages), case["name"]
                assert all(a.endswith(eos) for a in answers), f"{case['name']}: {answers!r}"
                case["answers"] = byte_ranges(text, indices)
            cases.append(case)
    return cases


def strftime_case(name, original):
    """Llama 3.2 without date_string: the template calls strftime_now for today's date."""
    before = datetime.now().strftime("%d %b %Y")
    text, _ = render(original, name, TRAINING["system_single"], False, {})
    assert datetime.now().strftime("%d %b %Y") == before, "the date changed while rendering: run again"
    assert f"Today Date: {before}\n" in text
    return dict(name=f"{name}/today/system_single", template=name, messages=TRAINING["system_single"],
                add_generation_prompt=False, kwargs={}, text=text, today=before)


def error_cases(sources):
    cases = []
    for name, conv, messages in ERRORS:
        try:
            render(sources[name], name, messages, False, {})
        except TemplateError as e:
            error = str(e)
        else:
            raise AssertionError(f"{name}/{conv}: the template accepted {messages!r}")
        cases.append(dict(name=f"{name}/{conv}", template=name, messages=messages, error=error))
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="data/tests/fixtures/templates")
    args = ap.parse_args()
    templates, sources, cases = {}, {}, []
    for name in TAGS:
        with open(os.path.join(args.dir, f"{name}.jinja"), encoding="utf-8") as f:
            sources[name] = f.read()
        tagged_source = tagged(name, sources[name])
        with open(os.path.join(args.dir, f"{name}.tagged.jinja"), "w", encoding="utf-8") as f:
            f.write(tagged_source)
        bos, eos = SPECIAL_TOKENS[name]
        templates[name] = dict(file=f"{name}.jinja", tagged_file=f"{name}.tagged.jinja", bos_token=bos,
                               eos_token=eos)
        cases += template_cases(name, sources[name], tagged_source)
    cases.append(strftime_case(LLAMA32, sources[LLAMA32]))
    data = dict(transformers_version=transformers.__version__, templates=templates, cases=cases,
                errors=error_cases(sources))
    path = os.path.join(args.dir, "golden_templates.json")
    with open(path, "w", encoding="utf-8") as f:
        # no sort_keys: the tools' keys keep their order, as the templates see it
        f.write(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    for case in cases:
        print(f"{case['name']}: {len(case['text'])} chars, {len(case.get('answers', []))} answers")
    for case in data["errors"]:
        print(f"{case['name']}: {case['error']!r}")
    print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
