#!/usr/bin/env python3
"""Writes the golden reference fixtures of the data pipeline's tests with Hugging Face transformers.

One JSON file per tokenizer, `OUT/golden_<name>.json`, for the tokenizers (each a Hugging Face
model folder with tokenizer.json + tokenizer_config.json, loaded with `AutoTokenizer`):

  smollm2  SmolLM2-135M-Instruct's tokenizer (`--smollm2`)
  tiny     the 96-token byte-level BPE of `tests/fixtures/llama/tied_gqa` (`--tiny`; SmolLM2's
           special tokens and chat template, written by make_fixtures.py)

Each file holds (integer lists on one line, everything else pretty-printed, keys sorted):

  tokenizer                   "smollm2" / "tiny"
  transformers_version        the version that wrote the file
  bos_token, bos_token_id     as transformers reports them (null where there is none)
  eos_token, eos_token_id
  add_special_tokens_ids      what `tok("", add_special_tokens=True)` adds (both: nothing, no BOS)
  lossless                    whether decode(encode(s)) == s for every string below (smollm2: true;
                              tiny: false, it has no byte fallback and drops characters outside its
                              alphabet, e.g. y, x, q, 7, ?, #, so `system` encodes as `sstem`)
  smollm2_original_template   SmolLM2's own chat template (from `--smollm2`'s tokenizer_config.json;
                              no {% generation %} tags), to check masks computed without tags
  chat_templates              name -> jinja source of the three tagged templates: smollm2_tagged
                              (SmolLM2's, assistant content + <|im_end|> in a generation block),
                              bos_system_tagged (BOS, always a system header, German default) and
                              no_bos_tagged (plain-text "### Role:" headers, answers end with eos)
  chat                        one case per (template, conversation), named "<template>/<conversation>":
                              template (jinja source), messages, and `tok.apply_chat_template(messages,
                              chat_template=template, tokenize=True, return_dict=True,
                              return_assistant_tokens_mask=True, add_generation_prompt=False)`'s
                              input_ids and assistant_masks (1 = inside a {% generation %} block)
                              for the conversations of CONVERSATIONS
  chat_errors                 conversations the template rejects with raise_exception: template,
                              messages and the exception's message
  alpaca_prompt_with_input    Stanford Alpaca's prompts, with {instruction} / {input} placeholders
  alpaca_prompt_no_input
  alpaca                      name, instruction, input, output, input_ids, labels with
                                prompt_ids = tok(prompt, add_special_tokens=True)["input_ids"]
                                out_ids    = tok(output, add_special_tokens=False)["input_ids"]
                                input_ids  = prompt_ids + out_ids + [eos_token_id]
                                labels     = [-100] * len(prompt_ids) + out_ids + [eos_token_id]
  text                        name, text, max_len, stride, truncate, windows [{input_ids, labels}] with
                                ids = tok(text, add_special_tokens=True)["input_ids"] + [eos_token_id]
                                truncate: one window ids[:max_len], labels = the same ids
                                else Hugging Face's strided perplexity recipe (`text_windows`): windows
                                ids[begin:begin + max_len] for begin = 0, stride, ... until one reaches
                                the end; labels = the window with the ids an earlier window already
                                labelled set to -100 (every id is labelled exactly once); the
                                "max_len_plus_one*" cases take max_len = len(ids) - 1 of their text

The tagged SmolLM2 template must render byte-identical text to the original for every
conversation, and the assistant-masked tokens must decode to exactly the assistant contents plus
the end token (as far as the tokenizer keeps them); both are asserted. The output is
deterministic (no randomness, no timestamps).

Usage:
  ~/.cache/peft-bench/venv/bin/python scripts/make_data_fixtures.py [--out data/tests/fixtures]
      [--smollm2 checkpoints/base/smollm2-135m-instruct] [--tiny tests/fixtures/llama/tied_gqa]
"""
import argparse
import json
import os
import re

import transformers
from jinja2.exceptions import TemplateError
from transformers import AutoTokenizer

IGNORE = -100

DEFAULT_SYSTEM_DE = "Du bist ein hilfreicher Assistent."

# SmolLM2's template emits a message as this expression (its string literals hold raw newlines);
# the tagged version wraps an assistant message's content and <|im_end|> in a generation block and
# keeps the trailing newline outside it.
SMOLLM2_MESSAGE_EXPR = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
SMOLLM2_TAGGED_MESSAGE = (
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}" + SMOLLM2_MESSAGE_EXPR + "{% endif %}"
)

