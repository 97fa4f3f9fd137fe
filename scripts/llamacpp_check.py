"""llama.cpp itself runs what `feinschliff export gguf` / `export gguf-adapter` write.

Run by scripts/llamacpp_check.sh (which trains, exports and passes the paths) in the reference
venv (torch, transformers, peft), with llama.cpp's Python binding (llama_cpp, built by
scripts/setup-llamacpp.sh) put on sys.path from --llama-site. Checks, one JSON line each:

  tokens      llama.cpp's token ids of each check string (model.gguf) equal the HF tokenizer's
              of the base model directory (the tokenizer feinschliff uses)
  logits      last-position logits of llama.cpp on our f32 merged GGUF equal transformers' on
              our f32 `export merged` directory (which scripts/interop.sh ties to feinschliff's
              own logits) within 1e-4 relative (max |diff| / max |ours|)
  greedy      llama.cpp's greedy continuation of GREEDY_PROMPT (up to 32 tokens, at least one,
              stopping at the model's EOS ids as `generate` does), decoded by the HF
              tokenizer, equals `feinschliff generate`'s text (llama.cpp's own detokenizer
              differs from HF's ByteFallback decoder on invalid UTF-8 byte tokens)
  adapter     base GGUF + our adapter GGUF (plain, rsLoRA) in llama.cpp equal transformers+PEFT
              with our adapter directory on the base, within 1e-4 relative
  import      `import-gguf` of our f32 GGUF gives back our merged tensors exactly and a
              tokenizer with the same ids
  quantize    for each of our quantized exports of the base (--quantized TYPE=FILE: q8_0, q4_0,
              q4_k, q4_k_m), llama.cpp's own `llama_model_quantize` of our f32 base GGUF with
              the same file type (q4_k: `pure` Q4_K_S) writes the same tensors with the same
              types and the same bytes
  perplexity  llama.cpp's perplexity of our q8_0 and q4_k_m base exports on the first
              PPL_RECORDS records of the bundled valid.jsonl stays within PPL_LIMITS of the
              f32 base export's (relative increase)

The last line is "llamacpp: N passed, N failed"; the exit status is 1 on any failure.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

CHECK_STRINGS = [
    "Der Antrag wird bewilligt.",
    "Hello world, 123 tests!",
    "<|im_start|>user\nHallo<|im_end|>\n",
]
# an unfinished sentence, so that a model does not end the text at once
GREEDY_PROMPT = "Der Antrag wird"
TOL = 1e-4
# llama.cpp's file types (llama_ftype) and whether llama-quantize runs with --pure
LLAMA_FTYPES = {"q8_0": (7, False), "q4_0": (2, False), "q4_k": (14, True), "q4_k_m": (15, False)}
PPL_RECORDS = 8
PPL_MAX_LEN = 128
# largest accepted relative perplexity increase over f32. SmolLM2-135M by hand (8 records of
# 128 tokens): q8_0 +0.6 %, q4_k_m +15.3 % -- byte for byte llama.cpp's own Q4_K_M, which on
# this small 576-wide model stores most matrices as Q5_0 (BENCHMARKS.md has 40 x 512).
PPL_LIMITS = {"q8_0": 0.02, "q4_k_m": 0.25}
results = []


def report(check, ok, **details):
    results.append(ok)
    print(json.dumps({"check": check, "ok": bool(ok), **details}), flush=True)


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def llama(path, lora=None):
    from llama_cpp import Llama

    # KV cache in f32 (GGML_TYPE_F32 = 0): llama.cpp's default f16 cache alone moves logits by
    # up to ~1e-3 relative (seen on the Qwen3 fixture, whose per-head norms make large keys)
    kwargs = dict(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2,
                  type_k=0, type_v=0)
    if lora:
        kwargs.update(lora_path=str(lora), lora_scale=1.0)
    return Llama(**kwargs)


def llama_last_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[len(ids) - 1], dtype=np.float64)


def hf_ids(tok, text):
    return tok(text, add_special_tokens=True)["input_ids"]


def hf_last_logits(model, ids):
    import torch

    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return out.logits[0, -1].double().numpy()


def check_model(a, tok):
    from transformers import AutoModelForCausalLM

    llm = llama(a.merged_gguf)
    ours = AutoModelForCausalLM.from_pretrained(a.merged_dir, dtype="float32").eval()
    for text in CHECK_STRINGS:
        theirs = llm.tokenize(text.encode(), add_bos=True, special=True)
        expected = hf_ids(tok, text)
        report("tokens", theirs == expected, text=text, llama_cpp=theirs, ours=expected)
        d = rel(llama_last_logits(llm, expected), hf_last_logits(ours, expected))
        report("logits", d <= TOL, text=text, rel_diff=d)
    prompt = GREEDY_PROMPT
    ids = hf_ids(tok, prompt)
    llm.reset()
    llm.eval(ids)
    generated = []
    eos = {llm.token_eos()} | eos_ids(a.base)
    for _ in range(32):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if nxt in eos:
            break
        generated.append(nxt)
        llm.eval([nxt])
    theirs = tok.decode(generated, skip_special_tokens=True)
    out = subprocess.run(
        [a.bin, "generate", "--model", a.merged_dir, "--prompt", prompt, "--max-new-tokens", "32"],
        check=True, capture_output=True, text=True,
    ).stdout
    ours = out[:-1] if out.endswith("\n") else out
    # at least one token: a continuation that stops at once (EOS) would compare nothing
    report("greedy", theirs == ours and len(generated) > 0, llama_cpp=theirs, ours=ours,
           tokens=len(generated))


def eos_ids(model_dir):
    """The EOS ids `generate` stops at: generation_config.json's, else config.json's."""
    for name in ["generation_config.json", "config.json"]:
        path = Path(model_dir) / name
        if path.exists():
            eos = json.loads(path.read_text()).get("eos_token_id")
            if eos is not None:
                return set(eos) if isinstance(eos, list) else {eos}
    return set()


def check_adapter(a, tok, adapter_gguf, adapter_dir, label):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    llm = llama(a.base_gguf, lora=adapter_gguf)
    base = AutoModelForCausalLM.from_pretrained(a.base, dtype="float32")
    ours = PeftModel.from_pretrained(base, adapter_dir).eval()
    for text in CHECK_STRINGS[:2]:
        ids = hf_ids(tok, text)
        d = rel(llama_last_logits(llm, ids), hf_last_logits(ours, ids))
        report("adapter", d <= TOL, adapter=label, text=text, rel_diff=d)


def check_import(a, tok):
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    out = Path(a.work) / "imported"
    subprocess.run([a.bin, "import-gguf", a.merged_gguf, str(out)], check=True, capture_output=True)
    back = load_file(out / "model.safetensors")
    merged = {}
    for f in Path(a.merged_dir).glob("*.safetensors"):
        merged.update(load_file(f))
    names_equal = sorted(back) == sorted(merged)
    worst = max((float(np.max(np.abs(back[k] - merged[k]))) for k in merged if k in back), default=0.0)
    report("import", names_equal and worst == 0.0, tensors=len(back), max_abs_diff=worst)
    tok_back = AutoTokenizer.from_pretrained(out)
    same = all(hf_ids(tok_back, t) == hf_ids(tok, t) for t in CHECK_STRINGS)
    report("import", same, what="tokenizer ids")


def check_quantized(a, kind, ours):
    import ctypes

    import gguf
    import llama_cpp

    ftype, pure = LLAMA_FTYPES[kind]
    theirs = Path(a.work) / f"llama-quantize-{kind}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.pure, params.nthread = ftype, pure, 2
    rc = llama_cpp.llama_model_quantize(a.base_gguf.encode(), str(theirs).encode(),
                                        ctypes.byref(params))
    if rc != 0:
        report("quantize", False, type=kind, error=f"llama_model_quantize returned {rc}")
        return
    mine = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    ref = {t.name: t for t in gguf.GGUFReader(str(theirs)).tensors}
    problems = []
    for name, t in ref.items():
        m = mine.get(name)
        if m is None:
            problems.append(f"{name}: missing")
        elif m.tensor_type != t.tensor_type:
            problems.append(f"{name}: {m.tensor_type.name}, llama.cpp {t.tensor_type.name}")
        elif m.data.tobytes() != t.data.tobytes():
            a_, b_ = np.frombuffer(m.data.tobytes(), np.uint8), np.frombuffer(t.data.tobytes(), np.uint8)
            problems.append(f"{name} ({t.tensor_type.name}): {int((a_ != b_).sum())} of {a_.size} bytes differ")
    problems += [f"{name}: not in llama.cpp's file" for name in mine.keys() - ref.keys()]
    types = sorted({t.tensor_type.name for t in ref.values()})
    report("quantize", not problems, type=kind, tensors=len(ref), types=types, problems=problems[:5])


def check_perplexity(a, quantized):
    from gguf_perplexity import score

    data = Path(__file__).resolve().parent.parent / "data/corpora/de-admin/valid.jsonl"
    with open(data, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line, _ in zip(f, range(PPL_RECORDS))]
    base = score(a.base_gguf, texts, PPL_MAX_LEN, 2)["perplexity"]
    for kind, limit in PPL_LIMITS.items():
        if kind not in quantized:
            continue
        ppl = score(quantized[kind], texts, PPL_MAX_LEN, 2)["perplexity"]
        increase = ppl / base - 1
        report("perplexity", increase <= limit, type=kind, f32=round(base, 4), ppl=round(ppl, 4),
               increase=round(increase, 5), limit=limit)


def main():
    p = argparse.ArgumentParser()
    for arg in ["bin", "base", "base-gguf", "merged-gguf", "merged-dir", "adapter-gguf", "adapter-dir",
                "rslora-gguf", "rslora-dir", "work", "llama-site"]:
        p.add_argument(f"--{arg}", required=True)
    p.add_argument("--quantized", action="append", default=[], metavar="TYPE=FILE")
    a = p.parse_args()
    quantized = dict(q.split("=", 1) for q in a.quantized)
    sys.path.insert(0, a.llama_site)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.base)
    for check in [
        lambda: check_model(a, tok),
        lambda: check_adapter(a, tok, a.adapter_gguf, a.adapter_dir, "lora"),
        lambda: check_adapter(a, tok, a.rslora_gguf, a.rslora_dir, "rslora"),
        lambda: check_import(a, tok),
        *[lambda k=k, f=f: check_quantized(a, k, f) for k, f in quantized.items()],
        lambda: check_perplexity(a, quantized),
    ]:
        try:
            check()
        except Exception as e:  # a crash is a failed check, the others still run
            report("error", False, error=f"{type(e).__name__}: {e}")
    passed = sum(results)
    print(f"llamacpp: {passed} passed, {len(results) - passed} failed")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
