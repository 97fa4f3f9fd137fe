#!/usr/bin/env python3
"""Writes the Llama reference fixtures of feinschliff's tests with Hugging Face transformers.

Each fixture is a tiny random `LlamaForCausalLM` (hidden 32, 2 layers, vocab 96, ...) saved
with `save_pretrained` into `OUT/NAME/`, plus `OUT/NAME/expected.safetensors`:

  input_ids       int64 [2, 12]  ids in [1, 96); row 1 right-padded with 4 x pad id 0
  attention_mask  int64 [2, 12]  1 = real token, 0 = the 4 padded positions of row 1
  logits          f32 [2, 12, 96] transformers' logits for that batch (model reloaded from
                                  the saved files in float32, eager attention, eval mode,
                                  use_cache=False, no position_ids)

Fixtures: tied_gqa, untied_mha, llama3_rope, bf16_sharded, v5_rope_parameters, f16 (see
FIXTURES), and the other families of the same sizes (FAMILY_FIXTURES): qwen2_tied (q/k/v biases,
tied), qwen2_window (untied, sliding window 5 on layer 1 only, config without `layer_types` so
that `max_window_layers` decides), qwen3 (per-head q/k norms, head_dim 16 != hidden/heads),
qwen3_tied_bias_window (tied, attention_bias, window 4 on every layer), mistral_window (window 5,
GQA) and mistral_no_window (`sliding_window: null`). "v4" fixtures get their config.json rewritten into the transformers-4 form (top-level
`rope_theta`, `rope_scaling`, `torch_dtype`); transformers 5 itself writes `rope_parameters`.

`tied_gqa` also gets a byte-level BPE tokenizer (96 tokens, SmolLM2's special tokens and
chat template), generation_config with eos [2, 0], and `eval_expected.json`: the eval
definition of `reference_eval.py` on `OUT/../eval_sample.jsonl` (written here too) for
max_len 16 and 64, the ids of the first record and tokenizer checks on tricky strings.

Usage:
  ~/.cache/peft-bench/venv/bin/python scripts/make_fixtures.py [--out tests/fixtures/llama]
      [--smollm2 checkpoints/base/smollm2-135m-instruct]   (source of the chat template;
      scripts/fetch-smollm2.sh makes it)
"""
import argparse
import json
import os
import shutil

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM,
                          MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

from reference_eval import evaluate, load_model

VOCAB = 96
SEQ_LEN = 12
N_PAD = 4
PAD_ID = 0

BASE_CONFIG = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=2,
)

# name -> config overrides, rope parameters, weight dtype, config form, shards, seed
FIXTURES = [
    dict(name="tied_gqa", seed=1, form="v4", dtype=torch.float32,
         config=dict(tie_word_embeddings=True, num_key_value_heads=2),
         rope=dict(rope_type="default", rope_theta=10000.0)),
    dict(name="untied_mha", seed=2, form="v4", dtype=torch.float32,
         config=dict(tie_word_embeddings=False, num_key_value_heads=4, head_dim=16,
                     attention_bias=True, mlp_bias=True),
         rope=dict(rope_type="default", rope_theta=10000.0)),
    # head_dim 16 -> 8 frequencies with wavelengths 2*pi*500000^(i/16) = 6.3, 32, 167, ...:
    # with original_max_position_embeddings 64 the first is kept (< 64/4), the second
    # smoothed (between 16 and 64) and the other six divided by the factor (> 64/1).
    dict(name="llama3_rope", seed=3, form="v4", dtype=torch.float32,
         config=dict(tie_word_embeddings=False, hidden_size=64, num_key_value_heads=2),
         rope=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                   high_freq_factor=4.0, original_max_position_embeddings=64)),
    dict(name="bf16_sharded", seed=4, form="v4", dtype=torch.bfloat16, shards=2,
         config=dict(tie_word_embeddings=True, num_key_value_heads=2),
         rope=dict(rope_type="default", rope_theta=10000.0)),
    dict(name="v5_rope_parameters", seed=5, form="v5", dtype=torch.float32,
         config=dict(tie_word_embeddings=False, num_key_value_heads=2),
         rope=dict(rope_type="default", rope_theta=10000.0)),
    dict(name="f16", seed=6, form="v4", dtype=torch.float16,
         config=dict(tie_word_embeddings=False, num_key_value_heads=2),
         rope=dict(rope_type="default", rope_theta=10000.0)),
]

