//! A curve of a run as a PNG, the loss by default: the training value per step (blue line)
//! and the validation value (red squares) over the steps, with numbered axes. Drawn directly
//! into an RGB buffer with a small built-in 5×7 font, so it needs no font files or plotting
//! stack.

use std::path::Path;

use feinschliff_data::atomic_file::write_file_atomic;

use crate::Error;

const WIDTH: usize = 800;
const HEIGHT: usize = 500;
const LEFT: usize = 80;
const RIGHT: usize = 20;
const TOP: usize = 30;
const BOTTOM: usize = 50;
const SCALE: usize = 2;
const BLUE: [u8; 3] = [31, 90, 200];
const RED: [u8; 3] = [210, 40, 40];
const GREY: [u8; 3] = [200, 200, 200];
const BLACK: [u8; 3] = [0, 0, 0];

/// Writes the loss curve of `train` (step, loss) and `eval` (step, loss) points to `path`.
pub fn write_loss_plot(
    path: &Path,
    train: &[(f64, f64)],
    eval: &[(f64, f64)],
) -> Result<(), Error> {
    write_curve_plot(path, "loss", train, eval)
}

/// Writes the curve of `train` (step, value) and `eval` (step, value) points to `path`, the
/// y axis named `what`.
pub fn write_curve_plot(
    path: &Path,
    what: &str,
    train: &[(f64, f64)],
    eval: &[(f64, f64)],
) -> Result<(), Error> {
    let mut canvas = Canvas::new();
    let all = train.iter().chain(eval);
    let (x_max, mut y_min, mut y_max) = all.fold(
        (1.0f64, f64::INFINITY, f64::NEG_INFINITY),
        |(x, lo, hi), &(s, l)| (x.max(s), lo.min(l), hi.max(l)),
    );
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let (y_min, y_max) = (y_min - pad, y_max + pad);
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let px = |step: f64| LEFT as f64 + step / x_max * plot_w as f64;
    let py = |loss: f64| TOP as f64 + (y_max - loss) / (y_max - y_min) * plot_h as f64;

    for i in 0..=5 {
        let f = i as f64 / 5.0;
        let (x, y) = (px(f * x_max), py(y_min + f * (y_max - y_min)));
        canvas.line(x, TOP as f64, x, (TOP + plot_h) as f64, GREY);
        canvas.line(LEFT as f64, y, (LEFT + plot_w) as f64, y, GREY);
        let x_label = format!("{}", (f * x_max).round() as u64);
        canvas.text(
            x as usize - x_label.len() * 3 * SCALE,
            TOP + plot_h + 8,
            &x_label,
            BLACK,
        );
        let y_label = format!("{:.3}", y_min + f * (y_max - y_min));
        canvas.text(
            LEFT - 8 - y_label.len() * 6 * SCALE,
            y as usize - 7,
            &y_label,
            BLACK,
        );
    }
    canvas.line(
        LEFT as f64,
        TOP as f64,
        LEFT as f64,
        (TOP + plot_h) as f64,
        BLACK,
    );
    canvas.line(
        LEFT as f64,
        (TOP + plot_h) as f64,
        (LEFT + plot_w) as f64,
        (TOP + plot_h) as f64,
        BLACK,
    );
    canvas.text(LEFT + plot_w / 2 - 24, HEIGHT - 18, "step", BLACK);
    canvas.text(8, 8, what, BLACK);

    for pair in train.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        canvas.thick_line(px(a.0), py(a.1), px(b.0), py(b.1), BLUE);
    }
    if let [only] = train {
        canvas.square(px(only.0), py(only.1), BLUE);
    }
    for &(step, loss) in eval {
        canvas.square(px(step), py(loss), RED);
    }
    let legend_x = LEFT + plot_w - 150;
    canvas.thick_line(legend_x as f64, 16.0, (legend_x + 24) as f64, 16.0, BLUE);
    canvas.text(legend_x + 30, 9, "train", BLACK);
    canvas.square((legend_x + 100) as f64, 16.0, RED);
    canvas.text(legend_x + 110, 9, "eval", BLACK);
    canvas.save(path)
}

struct Canvas {
    pixels: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self {
            pixels: vec![255; WIDTH * HEIGHT * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, color: [u8; 3]) {
        if (0..WIDTH as i64).contains(&x) && (0..HEIGHT as i64).contains(&y) {
            let at = (y as usize * WIDTH + x as usize) * 3;
            self.pixels[at..at + 3].copy_from_slice(&color);
        }
    }

    fn line(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, color: [u8; 3]) {
        let steps = (x1 - x0).abs().max((y1 - y0).abs()).ceil().max(1.0) as usize;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            self.set(
                (x0 + t * (x1 - x0)).round() as i64,
                (y0 + t * (y1 - y0)).round() as i64,
                color,
            );
        }
    }

    fn thick_line(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, color: [u8; 3]) {
        for (dx, dy) in [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)] {
            self.line(x0 + dx, y0 + dy, x1 + dx, y1 + dy, color);
        }
    }

    fn square(&mut self, x: f64, y: f64, color: [u8; 3]) {
        for dy in -3..=3 {
            for dx in -3..=3 {
                self.set(x.round() as i64 + dx, y.round() as i64 + dy, color);
            }
        }
    }

    fn text(&mut self, x: usize, y: usize, text: &str, color: [u8; 3]) {
        for (i, c) in text.chars().enumerate() {
            let rows = glyph(c);
            for (row, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (1 << (4 - col)) != 0 {
                        for sy in 0..SCALE {
                            for sx in 0..SCALE {
                                let gx = x + (i * 6 + col) * SCALE + sx;
                                self.set(gx as i64, (y + row * SCALE + sy) as i64, color);
                            }
                        }
                    }
                }
            }
        }
    }

    fn save(&self, path: &Path) -> Result<(), Error> {
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, WIDTH as u32, HEIGHT as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let fail = |e: png::EncodingError| Error::invalid(path, format!("cannot write PNG: {e}"));
        let mut writer = encoder.write_header().map_err(fail)?;
        writer.write_image_data(&self.pixels).map_err(fail)?;
        writer.finish().map_err(fail)?;
        write_file_atomic(path, &bytes)
    }
}

/// The 5×7 bitmap of a character (rows top to bottom, bit 4 = leftmost column); characters the
/// labels never use are blank.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        'a' => [0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F],
        'c' => [0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E],
        'd' => [0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F],
        'e' => [0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E],
        'g' => [0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        'i' => [0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E],
        'l' => [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'm' => [0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11],
        'n' => [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11],
        'o' => [0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E],
        'p' => [0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10],
        'r' => [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10],
        's' => [0x00, 0x00, 0x0F, 0x10, 0x0E, 0x01, 0x1E],
        't' => [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06],
        'u' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D],
        'v' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'w' => [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A],
        'y' => [0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        _ => [0; 7],
    }
}
