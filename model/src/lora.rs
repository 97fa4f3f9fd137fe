//! LoRA adapters in the Hugging Face PEFT layout: for a frozen linear layer `W` `[out, in]`,
//! `lora_A` `[r, in]` and `lora_B` `[out, r]` add `scaling · B A x`, with dropout on the
//! adapter's input. PEFT's default initialisation: A Kaiming-uniform (a = √5), B = 0, so a fresh
//! adapter leaves the model unchanged. Scaling is `alpha / r`, or `alpha / √r` with rsLoRA.
//!
//! DoRA (`use_dora`, PEFT's `lora_magnitude_vector`) splits the adapted weight into a trained
//! magnitude `m` per output row and a direction: `W' = m ⊙ (W + s·BA) / ‖W + s·BA‖`, the norm
//! taken per output row and treated as a constant in the backward pass (the DoRA paper's §4.3,
//! as PEFT does). A fresh magnitude is the norm of `W`'s rows, so a fresh DoRA adapter, too,
//! leaves the model unchanged.
//!
//! Adapter parameters get ids derived from their PEFT names, so the optimizer state saved in a
//! checkpoint finds its parameters again in a model rebuilt on resume.

use burn::module::{Module, Param, ParamId};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Distribution, Tensor};

use crate::product::{last_dim, linear_hf};

/// The projections LoRA can be attached to, by PEFT module name.
pub const TARGET_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Where adapters go and how they are shaped.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// Rank `r`.
    pub rank: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// Dropout probability on the adapter input.
    pub dropout: f64,
    /// PEFT module names (a subset of [`TARGET_MODULES`]).
    pub target_modules: Vec<String>,
    /// Layers that get adapters; `None` = all.
    pub layers_to_transform: Option<Vec<usize>>,
    /// rsLoRA scaling `alpha / √r` instead of `alpha / r`.
    pub use_rslora: bool,
    /// DoRA: a trained magnitude per output row besides `A` and `B`.
    pub use_dora: bool,
}

impl LoraSpec {
    /// The factor applied to `B A x`.
    pub fn scaling(&self) -> f64 {
        match self.use_rslora {
            true => self.alpha / (self.rank as f64).sqrt(),
            false => self.alpha / self.rank as f64,
        }
    }
}

/// One adapter: the trainable pair `A`, `B`, and with DoRA the magnitude `m`.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// `[r, in]`, PEFT's `lora_A.weight`.
    pub lora_a: Param<Tensor<2>>,
    /// `[out, r]`, PEFT's `lora_B.weight`.
    pub lora_b: Param<Tensor<2>>,
    /// DoRA's magnitude, `[1, out]` (PEFT's `lora_magnitude_vector`, stored there as `[out]`).
    pub magnitude: Option<Param<Tensor<2>>>,
    /// Dropout on the adapter input (active only while training under autodiff).
    pub dropout: Dropout,
    /// `alpha / r` (or `alpha / √r`).
    pub scaling: f64,
}

impl LoraAdapter {
    /// A fresh adapter for a layer `[out, in]`; `weight` returns the layer's frozen weight in
    /// f32 and is called only with DoRA, for the magnitude's start; `name` is the PEFT module
    /// path (`model.layers.0.self_attn.q_proj`), which fixes the parameter ids.
    pub fn new(
        name: &str,
        [out_features, in_features]: [usize; 2],
        weight: impl FnOnce() -> Tensor<2>,
        spec: &LoraSpec,
        device: &Device,
    ) -> Self {
        // kaiming_uniform_(a=√5) on [r, in]: bound = gain·√(3 / fan_in), gain = √(2 / (1 + a²)).
        let bound = 1.0 / (in_features as f64).sqrt();
        let a = Tensor::random(
            [spec.rank, in_features],
            Distribution::Uniform(-bound, bound),
            device,
        );
        let b = Tensor::zeros([out_features, spec.rank], device);
        let magnitude = spec.use_dora.then(|| row_norms(weight()));
        Self::from_tensors(name, a, b, magnitude, spec, device)
    }

    /// An adapter with given `A` `[r, in]`, `B` `[out, r]` and, with DoRA, magnitude `[1, out]`
    /// (from a checkpoint or a PEFT file).
    pub fn from_tensors(
        name: &str,
        a: Tensor<2>,
        b: Tensor<2>,
        magnitude: Option<Tensor<2>>,
        spec: &LoraSpec,
        device: &Device,
    ) -> Self {
        let trainable = |t: Tensor<2>| {
            let t = t.to_device(device);
            if device.is_autodiff() {
                t.autodiff().require_grad()
            } else {
                t
            }
        };
        let (a, b) = (trainable(a), trainable(b));
        Self {
            lora_a: Param::initialized(param_id(&format!("{name}.lora_A.weight")), a),
            lora_b: Param::initialized(param_id(&format!("{name}.lora_B.weight")), b),
            magnitude: magnitude.map(|m| {
                Param::initialized(
                    param_id(&format!("{name}.lora_magnitude_vector")),
                    trainable(m),
                )
            }),
            dropout: DropoutConfig::new(spec.dropout).init(),
            scaling: spec.scaling(),
        }
    }

