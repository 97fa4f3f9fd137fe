#!/usr/bin/env python3
"""Writes train/tests/fixtures/dpo/: TRL's DPO tokenization, loss and first-step LoRA gradients on
five preference pairs and the tiny model tests/fixtures/llama/tied_gqa, for the Rust DPO tests.

Files (all deterministic; floats are f32 values written exactly as JSON doubles):

  pairs.jsonl          the 5 preference records, as given to TRL: 3 conversational ({"prompt":
                       [messages], "chosen": [assistant message], "rejected": [...]}; the first with
                       a system message) and 2 plain-string ({"prompt": str, "chosen": str, ...}).
  adapter/             a PEFT LoRA adapter (r=4, alpha=8, all seven Llama projections; lora_A as
                       PEFT initializes it under SEED, lora_B drawn from N(0, B_STD) so that the
                       policy differs from the reference): adapter_config.json and
                       adapter_model.safetensors, as `save_pretrained` writes them.
  expected.json        {"trl_version", "beta", "reference", "records": [{"conversational",
                       "prompt_ids", "chosen_ids", "rejected_ids"}, ...], and per loss type
                       ("sigmoid", "ipo"): {"loss", "policy_chosen_logps", "policy_rejected_logps",
                       "reference_chosen_logps", "reference_rejected_logps", "chosen_rewards",
                       "rejected_rewards", "reward_margins", "reward_margin", "reward_accuracies",
                       "reward_accuracy"}}. The ids are TRL's tokenized dataset columns; a training
                       sequence is prompt_ids + chosen_ids (or + rejected_ids), and exactly the
                       chosen/rejected tokens are scored. Per-record lists follow pairs.jsonl.
  grads_sigmoid.safetensors, grads_ipo.safetensors
                       d loss / d every lora_A and lora_B weight (f32), keyed like
                       adapter_model.safetensors (`base_model.model.model.layers.0.self_attn.
                       q_proj.lora_A.weight`, ...).

How: for each loss type, `DPOTrainer(model=<base model>, ref_model=None, peft_config=<the LoRA
config>)` with beta=BETA, max_length=None (no truncation), fp32 on the CPU and dropout disabled;
the adapter's weights are then copied into the trainer's "default" adapter. The reference is
therefore the base model with the adapter disabled (TRL's path for a new adapter). Passing a
ready PeftModel instead would make TRL copy the adapter into a frozen "ref" adapter, so that the
reference would equal the policy at the first step. The conversational records are tokenized by
the trainer, the plain ones by the same trainer's `_prepare_dataset` (one `datasets.Dataset`
cannot mix both formats); all five are collated by TRL's `DataCollatorForPreference` into one
batch, `trainer.compute_loss` runs on it and `.backward()` gives the gradients. Per-record log
probabilities are read from the model outputs TRL computes (a forward hook), and the script
checks them against an independent computation, TRL's logged batch metrics and a hand-written
sigmoid / IPO loss.

Usage (from anywhere; the venv is scripts/setup-venv.sh's, with trl and datasets):
  ~/.cache/peft-bench/venv/bin/python scripts/make_dpo_fixture.py [--out train/tests/fixtures/dpo]
"""
import argparse
import json
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import trl
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

ROOT = Path(__file__).resolve().parent.parent
MODEL_REL = "tests/fixtures/llama/tied_gqa"
SEED = 0
B_STD = 0.02
BETA = 0.1
LOSS_TYPES = ("sigmoid", "ipo")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def msg(role, content):
    return {"role": role, "content": content}


