//! Products with a bf16 matrix computed in bf16 with f32 accumulation, on x86-64 CPUs with
//! AVX512-BF16: `vdpbf16ps` adds, in each of 16 f32 lanes, the products of two bf16 pairs.
//! The f32 operand is rounded to bf16 (to nearest even) once per product, as autocast does;
//! the bf16 matrix is packed by the task that uses it, a panel of [`NR`] result columns at a
//! time with each pair of its reduction index side by side, so one layout serves `x Wᵀ` and
//! `d_y W` of a row-major `W`. Each task owns a block of rows and of column panels of the
//! result ([`TaskGrid`]). Callers check
//! [`available`] first; the frozen base takes this path on flex when the start-up probe
//! (`bf16_probe`) finds it faster than f32 products.

use std::mem::MaybeUninit;
use std::ops::Range;

use burn::tensor::{DType, Tensor};
use half::bf16;
use multiversion::multiversion;
use rayon::prelude::*;

use super::cpu::zeros;
use super::host_tensor::{HostBf16, HostTensor, is_flex};
use super::matmul::{Read, SharedOutput};

/// Rows of the result one micro-kernel call computes.
const MR: usize = 12;
/// Columns of the result one micro-kernel call computes (two registers of 16 lanes).
const NR: usize = 32;
/// Column panels one task packs and computes, at most.
const MAX_TASK_PANELS: usize = 8;

/// Whether this CPU has AVX512-BF16 (`vdpbf16ps`), which the kernel needs.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `out = scale · a · op(b)`, or `out += …` when `accumulate`: `a` f32 `[n, depth]` row-major,
/// `b` bf16 `[rows, cols]` row-major read as `read_b` (its rows are the depth as stored, its
/// columns when transposed), `out` `[n, width]` row-major. Panics when the shapes disagree
/// or the CPU lacks AVX512-BF16 ([`available`]).
#[allow(
    clippy::too_many_arguments,
    reason = "one product's operands, shapes and mode"
)]
pub fn matmul(
    a: &[f32],
    n: usize,
    b: &[bf16],
    [rows, cols]: [usize; 2],
    read_b: Read,
    scale: f32,
    out: &mut [f32],
    accumulate: bool,
) {
    let operands = Operands::new(a, n, b, [rows, cols], read_b);
    let (depth, width) = (operands.depth, operands.width);
    assert_eq!(
        out.len(),
        n * width,
        "bf16 matmul: out is not [{n}, {width}]"
    );
    if depth == 0 && !accumulate {
        out.fill(0.0);
    }
    // SAFETY: `out` holds the `n · width` values of the result, initialized, and is borrowed
    // mutably for the whole call.
    unsafe { operands.compute(scale, out.as_mut_ptr(), accumulate) }
}

/// `scale · a · op(b)` in a new buffer, as [`matmul`] without `accumulate`: every value is
/// written once by the kernel, so the buffer is not zero-filled first.
pub fn product(
    a: &[f32],
    n: usize,
    b: &[bf16],
    dims: [usize; 2],
    read_b: Read,
    scale: f32,
) -> Vec<f32> {
    let operands = Operands::new(a, n, b, dims, read_b);
    let size = n * operands.width;
    if operands.depth == 0 {
        return zeros(size);
    }
    let mut out = Vec::with_capacity(size);
    // SAFETY: the capacity holds the `n · width` values of the result; without `accumulate`
    // the tiles only write them, each exactly once (tasks cover every row and panel, tiles
    // store every column of their block), so all are initialized before `set_len`.
    unsafe {
        operands.compute(scale, out.as_mut_ptr(), false);
        out.set_len(size);
    }
    out
}

/// The operands of one product, their lengths and the CPU checked.
struct Operands<'a> {
    a: &'a [f32],
    n: usize,
    b: &'a [bf16],
    dims: [usize; 2],
    read_b: Read,
    /// The reduction's length.
    depth: usize,
    /// Columns of the result.
    width: usize,
}

