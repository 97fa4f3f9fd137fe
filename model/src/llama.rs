//! The Llama decoder, written the way transformers' `LlamaForCausalLM` computes it:
//! embedding → N × (RMSNorm → attention with RoPE and GQA → residual → RMSNorm → SwiGLU MLP →
//! residual) → RMSNorm → output head (the embedding itself when tied). The other families
//! ([`crate::config::Family`]) are this decoder with per-head q/k norms (Qwen3), biases
//! (Qwen2) or a sliding attention window (Mistral, Qwen with `use_sliding_window`).
//!
//! Weights keep the Hugging Face layout (`[out, in]`) and names, so loading and exporting need
//! no permutation or transpose. The base is frozen: its parameters never require a gradient.

use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};

use crate::Error;
use crate::config::{LlamaConfig, PROJECTIONS};
use crate::linear::{BaseStorage, Linear, frozen};
use crate::lora::{LoraAdapter, LoraSpec, wants_adapter};
use crate::product::{concat, in_dtype, linear_hf, row_bands};
use crate::rope::Rope;
use crate::weights::WeightFiles;

/// Added to the attention score of a blocked key: large enough that its weight is exactly 0, and
/// finite, so a query whose keys are all blocked (padding) gets finite values rather than NaN.
const BLOCKED_SCORE: f32 = -1e30;

/// `[queries, keys]`: true where key `j` comes after query `i`, with the queries being the last
/// `queries` of `keys` positions (a KV cache holds the earlier ones).
fn future_keys(queries: usize, keys: usize, device: &Device) -> Tensor<2, Bool> {
    let offset = (keys - queries) as i64;
    let key_positions = Tensor::<1, Int>::arange(0..keys as i64, device)
        .reshape([1, keys])
        .expand([queries, keys]);
    let query_positions = Tensor::<1, Int>::arange(offset..offset + queries as i64, device)
        .reshape([queries, 1])
        .expand([queries, keys]);
    key_positions.greater(query_positions)
}

/// `[queries, keys]`: true where key `j` is `window` or more positions before query `i` (the
/// queries being the last `queries` of `keys` positions), out of a sliding window's reach.
fn keys_out_of_window(
    queries: usize,
    keys: usize,
    window: usize,
    device: &Device,
) -> Tensor<2, Bool> {
    let offset = (keys - queries) as i64;
    let key_positions = Tensor::<1, Int>::arange(0..keys as i64, device)
        .reshape([1, keys])
        .expand([queries, keys]);
    let reach = Tensor::<1, Int>::arange(offset..offset + queries as i64, device)
        .sub_scalar(window as i64)
        .reshape([queries, 1])
        .expand([queries, keys]);
    key_positions.lower_equal(reach)
}

/// Root-mean-square layer norm with a learned scale.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `[hidden_size]` scale.
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square before the root.
    pub eps: f64,
}

impl RmsNorm {
    /// `x / sqrt(mean(x²) + eps) · weight` over the last dimension.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let inv_rms = (x.clone().square().mean_dim(2) + self.eps).sqrt().recip();
        x * inv_rms * self.weight.val().unsqueeze::<3>()
    }
}

