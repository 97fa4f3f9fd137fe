//! A frozen linear projection of the base model in Hugging Face layout, with an optional
//! trainable LoRA adapter beside it.

use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor};

use crate::Error;
use crate::lora::LoraAdapter;
use crate::product::{in_dtype, linear_hf};
use crate::weights::WeightFiles;

/// A frozen linear layer in HF layout, `y = x Wᵀ + b` with `W` of shape `[out, in]`, plus an
/// optional trainable LoRA adapter.
#[derive(Module, Debug)]
pub struct Linear {
    /// `[out_features, in_features]`.
    pub weight: Param<Tensor<2>>,
    /// `[out_features]`, when the layer has a bias.
    pub bias: Option<Param<Tensor<1>>>,
    /// The LoRA adapter, when one is attached.
    pub lora: Option<LoraAdapter>,
    /// The dtype `weight`'s products are computed in ([`Llama::set_base_dtypes`]).
    #[module(skip)]
    pub matmul_dtype: DType,
}

impl Linear {
    pub(crate) fn load(
        weights: &mut WeightFiles,
        name: &str,
        [out_features, in_features]: [usize; 2],
        has_bias: bool,
        device: &Device,
    ) -> Result<Self, Error> {
        let weight = frozen(weights.take(
            &format!("{name}.weight"),
            [out_features, in_features],
            device,
        )?);
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
            bias,
            lora: None,
            matmul_dtype: DType::F32,
        })
    }

    /// The frozen weight in the dtype of its products (a temporary copy when stored in
    /// another).
    pub fn product_weight(&self) -> Tensor<2> {
        in_dtype(self.weight.val(), self.matmul_dtype)
    }

    /// Applies the layer (and its adapter) to the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let base = linear_hf(
            x.clone(),
            self.product_weight(),
            self.bias.as_ref().map(Param::val),
        );
        match &self.lora {
            Some(adapter) => base + adapter.forward(x),
            None => base,
        }
    }
}

/// A base-model tensor: frozen, so it never gets a gradient or optimizer state.
pub(crate) fn frozen<const D: usize>(tensor: Tensor<D>) -> Param<Tensor<D>> {
    Param::from_tensor(tensor).set_require_grad(false)
}