impl<'a> Operands<'a> {
    /// `a` `[n, depth]` and `b` `[rows, cols]` read as `read_b`; panics when their lengths
    /// disagree with the shapes or the CPU lacks AVX512-BF16.
    fn new(a: &'a [f32], n: usize, b: &'a [bf16], [rows, cols]: [usize; 2], read_b: Read) -> Self {
        assert!(available(), "bf16 matmul: this CPU lacks AVX512-BF16");
        let (depth, width) = depth_and_width(read_b, [rows, cols]);
        assert_eq!(a.len(), n * depth, "bf16 matmul: a is not [{n}, {depth}]");
        assert_eq!(
            b.len(),
            rows * cols,
            "bf16 matmul: b is not [{rows}, {cols}]"
        );
        Self {
            a,
            n,
            b,
            dims: [rows, cols],
            read_b,
            depth,
            width,
        }
    }

    /// `scale · a · op(b)` into `out`, or added to it when `accumulate`, in parallel tasks.
    ///
    /// # Safety
    /// `out` must be valid for writes of the `[n, width]` result (and reads, initialized, when
    /// `accumulate`), and nothing else may access it during the call.
    unsafe fn compute(&self, scale: f32, out: *mut f32, accumulate: bool) {
        let Self {
            a,
            n,
            b,
            dims: [rows, cols],
            read_b,
            depth,
            width,
        } = *self;
        if n == 0 || width == 0 || depth == 0 {
            return;
        }
        let pairs = depth.div_ceil(2);
        let a_pairs = pack_rows(a, n, depth);
        let grid = TaskGrid::new(n, width.div_ceil(NR));
        let shared = SharedOutput(out);
        (0..grid.tasks()).into_par_iter().for_each(|task| {
            let (row_range, panel_range) = grid.task(task);
            let mut packed = vec![0u32; panel_range.len() * pairs * NR];
            let buffers = packed.chunks_exact_mut(pairs * NR);
            for (panel, buffer) in panel_range.clone().zip(buffers) {
                pack_panel(b, [rows, cols], read_b, panel * NR, pairs, buffer);
            }
            for row in row_range.clone().step_by(MR) {
                for (panel, buffer) in panel_range.clone().zip(packed.chunks_exact(pairs * NR)) {
                    let column = panel * NR;
                    let tile = Tile {
                        rows: MR.min(row_range.end - row),
                        cols: NR.min(width - column),
                        pairs,
                        scale,
                        accumulate,
                    };
                    // SAFETY: the tile writes rows `row..row + tile.rows` (inside `row_range`,
                    // < n) and columns `column..column + tile.cols` (<= width) of the `[n, width]`
                    // output, which the caller lets us write (and read when accumulating); no
                    // other task touches them (tasks own disjoint blocks of rows and panels).
                    // `a_pairs` holds `n` rows of `pairs` pairs and `buffer` `pairs · NR` values,
                    // so every read is inside them.
                    unsafe {
                        tile.run(
                            &a_pairs[row * pairs..],
                            buffer,
                            shared.get().add(row * width + column),
                            width,
                        )
                    };
                }
            }
        });
    }
}

/// `(depth, width)` of `op(b)` for `b` `[rows, cols]` read as `read_b`.
fn depth_and_width(read_b: Read, [rows, cols]: [usize; 2]) -> (usize, usize) {
    match read_b {
        Read::AsIs => (rows, cols),
        Read::Transposed => (cols, rows),
    }
}

/// The tasks of one product: groups of column panels (each task packs its own), and where
/// there are too few of them to keep every core busy (a narrow output: k/v projections),
/// blocks of rows as well.
struct TaskGrid {
    /// Panels per group.
    group: usize,
    /// Panel groups.
    groups: usize,
    /// Rows per block (a multiple of [`MR`]).
    block: usize,
    /// Row blocks.
    blocks: usize,
    rows: usize,
    panels: usize,
}

impl TaskGrid {
    /// About four tasks per core for `rows` rows and `panels` panels.
    fn new(rows: usize, panels: usize) -> Self {
        let wanted = 4 * rayon::current_num_threads();
        let group = panels.div_ceil(wanted).clamp(1, MAX_TASK_PANELS);
        let groups = panels.div_ceil(group);
        let tiles = rows.div_ceil(MR);
        let block = tiles.div_ceil(wanted.div_ceil(groups).min(tiles)) * MR;
        Self {
            group,
            groups,
            block,
            blocks: rows.div_ceil(block),
            rows,
            panels,
        }
    }

    fn tasks(&self) -> usize {
        self.groups * self.blocks
    }