/// Multi-head attention with grouped key/value heads and rotary positions.
#[derive(Module, Debug)]
pub struct Attention {
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub o_proj: Linear,
    /// RMSNorm over each query head before RoPE (Qwen3).
    pub q_norm: Option<RmsNorm>,
    /// RMSNorm over each key head before RoPE (Qwen3).
    pub k_norm: Option<RmsNorm>,
    /// Sliding window: keys this many positions before a query or earlier are out of reach.
    #[module(skip)]
    pub sliding_window: Option<usize>,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

/// Keys and values of the tokens seen so far by one layer, `[batch, kv_heads, seen, head_dim]`.
#[derive(Debug, Clone)]
pub struct LayerCache {
    keys: Tensor<4>,
    values: Tensor<4>,
}

impl Attention {
    /// `x` `[batch, seq, hidden]` → `[batch, seq, hidden]`. With a cache, the new keys and values
    /// are appended to it and attention covers all cached tokens.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: (&Tensor<4>, &Tensor<4>),
        blocked: Option<&Tensor<3, Bool>>,
        cache: Option<&mut Option<LayerCache>>,
    ) -> Tensor<3> {
        let [batch, seq, _] = x.dims();
        let heads =
            |t: Tensor<3>, n: usize| t.reshape([batch, seq, n, self.head_dim]).swap_dims(1, 2);
        let q = heads(
            head_norm(
                self.q_norm.as_ref(),
                self.q_proj.forward(x.clone()),
                self.head_dim,
            ),
            self.num_heads,
        );
        let k = heads(
            head_norm(
                self.k_norm.as_ref(),
                self.k_proj.forward(x.clone()),
                self.head_dim,
            ),
            self.num_kv_heads,
        );
        let v = heads(self.v_proj.forward(x), self.num_kv_heads);
        let (cos, sin) = rope;
        let q = Rope::apply(q, cos, sin);
        let mut k = Rope::apply(k, cos, sin);
        let mut v = v;
        if let Some(cache) = cache {
            if let Some(past) = cache.take() {
                k = Tensor::cat(vec![past.keys, k], 2);
                v = Tensor::cat(vec![past.values, v], 2);
            }
            *cache = Some(LayerCache {
                keys: k.clone(),
                values: v.clone(),
            });
        }
        let k = self.repeat_kv(k);
        let v = self.repeat_kv(v);
        let seen = k.dims()[2];
        // `blocked` masks keys per query (padding, other packed examples); causality (aligned
        // to the last query) masks the future. Both go in as an additive bias, not as Burn's
        // boolean mask and `is_causal`: burn-tch 0.22.1 hands the mask to LibTorch unchanged,
        // where `true` means "may attend" (the opposite of Burn's meaning), and LibTorch aligns
        // `is_causal` to the first query, which is wrong once a KV cache holds earlier keys.
        let device = q.device();
        // A single query (decoding) comes after every key: nothing to mask.
        let future = (seq > 1 && seq != seen).then(|| {
            future_keys(seq, seen, &device)
                .unsqueeze::<3>()
                .expand([batch, seq, seen])
        });
        let out_of_window = self.sliding_window.filter(|&w| w < seen).map(|window| {
            keys_out_of_window(seq, seen, window, &device)
                .unsqueeze::<3>()
                .expand([batch, seq, seen])
        });
        let masked = [blocked.cloned(), future, out_of_window]
            .into_iter()
            .flatten()
            .reduce(Tensor::bool_or);
        let bias = masked.map(|masked| {
            Tensor::<3>::zeros([batch, seq, seen], &device)
                .mask_fill(masked, BLOCKED_SCORE)
                .reshape([batch, 1, seq, seen])
                .expand([batch, self.num_heads, seq, seen])
        });
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: seq == seen,
        };
        let out = attention(q, k, v, None, bias, options);
        let out = out
            .swap_dims(1, 2)
            .reshape([batch, seq, self.num_heads * self.head_dim]);
        self.o_proj.forward(out)
    }

    /// Repeats each key/value head for the query heads that share it (transformers' `repeat_kv`).
    fn repeat_kv(&self, x: Tensor<4>) -> Tensor<4> {
        let groups = self.num_heads / self.num_kv_heads;
        if groups == 1 {
            return x;
        }
        let [batch, kv_heads, seen, head_dim] = x.dims();
        x.unsqueeze_dim::<5>(2)
            .expand([batch, kv_heads, groups, seen, head_dim])
            .reshape([batch, kv_heads * groups, seen, head_dim])
    }
}

/// `x` `[batch, seq, heads · head_dim]` with each head RMS-normed by `norm`, if there is one.
fn head_norm(norm: Option<&RmsNorm>, x: Tensor<3>, head_dim: usize) -> Tensor<3> {
    let Some(norm) = norm else { return x };
    let [batch, seq, width] = x.dims();
    norm.forward(x.reshape([batch, seq * width / head_dim, head_dim]))
        .reshape([batch, seq, width])
}

/// The SwiGLU feed-forward block: `down(silu(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Gate projection.
    pub gate_proj: Linear,
    /// Up projection.
    pub up_proj: Linear,
    /// Down projection.
    pub down_proj: Linear,
}

