//! The sum of two activations of one shape (residual connections, gradients meeting at a
//! fork): in place over the first one's buffer on all cores on host tensors, where
//! burn-flex's addition runs on one core into a new buffer; Burn's addition elsewhere.

use burn::tensor::Tensor;
use feinschliff_model::kernels::cpu as cpu_kernels;
use feinschliff_model::kernels::host_tensor::{HostTensor, is_host};

/// `a + b`, written into `a`'s buffer where nothing else shares it (pass the operand the
/// caller no longer needs as `a`).
pub fn add<const D: usize>(a: Tensor<D>, b: &Tensor<D>) -> Tensor<D> {
    assert_eq!(a.dims(), b.dims(), "add: shapes differ");
    match is_host(&a.device()) {
        true => host_add(a, b),
        false => a + b.clone(),
    }
}

/// [`add`] through [`cpu_kernels::add_assign`].
fn host_add<const D: usize>(a: Tensor<D>, b: &Tensor<D>) -> Tensor<D> {
    let mut a = HostTensor::of(a);
    let b = HostTensor::of(b.clone());
    cpu_kernels::add_assign(a.values_mut(), b.values());
    a.into_tensor()
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::pass::ops::testing::{assert_close, random, values};

    #[test]
    fn adds_as_burn_does_and_leaves_a_shared_operand_alone() {
        let (a, b) = (random(1, [70, 1030]), random(2, [70, 1030]));
        let before = values(a.clone());
        assert_close("sum", add(a.clone(), &b), a.clone() + b.clone(), 0.0);
        assert_eq!(values(a), before, "the kept handle of `a` was written");
    }
}
