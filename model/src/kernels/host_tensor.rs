//! Tensors in host memory as plain `f32` slices, for the fused kernels in
//! [`super::cpu`]: flex tensors always, LibTorch tensors on the CPU. No copy when the
//! tensor is contiguous `f32`, writes in place when no other handle shares its buffer. Other
//! devices have no host view ([`is_host`] is false there) and callers use Burn operations.
// burn-tch is deprecated upstream; feinschliff uses it on purpose (LibTorch's bf16 kernels).
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::tensor::{DType, Device, Tensor};

#[cfg(feature = "flex")]
use burn::backend::{Flex, flex::FlexTensor};
#[cfg(feature = "tch")]
use burn::backend::{LibTorch, libtorch::TchTensor};

/// Whether tensors on `device` live in host memory with a [`HostTensor`] view (flex, and
/// LibTorch's CPU device).
pub fn is_host(device: &Device) -> bool {
    is_flex(device) || is_libtorch_cpu(device)
}

/// Whether `device` is the flex backend's.
pub fn is_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        matches!(device.as_dispatch(), burn::backend::DispatchDevice::Flex(_))
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

/// Whether `device` is LibTorch's CPU.
fn is_libtorch_cpu(device: &Device) -> bool {
    #[cfg(feature = "tch")]
    {
        matches!(
            device.as_dispatch(),
            burn::backend::DispatchDevice::LibTorch(burn::backend::libtorch::LibTorchDevice::Cpu)
        )
    }
    #[cfg(not(feature = "tch"))]
    {
        let _ = device;
        false
    }
}

/// Where a host tensor's values are.
enum Buffer {
    #[cfg(feature = "flex")]
    Flex(FlexTensor),
    /// A contiguous `f32` CPU tensor; `owned` when no other handle can see its storage.
    #[cfg(feature = "tch")]
    Torch { tensor: tch::Tensor, owned: bool },
}

/// A host tensor's values, contiguous `f32` in row-major order.
pub struct HostTensor<const D: usize> {
    buffer: Buffer,
    dims: [usize; D],
}

impl<const D: usize> HostTensor<D> {
    /// The values of `tensor`, which must live in host memory (see [`is_host`]), converted to
    /// contiguous `f32` where they are not already.
    pub fn of(tensor: Tensor<D>) -> Self {
        let dims = tensor.dims();
        let tensor = match tensor.dtype() {
            DType::F32 => tensor,
            _ => tensor.cast(DType::F32),
        };
        #[cfg(feature = "flex")]
        if is_flex(&tensor.device()) {
            let inner = tensor
                .try_into_primitive::<Flex>()
                .expect("a flex device holds flex tensors");
            // Drops the original handle when a copy was made, so the result is not shared.
            let inner = match inner.is_contiguous() && inner.layout().start_offset() == 0 {
                true => inner,
                false => inner.to_contiguous(),
            };
            return Self {
                buffer: Buffer::Flex(inner),
                dims,
            };
        }
        #[cfg(feature = "tch")]
        {
            let inner: TchTensor = tensor
                .try_into_primitive::<LibTorch>()
                .expect("HostTensor::of is called for host tensors only");
            assert!(
                inner.tensor.device() == tch::Device::Cpu,
                "HostTensor::of is called for CPU tensors only"
            );
            let unshared = inner.can_mut();
            let original = inner.tensor.data_ptr();
            let tensor = inner.tensor.contiguous();
            let owned = unshared || tensor.data_ptr() != original;
            Self {
                buffer: Buffer::Torch { tensor, owned },
                dims,
            }
        }
        #[cfg(not(feature = "tch"))]
        unreachable!("HostTensor::of is called for host tensors only")
    }

    /// A new tensor of `dims` holding `values` (row-major), on the host device `like` is on.
    pub fn new_like<const E: usize>(
        like: &HostTensor<E>,
        values: Vec<f32>,
        dims: [usize; D],
    ) -> Self {
        let buffer = match &like.buffer {
            #[cfg(feature = "flex")]
            Buffer::Flex(_) => Buffer::Flex(FlexTensor::from_data(burn::tensor::TensorData::new(
                values, dims,
            ))),
            #[cfg(feature = "tch")]
            Buffer::Torch { .. } => {
                let shape: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
                Buffer::Torch {
                    tensor: tch::Tensor::from_slice(&values).reshape(shape),
                    owned: true,
                }
            }
        };
        Self { buffer, dims }
    }

    /// The shape.
    pub fn dims(&self) -> [usize; D] {
        self.dims
    }

    fn len(&self) -> usize {
        self.dims.iter().product()
    }

    /// The values.
    pub fn values(&self) -> &[f32] {
        let len = self.len();
        match &self.buffer {
            #[cfg(feature = "flex")]
            Buffer::Flex(inner) => &inner.storage::<f32>()[..len],
            // SAFETY: a contiguous f32 CPU tensor of `len` elements, alive as long as `self`.
            #[cfg(feature = "tch")]
            Buffer::Torch { tensor, .. } => unsafe {
                std::slice::from_raw_parts(tensor.data_ptr() as *const f32, len)
            },
        }
    }

    /// The values, writable; copied first if another tensor shares the buffer.
    pub fn values_mut(&mut self) -> &mut [f32] {
        let len = self.len();
        match &mut self.buffer {
            #[cfg(feature = "flex")]
            Buffer::Flex(inner) => &mut inner.storage_mut::<f32>()[..len],
            #[cfg(feature = "tch")]
            Buffer::Torch { tensor, owned } => {
                if !*owned {
                    *tensor = tensor.copy();
                    *owned = true;
                }
                // SAFETY: a contiguous f32 CPU tensor of `len` elements that no other handle
                // sees, borrowed mutably through `self`.
                unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut f32, len) }
            }
        }
    }

    /// Back to a Burn tensor (no copy).
    pub fn into_tensor(self) -> Tensor<D> {
        match self.buffer {
            #[cfg(feature = "flex")]
            Buffer::Flex(inner) => Tensor::from_primitive::<Flex>(inner),
            #[cfg(feature = "tch")]
            Buffer::Torch { tensor, .. } => {
                Tensor::from_primitive::<LibTorch>(TchTensor::new(tensor))
            }
        }
    }
}