    /// What the adapter adds to the frozen layer's output `base = x Wᵀ` (without bias), over
    /// the last dimension of `x`: LoRA's `s · B A dropout(x)`; DoRA's, as PEFT computes it,
    /// `(g - 1) ⊙ dropout(x) Wᵀ + g ⊙ s · B A dropout(x)` with `g = m / ‖W + s·BA‖` per output
    /// row, the norm detached. `product` multiplies by `W`; `weight` is `W` in f32 (read only
    /// with DoRA).
    pub fn forward<const D: usize>(
        &self,
        x: Tensor<D>,
        base: &Tensor<D>,
        product: impl Fn(Tensor<D>) -> Tensor<D>,
        weight: impl FnOnce() -> Tensor<2>,
    ) -> Tensor<D> {
        let dropped = self.dropout.forward(x.clone());
        let h = linear_hf(dropped.clone(), self.lora_a.val(), None);
        let lora = linear_hf(h, self.lora_b.val(), None).mul_scalar(self.scaling);
        let Some(magnitude) = &self.magnitude else {
            return lora;
        };
        let scale = magnitude.val() / self.weight_norm(weight()).detach();
        let dropout_off = self.dropout.prob == 0.0 || !x.device().is_autodiff();
        let dropped_base = match dropout_off {
            true => base.clone(),
            false => product(dropped),
        };
        let scale = last_dim(scale);
        dropped_base * (scale.clone() - 1.0) + lora * scale
    }

    /// The trainable values: `A`, `B` and DoRA's magnitude.
    pub fn num_params(&self) -> usize {
        let magnitude = self.magnitude.as_ref().map_or(0, |m| m.val().dims()[1]);
        self.lora_a.val().shape().num_elements()
            + self.lora_b.val().shape().num_elements()
            + magnitude
    }

    /// `‖W + s·BA‖` per output row, `[1, out]`, of the frozen weight `weight` `[out, in]`.
    pub fn weight_norm(&self, weight: Tensor<2>) -> Tensor<2> {
        dora_norm(weight, self.lora_a.val(), self.lora_b.val(), self.scaling)
    }

    /// `scaling · B A`, the change LoRA makes to the layer's weight.
    pub fn delta_weight(&self) -> Tensor<2> {
        self.lora_b
            .val()
            .matmul(self.lora_a.val())
            .mul_scalar(self.scaling)
    }

    /// The adapted weight, for merging: `W + s·BA`, with DoRA scaled per row to `m ⊙ (W +
    /// s·BA) / ‖W + s·BA‖`.
    pub fn merged_weight(&self, weight: Tensor<2>) -> Tensor<2> {
        let adapted = weight + self.delta_weight();
        match &self.magnitude {
            Some(magnitude) => {
                let scale = magnitude.val() / row_norms(adapted.clone());
                adapted * scale.transpose()
            }
            None => adapted,
        }
    }
}

/// DoRA's `‖W + s·BA‖` per output row, `[1, out]`, for `W` `[out, in]`, `A` `[r, in]`, `B`
/// `[out, r]` and scaling `s`.
pub fn dora_norm(weight: Tensor<2>, a: Tensor<2>, b: Tensor<2>, scaling: f64) -> Tensor<2> {
    row_norms(weight + b.matmul(a).mul_scalar(scaling))
}

/// The L2 norm of each row of `matrix` `[out, in]`, as `[1, out]`.
fn row_norms(matrix: Tensor<2>) -> Tensor<2> {
    matrix.square().sum_dim(1).sqrt().transpose()
}

/// A stable parameter id from a name (FNV-1a), the same in every process.
fn param_id(name: &str) -> ParamId {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    ParamId::from(hash)
}

/// Whether the projection at PEFT path `path` (`model.layers.{i}.{block}.{module}`) gets an
/// adapter under `spec`.
pub fn wants_adapter(path: &str, spec: &LoraSpec) -> bool {
    let module = path.rsplit('.').next().unwrap_or_default();
    let layer: Option<usize> = path.split('.').nth(2).and_then(|l| l.parse().ok());
    let layer_ok = match (&spec.layers_to_transform, layer) {
        (None, _) => true,
        (Some(layers), Some(l)) => layers.contains(&l),
        (Some(_), None) => false,
    };
    layer_ok && spec.target_modules.iter().any(|t| t == module)
}
