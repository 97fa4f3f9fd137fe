//! Attention heads and RoPE: projections `[rows·len, heads·head_dim]` split into heads
//! `[rows, heads, len, head_dim]` and rotated, and the gradient rotated back and merged. On
//! host tensors one kernel of `kernels::cpu` does the split or merge and the rotation in one
//! pass; elsewhere Burn reshapes and [`Rope::apply`].

use burn::tensor::Tensor;
use feinschliff_model::kernels::cpu::{self as cpu_kernels, RopeShape};
use feinschliff_model::kernels::host_tensor::{HostTensor, is_host};
use feinschliff_model::rope::Rope;

/// Rows and length of the batch (tokens are handled as `rows · len` flat rows).
pub struct Shape {
    /// Sequences.
    pub rows: usize,
    /// Tokens per sequence.
    pub len: usize,
}

/// RoPE tables `[rows, 1, len, head_dim]`; `neg_sin` undoes the rotation in the backward pass.
pub struct RopeTables {
    cos: Tensor<4>,
    sin: Tensor<4>,
    neg_sin: Tensor<4>,
}

impl RopeTables {
    /// The tables of [`Rope::cos_sin`].
    pub fn new(cos: Tensor<4>, sin: Tensor<4>) -> Self {
        Self {
            cos,
            neg_sin: sin.clone().neg(),
            sin,
        }
    }
}

/// `x` `[rows·len, heads·head_dim]` split into heads `[rows, heads, len, head_dim]` and
/// rotated by RoPE.
pub fn rotate_to_heads(
    x: Tensor<2>,
    shape: &Shape,
    heads: usize,
    head_dim: usize,
    rope: &RopeTables,
) -> Tensor<4> {
    match is_host(&x.device()) {
        true => host_rotate_to_heads(x, shape, heads, head_dim, rope),
        false => burn_rotate_to_heads(x, shape, heads, head_dim, rope),
    }
}

/// [`rotate_to_heads`] through [`cpu_kernels::rope_to_heads`].
fn host_rotate_to_heads(
    x: Tensor<2>,
    shape: &Shape,
    heads: usize,
    head_dim: usize,
    rope: &RopeTables,
) -> Tensor<4> {
    let (rows, len) = (shape.rows, shape.len);
    let rope_shape = RopeShape {
        rows,
        len,
        heads,
        head_dim,
    };
    let dims = [rows, heads, len, head_dim];
    host_rope(
        cpu_kernels::rope_to_heads,
        x,
        &rope.cos,
        &rope.sin,
        rope_shape,
        dims,
    )
}

/// [`rotate_to_heads`] in Burn operations.
fn burn_rotate_to_heads(
    x: Tensor<2>,
    shape: &Shape,
    heads: usize,
    head_dim: usize,
    rope: &RopeTables,
) -> Tensor<4> {
    Rope::apply(to_heads(x, shape, heads, head_dim), &rope.cos, &rope.sin)
}

/// The gradient of [`rotate_to_heads`]: `d` `[rows, heads, len, head_dim]` rotated back and
/// merged to `[rows·len, heads·head_dim]`.
pub fn unrotate_from_heads(d: Tensor<4>, rope: &RopeTables) -> Tensor<2> {
    match is_host(&d.device()) {
        true => host_unrotate_from_heads(d, rope),
        false => burn_unrotate_from_heads(d, rope),
    }
}

/// [`unrotate_from_heads`] through [`cpu_kernels::rope_from_heads`].
fn host_unrotate_from_heads(d: Tensor<4>, rope: &RopeTables) -> Tensor<2> {
    let [rows, heads, len, head_dim] = d.dims();
    let rope_shape = RopeShape {
        rows,
        len,
        heads,
        head_dim,
    };
    let dims = [rows * len, heads * head_dim];
    host_rope(
        cpu_kernels::rope_from_heads,
        d,
        &rope.cos,
        &rope.neg_sin,
        rope_shape,
        dims,
    )
}