# Llama-3-like: BOS, then always a system header (the given system message or a German default)
BOS_SYSTEM_TAGGED = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system_message = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
    "{% else %}"
    "{% set system_message = '" + DEFAULT_SYSTEM_DE + "' %}{% set loop_messages = messages %}"
    "{% endif %}"
    "{{ '<|im_start|>system\\n' + system_message + '<|im_end|>\\n' }}"
    "{% for message in loop_messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unbekannte Rolle: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Zephyr-like with plain-text headers: no BOS, no default system, eos_token ends an answer
NO_BOS_TAGGED = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '### System:\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '### Assistant:\\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)

SYSTEM = "Du bist ein Assistent der Stadtverwaltung. Antworte knapp und sachlich."

CONVERSATIONS = {
    "single_turn_system": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Wie lange habe ich Zeit, gegen den Bescheid Widerspruch einzulegen?"},
        {"role": "assistant", "content": "Der Widerspruch ist innerhalb eines Monats nach Bekanntgabe des "
                                         "Bescheids schriftlich einzulegen (§ 70 Abs. 1 VwGO)."},
    ],
    "single_turn_no_system": [
        {"role": "user", "content": "Was kostet ein neuer Personalausweis?"},
        {"role": "assistant", "content": "Ab 24 Jahren beträgt die Gebühr 37,00 Euro, davor 22,80 Euro."},
    ],
    "three_turns_system": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Ich bin umgezogen. Muss ich mich ummelden?"},
        {"role": "assistant", "content": "Ja, innerhalb von zwei Wochen nach dem Einzug bei der Meldebehörde "
                                         "(§ 17 Abs. 1 BMG)."},
        {"role": "user", "content": "Welche Unterlagen brauche ich dafür?"},
        {"role": "assistant", "content": "Ihren Ausweis und die Wohnungsgeberbestätigung; die Straße und "
                                         "Hausnummer müssen übereinstimmen."},
        {"role": "user", "content": "Danke, das hilft mir sehr!"},
        {"role": "assistant", "content": "Gern geschehen 🙂 Viel Erfolg beim Bürgeramt."},
    ],
    "two_turns_multiline": [
        {"role": "user", "content": "Welche Fristen gelten im Verwaltungsverfahren?"},
        {"role": "assistant", "content": "Die wichtigsten Fristen:\n"
                                         "1. Widerspruch: ein Monat nach Bekanntgabe (§ 70 VwGO).\n"
                                         "2. Klage: ein Monat nach Zustellung des Widerspruchsbescheids (§ 74 VwGO).\n"
                                         "3. Ohne Rechtsbehelfsbelehrung:  ein Jahr (§ 58 Abs. 2 VwGO)."},
        {"role": "user", "content": "Und wenn ich die Frist versäumt habe?"},
        {"role": "assistant", "content": "Dann können Sie Wiedereinsetzung in den vorigen Stand beantragen.\n"
                                         "Der Antrag ist binnen zwei Wochen nach Wegfall des Hindernisses zu "
                                         "stellen (§ 60 VwGO)."},
    ],
}

# conversations a template must reject through raise_exception
ERROR_CASES = [
    ("bos_system_tagged", "unknown_role", [
        {"role": "user", "content": "Wie ist das Wetter?"},
        {"role": "tool", "content": "{\"temperatur\": 21}"},
    ]),
]

ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

ALPACA_CASES = [
    dict(name="with_input",
         instruction="Fasse den folgenden Paragraphen in einem Satz zusammen.",
         input="§ 28 Abs. 1 VwVfG: Bevor ein Verwaltungsakt erlassen wird, der in Rechte eines Beteiligten "
               "eingreift, ist diesem Gelegenheit zu geben, sich zu den für die Entscheidung erheblichen "
               "Tatsachen zu äußern.",
         output="Vor einem belastenden Verwaltungsakt muss die Behörde den Beteiligten anhören."),
    dict(name="no_input",
         instruction="Erkläre kurz, was ein Verwaltungsakt ist.",
         input="",
         output="Ein Verwaltungsakt ist eine hoheitliche Maßnahme einer Behörde zur Regelung eines "
                "Einzelfalls mit unmittelbarer Rechtswirkung nach außen (§ 35 Satz 1 VwVfG)."),
    dict(name="with_input_multiline_output",
         instruction="Nenne die Angaben, die im Antrag fehlen.",
         input="Antrag auf Wohngeld vom 3. Februar 2024; Name: Jörg Weiß; Anschrift: Goethestraße 12.",
         output="Es fehlen:\n- das monatliche Einkommen,\n- die Höhe der Miete,\n- die Zahl der "
                "Haushaltsmitglieder."),
    dict(name="no_input_short",
         instruction="Übersetze ins Englische: Grüß Gott!",
         input="",
         output="Hello!"),
]

