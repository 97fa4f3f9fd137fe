//! Tensors in host memory as plain `f32` slices, for the fused kernels in
//! [`super::cpu`]: flex tensors always, LibTorch tensors on the CPU. No copy when the
//! tensor is contiguous `f32`, writes in place when no other handle shares its buffer. Other
//! devices have no host view ([`is_host`] is false there) and callers use Burn operations.
//! A flex bf16 matrix has a view of its own ([`HostBf16`]), for the bf16 kernel.
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
    /// A contiguous `f32` CPU tensor, kept as Burn's handle: its storage reference count
    /// counts this view, so while it lives no other Burn handle of the same storage sees
    /// itself alone and writes in place, and [`HostTensor::values_mut`] writes in place only
    /// when this handle is alone.
    #[cfg(feature = "tch")]
    Torch(TchTensor),
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
            // Shares the storage count of `inner` when `contiguous` made no copy, so the
            // count still sees every handle of the storage.
            let inner = TchTensor::from_existing(inner.tensor.contiguous(), inner.storage);
            let element_count = dims.iter().product::<usize>();
            assert!(
                inner.tensor.device() == tch::Device::Cpu
                    && inner.tensor.kind() == tch::Kind::Float
                    && inner.tensor.is_contiguous()
                    && inner.tensor.numel() == element_count,
                "HostTensor::of: not a contiguous f32 CPU tensor of {dims:?}"
            );
            Self {
                buffer: Buffer::Torch(inner),
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
            Buffer::Torch(_) => {
                let shape: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
                Buffer::Torch(TchTensor::new(
                    tch::Tensor::from_slice(&values).reshape(shape),
                ))
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
            // LibTorch may give a zero-element tensor a null data pointer, which no slice may
            // have, not even an empty one.
            #[cfg(feature = "tch")]
            Buffer::Torch(_) if len == 0 => &[],
            // SAFETY: the tensor is a contiguous `Kind::Float` (f32) CPU tensor of exactly `len`
            // elements (`of` asserts it; `new_like` makes one from `len` f32 values, and its
            // `reshape` fails on any other count), so `data_ptr` is non-null (len > 0
            // here), aligned for f32 by LibTorch's allocator, and `len` f32 values from it are
            // initialized memory of one allocation. `self` holds Burn's handle, whose storage
            // count includes this view, so no Burn operation writes the storage in place while
            // it is shared (and `values_mut` needs `&mut self`): the memory stays alive and
            // unchanged for the slice's lifetime, the lifetime of `&self`.
            #[cfg(feature = "tch")]
            Buffer::Torch(inner) => unsafe {
                std::slice::from_raw_parts(inner.tensor.data_ptr() as *const f32, len)
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
            Buffer::Torch(_) if len == 0 => &mut [],
            #[cfg(feature = "tch")]
            Buffer::Torch(inner) => {
                if !inner.can_mut() {
                    *inner = TchTensor::new(inner.tensor.copy());
                }
                // SAFETY: as in `values` (contiguous f32 CPU tensor of `len` > 0 elements,
                // non-null, aligned, initialized, alive while `self` is), and after the copy
                // above the storage count is one: no other Burn handle shares this memory, so
                // nothing else reads or writes it while `&mut self` is borrowed.
                unsafe { std::slice::from_raw_parts_mut(inner.tensor.data_ptr() as *mut f32, len) }
            }
        }
    }

    /// Back to a Burn tensor (no copy).
    pub fn into_tensor(self) -> Tensor<D> {
        match self.buffer {
            #[cfg(feature = "flex")]
            Buffer::Flex(inner) => Tensor::from_primitive::<Flex>(inner),
            #[cfg(feature = "tch")]
            Buffer::Torch(inner) => Tensor::from_primitive::<LibTorch>(inner),
        }
    }
}

/// A flex matrix's bf16 values, contiguous and row-major, for the bf16 kernel
/// (`bf16_matmul`); LibTorch multiplies bf16 itself. Without flex, none exists.
pub struct HostBf16 {
    #[cfg(feature = "flex")]
    inner: FlexTensor,
    dims: [usize; 2],
}

impl HostBf16 {
    /// The values of `tensor` when it is a bf16 flex tensor (copied to contiguous first where
    /// it is a strided view); `None` otherwise.
    pub fn of(tensor: Tensor<2>) -> Option<Self> {
        if tensor.dtype() != DType::BF16 || !is_flex(&tensor.device()) {
            return None;
        }
        #[cfg(feature = "flex")]
        {
            let dims = tensor.dims();
            let inner = tensor.try_into_primitive::<Flex>().ok()?;
            let inner = match inner.is_contiguous() && inner.layout().start_offset() == 0 {
                true => inner,
                false => inner.to_contiguous(),
            };
            Some(Self { inner, dims })
        }
        #[cfg(not(feature = "flex"))]
        unreachable!("is_flex is false without flex")
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> [usize; 2] {
        self.dims
    }

    /// The values, row-major.
    pub fn values(&self) -> &[half::bf16] {
        #[cfg(feature = "flex")]
        {
            &self.inner.storage::<half::bf16>()[..self.dims[0] * self.dims[1]]
        }
        #[cfg(not(feature = "flex"))]
        unreachable!("no HostBf16 exists without flex")
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use super::*;

    /// The host devices of the enabled backends.
    #[allow(
        clippy::vec_init_then_push,
        reason = "the features decide which pushes exist"
    )]
    fn host_devices() -> Vec<Device> {
        [
            #[cfg(feature = "flex")]
            Device::flex(),
            #[cfg(feature = "tch")]
            Device::libtorch(),
        ]
        .into()
    }

    fn values_of(tensor: Tensor<1>) -> Vec<f32> {
        tensor.try_into_vec_as::<f32>().unwrap()
    }

    #[test]
    fn zero_element_tensors_have_empty_values() {
        for device in host_devices() {
            let empty = TensorData::new(Vec::<f32>::new(), [0, 3]);
            let mut host = HostTensor::of(Tensor::<2>::from_data(empty, &device));
            assert!(host.values().is_empty());
            assert!(host.values_mut().is_empty());
            let made = HostTensor::<2>::new_like(&host, Vec::new(), [3, 0]);
            assert!(made.values().is_empty());
            assert_eq!(made.into_tensor().dims(), [3, 0]);
            assert_eq!(host.into_tensor().dims(), [0, 3]);
        }
    }

    #[test]
    fn writes_through_a_view_never_reach_a_tensor_sharing_its_buffer() {
        for device in host_devices() {
            let data = TensorData::new(vec![1.0f32, 2.0], [2]);
            let original = Tensor::<1>::from_data(data, &device);
            let mut host = HostTensor::of(original.clone());
            host.values_mut()[0] = 5.0;
            assert_eq!(host.values(), &[5.0, 2.0]);
            // Back in Burn, an operation that may write in place when its input is alone.
            let back = HostTensor::of(original.clone())
                .into_tensor()
                .add_scalar(10.0);
            assert_eq!(values_of(back), [11.0, 12.0]);
            assert_eq!(values_of(original), [1.0, 2.0], "on {device:?}");
        }
    }
}