    /// The rows and the panels of task `task`.
    fn task(&self, task: usize) -> (Range<usize>, Range<usize>) {
        let (block, group) = (task / self.groups, task % self.groups);
        let rows = block * self.block..(block * self.block + self.block).min(self.rows);
        let panels = group * self.group..(group * self.group + self.group).min(self.panels);
        (rows, panels)
    }
}

/// Whether [`tensor_product`] computes `a · op(b)`: `b` is a bf16 flex tensor, `a` is
/// not tracked by autodiff, and the CPU has AVX512-BF16.
pub fn applies(a: &Tensor<2>, b: &Tensor<2>) -> bool {
    b.dtype() == DType::BF16 && is_flex(&b.device()) && !a.is_autodiff() && available()
}

/// `scale · a · op(b)`, plus `acc` when given (`[rows of a, columns of op(b)]`), for `a` and
/// `b` where [`applies`] holds; returned in f32.
pub fn tensor_product(
    a: Tensor<2>,
    b: Tensor<2>,
    read_b: Read,
    scale: f32,
    acc: Option<Tensor<2>>,
) -> Tensor<2> {
    let a = HostTensor::of(a);
    let b = HostBf16::of(b).expect("tensor_product: b is a bf16 flex tensor");
    let n = a.dims()[0];
    let (_, width) = depth_and_width(read_b, b.dims());
    let (values, dims) = (b.values(), b.dims());
    let Some(acc) = acc else {
        let out = product(a.values(), n, values, dims, read_b, scale);
        return HostTensor::new_like(&a, out, [n, width]).into_tensor();
    };
    let mut out = HostTensor::of(acc);
    assert_eq!(out.dims(), [n, width], "tensor_product: accumulator shape");
    let values_out = out.values_mut();
    matmul(a.values(), n, values, dims, read_b, scale, values_out, true);
    out.into_tensor()
}

/// The f32 bits of `value` rounded to the nearest bf16 (ties to even), in the low 16 bits;
/// NaN stays NaN. Written without branches, so that loops over it vectorize.
fn bf16_bits(value: f32) -> u32 {
    let bits = value.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let quiet_nan = (bits >> 16) | 0x40;
    if value.is_nan() { quiet_nan } else { rounded }
}

/// Two bf16 values as one pair (`low` in the low half), the bits `vdpbf16ps` reads.
fn pair(low: u16, high: u16) -> u32 {
    u32::from(low) | (u32::from(high) << 16)
}

/// Rows of `a` (`[n, depth]`, depth > 0) rounded to bf16 as pairs, one `u32` per pair (the
/// even index in the low half), an odd depth padded with zero.
fn pack_rows(a: &[f32], n: usize, depth: usize) -> Vec<u32> {
    let pairs = depth.div_ceil(2);
    let mut packed = Vec::with_capacity(n * pairs);
    packed.spare_capacity_mut()[..n * pairs]
        .par_chunks_mut(pairs)
        .zip(a.par_chunks(depth))
        .for_each(|(out, row)| round_pairs(row, out));
    // SAFETY: `round_pairs` wrote all `pairs` values of each of the `n` rows.
    unsafe { packed.set_len(n * pairs) };
    packed
}

/// `row` rounded to bf16 as pairs into `out`, all `row.len().div_ceil(2)` of them (an odd
/// length's last pair has a zero high half).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn round_pairs(row: &[f32], out: &mut [MaybeUninit<u32>]) {
    assert_eq!(
        out.len(),
        row.len().div_ceil(2),
        "round_pairs: out's length"
    );
    let (even, last) = row.split_at(row.len() & !1);
    for (out, two) in out.iter_mut().zip(even.chunks_exact(2)) {
        out.write(pair(bf16_bits(two[0]) as u16, bf16_bits(two[1]) as u16));
    }
    if let [odd] = last {
        out[even.len() / 2].write(pair(bf16_bits(*odd) as u16, 0));
    }
}