impl Mlp {
    /// `[batch, seq, hidden]` → `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}

/// One decoder layer (pre-norm attention and MLP, each with a residual connection).
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Attention block.
    pub self_attn: Attention,
    /// Feed-forward block.
    pub mlp: Mlp,
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
}

/// The decoder stack without the output head (HF's `model.` prefix).
#[derive(Module, Debug)]
pub struct LlamaModel {
    /// `[vocab_size, hidden_size]` token embedding.
    pub embed_tokens: Param<Tensor<2>>,
    /// The decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    pub norm: RmsNorm,
    /// Rotary embedding (constant).
    pub rope: Rope,
}

/// A causal language model: decoder plus output head.
#[derive(Module, Debug)]
pub struct Llama {
    /// The decoder (`model.*` tensors).
    pub model: LlamaModel,
    /// `[vocab_size, hidden_size]` output head; `None` when tied to the embedding.
    pub lm_head: Option<Param<Tensor<2>>>,
    /// The dtype the output head's products are computed in ([`Llama::set_base_dtypes`]).
    #[module(skip)]
    pub head_matmul_dtype: DType,
}

/// Cached keys and values of every layer, for incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    seen: usize,
}

impl KvCache {
    /// Number of tokens already in the cache.
    pub fn len(&self) -> usize {
        self.seen
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }

    /// Keeps only the batch rows `rows` (in that order), dropping the others' keys and values.
    pub fn keep_rows(&mut self, rows: &[usize]) {
        let Some(device) = self.layers.iter().flatten().next().map(|c| c.keys.device()) else {
            return;
        };
        let ids: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(ids, [rows.len()]), &device);
        for layer in self.layers.iter_mut().flatten() {
            layer.keys = layer.keys.clone().select(0, index.clone());
            layer.values = layer.values.clone().select(0, index.clone());
        }
    }
}

