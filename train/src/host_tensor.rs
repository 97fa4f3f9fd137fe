//! Tensors of the flex backend as plain `f32` slices, for the fused kernels in
//! [`crate::cpu_kernels`]: no copy when the tensor is contiguous, writes in place when no other
//! handle shares its buffer. Other backends have no host view ([`is_host`] is false there) and
//! callers use Burn operations.

use burn::tensor::{Device, Tensor};

#[cfg(feature = "flex")]
use burn::backend::{Flex, flex::FlexTensor};
#[cfg(feature = "flex")]
use burn::tensor::DType;

/// Whether tensors on `device` are in host memory with a [`HostTensor`] view (flex).
pub fn is_host(device: &Device) -> bool {
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

/// A flex tensor's values, contiguous `f32` in row-major order.
pub struct HostTensor<const D: usize> {
    #[cfg(feature = "flex")]
    inner: FlexTensor,
    dims: [usize; D],
}

impl<const D: usize> HostTensor<D> {
    /// The values of `tensor`, which must live on the flex device (see [`is_host`]), converted
    /// to contiguous `f32` where they are not already.
    pub fn of(tensor: Tensor<D>) -> Self {
        #[cfg(feature = "flex")]
        {
            let dims = tensor.dims();
            let tensor = match tensor.dtype() {
                DType::F32 => tensor,
                _ => tensor.cast(DType::F32),
            };
            let inner = tensor
                .try_into_primitive::<Flex>()
                .expect("HostTensor::of is called for flex tensors only");
            // Drops the original handle when a copy was made, so the result is not shared.
            let inner = match inner.is_contiguous() && inner.layout().start_offset() == 0 {
                true => inner,
                false => inner.to_contiguous(),
            };
            Self { inner, dims }
        }
        #[cfg(not(feature = "flex"))]
        unreachable!(
            "host tensors exist only with the flex backend ({:?})",
            tensor.dims()
        )
    }

    /// A new tensor of `dims` holding `values` (row-major), on the flex device.
    pub fn new(values: Vec<f32>, dims: [usize; D]) -> Self {
        #[cfg(feature = "flex")]
        {
            let data = burn::tensor::TensorData::new(values, dims);
            Self {
                inner: FlexTensor::from_data(data),
                dims,
            }
        }
        #[cfg(not(feature = "flex"))]
        unreachable!("host tensors exist only with the flex backend ({values:?}, {dims:?})")
    }

    /// The shape.
    pub fn dims(&self) -> [usize; D] {
        self.dims
    }

    /// The values.
    pub fn values(&self) -> &[f32] {
        #[cfg(feature = "flex")]
        {
            &self.inner.storage::<f32>()[..self.dims.iter().product::<usize>()]
        }
        #[cfg(not(feature = "flex"))]
        unreachable!("host tensors exist only with the flex backend")
    }

    /// The values, writable; copied first if another tensor shares the buffer.
    pub fn values_mut(&mut self) -> &mut [f32] {
        #[cfg(feature = "flex")]
        {
            let len = self.dims.iter().product::<usize>();
            &mut self.inner.storage_mut::<f32>()[..len]
        }
        #[cfg(not(feature = "flex"))]
        unreachable!("host tensors exist only with the flex backend")
    }

    /// Back to a Burn tensor (no copy).
    pub fn into_tensor(self) -> Tensor<D> {
        #[cfg(feature = "flex")]
        {
            Tensor::from_primitive::<Flex>(self.inner)
        }
        #[cfg(not(feature = "flex"))]
        unreachable!("host tensors exist only with the flex backend")
    }
}