/// Columns `column..column + NR` of `op(b)` into `out` (`[pairs, NR]` pairs): entry
/// `(p, c)` holds `op(b)[2p, column + c]` in its low half and `op(b)[2p + 1, column + c]` in
/// its high half; columns past the matrix and an odd depth's last pair are zero. Only
/// `Operands::compute` calls it, after `Operands::new` checked the CPU has AVX512-BF16.
fn pack_panel(
    b: &[bf16],
    [rows, cols]: [usize; 2],
    read_b: Read,
    column: usize,
    pairs: usize,
    out: &mut [u32],
) {
    match read_b {
        // op(b)[d, c] = b[c, d]: a pair is two neighbours in row `c` of `b`.
        Read::Transposed => {
            let panel_rows: Vec<&[bf16]> = (column..rows.min(column + NR))
                .map(|row| &b[row * cols..][..cols])
                .collect();
            // Whole blocks of 16 pairs transposed in registers, the rest one pair at a time.
            let blocks = cols / 2 / x86::BLOCK_PAIRS;
            // SAFETY: `Operands::new` checked AVX512-BF16 (which implies AVX-512F); every row holds
            // `cols` ≥ `blocks · 2 · BLOCK_PAIRS` values, and `out` `pairs · NR` with
            // `pairs` ≥ `blocks · BLOCK_PAIRS`.
            unsafe { x86::pack_transposed_blocks(&panel_rows, blocks, out) };
            let done = blocks * x86::BLOCK_PAIRS;
            for (c, row) in panel_rows.iter().enumerate() {
                let (even, last) = row.split_at(cols & !1);
                let column_out = out.iter_mut().skip(done * NR + c).step_by(NR);
                for (out, two) in column_out.zip(even[2 * done..].chunks_exact(2)) {
                    *out = pair(two[0].to_bits(), two[1].to_bits());
                }
                if let [odd] = last {
                    out[even.len() / 2 * NR + c] = pair(odd.to_bits(), 0);
                }
            }
        }
        // op(b)[d, c] = b[d, c]: a pair is the same column of two neighbouring rows (the
        // row past an odd depth reads as zero).
        Read::AsIs => {
            let width = NR.min(cols.saturating_sub(column));
            for (p, out) in out.chunks_exact_mut(NR).take(pairs).enumerate() {
                let even = &b[2 * p * cols + column..][..width];
                match 2 * p + 1 < rows {
                    true => {
                        let odd = &b[(2 * p + 1) * cols + column..][..width];
                        for ((out, low), high) in out.iter_mut().zip(even).zip(odd) {
                            *out = pair(low.to_bits(), high.to_bits());
                        }
                    }
                    false => {
                        for (out, low) in out.iter_mut().zip(even) {
                            *out = pair(low.to_bits(), 0);
                        }
                    }
                }
            }
        }
    }
}

/// One micro-kernel call: a `[rows, cols]` block of the result (rows ≤ [`MR`], cols ≤ [`NR`])
/// over `pairs` pairs of the depth.
struct Tile {
    rows: usize,
    cols: usize,
    pairs: usize,
    scale: f32,
    accumulate: bool,
}