/// [`unrotate_from_heads`] in Burn operations.
fn burn_unrotate_from_heads(d: Tensor<4>, rope: &RopeTables) -> Tensor<2> {
    from_heads(Rope::apply(d, &rope.cos, &rope.neg_sin))
}

/// [`cpu_kernels::rope_to_heads`] or [`cpu_kernels::rope_from_heads`].
type RopeKernel = fn(&[f32], &[f32], &[f32], &RopeShape, &mut [f32]);

/// A RoPE kernel of [`cpu_kernels`] run on host tensor `x` with the tables `cos` and `sin`;
/// the result has `dims`.
fn host_rope<const D: usize, const E: usize>(
    kernel: RopeKernel,
    x: Tensor<D>,
    cos: &Tensor<4>,
    sin: &Tensor<4>,
    shape: RopeShape,
    dims: [usize; E],
) -> Tensor<E> {
    let x = HostTensor::of(x);
    let (cos, sin) = (HostTensor::of(cos.clone()), HostTensor::of(sin.clone()));
    let mut out = cpu_kernels::zeros(x.values().len());
    kernel(x.values(), cos.values(), sin.values(), &shape, &mut out);
    HostTensor::new_like(&x, out, dims).into_tensor()
}

/// `[rows·len, heads·head_dim]` → `[rows, heads, len, head_dim]`.
pub fn to_heads(x: Tensor<2>, shape: &Shape, heads: usize, head_dim: usize) -> Tensor<4> {
    x.reshape([shape.rows, shape.len, heads, head_dim])
        .swap_dims(1, 2)
}

/// `[rows, heads, len, head_dim]` → `[rows·len, heads·head_dim]`.
pub fn from_heads(x: Tensor<4>) -> Tensor<2> {
    let [rows, heads, len, head_dim] = x.dims();
    x.swap_dims(1, 2).reshape([rows * len, heads * head_dim])
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::pass::ops::testing::{assert_close, device, random};
    use burn::tensor::{Int, TensorData};
    use feinschliff_model::config::{RopeConfig, RopeScaling};

    /// The tables of two rows of `len` tokens, the second packing two examples.
    fn tables(len: usize, head_dim: usize) -> RopeTables {
        let config = RopeConfig {
            theta: 10_000.0,
            scaling: RopeScaling::Default,
        };
        let split = len / 3;
        let positions: Vec<i64> = (0..len as i64)
            .chain((0..split as i64).chain(0..(len - split) as i64))
            .collect();
        let positions =
            Tensor::<2, Int>::from_data(TensorData::new(positions, [2, len]), &device());
        let (cos, sin) = Rope::new(&config, head_dim, &device()).cos_sin(positions);
        RopeTables::new(cos, sin)
    }

    #[test]
    fn rotations_to_and_from_heads_agree_with_burn() {
        let (heads, len, head_dim) = (3, 21, 16);
        let shape = Shape { rows: 2, len };
        let rope = tables(len, head_dim);
        let x = random(1, [2 * len, heads * head_dim]);
        assert_close(
            "to heads",
            host_rotate_to_heads(x.clone(), &shape, heads, head_dim, &rope),
            burn_rotate_to_heads(x, &shape, heads, head_dim, &rope),
            1e-5,
        );
        let d = random(2, [2, heads, len, head_dim]);
        assert_close(
            "from heads",
            host_unrotate_from_heads(d.clone(), &rope),
            burn_unrotate_from_heads(d, &rope),
            1e-5,
        );
    }

    #[test]
    fn rotating_back_undoes_the_rotation() {
        let (heads, len, head_dim) = (2, 9, 8);
        let shape = Shape { rows: 2, len };
        let rope = tables(len, head_dim);
        let x = random(3, [2 * len, heads * head_dim]);
        let rotated = rotate_to_heads(x.clone(), &shape, heads, head_dim, &rope);
        assert_close("round trip", unrotate_from_heads(rotated, &rope), x, 1e-6);
    }
}