# Only characters of the fixture tokenizer's 96-token vocabulary (no C, N, Q, X, Y, q, x, y, 3, 7,
# ?, -, ...): it drops the others silently. Record 5's prompt ends in a space that merges with the
# chosen answer's first letter ("Ġd"), which exercises TRL's common-prefix rule.
RECORDS = [
    {"prompt": [msg("system", "Antworte kurz und höflich."),
                msg("user", "Hauptstadt von Frankreich:")],
     "chosen": [msg("assistant", "Paris.")],
     "rejected": [msg("assistant", "Berlin, glaube ich.")]},
    {"prompt": [msg("user", "Sag Hallo.")],
     "chosen": [msg("assistant", "Hallo, schön!")],
     "rejected": [msg("assistant", "Lieber nicht.")]},
    {"prompt": [msg("user", "Two and two:")],
     "chosen": [msg("assistant", "Four.")],
     "rejected": [msg("assistant", "Five, I think.")]},
    {"prompt": "Der Himmel ist", "chosen": " blau.", "rejected": " grün und laut."},
    {"prompt": "Eins, zwei, ", "chosen": "drei.", "rejected": "vier."},
]


def is_conversational(record):
    return isinstance(record["prompt"], list)


def check_texts(tokenizer):
    """Asserts that every text of RECORDS survives the tokenizer (no character dropped)."""
    for record in RECORDS:
        for value in record.values():
            for text in [m["content"] for m in value] if isinstance(value, list) else [value]:
                decoded = tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"])
                assert decoded == text, f"the tokenizer drops characters of {text!r}: {decoded!r}"


def lora_config():
    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, bias="none",
                      task_type="CAUSAL_LM")


def load_base():
    """The fixture model in f32 with eager attention (plain softmax attention)."""
    return AutoModelForCausalLM.from_pretrained(ROOT / MODEL_REL, dtype=torch.float32,
                                                attn_implementation="eager")


def make_adapter(out_dir):
    """Creates, saves and returns (as PEFT's saved state dict) the fixture's LoRA adapter."""
    torch.manual_seed(SEED)
    model = get_peft_model(load_base(), lora_config())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, B_STD)
    model.peft_config["default"].base_model_name_or_path = MODEL_REL
    model.save_pretrained(out_dir)
    (out_dir / "README.md").unlink(missing_ok=True)
    # PEFT keeps target_modules as a set and saves it in hash order; sort it for stable bytes.
    config_path = out_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return load_file(out_dir / "adapter_model.safetensors")


def saved_key(param_name):
    """PEFT's saved name of a trainable parameter: the adapter name "default" left out."""
    assert ".default." in param_name, param_name
    return param_name.replace(".default.", ".")


