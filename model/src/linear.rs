//! A frozen linear projection of the base model in Hugging Face layout, kept dense or
//! quantized, with an optional trainable LoRA adapter beside it.

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor};

use crate::Error;
use crate::lora::LoraAdapter;
use crate::product::{in_dtype, last_dim, linear_hf, linear_rows};
use crate::quant::product::{dequantized, quantized_linear};
use crate::quant::{BaseQuant, QuantizedMatrix};
use crate::weights::WeightFiles;

/// How the frozen base's projections are kept when loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseStorage {
    /// The dtype of dense frozen matrices (projections not quantized, embedding, output head).
    pub dtype: DType,
    /// Which projections are quantized, and how.
    pub quant: BaseQuant,
}

impl Default for BaseStorage {
    /// Dense f32.
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            quant: BaseQuant::None,
        }
    }
}

/// A frozen linear layer in HF layout, `y = x Wᵀ + b` with `W` of shape `[out, in]`, plus an
/// optional trainable LoRA adapter. `W` is either a dense tensor or a quantized matrix,
/// never both.
#[derive(Module, Debug)]
pub struct Linear {
    /// `[out_features, in_features]`, when kept dense.
    pub weight: Option<Param<Tensor<2>>>,
    /// `W` when kept quantized (then `weight` is `None`).
    #[module(skip)]
    pub quantized: Option<Arc<QuantizedMatrix>>,
    /// `[out_features]`, when the layer has a bias.
    pub bias: Option<Param<Tensor<1>>>,
    /// The LoRA adapter, when one is attached.
    pub lora: Option<LoraAdapter>,
    /// The dtype `weight`'s products are computed in ([`Llama::set_base_dtypes`]); quantized
    /// products on host tensors always run in f32.
    ///
    /// [`Llama::set_base_dtypes`]: crate::llama::Llama::set_base_dtypes
    #[module(skip)]
    pub matmul_dtype: DType,
}

impl Linear {
    pub(crate) fn load(
        weights: &mut WeightFiles,
        name: &str,
        [out_features, in_features]: [usize; 2],
        has_bias: bool,
        storage: BaseStorage,
        device: &Device,
    ) -> Result<Self, Error> {
        let weight_name = format!("{name}.weight");
        let dims = [out_features, in_features];
        let stored_blocks = weights.take_blocks(&weight_name, dims)?;
        let (weight, quantized) = match storage.quant.format_for(in_features) {
            _ if stored_blocks.is_some() => (None, stored_blocks.map(Arc::new)),
            Some(format) => {
                let values = weights.take_values(&weight_name, dims)?;
                let matrix =
                    QuantizedMatrix::quantize(format, &values, dims).map_err(|message| {
                        Error::tensor(weights.path_of(&weight_name), &weight_name, message)
                    })?;
                (None, Some(Arc::new(matrix)))
            }
            None => {
                let dense = weights.take_as(&weight_name, dims, storage.dtype, device)?;
                (Some(frozen(dense)), None)
            }
        };
        let bias = match has_bias {
            true => Some(frozen(weights.take(
                &format!("{name}.bias"),
                [out_features],
                device,
            )?)),
            false => None,
        };
        Ok(Self {
            weight,
            quantized,
            bias,
            lora: None,
            matmul_dtype: DType::F32,
        })
    }

    /// `[out_features, in_features]`.
    pub fn dims(&self) -> [usize; 2] {
        match (&self.weight, &self.quantized) {
            (Some(weight), _) => weight.val().dims(),
            (None, Some(matrix)) => matrix.dims(),
            (None, None) => unreachable!("a projection holds a dense or a quantized weight"),
        }
    }

    /// `W` as its products take it: dense in the dtype of its products (a temporary copy when
    /// stored in another), or quantized.
    pub fn frozen_weight(&self) -> FrozenWeight<'_> {
        match (&self.weight, &self.quantized) {
            (Some(weight), _) => FrozenWeight::Dense(in_dtype(weight.val(), self.matmul_dtype)),
            (None, Some(matrix)) => FrozenWeight::Quantized(matrix),
            (None, None) => unreachable!("a projection holds a dense or a quantized weight"),
        }
    }

    /// `W` in f32 on `device`: the dense weight, or the quantized one dequantized (the values
    /// its products use).
    pub fn dense_weight(&self, device: &Device) -> Tensor<2> {
        match (&self.weight, &self.quantized) {
            (Some(weight), _) => weight.val().cast(DType::F32),
            (None, Some(matrix)) => dequantized(matrix, device, DType::F32),
            (None, None) => unreachable!("a projection holds a dense or a quantized weight"),
        }
    }

    /// Applies the layer (and its adapter) to the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let frozen = self.frozen_weight();
        let product = |x: Tensor<D>| match &frozen {
            FrozenWeight::Dense(weight) => linear_hf(x, weight.clone(), None),
            FrozenWeight::Quantized(matrix) => linear_rows(x, matrix.dims()[0], None, |rows| {
                quantized_linear(rows, matrix, self.matmul_dtype)
            }),
        };
        let base = product(x.clone());
        let biased = match &self.bias {
            Some(bias) => base.clone() + last_dim(bias.val()),
            None => base.clone(),
        };
        match &self.lora {
            Some(adapter) => {
                let weight = || self.dense_weight(&x.device());
                biased + adapter.forward(x.clone(), &base, product, weight)
            }
            None => biased,
        }
    }
}

/// A projection's frozen weight `W` `[out, in]` as its products take it.
#[allow(
    clippy::large_enum_variant,
    reason = "a short-lived value handed straight to a product; boxing the tensor buys nothing"
)]
pub enum FrozenWeight<'a> {
    /// Dense, in the dtype of the products.
    Dense(Tensor<2>),
    /// Quantized blocks.
    Quantized(&'a QuantizedMatrix),
}

/// A base-model tensor: frozen, so it never gets a gradient or optimizer state.
pub(crate) fn frozen<const D: usize>(tensor: Tensor<D>) -> Param<Tensor<D>> {
    Param::from_tensor(tensor).set_require_grad(false)
}