SHORT_TEXT = "Der Bescheid wird mit der Zustellung wirksam."

# § 15 Abs. 1 und 2 SGB X (amtliches Werk, § 5 Abs. 1 UrhG), as in data/corpora/de-admin/valid.jsonl
# (record "SGB X § 15")
LAW_TEXT = (
    "§ 15 Bestellung eines Vertreters von Amts wegen\n"
    "(1) Ist ein Vertreter nicht vorhanden, hat das Gericht auf Ersuchen der Behörde einen geeigneten "
    "Vertreter zu bestellen\n"
    "1. für einen Beteiligten, dessen Person unbekannt ist,\n"
    "2. für einen abwesenden Beteiligten, dessen Aufenthalt unbekannt ist oder der an der Besorgung seiner "
    "Angelegenheiten verhindert ist,\n"
    "3. für einen Beteiligten ohne Aufenthalt im Inland, wenn er der Aufforderung der Behörde, einen "
    "Vertreter zu bestellen, innerhalb der ihm gesetzten Frist nicht nachgekommen ist,\n"
    "4. für einen Beteiligten, der infolge einer psychischen Krankheit oder körperlichen, geistigen oder "
    "seelischen Behinderung nicht in der Lage ist, in dem Verwaltungsverfahren selbst tätig zu werden.\n"
    "(2) Für die Bestellung des Vertreters ist in den Fällen des Absatzes 1 Nr. 4 das Betreuungsgericht "
    "zuständig, in dessen Bezirk der Beteiligte seinen gewöhnlichen Aufenthalt hat; im Übrigen ist das "
    "Betreuungsgericht zuständig, in dessen Bezirk die ersuchende Behörde ihren Sitz hat. Ist der "
    "Beteiligte minderjährig, tritt an die Stelle des Betreuungsgerichts das Familiengericht."
)

# the text of the "exactly max_len + 1" cases: max_len is set to len(ids) - 1 per tokenizer
EDGE_TEXT = "Die Frist beginnt am Tag nach der Bekanntgabe."


def visible(tok, text):
    """`text` as the tokenizer keeps it: the tiny tokenizer has no byte fallback and silently drops
    the characters outside its alphabet (y, x, q, 7, ?, ...); SmolLM2's keeps everything."""
    return tok.decode(tok(text, add_special_tokens=False)["input_ids"])


def fixture_strings(data):
    for case in data["chat"]:
        yield from (m["content"] for m in case["messages"])
    for case in data["alpaca"]:
        yield from (case["instruction"], case["input"], case["output"])
    for case in data["text"]:
        yield case["text"]


def text_ids(tok, text):
    return tok(text, add_special_tokens=True)["input_ids"] + [tok.eos_token_id]


def text_windows(ids, max_len, stride, truncate):
    """Hugging Face's strided perplexity recipe (or one truncated window)."""
    if truncate:
        window = ids[:max_len]
        return [{"input_ids": window, "labels": list(window)}]
    windows, prev_end, n = [], 0, len(ids)
    for begin in range(0, n, stride):
        end = min(begin + max_len, n)
        trg_len = end - prev_end
        window = ids[begin:end]
        labels = list(window)
        for i in range(len(window) - trg_len):
            labels[i] = IGNORE
        windows.append({"input_ids": window, "labels": labels})
        prev_end = end
        if end == n:
            break
    return windows


def check_windows(ids, case):
    windows = case["windows"]
    if case["truncate"]:
        assert len(windows) == 1 and windows[0]["input_ids"] == ids[:case["max_len"]]
        return
    labelled = [t for w in windows for t in w["labels"] if t != IGNORE]
    assert labelled == ids, f"{case['name']}: every id must be labelled exactly once"
    for w in windows:
        assert 0 < len(w["input_ids"]) <= case["max_len"]
        kept = [i for i, t in enumerate(w["labels"]) if t != IGNORE]
        assert kept == list(range(len(w["labels"]) - len(kept), len(w["labels"]))), "labels must be a suffix"