# The other families, at the sizes of BASE_CONFIG; "window" fixtures have sequences (12) longer
# than their sliding window, so the window changes the logits (checked by write_fixture).
FAMILY_FIXTURES = [
    dict(name="qwen2_tied", seed=11, form="v5", dtype=torch.float32, family="qwen2",
         config=dict(tie_word_embeddings=True, num_key_value_heads=2),
         rope=dict(rope_type="default", rope_theta=1000000.0)),
    dict(name="qwen2_window", seed=12, form="v4", dtype=torch.float32, family="qwen2",
         drop_layer_types=True,
         config=dict(tie_word_embeddings=False, num_key_value_heads=2, use_sliding_window=True,
                     sliding_window=5, max_window_layers=1),
         rope=dict(rope_type="default", rope_theta=10000.0)),
    dict(name="qwen3", seed=13, form="v5", dtype=torch.float32, family="qwen3",
         config=dict(tie_word_embeddings=False, num_key_value_heads=2, head_dim=16),
         rope=dict(rope_type="default", rope_theta=1000000.0)),
    dict(name="qwen3_tied_bias_window", seed=14, form="v5", dtype=torch.float32, family="qwen3",
         config=dict(tie_word_embeddings=True, num_key_value_heads=4, head_dim=8,
                     attention_bias=True, use_sliding_window=True, sliding_window=4,
                     max_window_layers=0),
         rope=dict(rope_type="default", rope_theta=10000.0)),
    dict(name="mistral_window", seed=15, form="v5", dtype=torch.float32, family="mistral",
         config=dict(tie_word_embeddings=False, num_key_value_heads=2, sliding_window=5),
         rope=dict(rope_type="default", rope_theta=10000.0)),
    dict(name="mistral_no_window", seed=16, form="v5", dtype=torch.float32, family="mistral",
         config=dict(tie_word_embeddings=True, num_key_value_heads=2, sliding_window=None),
         rope=dict(rope_type="default", rope_theta=10000.0)),
]

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}

# SmolLM2's first three special tokens, with the same ids
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# training text of the tiny tokenizer (written for this fixture)
TOKENIZER_CORPUS = [
    "Der Antrag ist schriftlich bei der zuständigen Behörde einzureichen.",
    "Die Frist beträgt einen Monat nach Bekanntgabe des Bescheids.",
    "Gemäß § 35 Abs. 1 Satz 2 ist die Maßnahme zulässig.",
    "Über den Widerspruch entscheidet die nächsthöhere Behörde.",
    "Die Gebühr in Höhe von 25 Euro ist im Voraus zu entrichten.",
    "Bitte fügen Sie dem Schreiben eine Kopie Ihres Ausweises bei.",
    "Das Bürgeramt ist montags bis freitags von 8 bis 12 Uhr geöffnet.",
    "Eine Verlängerung der Aufenthaltserlaubnis ist rechtzeitig zu beantragen.",
    "Die Straße bleibt wegen Bauarbeiten bis Ende März gesperrt.",
    "Der Bescheid wird mit der Zustellung wirksam.",
    "Gegen diesen Bescheid kann innerhalb eines Monats Widerspruch erhoben werden.",
    "Die Anhörung der Beteiligten ist nach § 28 erforderlich.",
    "Für die Bearbeitung benötigen wir noch Ihre Steuernummer.",
    "Die Auszahlung erfolgt auf das angegebene Konto.",
    "Änderungen Ihrer Anschrift sind unverzüglich mitzuteilen.",
    "Der Zuschuss wird für höchstens zwölf Monate gewährt.",
    "Öffentliche Bekanntmachungen erscheinen im Amtsblatt der Stadt.",
    "Die Prüfung der Unterlagen ist noch nicht abgeschlossen.",
    "Das Verfahren ruht, bis über die Klage entschieden ist.",
    "Bitte geben Sie bei Rückfragen stets das Aktenzeichen an.",
    "Die Genehmigung gilt vorbehaltlich eines jederzeitigen Widerrufs.",
    "Gemäß § 48 Abs. 2 kann der Verwaltungsakt zurückgenommen werden.",
    "Der Grundsteuerbescheid für das Jahr 2024 liegt bei.",
    "Die Sitzung des Ausschusses ist öffentlich.",
    "Zuständig ist das Amt für Soziales und Wohnen.",
    "Ein Anspruch auf Erstattung besteht nicht.",
    "Die Entscheidung ergeht gebührenfrei.",
    "Die Meldebescheinigung wird sofort ausgestellt.",
    "Das Ordnungsamt überprüft die Einhaltung der Vorschriften.",
    "Die Frist gilt als gewahrt, wenn das Schreiben rechtzeitig eingeht.",
    "Die Förderung setzt einen vollständigen Antrag voraus.",
    "Die Behörde muss den Sachverhalt von Amts wegen ermitteln.",
    "Ausländische Urkunden sind mit einer beglaubigten Übersetzung vorzulegen.",
    "Mit freundlichen Grüßen, Ihre Stadtverwaltung",
    "Vielen Dank für Ihre Geduld 🙂",
    "Die Verhandlung beginnt um 9:30 Uhr im Saal 3.",
    "Leistungen nach Teil 6; Termin am Dienstag, bitte pünktlich!",
    "Aktenzeichen:\tL 6 / 2023\nBetreff: Ihr Schreiben vom 14. Juni",
]

