//! Tensor names: llama.cpp's GGUF names (`token_embd.weight`, `blk.N.attn_q.weight`, ...) and
//! the Hugging Face Llama names they stand for, one table for both directions.

/// (GGUF module, HF module) of the tensors inside a layer.
const LAYER_MODULES: [(&str, &str); 11] = [
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// (GGUF name, HF name) of the tensors outside the layers.
const TOP_LEVEL: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// The HF name of GGUF tensor `gguf`, if it has one.
pub fn hf_name(gguf: &str) -> Option<String> {
    if let Some((_, hf)) = TOP_LEVEL.iter().find(|(g, _)| *g == gguf) {
        return Some(hf.to_string());
    }
    let (layer, module, param) = split(gguf.strip_prefix("blk.")?)?;
    let (_, hf) = LAYER_MODULES.iter().find(|(g, _)| *g == module)?;
    Some(format!("model.layers.{layer}.{hf}.{param}"))
}

/// The GGUF name of HF tensor `hf` (a parameter name, or a projection's module path such as
/// `model.layers.0.self_attn.q_proj` followed by `.weight`), if it has one.
pub fn gguf_name(hf: &str) -> Option<String> {
    if let Some((gguf, _)) = TOP_LEVEL.iter().find(|(_, h)| *h == hf) {
        return Some(gguf.to_string());
    }
    let (layer, module, param) = split(hf.strip_prefix("model.layers.")?)?;
    let (gguf, _) = LAYER_MODULES.iter().find(|(_, h)| *h == module)?;
    Some(format!("blk.{layer}.{gguf}.{param}"))
}

/// `N.module.param` → (N, module, param) with `param` `weight` or `bias`.
fn split(rest: &str) -> Option<(usize, &str, &str)> {
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, param) = rest.rsplit_once('.')?;
    matches!(param, "weight" | "bias").then_some((layer, module, param))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (gguf, hf) in [
            (
                "blk.12.attn_q.weight",
                "model.layers.12.self_attn.q_proj.weight",
            ),
            (
                "blk.0.ffn_norm.weight",
                "model.layers.0.post_attention_layernorm.weight",
            ),
            ("blk.3.attn_k.bias", "model.layers.3.self_attn.k_proj.bias"),
            ("output.weight", "lm_head.weight"),
            ("token_embd.weight", "model.embed_tokens.weight"),
        ] {
            assert_eq!(hf_name(gguf).unwrap(), hf);
            assert_eq!(gguf_name(hf).unwrap(), gguf);
        }
        assert!(hf_name("blk.0.attn_qkv.weight").is_none());
        assert!(hf_name("rope_freqs.weight").is_none());
        assert!(gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq").is_none());
        assert!(gguf_name("model.layers.x.mlp.up_proj.weight").is_none());
    }
}