impl Tile {
    /// Computes the block from `a` (rows of `pairs` pairs, the first `rows` of them used) and
    /// the packed panel `b` into `out` (rows `out_stride` apart).
    ///
    /// # Safety
    /// `out` must be valid for reads and writes of `rows` rows of `cols` values, rows
    /// `out_stride` apart, that nothing else accesses meanwhile; `a` must hold at least
    /// `rows · pairs` values and `b` `pairs · NR`; the CPU must have AVX512-BF16.
    unsafe fn run(&self, a: &[u32], b: &[u32], out: *mut f32, out_stride: usize) {
        assert!(a.len() >= self.rows * self.pairs && b.len() >= self.pairs * NR);
        macro_rules! rows {
            ($($r:literal)*) => {
                match self.rows {
                    // SAFETY: the caller's conditions, the lengths asserted above.
                    $($r => unsafe { x86::tile::<$r>(self, a, b, out, out_stride) },)*
                    other => unreachable!("a tile of {other} rows"),
                }
            };
        }
        rows!(1 2 3 4 5 6 7 8 9 10 11 12)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{NR, Tile};

    /// [`Tile::run`] for `R` rows: `2R` accumulators of 16 lanes, each step of the depth one
    /// pair of `a` broadcast per row and two registers of the panel.
    ///
    /// # Safety
    /// As [`Tile::run`], with `R == tile.rows`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile<const R: usize>(
        tile: &Tile,
        a: &[u32],
        b: &[u32],
        out: *mut f32,
        out_stride: usize,
    ) {
        let pairs = tile.pairs;
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for p in 0..pairs {
            // SAFETY: `b` holds `pairs · NR` values (caller), so both loads are inside it.
            let (low, high) = unsafe {
                let at = b.as_ptr().add(p * NR);
                (
                    bh(_mm512_loadu_si512(at.cast())),
                    bh(_mm512_loadu_si512(at.add(16).cast())),
                )
            };
            for (r, sums) in acc.iter_mut().enumerate() {
                // SAFETY: r < R rows of `pairs` values, p < pairs: inside `a` (caller).
                let pair = unsafe { *a.get_unchecked(r * pairs + p) };
                let x = bh(_mm512_set1_epi32(pair as i32));
                sums[0] = _mm512_dpbf16_ps(sums[0], x, low);
                sums[1] = _mm512_dpbf16_ps(sums[1], x, high);
            }
        }
        let scale = _mm512_set1_ps(tile.scale);
        let masks = [
            lanes(tile.cols.min(16)),
            lanes(tile.cols.saturating_sub(16)),
        ];
        for (r, sums) in acc.iter().enumerate() {
            for (half, (&sum, &mask)) in sums.iter().zip(&masks).enumerate() {
                if mask == 0 {
                    continue;
                }
                // SAFETY: row r < rows, and the half has a column inside the block (its mask
                // is not empty), so the pointer lies inside the block the caller lets us read
                // and write; the lanes are masked to the block's `cols` columns.
                unsafe {
                    let at = out.add(r * out_stride + 16 * half);
                    let mut value = _mm512_mul_ps(sum, scale);
                    if tile.accumulate {
                        value = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), value);
                    }
                    _mm512_mask_storeu_ps(at, mask, value);
                }
            }
        }
    }

    /// Pairs of the depth one register transpose packs (16 lanes of pairs).
    pub(super) const BLOCK_PAIRS: usize = 16;

    /// The first `blocks · 16` pairs of a transposed panel into `out` (`[pairs, NR]`): entry
    /// `(p, c)` is pair `p` of `rows[c]` (bf16 values `2p`, `2p + 1`); panel columns past
    /// `rows.len()` are left as they are. Each 16 × 16 block of pairs is transposed in
    /// registers: 32-bit and 64-bit unpacks, then two rounds of 128-bit lane shuffles.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `rows.len()` ≤ [`NR`], every row must hold at least
    /// `blocks · 32` values, and `out` at least `blocks · 16 · NR`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_transposed_blocks(
        rows: &[&[half::bf16]],
        blocks: usize,
        out: &mut [u32],
    ) {
        assert!(rows.len() <= NR && out.len() >= blocks * BLOCK_PAIRS * NR);
        assert!(rows.iter().all(|row| row.len() >= blocks * 2 * BLOCK_PAIRS));
        for (half, rows) in rows.chunks(16).enumerate() {
            for block in 0..blocks {
                let mut r = [_mm512_setzero_si512(); 16];
                for (r, row) in r.iter_mut().zip(rows) {
                    // SAFETY: the row holds 32 values from `block · 32` (asserted above).
                    *r = unsafe { _mm512_loadu_si512(row.as_ptr().add(block * 32).cast()) };
                }
                let columns = transpose(r);
                for (p, column) in columns.into_iter().enumerate() {
                    let at = (block * BLOCK_PAIRS + p) * NR + 16 * half;
                    // SAFETY: `at + 16` ≤ `blocks · 16 · NR` ≤ `out.len()` (asserted above).
                    unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(at).cast(), column) };
                }
            }
        }
    }

    /// The transpose of a 16 × 16 matrix of 32-bit values held as 16 rows.
    #[target_feature(enable = "avx512f")]
    fn transpose(r: [__m512i; 16]) -> [__m512i; 16] {
        // t[2i], t[2i + 1]: rows 2i and 2i + 1 interleaved, per 128-bit lane L the columns
        // 4L, 4L + 1 and 4L + 2, 4L + 3.
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        // u[4g + j]: per lane L, column 4L + j of rows 4g..4g + 4.
        let mut u = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
            u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
            u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
            u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
        }
        // v[h][j] (h: rows 8h..8h + 8): lanes of columns j, 8 + j (`even`) and 4 + j, 12 + j
        // (`odd`), each for rows 8h..8h + 4 then 8h + 4..8h + 8.
        let mut even = [[_mm512_setzero_si512(); 4]; 2];
        let mut odd = [[_mm512_setzero_si512(); 4]; 2];
        for h in 0..2 {
            for j in 0..4 {
                let (a, b) = (u[8 * h + j], u[8 * h + 4 + j]);
                even[h][j] = _mm512_shuffle_i32x4::<0x88>(a, b);
                odd[h][j] = _mm512_shuffle_i32x4::<0xdd>(a, b);
            }
        }
        let mut columns = [_mm512_setzero_si512(); 16];
        for j in 0..4 {
            columns[j] = _mm512_shuffle_i32x4::<0x88>(even[0][j], even[1][j]);
            columns[8 + j] = _mm512_shuffle_i32x4::<0xdd>(even[0][j], even[1][j]);
            columns[4 + j] = _mm512_shuffle_i32x4::<0x88>(odd[0][j], odd[1][j]);
            columns[12 + j] = _mm512_shuffle_i32x4::<0xdd>(odd[0][j], odd[1][j]);
        }
        columns
    }

    /// The mask of the first `count` (≤ 16) lanes.
    fn lanes(count: usize) -> __mmask16 {
        ((1u32 << count) - 1) as __mmask16
    }

    /// Sixteen pairs of bf16 as the type `vdpbf16ps` takes.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn bh(v: __m512i) -> __m512bh {
        // SAFETY: both are 512-bit vectors of plain bits.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    use super::Tile;

    /// Never called: [`super::available`] is false on other architectures.
    pub(super) unsafe fn tile<const R: usize>(
        _: &Tile,
        _: &[u32],
        _: &[u32],
        _: *mut f32,
        _: usize,
    ) {
        unreachable!("bf16 products need x86-64 with AVX512-BF16")
    }

    /// As on x86-64: `pack_panel`'s arithmetic compiles everywhere.
    pub(super) const BLOCK_PAIRS: usize = 16;

    /// Never called: [`super::available`] is false on other architectures.
    pub(super) unsafe fn pack_transposed_blocks(_: &[&[half::bf16]], _: usize, _: &mut [u32]) {
        unreachable!("bf16 products need x86-64 with AVX512-BF16")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::bf16_probe::filler as values;

    /// `op(b)` with both operands rounded to bf16, summed in f64: what the kernel computes
    /// up to the order of its f32 sums.
    fn reference(
        a: &[f32],
        n: usize,
        b: &[f32],
        [rows, cols]: [usize; 2],
        read_b: Read,
    ) -> Vec<f32> {
        let round = |v: f32| bf16::from_f32(v).to_f32() as f64;
        let (depth, width) = depth_and_width(read_b, [rows, cols]);
        let at = |d: usize, c: usize| match read_b {
            Read::AsIs => b[d * cols + c],
            Read::Transposed => b[c * cols + d],
        };
        let mut out = vec![0f32; n * width];
        for i in 0..n {
            for c in 0..width {
                let dot: f64 = (0..depth)
                    .map(|d| round(a[i * depth + d]) * round(at(d, c)))
                    .sum();
                out[i * width + c] = dot as f32;
            }
        }
        out
    }

    #[test]
    fn rounding_to_bf16_matches_the_half_crate() {
        let ties = [
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            -(1.0 + 2f32.powi(-8)),
        ];
        let special = [
            0.0,
            -0.0,
            1e-40,
            -1e-40,
            f32::MAX,
            f32::INFINITY,
            -f32::INFINITY,
        ];
        let mut row = values(4000, 3);
        row.extend(ties.into_iter().chain(special));
        for &v in &row {
            assert_eq!(bf16_bits(v) as u16, bf16::from_f32(v).to_bits(), "{v}");
        }
        assert!(bf16::from_bits(bf16_bits(f32::NAN) as u16).is_nan());
        // The vectorized row rounding (odd length: the last pair's high half is zero).
        row.push(-f32::NAN);
        let mut pairs = vec![MaybeUninit::new(u32::MAX); row.len().div_ceil(2)];
        round_pairs(&row, &mut pairs);
        // SAFETY: every element was initialized (and then rewritten by `round_pairs`).
        let pairs: Vec<u32> = pairs.iter().map(|p| unsafe { p.assume_init() }).collect();
        for (i, &v) in row.iter().enumerate() {
            let half = (pairs[i / 2] >> (16 * (i % 2))) as u16;
            assert_eq!(half, bf16_bits(v) as u16, "{v} at {i}");
        }
        assert!(bf16::from_bits((pairs[row.len() / 2] & 0xffff) as u16).is_nan());
        assert_eq!(pairs[row.len() / 2] >> 16, 0, "an odd row's last high half");
    }

    #[test]
    fn products_equal_the_bf16_rounded_reference() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX512-BF16, which the bf16 kernel needs");
            return;
        }
        // Odd depths, widths that are not whole panels, row counts that are not whole tiles,
        // tasks of several panels with a shorter last one (330 columns: 11 panels), narrow
        // outputs split into blocks of rows (a few panels, 200 rows), a depth of zero; read
        // transposed, depths of whole 16-pair register blocks (64, 96) with panels of 8 and
        // 20 rows, and of whole blocks plus a rest (33, 70, 97).
        let shapes = [
            [9, 40, 64],
            [5, 20, 96],
            [1, 7, 5],
            [13, 64, 33],
            [30, 129, 70],
            [25, 40, 97],
            [17, 330, 40],
            [200, 48, 40],
            [3, 0, 6],
        ];
        for [n, rows, cols] in shapes {
            let b32 = values(rows * cols, 1);
            let b: Vec<bf16> = b32.iter().map(|&v| bf16::from_f32(v)).collect();
            for read_b in [Read::AsIs, Read::Transposed] {
                let (depth, width) = depth_and_width(read_b, [rows, cols]);
                let a = values(n * depth, 2);
                let want = reference(&a, n, &b32, [rows, cols], read_b);
                let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
                let mut out = values(n * width, 5);
                let before = out.clone();
                matmul(&a, n, &b, [rows, cols], read_b, 0.5, &mut out, true);
                for ((got, want), old) in out.iter().zip(&want).zip(&before) {
                    let want = old + 0.5 * want;
                    assert!(
                        (got - want).abs() <= 1e-5 * scale,
                        "{read_b:?} {n}x{rows}x{cols}: {got} vs {want}"
                    );
                }
                matmul(&a, n, &b, [rows, cols], read_b, 1.0, &mut out, false);
                for (got, want) in out.iter().zip(&want) {
                    assert!(
                        (got - want).abs() <= 1e-5 * scale,
                        "{read_b:?} {n}x{rows}x{cols}: {got} vs {want}"
                    );
                }
                // A new buffer, never zero-filled: the same values, bit for bit.
                let fresh = product(&a, n, &b, [rows, cols], read_b, 1.0);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&fresh), bits(&out), "{read_b:?} {n}x{rows}x{cols}");
            }
        }
    }

    #[cfg(feature = "flex")]
    #[test]
    fn tensor_products_read_strided_matrices_and_add_to_the_accumulator() {
        use burn::tensor::TensorData;
        if !available() {
            eprintln!("skipped: this CPU lacks AVX512-BF16, which the bf16 kernel needs");
            return;
        }
        let device = burn::tensor::Device::flex();
        let [n, k, m] = [9, 37, 45];
        let (a32, w32, acc32) = (values(n * k, 1), values(k * m, 2), values(n * m, 3));
        let tensor = |v: &[f32], dims: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), dims), &device)
        };
        // `w` stored `[k, m]`, handed over as its transposed view `[m, k]`, read transposed:
        // the product is `a · w`.
        let w = tensor(&w32, [k, m]).cast(DType::BF16).transpose();
        let (a, acc) = (tensor(&a32, [n, k]), tensor(&acc32, [n, m]));
        assert!(applies(&a, &w));
        let got = tensor_product(a, w, Read::Transposed, 2.0, Some(acc));
        let got = got.into_data().try_to_vec::<f32>().unwrap();
        let want = reference(&a32, n, &w32, [k, m], Read::AsIs);
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        for ((got, want), acc) in got.iter().zip(&want).zip(&acc32) {
            let want = acc + 2.0 * want;
            assert!((got - want).abs() <= 2e-5 * scale, "{got} vs {want}");
        }
    }
}