def text_cases(tok):
    cases = []
    edge_len = len(text_ids(tok, EDGE_TEXT)) - 1
    specs = [
        ("short_fits", SHORT_TEXT, 64, 64, False),
        ("short_truncate", SHORT_TEXT, 64, 64, True),
        ("law_stride_64", LAW_TEXT, 64, 64, False),
        ("law_stride_48", LAW_TEXT, 64, 48, False),
        ("law_truncate", LAW_TEXT, 64, 64, True),
        ("max_len_plus_one", EDGE_TEXT, edge_len, edge_len, False),
        ("max_len_plus_one_stride_half", EDGE_TEXT, edge_len, edge_len // 2, False),
        ("max_len_plus_one_truncate", EDGE_TEXT, edge_len, edge_len, True),
        ("empty", "", 64, 64, False),
    ]
    for name, text, max_len, stride, truncate in specs:
        ids = text_ids(tok, text)
        case = dict(name=name, text=text, max_len=max_len, stride=stride, truncate=truncate,
                    windows=text_windows(ids, max_len, stride, truncate))
        check_windows(ids, case)
        cases.append(case)
    return cases


def alpaca_cases(tok):
    cases = []
    for spec in ALPACA_CASES:
        template = ALPACA_PROMPT_WITH_INPUT if spec["input"] else ALPACA_PROMPT_NO_INPUT
        prompt = template.format(instruction=spec["instruction"], input=spec["input"])
        prompt_ids = tok(prompt, add_special_tokens=True)["input_ids"]
        out_ids = tok(spec["output"], add_special_tokens=False)["input_ids"]
        eos = tok.eos_token_id
        input_ids = prompt_ids + out_ids + [eos]
        labels = [IGNORE] * len(prompt_ids) + out_ids + [eos]
        assert tok.decode(input_ids) == visible(tok, prompt) + visible(tok, spec["output"] + tok.eos_token)
        cases.append(dict(spec, input_ids=input_ids, labels=labels))
    return cases


def tagged_smollm2_template(original):
    assert original.count(SMOLLM2_MESSAGE_EXPR) == 1, "unexpected SmolLM2 chat template"
    return original.replace(SMOLLM2_MESSAGE_EXPR, SMOLLM2_TAGGED_MESSAGE)


def masked_runs(ids, mask):
    """The contiguous runs of ids with mask 1."""
    runs, current = [], []
    for token, m in zip(ids, mask):
        if m:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def chat_cases(tok, templates, original):
    cases = []
    for template_name, template in templates.items():
        for conv_name, messages in CONVERSATIONS.items():
            out = tok.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True,
                                          return_assistant_tokens_mask=True, add_generation_prompt=False)
            input_ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
            assert len(input_ids) == len(mask)
            rendered = tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                               add_generation_prompt=False)
            # the ids are the rendered text encoded without special tokens added
            assert input_ids == tok(rendered, add_special_tokens=False)["input_ids"], conv_name
            if template_name == "smollm2_tagged":
                for prompt in (False, True):
                    tagged = tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                     add_generation_prompt=prompt)
                    plain = tok.apply_chat_template(messages, chat_template=original, tokenize=False,
                                                    add_generation_prompt=prompt)
                    assert tagged == plain, f"{conv_name}: tagged template renders differently"
            # the masked tokens are exactly the assistant contents, each followed by its end token
            end_token = tok.eos_token if template_name == "no_bos_tagged" else "<|im_end|>"
            expected = [visible(tok, m["content"] + end_token) for m in messages if m["role"] == "assistant"]
            got = [tok.decode(run) for run in masked_runs(input_ids, mask)]
            assert got == expected, f"{template_name}/{conv_name}: masked {got!r} != {expected!r}"
            cases.append(dict(name=f"{template_name}/{conv_name}", template=template, messages=messages,
                              input_ids=input_ids, assistant_masks=mask))
    return cases


def chat_error_cases(tok, templates):
    cases = []
    for template_name, conv_name, messages in ERROR_CASES:
        template = templates[template_name]
        try:
            tok.apply_chat_template(messages, chat_template=template, tokenize=False)
        except TemplateError as e:
            error = str(e)
        else:
            raise AssertionError(f"{template_name}/{conv_name}: template accepted {messages!r}")
        cases.append(dict(name=f"{template_name}/{conv_name}", template=template, messages=messages,
                          error=error))
    return cases


