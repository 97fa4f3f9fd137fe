//! RMSNorm over the last dimension of `[n, hidden]` and its gradient: the fused kernels of
//! `kernels::cpu` on host tensors, Burn operations elsewhere.

use burn::tensor::Tensor;
use feinschliff_model::kernels::cpu as cpu_kernels;
use feinschliff_model::kernels::host_tensor::{HostTensor, is_host};
use feinschliff_model::llama::RmsNorm;

/// RMSNorm over the last dimension of `[n, hidden]`.
pub fn rms_norm(norm: &RmsNorm, x: Tensor<2>) -> Tensor<2> {
    let weight = norm.weight.val().inner();
    match is_host(&x.device()) {
        true => host_rms_norm(x, weight, norm.eps),
        false => burn_rms_norm(x, weight, norm.eps),
    }
}

/// [`rms_norm`] through the fused kernel.
fn host_rms_norm(x: Tensor<2>, weight: Tensor<1>, eps: f64) -> Tensor<2> {
    let (x, weight) = (HostTensor::of(x), HostTensor::of(weight));
    let mut out = cpu_kernels::zeros(x.values().len());
    cpu_kernels::rms_norm(x.values(), weight.values(), eps as f32, &mut out);
    HostTensor::new_like(&x, out, x.dims()).into_tensor()
}

/// [`rms_norm`] in Burn operations: `x / sqrt(mean(x²) + eps) · weight`.
fn burn_rms_norm(x: Tensor<2>, weight: Tensor<1>, eps: f64) -> Tensor<2> {
    let inv_rms = (x.clone().square().mean_dim(1) + eps).sqrt().recip();
    x * inv_rms * weight.unsqueeze::<2>()
}

/// The gradient of [`rms_norm`] with respect to `x`: with `g = d_y ⊙ w` and
/// `r = 1/rms(x)`, `d_x = r·g − x·r³·mean(g ⊙ x)`.
pub fn rms_norm_backward(norm: &RmsNorm, x: Tensor<2>, d_y: Tensor<2>) -> Tensor<2> {
    let weight = norm.weight.val().inner();
    match is_host(&x.device()) {
        true => host_rms_norm_backward(x, weight, norm.eps, d_y),
        false => burn_rms_norm_backward(x, weight, norm.eps, d_y),
    }
}

/// [`rms_norm_backward`] through the fused kernel, in place over `d_y`.
fn host_rms_norm_backward(x: Tensor<2>, weight: Tensor<1>, eps: f64, d_y: Tensor<2>) -> Tensor<2> {
    let (x, weight) = (HostTensor::of(x), HostTensor::of(weight));
    let mut d = HostTensor::of(d_y);
    cpu_kernels::rms_norm_backward(x.values(), weight.values(), eps as f32, d.values_mut());
    d.into_tensor()
}

/// [`rms_norm_backward`] in Burn operations.
fn burn_rms_norm_backward(x: Tensor<2>, weight: Tensor<1>, eps: f64, d_y: Tensor<2>) -> Tensor<2> {
    let inv_rms = (x.clone().square().mean_dim(1) + eps).sqrt().recip();
    let g = d_y * weight.unsqueeze::<2>();
    let projection = (g.clone() * x.clone()).mean_dim(1);
    g * inv_rms.clone() - x * (inv_rms.powi_scalar(3) * projection)
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::pass::ops::testing::{assert_close, random};

    #[test]
    fn forward_and_backward_agree_with_burn() {
        let (n, hidden, eps) = (45, 96, 1e-5);
        let x = random(1, [n, hidden]);
        let weight = random(2, [hidden]);
        let d_y = random(3, [n, hidden]);
        assert_close(
            "forward",
            host_rms_norm(x.clone(), weight.clone(), eps),
            burn_rms_norm(x.clone(), weight.clone(), eps),
            1e-5,
        );
        assert_close(
            "backward",
            host_rms_norm_backward(x.clone(), weight.clone(), eps, d_y.clone()),
            burn_rms_norm_backward(x, weight, eps, d_y),
            1e-5,
        );
    }
}
