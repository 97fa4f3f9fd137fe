//! The `feinschliff` command line: parses arguments and hands each subcommand to its module in
//! `commands/`, which calls the libraries and prints results.

mod commands;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand};
use signal_hook::consts::SIGXFSZ;

/// LoRA fine-tuning of Llama-family models on Burn, with exports that PEFT and transformers load.
#[derive(Parser)]
#[command(name = "feinschliff", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mean token loss and perplexity over a data file or a run's validation split.
    ///
    /// With --data (.jsonl, .json, .parquet or .csv): each record's text is tokenized on its
    /// own (with the tokenizer's own BOS handling), cut to the first --max-len tokens, and every
    /// token after the first is scored. With --config: the configuration's validation split,
    /// scored exactly as training scores it (its format and trained tokens). The loss is the
    /// mean over all scored tokens.
    Eval(commands::eval::EvalArgs),
    /// Generate text from a prompt (KV cache; stops at any EOS id).
    Generate(commands::generate::GenerateArgs),
    /// Convert a Llama GGUF file (llama.cpp) into a Hugging Face model directory.
    ///
    /// Writes config.json, generation_config.json, model.safetensors, tokenizer.json and
    /// tokenizer_config.json (with the GGUF's chat template). Quantized tensors (Q8_0, Q4_0,
    /// Q4_1, Q4_K, Q5_K, Q6_K) are dequantized. OUT_DIR must not exist; nothing is left under
    /// its name if the import fails.
    ImportGguf(commands::import_gguf::ImportGgufArgs),
    /// Train LoRA adapters as a TOML run configuration says (see configs/).
    ///
    /// Writes into output.run_dir: config.toml (the resolved configuration), metrics.jsonl,
    /// checkpoints/step-N/ (each a PEFT adapter directory plus optimizer state), loss.png and
    /// summary.json (also printed on stdout as one JSON object). Every key is listed in
    /// docs/configuration.md. Ctrl-C/SIGTERM: finishes the step, writes a checkpoint, exits
    /// 130/143; continue with --resume.
    Train(commands::train::TrainArgs),
    /// Measure training speed and memory of a run configuration.
    ///
    /// Runs --warmup + --steps optimizer steps exactly as `train` would (same model, data,
    /// micro-batch, accumulation, LoRA and optimizer settings) but writes no run directory,
    /// evaluates nothing and saves no checkpoint. Prints the median tokens per second of the
    /// measured steps, the split of a step into forward, backward and optimizer time, and the
    /// process's peak RSS; --json prints one JSON object on stdout instead.
    Bench(commands::bench::BenchArgs),
    /// Export what a run trained.
    #[command(subcommand)]
    Export(commands::export::ExportCommand),
    /// Look at training data as the trainer sees it.
    #[command(subcommand)]
    Data(DataCommand),
}

#[derive(Subcommand)]
enum DataCommand {
    /// Show training examples with their trained tokens marked, and the data's counts.
    ///
    /// Prints the first examples with their trained tokens marked (green on a terminal, [[…]]
    /// otherwise) and the counts of both splits: records, examples, tokens, trained tokens,
    /// truncated and dropped records, packing efficiency. Fills the token cache. See
    /// docs/data.md.
    Inspect(commands::inspect::InspectArgs),
}

/// jemalloc keeps freed memory for reuse for a while; glibc's malloc hands every large tensor
/// buffer back to the kernel on free, and the next allocation of it page-faults on fresh
/// zeroed pages (28 % of a training step in `perf`).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options: large buffers come from the ordinary arenas (not the oversize
/// arena, which returns them to the kernel at once) and freed pages are kept for reuse, so the
/// peak RSS is the peak of live tensors and steady-state steps do not page-fault. `thp:always`
/// asks for transparent huge pages and, as a side effect we rely on, makes jemalloc zero a
/// recycled buffer for `calloc` with `memset` instead of `madvise(MADV_DONTNEED)`: burn-flex
/// allocates every output zeroed, and handing those pages back to the kernel cost a page fault
/// per 4 KiB and a TLB shootdown on every core, a third of a training step (72 → 106 tok/s).
#[cfg(all(not(target_env = "msvc"), not(target_os = "macos")))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: JemallocConf =
    JemallocConf(c"oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1,thp:always".as_ptr());

/// A C string pointer jemalloc reads once at start-up.
#[repr(transparent)]
struct JemallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a static, immutable C string.
unsafe impl Sync for JemallocConf {}

/// Hands the pages jemalloc keeps of freed buffers (`dirty_decay_ms:-1` above) back to the
/// kernel, in every arena: called once a model is loaded, so the temporaries of its conversion
/// do not stay resident for the whole run.
#[cfg(not(target_env = "msvc"))]
fn purge_freed_pages() {
    /// jemalloc's `MALLCTL_ARENAS_ALL`.
    const ALL_ARENAS_PURGE: &std::ffi::CStr = c"arena.4096.purge";
    // SAFETY: a documented mallctl name that takes and returns nothing; a failure (an unknown
    // name) only leaves the pages resident.
    unsafe {
        use std::ptr::null_mut;
        tikv_jemalloc_sys::mallctl(
            ALL_ARENAS_PURGE.as_ptr(),
            null_mut(),
            null_mut(),
            null_mut(),
            0,
        );
    }
}

fn main() -> ExitCode {
    #[cfg(not(target_env = "msvc"))]
    feinschliff_model::memory::set_release_freed(purge_freed_pages);
    // Past a file-size limit (RLIMIT_FSIZE) the kernel would kill us with SIGXFSZ; with the
    // signal caught, the write fails with EFBIG instead and is reported like a full disk.
    if let Err(error) = signal_hook::flag::register(SIGXFSZ, Arc::new(AtomicBool::new(false))) {
        eprintln!("warning: cannot catch SIGXFSZ: {error}");
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Eval(args) => commands::eval::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::ImportGguf(args) => commands::import_gguf::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Export(command) => commands::export::run(command),
        Command::Data(DataCommand::Inspect(args)) => commands::inspect::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks of the command line (names that `requires`,
    /// `conflicts_with` and `required_unless_present` refer to exist, ...), which a release
    /// build would otherwise never run.
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
