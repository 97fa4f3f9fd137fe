#!/usr/bin/env python3
"""TRL's tokenization of the bundled preference sample with the real SmolLM2 tokenizer.

Writes data/tests/fixtures/golden_preference_smollm2.json: for every record of
data/samples/buergernah-preference.jsonl, the `prompt_ids`, `chosen_ids` and `rejected_ids`
that TRL 1.16's `DPOTrainer._prepare_dataset` makes of it with SmolLM2-135M-Instruct's
tokenizer and chat template (no truncation). data/tests/preference.rs compares our examples
with them (an ignored test, run in CI after scripts/fetch-smollm2.sh).

Usage (the reference venv of scripts/setup-venv.sh, SmolLM2 fetched):
  ~/.cache/peft-bench/venv/bin/python scripts/make_preference_golden.py \
      [--model checkpoints/base/smollm2-135m-instruct]
"""

import argparse
import json
import tempfile
from pathlib import Path

import trl
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data/samples/buergernah-preference.jsonl"
OUT = ROOT / "data/tests/fixtures/golden_preference_smollm2.json"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "checkpoints/base/smollm2-135m-instruct")
    args = parser.parse_args()
    records = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(output_dir=out, report_to="none", use_cpu=True, bf16=False,
                           max_length=None)
        trainer = DPOTrainer(model=model, args=config, processing_class=tokenizer,
                             train_dataset=Dataset.from_list(records))
        rows = list(trainer.train_dataset)
    assert len(rows) == len(records)
    columns = ("prompt_ids", "chosen_ids", "rejected_ids")
    golden = {"trl_version": trl.__version__, "sample": str(SAMPLE.relative_to(ROOT)),
              "records": [{c: row[c] for c in columns} for row in rows]}
    OUT.write_text(json.dumps(golden, separators=(",", ":")) + "\n")
    longest = max(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"]))
                  for r in rows)
    print(f"wrote {OUT} ({len(rows)} records, longest sequence {longest} tokens)")


if __name__ == "__main__":
    main()
