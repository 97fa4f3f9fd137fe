//! `feinschliff import-gguf`: a Llama GGUF file becomes a Hugging Face model directory.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use feinschliff_model::io::gguf::import::import_gguf;
use feinschliff_model::io::safetensors_out::StoreDtype;

/// Arguments of `import-gguf`.
#[derive(Args)]
pub struct ImportGgufArgs {
    /// The GGUF file.
    #[arg(value_name = "FILE.gguf")]
    gguf: PathBuf,
    /// The model directory to create.
    #[arg(value_name = "OUT_DIR")]
    out_dir: PathBuf,
    /// Storage dtype of the weights written.
    #[arg(long, default_value = "f32", value_name = "f32|bf16|f16")]
    dtype: StoreDtype,
}

/// Imports the file and prints what was written.
pub fn run(args: ImportGgufArgs) -> Result<()> {
    let summary = import_gguf(&args.gguf, &args.out_dir, args.dtype)?;
    for note in &summary.notes {
        eprintln!("note: {note}");
    }
    println!(
        "wrote {} ({} tensors, {:.1} M parameters)",
        summary.out_dir.display(),
        summary.tensors,
        summary.parameters as f64 / 1e6
    );
    Ok(())
}