def make_trainer(loss_type, tokenizer, adapter, output_dir):
    """A DPOTrainer on a fresh base model whose new "default" adapter holds `adapter`."""
    args = DPOConfig(output_dir=output_dir, report_to="none", seed=SEED, use_cpu=True,
                     bf16=False, fp16=False, gradient_checkpointing=False, disable_dropout=True,
                     beta=BETA, loss_type=loss_type, label_smoothing=0.0, max_length=None,
                     per_device_train_batch_size=len(RECORDS))
    conversational = Dataset.from_list([r for r in RECORDS if is_conversational(r)])
    trainer = DPOTrainer(model=load_base(), ref_model=None, args=args, processing_class=tokenizer,
                         train_dataset=conversational, peft_config=lora_config())
    assert trainer.ref_model is None and "ref" not in trainer.model.peft_config
    trainable = {saved_key(n): p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable.keys() == adapter.keys(), sorted(trainable.keys() ^ adapter.keys())
    with torch.no_grad():
        for key, param in trainable.items():
            param.copy_(adapter[key])
    return trainer


def tokenized_features(trainer, tokenizer):
    """TRL's tokenized columns of all RECORDS, in order (plain ones via `_prepare_dataset`)."""
    plain = Dataset.from_list([r for r in RECORDS if not is_conversational(r)])
    plain = trainer._prepare_dataset(plain, tokenizer, trainer.args, "plain")
    queues = {True: iter(trainer.train_dataset), False: iter(plain)}
    columns = ("prompt_ids", "chosen_ids", "rejected_ids")
    rows = [next(queues[is_conversational(r)]) for r in RECORDS]
    return [{c: row[c] for c in columns} for row in rows]


def run_loss(trainer, features):
    """TRL's loss on one batch of `features` with .backward(); returns (loss, policy logps,
    reference logps, TRL's logged metrics), the logps as [chosen..., rejected...] tensors."""
    model = trainer.model
    model.train()
    model.zero_grad(set_to_none=True)
    inputs = trainer._prepare_inputs(trainer.data_collator(features))
    seq_len = inputs["completion_mask"].size(1) - 1
    captured = {}

    def hook(_module, _args, output):
        # The policy forward runs with gradients, the reference forward under torch.no_grad().
        role = "policy" if torch.is_grad_enabled() else "reference"
        assert role not in captured
        captured[role] = output.log_probs[:, -seq_len:].detach().sum(dim=1)

    handle = model.register_forward_hook(hook)
    try:
        loss = trainer.compute_loss(model, inputs)
    finally:
        handle.remove()
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.detach(), captured["policy"], captured["reference"], metrics


def independent_logps(model, features, adapter_enabled):
    """Sum over the completion tokens of log softmax(logits of the previous position)[token],
    one unpadded sequence at a time, from the model's ordinary logits."""
    out = []
    for column in ("chosen_ids", "rejected_ids"):
        for f in features:
            ids = torch.tensor([f["prompt_ids"] + f[column]])
            with torch.no_grad():
                if adapter_enabled:
                    logits = model(input_ids=ids, use_cache=False).logits
                else:
                    with model.disable_adapter():
                        logits = model(input_ids=ids, use_cache=False).logits
            logprobs = F.log_softmax(logits[0, :-1].double(), dim=-1)
            targets = ids[0, 1:]
            scored = logprobs[torch.arange(len(targets)), targets][len(f["prompt_ids"]) - 1:]
            out.append(scored.sum().item())
    return torch.tensor(out, dtype=torch.float64)


def summarize(loss, policy, reference):
    """The expected.json block of one loss type, as TRL defines rewards, margins and accuracy."""
    policy_chosen, policy_rejected = policy.chunk(2)
    ref_chosen, ref_rejected = reference.chunk(2)
    chosen_rewards = BETA * (policy_chosen - ref_chosen)
    rejected_rewards = BETA * (policy_rejected - ref_rejected)
    margins = chosen_rewards - rejected_rewards
    accuracies = (chosen_rewards > rejected_rewards).float()
    floats = lambda t: [float(x) for x in t]  # noqa: E731  (f32 values, exact as doubles)
    return {
        "loss": float(loss),
        "policy_chosen_logps": floats(policy_chosen),
        "policy_rejected_logps": floats(policy_rejected),
        "reference_chosen_logps": floats(ref_chosen),
        "reference_rejected_logps": floats(ref_rejected),
        "chosen_rewards": floats(chosen_rewards),
        "rejected_rewards": floats(rejected_rewards),
        "reward_margins": floats(margins),
        "reward_margin": float(margins.mean()),
        "reward_accuracies": floats(accuracies),
        "reward_accuracy": float(accuracies.mean()),
    }


def loss_by_hand(loss_type, policy, reference, features, dtype):
    """The loss from the per-record logps, written out: TRL's formula in `dtype`."""
    policy, reference = policy.to(dtype), reference.to(dtype)
    chosen_ratio, rejected_ratio = (policy - reference).chunk(2)
    if loss_type == "sigmoid":
        return (-F.logsigmoid(BETA * (chosen_ratio - rejected_ratio))).mean()
    chosen_len = torch.tensor([len(f["chosen_ids"]) for f in features], dtype=dtype)
    rejected_len = torch.tensor([len(f["rejected_ids"]) for f in features], dtype=dtype)
    delta = chosen_ratio / chosen_len - rejected_ratio / rejected_len
    return ((delta - 1 / (2 * BETA)) ** 2).mean()


def check(loss_type, loss, policy, reference, metrics, trainer, features):
    """Sanity checks, and our reading of TRL's rules against TRL's own numbers."""
    assert math.isfinite(loss.item())
    assert (policy != reference).all(), "policy and reference logps must differ"
    # The loss, recomputed from the collected logps: bit-exact in f32, close in f64.
    assert torch.equal(loss_by_hand(loss_type, policy, reference, features, torch.float32), loss)
    by_hand64 = loss_by_hand(loss_type, policy, reference, features, torch.float64).item()
    assert abs(by_hand64 - loss.item()) <= 1e-6 * max(1.0, abs(by_hand64)), (by_hand64, loss)
    # The logps: the sum over the completion tokens of log softmax of the previous position.
    for captured, enabled in ((policy, True), (reference, False)):
        independent = independent_logps(trainer.model, features, adapter_enabled=enabled)
        assert torch.allclose(captured.double(), independent, rtol=0, atol=1e-4), \
            (captured, independent)
    # TRL's logged batch means agree with the per-record values.
    block = summarize(loss, policy, reference)
    for key, ours in (("rewards/chosen", block["chosen_rewards"]),
                      ("rewards/rejected", block["rejected_rewards"]),
                      ("rewards/margins", block["reward_margins"]),
                      ("rewards/accuracies", block["reward_accuracies"]),
                      ("logps/chosen", block["policy_chosen_logps"]),
                      ("logps/rejected", block["policy_rejected_logps"])):
        mean = sum(ours) / len(ours)
        assert abs(metrics[key] - mean) <= 1e-6 * max(1.0, abs(mean)), (key, metrics[key], ours)
    return block


def adapter_grads(model):
    """Every LoRA gradient (f32, contiguous), under PEFT's saved key names; all must be nonzero."""
    grads = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().max() > 0, f"zero gradient: {name}"
            grads[saved_key(name)] = param.grad.detach().to(torch.float32).contiguous()
    return grads


def records_block(features, max_positions):
    """The "records" list of expected.json (TRL's tokenized columns per record)."""
    block = []
    for record, f in zip(RECORDS, features, strict=True):
        for column in ("chosen_ids", "rejected_ids"):
            assert len(f["prompt_ids"]) + len(f[column]) <= max_positions
        block.append({"conversational": is_conversational(record), **f})
    return block


def write_json(path, expected):
    """expected.json, small: one line per record and per field of a loss block."""
    dump = lambda v: json.dumps(v, separators=(",", ":"))  # noqa: E731
    lines = ["{"]
    for key, value in expected.items():
        if key == "records":
            rows = ",\n  ".join(dump(r) for r in value)
            lines.append(f' "records": [\n  {rows}\n ],')
        elif isinstance(value, dict):
            rows = ",\n  ".join(f"{dump(k)}: {dump(v)}" for k, v in value.items())
            lines.append(f" {dump(key)}: {{\n  {rows}\n }},")
        else:
            lines.append(f" {dump(key)}: {dump(value)},")
    lines[-1] = lines[-1].rstrip(",")
    path.write_text("\n".join(lines) + "\n}\n")
    assert json.loads(path.read_text()) == expected


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "train/tests/fixtures/dpo")
    out = parser.parse_args().out
    torch.set_num_threads(1)  # one summation order for the CPU kernels
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(ROOT / MODEL_REL)
    check_texts(tokenizer)
    with open(out / "pairs.jsonl", "w") as f:
        for record in RECORDS:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    adapter = make_adapter(out / "adapter")

    expected = {"trl_version": trl.__version__, "beta": BETA,
                "reference": "base model, adapter disabled", "records": None}
    with tempfile.TemporaryDirectory() as tmp:
        for loss_type in LOSS_TYPES:
            trainer = make_trainer(loss_type, tokenizer, adapter, tmp)
            features = tokenized_features(trainer, tokenizer)
            records = records_block(features, trainer.model.config.max_position_embeddings)
            assert expected["records"] in (None, records)
            expected["records"] = records
            loss, policy, reference, metrics = run_loss(trainer, features)
            expected[loss_type] = check(loss_type, loss, policy, reference, metrics, trainer,
                                        features)
            save_file(adapter_grads(trainer.model), out / f"grads_{loss_type}.safetensors")
    write_json(out / "expected.json", expected)
    print(f"wrote {out}: loss " + ", ".join(f"{t} {expected[t]['loss']:.6f}" for t in LOSS_TYPES))


if __name__ == "__main__":
    main()
