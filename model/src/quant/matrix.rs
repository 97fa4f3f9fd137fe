//! A matrix `[rows, cols]` kept as blocks: each row a whole number of blocks of one
//! [`BlockFormat`], rows one after another, as GGUF stores a tensor.

use std::fmt;
use std::ops::Range;

use rayon::prelude::*;

use super::BlockFormat;

/// A quantized matrix, row-major, blocks along each row.
pub struct QuantizedMatrix {
    format: BlockFormat,
    dims: [usize; 2],
    data: Vec<u8>,
}

impl fmt::Debug for QuantizedMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QuantizedMatrix({} {:?})", self.format.name(), self.dims)
    }
}

impl QuantizedMatrix {
    /// `values` (`[rows, cols]`, row-major) encoded in `format`, bands of rows on all cores.
    pub fn quantize(format: BlockFormat, values: &[f32], dims: [usize; 2]) -> Result<Self, String> {
        if values.len() != dims[0] * dims[1] || dims[1] == 0 {
            return Err(format!("{} values are not {dims:?}", values.len()));
        }
        let band = dims[1] * 64;
        let bands: Vec<Vec<u8>> = values
            .par_chunks(band)
            .map(|rows| format.encode(rows, dims[1]))
            .collect::<Result<_, _>>()?;
        Self::from_blocks(format, dims, bands.concat())
    }

    /// A matrix of `dims` from its encoded blocks (as a GGUF file holds them); an error when
    /// rows are not whole blocks or `data` is not exactly their size.
    pub fn from_blocks(
        format: BlockFormat,
        dims: [usize; 2],
        data: Vec<u8>,
    ) -> Result<Self, String> {
        let (values, bytes) = format.block();
        let [rows, cols] = dims;
        if cols == 0 || !cols.is_multiple_of(values) {
            return Err(format!(
                "rows of {cols} values are not whole {} blocks of {values}",
                format.name()
            ));
        }
        let expected = rows.checked_mul(cols / values * bytes);
        if expected != Some(data.len()) {
            return Err(format!(
                "{} bytes of {} blocks do not hold {dims:?}",
                data.len(),
                format.name()
            ));
        }
        Ok(Self { format, dims, data })
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> [usize; 2] {
        self.dims
    }

    /// The block format.
    pub fn format(&self) -> BlockFormat {
        self.format
    }

    /// The encoded blocks.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Values per block.
    pub fn block_values(&self) -> usize {
        self.format.block().0
    }

    /// All values, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let [rows, cols] = self.dims;
        let mut out = vec![0f32; rows * cols];
        self.dequantize_tile(0..rows, 0..cols, &mut out);
        out
    }

    /// Rows `rows`, columns `cols` (whole blocks: both ends multiples of the block size, or the
    /// end at the row's end) into `out`, row-major `[rows.len(), cols.len()]`.
    pub fn dequantize_tile(&self, rows: Range<usize>, cols: Range<usize>, out: &mut [f32]) {
        let (values, bytes) = self.format.block();
        let row_bytes = self.dims[1] / values * bytes;
        let width = cols.len();
        assert!(
            cols.start.is_multiple_of(values)
                && width.is_multiple_of(values)
                && cols.end <= self.dims[1],
            "dequantize_tile: columns {cols:?} are not whole blocks"
        );
        assert!(
            rows.end <= self.dims[0] && out.len() == rows.len() * width,
            "dequantize_tile: tile outside"
        );
        let first_block = cols.start / values * bytes;
        for (row, out_row) in rows.zip(out.chunks_exact_mut(width.max(1))) {
            let start = row * row_bytes + first_block;
            let blocks = self.data[start..start + width / values * bytes].chunks_exact(bytes);
            for (block, out_block) in blocks.zip(out_row.chunks_exact_mut(values)) {
                self.format.decode_block(block, out_block);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::gguf::dequant::GgmlType;

    fn values(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 300.0)
            .collect()
    }

    #[test]
    fn a_tile_equals_the_same_part_of_the_whole() {
        for format in [
            BlockFormat::Ggml(GgmlType::Q8_0),
            BlockFormat::Ggml(GgmlType::Q4K),
            BlockFormat::Nf4,
        ] {
            let dims = [5, 512];
            let matrix = QuantizedMatrix::quantize(format, &values(5 * 512), dims).unwrap();
            let whole = matrix.dequantize();
            let (rows, cols) = (1..4, 256..512);
            let mut tile = vec![0f32; 3 * 256];
            matrix.dequantize_tile(rows.clone(), cols.clone(), &mut tile);
            for (i, row) in rows.enumerate() {
                assert_eq!(
                    tile[i * 256..(i + 1) * 256],
                    whole[row * 512 + 256..row * 512 + 512],
                    "{format:?}"
                );
            }
        }
    }

    #[test]
    fn blocks_of_the_wrong_size_are_refused() {
        let q8 = BlockFormat::Ggml(GgmlType::Q8_0);
        let message = QuantizedMatrix::from_blocks(q8, [2, 64], vec![0; 135]).unwrap_err();
        assert!(message.contains("135 bytes"), "{message}");
        let message = QuantizedMatrix::from_blocks(q8, [2, 48], vec![0; 102]).unwrap_err();
        assert!(message.contains("not whole Q8_0 blocks"), "{message}");
    }
}