# eval sample: includes an empty record and a single-character record
EVAL_SAMPLE = [
    "Der Widerspruch ist innerhalb eines Monats nach Bekanntgabe schriftlich einzulegen.",
    "",
    "Die Gebührenfestsetzung beruht auf § 4 Abs. 1 der Gebührensatzung; eine Ermäßigung ist "
    "nur auf Antrag möglich, der vor Fälligkeit gestellt werden muss.",
    "A",
    "Bitte überweisen Sie den Betrag bis zum 15. Mai auf das Konto der Stadtkasse.",
    "Öffnungszeiten des Bürgerbüros: Montag bis Donnerstag 8 bis 16 Uhr, Freitag 8 bis 12 Uhr.",
    "Die Anhörung wird nachgeholt, weil die Behörde die Äußerung des Beteiligten nicht "
    "berücksichtigt hatte.\nDer Mangel ist damit geheilt.",
    "Ihr Antrag auf Wohngeld vom 3. Februar wurde bewilligt.",
]

TOKENIZER_CHECKS = [
    "Änderungen, Übersetzungen und Öffnungszeiten: äöü ÄÖÜ",
    "Die Straße, das Maß und die Grüße",
    "§ 35 Abs. 1 Satz 2",
    "  zwei Leerzeichen,\tein Tab\n\nund   drei  ",
    "Vielen Dank 🙂!",
]


def random_batch(generator):
    """input_ids / attention_mask [2, SEQ_LEN]; row 1 right-padded with N_PAD pad ids."""
    input_ids = torch.randint(1, VOCAB, (2, SEQ_LEN), generator=generator, dtype=torch.long)
    attention_mask = torch.ones(2, SEQ_LEN, dtype=torch.long)
    input_ids[1, -N_PAD:] = PAD_ID
    attention_mask[1, -N_PAD:] = 0
    return input_ids, attention_mask