def chat_template_of(model_dir):
    with open(os.path.join(model_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        return json.load(f)["chat_template"]


def golden(name, tok, original):
    assert tok.chat_template == original, f"{name}: chat template differs from SmolLM2's"
    templates = {
        "smollm2_tagged": tagged_smollm2_template(original),
        "bos_system_tagged": BOS_SYSTEM_TAGGED,
        "no_bos_tagged": NO_BOS_TAGGED,
    }
    for template in templates.values():
        assert "{% generation %}" in template and "{% endgeneration %}" in template
    data = {
        "tokenizer": name,
        "transformers_version": transformers.__version__,
        "bos_token": tok.bos_token,
        "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token,
        "eos_token_id": tok.eos_token_id,
        "add_special_tokens_ids": tok("", add_special_tokens=True)["input_ids"],
        "smollm2_original_template": original,
        "chat_templates": templates,
        "chat": chat_cases(tok, templates, original),
        "chat_errors": chat_error_cases(tok, templates),
        "alpaca_prompt_with_input": ALPACA_PROMPT_WITH_INPUT,
        "alpaca_prompt_no_input": ALPACA_PROMPT_NO_INPUT,
        "alpaca": alpaca_cases(tok),
        "text": text_cases(tok),
    }
    # whether decode(encode(s)) == s for every string of the fixture
    data["lossless"] = all(visible(tok, s) == s for s in fixture_strings(data))
    return data


INT_LIST = re.compile(r"\[\n\s+(-?\d+(?:,\n\s+-?\d+)*)\n\s*\]")


def to_json(data):
    """indent=1, keys sorted, but each list of integers on one line. JSON strings hold no raw
    newlines, so the pattern only matches the layout json.dumps adds around integer lists."""
    text = json.dumps(data, indent=1, ensure_ascii=False, sort_keys=True)
    text = INT_LIST.sub(lambda m: "[" + re.sub(r",\n\s+", ", ", m.group(1)) + "]", text)
    assert json.loads(text) == data
    return text + "\n"


def summary(data, tok):
    print(f"{data['tokenizer']}: bos {data['bos_token']!r} ({data['bos_token_id']}), "
          f"eos {data['eos_token']!r} ({data['eos_token_id']}), "
          f"add_special_tokens adds {data['add_special_tokens_ids']}")
    for case in data["chat"]:
        print(f"  chat {case['name']}: {len(case['input_ids'])} ids, {sum(case['assistant_masks'])} masked")
    for case in data["chat_errors"]:
        print(f"  chat error {case['name']}: {case['error']!r}")
    for case in data["alpaca"]:
        print(f"  alpaca {case['name']}: {len(case['input_ids'])} ids, "
              f"{sum(t != IGNORE for t in case['labels'])} labelled")
    for case in data["text"]:
        print(f"  text {case['name']}: max_len {case['max_len']}, stride {case['stride']}, "
              f"truncate {case['truncate']}: {len(case['windows'])} windows of "
              f"{[len(w['input_ids']) for w in case['windows']]} ids")
    case = data["chat"][2]
    print(f"  {case['name']}, masked tokens:")
    for run in masked_runs(case["input_ids"], case["assistant_masks"]):
        print(f"    {tok.decode(run)!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/tests/fixtures")
    ap.add_argument("--smollm2", default="checkpoints/base/smollm2-135m-instruct",
                    help="SmolLM2-135M-Instruct folder (tokenizer, source of the original chat template)")
    ap.add_argument("--tiny", default="tests/fixtures/llama/tied_gqa",
                    help="folder of the tiny 96-token tokenizer written by make_fixtures.py")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    original = chat_template_of(args.smollm2)

    for name, model_dir in (("smollm2", args.smollm2), ("tiny", args.tiny)):
        tok = AutoTokenizer.from_pretrained(model_dir)
        data = golden(name, tok, original)
        assert data["lossless"] or name == "tiny", f"{name}: tokenizer drops characters"
        path = os.path.join(args.out, f"golden_{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(to_json(data))
        summary(data, tok)
        size = os.path.getsize(path)
        print(f"{path}: {size} bytes")
        assert size < 300_000, f"{path} too large"


if __name__ == "__main__":
    main()
