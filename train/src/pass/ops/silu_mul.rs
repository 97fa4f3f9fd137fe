//! The MLP's activation `silu(gate) ⊙ up` and its gradients: the fused kernels of
//! `kernels::cpu` on host tensors, Burn operations elsewhere.

use burn::tensor::Tensor;
use burn::tensor::activation::{sigmoid, silu};
use feinschliff_model::kernels::cpu as cpu_kernels;
use feinschliff_model::kernels::host_tensor::{HostTensor, is_host};

/// `silu(gate) ⊙ up`, the MLP's activation.
pub fn silu_mul(gate: &Tensor<2>, up: &Tensor<2>) -> Tensor<2> {
    match is_host(&gate.device()) {
        true => host_silu_mul(gate, up),
        false => burn_silu_mul(gate, up),
    }
}

/// [`silu_mul`] through the fused kernel.
fn host_silu_mul(gate: &Tensor<2>, up: &Tensor<2>) -> Tensor<2> {
    let (gate, up) = (HostTensor::of(gate.clone()), HostTensor::of(up.clone()));
    let mut out = cpu_kernels::zeros(gate.values().len());
    cpu_kernels::silu_mul(gate.values(), up.values(), &mut out);
    HostTensor::new_like(&gate, out, gate.dims()).into_tensor()
}

/// [`silu_mul`] in Burn operations.
fn burn_silu_mul(gate: &Tensor<2>, up: &Tensor<2>) -> Tensor<2> {
    silu(gate.clone()) * up.clone()
}

/// The gradients of [`silu_mul`] with respect to `gate` and `up`, given `d_act`: with
/// `σ = sigmoid(gate)`, `d_up = d_act ⊙ silu(gate)` and
/// `d_gate = d_act ⊙ up ⊙ σ ⊙ (1 + gate ⊙ (1 − σ))`.
pub fn silu_mul_backward(
    gate: Tensor<2>,
    up: Tensor<2>,
    d_act: Tensor<2>,
) -> (Tensor<2>, Tensor<2>) {
    match is_host(&gate.device()) {
        true => host_silu_mul_backward(gate, up, d_act),
        false => burn_silu_mul_backward(gate, up, d_act),
    }
}

/// [`silu_mul_backward`] through the fused kernel, in place over `gate` and `up`.
fn host_silu_mul_backward(
    gate: Tensor<2>,
    up: Tensor<2>,
    d_act: Tensor<2>,
) -> (Tensor<2>, Tensor<2>) {
    let (mut gate, mut up) = (HostTensor::of(gate), HostTensor::of(up));
    let d_act = HostTensor::of(d_act);
    cpu_kernels::silu_mul_backward(gate.values_mut(), up.values_mut(), d_act.values());
    (gate.into_tensor(), up.into_tensor())
}

/// [`silu_mul_backward`] in Burn operations.
fn burn_silu_mul_backward(
    gate: Tensor<2>,
    up: Tensor<2>,
    d_act: Tensor<2>,
) -> (Tensor<2>, Tensor<2>) {
    let sig = sigmoid(gate.clone());
    let d_up = d_act.clone() * silu(gate.clone());
    let d_gate = d_act * up * sig.clone() * (gate * (sig.neg() + 1.0) + 1.0);
    (d_gate, d_up)
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::pass::ops::testing::{assert_close, random};

    #[test]
    fn forward_and_backward_agree_with_burn() {
        let dims = [33, 130];
        // Gates over [-8, 8): both tails of the sigmoid.
        let gate = random(1, dims).mul_scalar(8.0);
        let up = random(2, dims);
        let d_act = random(3, dims);
        assert_close(
            "forward",
            host_silu_mul(&gate, &up),
            burn_silu_mul(&gate, &up),
            1e-5,
        );
        let host = host_silu_mul_backward(gate.clone(), up.clone(), d_act.clone());
        let reference = burn_silu_mul_backward(gate, up, d_act);
        assert_close("gate's gradient", host.0, reference.0, 1e-5);
        assert_close("up's gradient", host.1, reference.1, 1e-5);
    }
}