def build_model(spec):
    """Random model of `spec`; norm weights and biases randomised too, so that a loader that
    ignores them (ones / zeros by default) fails the logits comparison."""
    torch.manual_seed(spec["seed"])
    config_class, model_class = FAMILIES[spec.get("family", "llama")]
    config = config_class(**{**BASE_CONFIG, **spec["config"]}, rope_parameters=dict(spec["rope"]))
    model = model_class(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif name.endswith(".bias"):
                param.copy_(0.2 * torch.randn_like(param))
    return model.eval()


def logits_from_disk(path, input_ids, attention_mask):
    model = load_model(path, torch.float32, "eager")
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def to_v4_config(path, drop_layer_types=False):
    """Rewrites config.json as transformers 4 wrote it: top-level rope_theta, rope_scaling
    (null for default RoPE), torch_dtype instead of dtype; without `layer_types` if asked (Qwen
    configs of transformers 4 had none)."""
    config_path = os.path.join(path, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    if drop_layer_types:
        config.pop("layer_types")
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = None if rope["rope_type"] == "default" else rope
    config["torch_dtype"] = config.pop("dtype")
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


def saved_tensor_names(path):
    names = []
    for file in sorted(os.listdir(path)):
        if file.endswith(".safetensors") and file != "expected.safetensors":
            with safe_open(os.path.join(path, file), "pt") as f:
                names += list(f.keys())
    return names


def check_llama3_inv_freq(path):
    """The llama3 inv_freq must differ from the default one: count kept/smoothed/scaled."""
    model = load_model(path)
    rope = model.config.rope_parameters
    inv_freq = model.model.rotary_emb.inv_freq
    dim = model.config.head_dim
    default = 1.0 / rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)
    ratio = default / inv_freq
    kept = int(torch.isclose(ratio, torch.tensor(1.0)).sum())
    scaled = int(torch.isclose(ratio, torch.tensor(rope["factor"])).sum())
    smoothed = len(ratio) - kept - scaled
    assert kept and scaled and smoothed, f"llama3 rope: kept {kept}, smoothed {smoothed}, scaled {scaled}"
    print(f"  llama3 inv_freq: {kept} kept, {smoothed} smoothed, {scaled} scaled (default/llama3 = {ratio.tolist()})")


def check_window_matters(path, input_ids, attention_mask, logits):
    """The sliding window must change the logits of the fixture's sequences."""
    model = load_model(path, torch.float32, "eager")
    model.config.sliding_window = 10**6  # longer than any sequence: the same as no window
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    diff = (full - logits).abs().max().item()
    print(f"  without the sliding window the logits move by up to {diff:.3f}")
    assert diff > 1e-2, "the sliding window does not change the logits"


def write_fixture(spec, out_dir):
    path = os.path.join(out_dir, spec["name"])
    shutil.rmtree(path, ignore_errors=True)
    model = build_model(spec).to(spec["dtype"])
    if "shards" in spec:
        total_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        model.save_pretrained(path, max_shard_size=int(total_bytes * 0.6))
    else:
        model.save_pretrained(path)

    names = saved_tensor_names(path)
    shard_files = [f for f in os.listdir(path) if f.endswith(".safetensors")]
    assert len(shard_files) == spec.get("shards", 1), f"{spec['name']}: files {shard_files}"
    tied = spec["config"]["tie_word_embeddings"]
    assert ("lm_head.weight" in names) != tied, f"{spec['name']}: lm_head.weight saved: {not tied}"

    generator = torch.Generator().manual_seed(spec["seed"])
    input_ids, attention_mask = random_batch(generator)
    logits = logits_from_disk(path, input_ids, attention_mask)
    if spec["config"].get("sliding_window"):
        check_window_matters(path, input_ids, attention_mask, logits)
    if spec["form"] == "v4":
        to_v4_config(path, spec.get("drop_layer_types", False))
        v4_logits = logits_from_disk(path, input_ids, attention_mask)
        assert torch.equal(logits, v4_logits), f"{spec['name']}: v4 config changes the logits"
    if spec["rope"]["rope_type"] == "llama3":
        check_llama3_inv_freq(path)

    save_file(
        {"input_ids": input_ids, "attention_mask": attention_mask, "logits": logits.contiguous()},
        os.path.join(path, "expected.safetensors"),
    )
    print(f"{spec['name']}: max |logit| {logits.abs().max().item():.3f}, "
          f"std {logits.std().item():.3f}, {len(names)} weight tensors")
    return path


def train_tokenizer():
    """Byte-level BPE of exactly VOCAB tokens, set up like the converted SmolLM2 tokenizer:
    ByteLevel pre-tokenizer and decoder, no normalizer, no special tokens added on encode."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1")
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(TOKENIZER_CORPUS, trainer)
    assert tokenizer.get_vocab_size() == VOCAB, tokenizer.get_vocab_size()
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == i
    return tokenizer


def chat_template_of(smollm2_dir):
    with open(os.path.join(smollm2_dir, "tokenizer_config.json")) as f:
        return json.load(f)["chat_template"]


def write_tokenizer(path, chat_template):
    tokenizer = train_tokenizer()
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    hf_tok.chat_template = chat_template
    hf_tok.save_pretrained(path)
    # keep the chat template in tokenizer_config.json (transformers 5 puts it in chat_template.jinja)
    config_path = os.path.join(path, "tokenizer_config.json")
    with open(config_path) as f:
        tok_config = json.load(f)
    tok_config["chat_template"] = chat_template
    with open(config_path, "w") as f:
        json.dump(tok_config, f, indent=2, ensure_ascii=False)
        f.write("\n")

    GenerationConfig(bos_token_id=1, eos_token_id=[2, 0], pad_token_id=2).save_pretrained(path)
    return tokenizer


def write_eval_expected(path, eval_path, raw_tokenizer, chat_template):
    with open(eval_path, "w", encoding="utf-8") as f:
        for text in EVAL_SAMPLE:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")

    tok = AutoTokenizer.from_pretrained(path)
    assert tok.chat_template == chat_template
    # transformers and the bare tokenizer.json must agree (the Rust side reads tokenizer.json)
    for text in EVAL_SAMPLE + TOKENIZER_CHECKS:
        ids = tok(text)["input_ids"]
        assert ids == raw_tokenizer.encode(text).ids, f"tokenizer mismatch on {text!r}"
        assert tok.decode(ids) == text, f"decode mismatch on {text!r}"

    model = load_model(path)
    expected = {
        "evals": [evaluate(model, tok, EVAL_SAMPLE, max_len) for max_len in (16, 64)],
        "first_record_ids": tok(EVAL_SAMPLE[0])["input_ids"],
        "tokenizer_checks": [{"text": t, "ids": tok(t)["input_ids"]} for t in TOKENIZER_CHECKS],
    }
    with open(os.path.join(path, "eval_expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=2, ensure_ascii=False)
        f.write("\n")
    for e in expected["evals"]:
        print(f"  eval max_len {e['max_len']}: loss {e['loss']:.6f}, ppl {e['ppl']:.3f}, "
              f"{e['tokens']} tokens, {e['records']} records")


def dir_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/fixtures/llama")
    ap.add_argument("--smollm2",
                    default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                         "checkpoints", "base", "smollm2-135m-instruct"),
                    help="SmolLM2-135M-Instruct folder from scripts/fetch-smollm2.sh "
                         "(source of the chat template)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="+", help="write only these fixtures")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    specs = [s for s in FIXTURES + FAMILY_FIXTURES if not args.only or s["name"] in args.only]
    for spec in specs:
        path = write_fixture(spec, args.out)
        if spec["name"] == "tied_gqa":
            chat_template = chat_template_of(args.smollm2)
            raw_tokenizer = write_tokenizer(path, chat_template)
            eval_path = os.path.join(os.path.dirname(os.path.abspath(args.out)), "eval_sample.jsonl")
            write_eval_expected(path, eval_path, raw_tokenizer, chat_template)
        elif spec in FAMILY_FIXTURES or spec["name"] == "llama3_rope":
            # tied_gqa's tokenizer (same vocabulary), for training runs and GGUF exports
            for name in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(os.path.join(args.out, "tied_gqa", name), os.path.join(path, name))

    for spec in specs:
        path = os.path.join(args.out, spec["name"])
        print(f"{path}: {dir_size(path)} bytes: {', '.join(sorted(os.listdir(path)))}")
    fixtures_root = os.path.dirname(os.path.abspath(args.out))
    print(f"total size of {fixtures_root}: {dir_size(fixtures_root)} bytes")
    assert dir_size(fixtures_root) < 3_000_000


if __name__ == "__main__":
    main()