impl Llama {
    /// Builds the model from checkpoint tensors named as transformers names them; every tensor is
    /// checked against the config's shapes and taken exactly once. Each frozen matrix is put
    /// into `storage` as it is read, so the whole model never exists in f32.
    pub fn load(
        config: &LlamaConfig,
        weights: &mut WeightFiles,
        storage: BaseStorage,
        device: &Device,
    ) -> Result<Self, Error> {
        let hidden = config.hidden_size;
        let norm = |weights: &mut WeightFiles, name: &str| -> Result<RmsNorm, Error> {
            Ok(RmsNorm {
                weight: frozen(weights.take(&format!("{name}.weight"), [hidden], device)?),
                eps: config.rms_norm_eps,
            })
        };
        let embed_tokens = frozen(weights.take_as(
            "model.embed_tokens.weight",
            [config.vocab_size, hidden],
            storage.dtype,
            device,
        )?);
        // No capacity from the config: a hostile layer count fails at the first missing layer.
        let mut layers = Vec::new();
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let linear = |module: &&str| {
                let (shape, bias) = config.projection(module).expect("one of PROJECTIONS");
                Linear::load(
                    weights,
                    &format!("{p}.{module}"),
                    shape,
                    bias,
                    storage,
                    device,
                )
            };
            let loaded: Vec<Linear> = PROJECTIONS.iter().map(linear).collect::<Result<_, _>>()?;
            let [
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                gate_proj,
                up_proj,
                down_proj,
            ] = <[Linear; 7]>::try_from(loaded).expect("seven projections");
            let mut load_head_norm = |name: &str| -> Result<Option<RmsNorm>, Error> {
                if !config.qk_norm {
                    return Ok(None);
                }
                let name = format!("{p}.self_attn.{name}.weight");
                Ok(Some(RmsNorm {
                    weight: frozen(weights.take(&name, [config.head_dim], device)?),
                    eps: config.rms_norm_eps,
                }))
            };
            let (q_norm, k_norm) = (load_head_norm("q_norm")?, load_head_norm("k_norm")?);
            layers.push(DecoderLayer {
                self_attn: Attention {
                    q_proj,
                    k_proj,
                    v_proj,
                    o_proj,
                    q_norm,
                    k_norm,
                    sliding_window: config.layer_window(i),
                    num_heads: config.num_attention_heads,
                    num_kv_heads: config.num_key_value_heads,
                    head_dim: config.head_dim,
                },
                mlp: Mlp {
                    gate_proj,
                    up_proj,
                    down_proj,
                },
                input_layernorm: norm(weights, &format!("{p}.input_layernorm"))?,
                post_attention_layernorm: norm(weights, &format!("{p}.post_attention_layernorm"))?,
            });
        }
        let model = LlamaModel {
            embed_tokens,
            layers,
            norm: norm(weights, "model.norm")?,
            rope: Rope::new(&config.rope, config.head_dim, device),
        };
        // A tied checkpoint may still carry a copy of the embedding as `lm_head.weight`
        // (transformers ignores it); an untied one must have it.
        let lm_head = match config.tie_word_embeddings {
            true if !weights.contains("lm_head.weight") => None,
            _ => Some(frozen(weights.take_as(
                "lm_head.weight",
                [config.vocab_size, hidden],
                storage.dtype,
                device,
            )?)),
        };
        Ok(Self {
            model,
            lm_head,
            head_matmul_dtype: DType::F32,
        })
    }

    /// The seven projections of every layer with their HF module paths
    /// (`model.layers.{i}.self_attn.q_proj`, ...), in layer order.
    pub fn projections(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::new();
        for (i, layer) in self.model.layers.iter().enumerate() {
            let (a, m) = (&layer.self_attn, &layer.mlp);
            let named = [
                &a.q_proj,
                &a.k_proj,
                &a.v_proj,
                &a.o_proj,
                &m.gate_proj,
                &m.up_proj,
                &m.down_proj,
            ];
            for (name, proj) in PROJECTIONS.iter().zip(named) {
                out.push((format!("model.layers.{i}.{name}"), proj));
            }
        }
        out
    }

    /// [`Llama::projections`], mutable.
    pub fn projections_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            let (a, m) = (&mut layer.self_attn, &mut layer.mlp);
            let named = [
                &mut a.q_proj,
                &mut a.k_proj,
                &mut a.v_proj,
                &mut a.o_proj,
                &mut m.gate_proj,
                &mut m.up_proj,
                &mut m.down_proj,
            ];
            for (name, proj) in PROJECTIONS.iter().zip(named) {
                out.push((format!("model.layers.{i}.{name}"), proj));
            }
        }
        out
    }

    /// Stores the dense frozen matrices (projections not quantized, embedding, output head) in
    /// `storage` and has the base's products computed in `products`; a matrix stored in another
    /// dtype is cast for each product, one at a time. Norms, biases and adapters stay f32.
    pub fn set_base_dtypes(&mut self, storage: DType, products: DType) {
        let cast = |param: &Param<Tensor<2>>| frozen(in_dtype(param.val(), storage));
        for (_, proj) in self.projections_mut() {
            proj.weight = proj.weight.as_ref().map(cast);
            proj.matmul_dtype = products;
        }
        self.head_matmul_dtype = products;
        self.model.embed_tokens = cast(&self.model.embed_tokens);
        if let Some(head) = &self.lm_head {
            self.lm_head = Some(cast(head));
        }
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]` at positions `[batch, seq]`.
    /// `padding` (`[batch, seq]`, true = padding) keeps padded keys out of attention.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        padding: Option<&Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let blocked = padding.map(|pad| {
            let [batch, seq] = pad.dims();
            pad.clone()
                .reshape([batch, 1, seq])
                .expand([batch, seq, seq])
        });
        self.logits(self.hidden_states(input_ids, positions, blocked.as_ref(), None))
    }

    /// Logits `[batch, seq, vocab]` for rows that hold several examples (packing): token `t`
    /// attends only to earlier tokens with the same `segments` value (`[batch, seq]`), so
    /// examples never see each other; `positions` restart at 0 for each example.
    pub fn forward_segments(
        &self,
        input_ids: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        segments: Tensor<2, Int>,
    ) -> Tensor<3> {
        let [batch, seq] = segments.dims();
        let queries = segments
            .clone()
            .reshape([batch, seq, 1])
            .expand([batch, seq, seq]);
        let keys = segments.reshape([batch, 1, seq]).expand([batch, seq, seq]);
        let blocked = queries.not_equal(keys);
        self.logits(self.hidden_states(input_ids, positions, Some(&blocked), None))
    }

    /// Logits for the next tokens `[batch, seq]`, continuing after the tokens in `cache` and
    /// appending the new ones to it. Row `b` begins with `left_pad[b]` padding tokens (counted
    /// over the whole cache; empty means none): no query attends to them and they take no
    /// position, so a padded row computes what it would alone.
    pub fn forward_cached(
        &self,
        input_ids: Tensor<2, Int>,
        left_pad: &[usize],
        cache: &mut KvCache,
    ) -> Tensor<3> {
        let [batch, seq] = input_ids.dims();
        assert!(
            left_pad.is_empty() || left_pad.len() == batch,
            "one left padding per row"
        );
        let pad = |row: usize| left_pad.get(row).copied().unwrap_or(0);
        let device = input_ids.device();
        let (start, seen) = (cache.seen, cache.seen + seq);
        let positions: Vec<i64> = (0..batch)
            .flat_map(|row| (start..seen).map(move |i| i.saturating_sub(pad(row)) as i64))
            .collect();
        let positions =
            Tensor::<2, Int>::from_data(TensorData::new(positions, [batch, seq]), &device);
        let padding = left_pad.iter().any(|&p| p > 0).then(|| {
            let mask: Vec<bool> = (0..batch * seq)
                .flat_map(|i| (0..seen).map(move |key| key < pad(i / seq)))
                .collect();
            Tensor::<3, Bool>::from_data(TensorData::new(mask, [batch, seq, seen]), &device)
        });
        if cache.layers.is_empty() {
            cache.layers = vec![None; self.model.layers.len()];
        }
        cache.seen = seen;
        self.logits(self.hidden_states(input_ids, positions, padding.as_ref(), Some(cache)))
    }

    fn hidden_states(
        &self,
        input_ids: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        blocked: Option<&Tensor<3, Bool>>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let (cos, sin) = self.model.rope.cos_sin(positions);
        // `select` rather than `embedding`: burn-flex 0.22.1's embedding of a bf16 table returns
        // a tensor whose storage and dtype disagree.
        let [batch, seq] = input_ids.dims();
        let table = self.model.embed_tokens.val();
        let width = table.dims()[1];
        let mut x = table
            .select(0, input_ids.reshape([batch * seq]))
            .cast(DType::F32)
            .reshape([batch, seq, width]);
        for (i, layer) in self.model.layers.iter().enumerate() {
            let layer_cache = cache.as_mut().map(|c| &mut c.layers[i]);
            let h = layer.self_attn.forward(
                layer.input_layernorm.forward(x.clone()),
                (&cos, &sin),
                blocked,
                layer_cache,
            );
            x = x + h;
            let h = layer
                .mlp
                .forward(layer.post_attention_layernorm.forward(x.clone()));
            x = x + h;
        }
        self.model.norm.forward(x)
    }

    /// The output head (the embedding when tied) as stored; its products are computed in
    /// [`Llama::head_matmul_dtype`], a band of rows at a time ([`row_bands`]).
    pub fn head(&self) -> Tensor<2> {
        self.lm_head
            .as_ref()
            .unwrap_or(&self.model.embed_tokens)
            .val()
    }

    fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let head = self.head();
        let bands = row_bands(&head, self.head_matmul_dtype);
        let parts = bands.map(|(_, band)| linear_hf(hidden.clone(), band, None));
        concat(parts.collect(), 2)
    }
}

impl Llama {
    /// The adapters attached so far, with their PEFT module paths, in layer order.
    pub fn adapters(&self) -> Vec<(String, &LoraAdapter)> {
        self.projections()
            .into_iter()
            .filter_map(|(path, proj)| proj.lora.as_ref().map(|adapter| (path, adapter)))
            .collect()
    }

    /// Attaches fresh adapters where `spec` asks for them; returns how many.
    pub fn attach_lora(&mut self, spec: &LoraSpec, device: &Device) -> usize {
        let mut attached = 0;
        for (path, proj) in self.projections_mut() {
            if wants_adapter(&path, spec) {
                let (dims, weight) = (proj.dims(), || proj.dense_weight(device));
                proj.lora = Some(LoraAdapter::new(&path, dims, weight, spec, device));
                attached += 1;
            }
        }
        attached
    }
}
