//! `smmu`: runs a simulated SMMUv3 system end to end and decodes SMMUv3
//! structures.

use clap::{Parser, Subcommand};

use std::io::Read as _;
use std::process::ExitCode;

use smmu_cli::{check, decode, klog, pgtable_demo, system_demo};

/// Exit statuses, told in `--help`: a script can tell an ILLEGAL
/// structure (1) from input the tool could not read (2, as clap exits for
/// a usage error).
const AFTER_HELP: &str = "\
Words not given read as 0: a structure given short (3 of an STE's 8
words) is decoded and checked as zero-filled, and the output says so (a
`note:` line; `words_given` in --json).

Exit status:
  0  success; `check`: the structure is legal
  1  `check`: the structure is ILLEGAL (the verdict is printed);
     `demo`, `pgtable`: the run saw wrong data, a stale translation or an
     unexpected fault
  2  bad input or usage: a word that is not hex, too many words, no word,
     no event dump in a log (or one cut short), an unreadable file; the
     error is on standard error and nothing on standard output";

/// Exit status of `smmu check` for an ILLEGAL structure, and of a failed
/// `demo` or `pgtable` run.
const FAILED: u8 = 1;

/// Exit status for input the tool cannot read, and for usage errors.
const BAD_INPUT: u8 = 2;

/// Set when standard output failed for another reason than its reader
/// going away (a full disk): the run then exits [`BAD_INPUT`], not with
/// the status of a run whose output was lost.
static STDOUT_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes to standard output. A reader that went away (`smmu ... | head`)
/// is no error: the rest of the output is dropped and the run's exit
/// status stands (`println!` panicked, exit 101). Any other failure is
/// told on standard error once and makes the exit status [`BAD_INPUT`].
fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        let failed = &STDOUT_FAILED;
        if e.kind() != std::io::ErrorKind::BrokenPipe
            && !failed.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            eprintln!("error: writing standard output: {e}");
        }
    }
}

/// `println!` through [`emit`].
macro_rules! say {
    () => {
        emit(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        emit(format_args!("{}\n", format_args!($($arg)*)))
    };
}

#[derive(Parser)]
#[command(
    name = "smmu",
    version,
    about = "Arm SMMUv3 stack: simulation and decoders",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Print decode/check results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the end-to-end demonstration on the software SMMU (the default).
    Demo {
        /// Scatter-gather DMA operations to run.
        #[arg(long, default_value_t = 2000)]
        ops: u64,
        /// Make the SMMU's memory accesses coherent with the CPU caches
        /// (default: non-coherent, the stricter check).
        #[arg(long)]
        coherent: bool,
        /// Workload seed.
        #[arg(long, default_value_t = 0x5eed)]
        seed: u64,
    },
    /// Map a scatter-gather list on a non-coherent walker and report the cost.
    Pgtable,
    /// Decode hex words of an SMMUv3 structure or a page-table descriptor,
    /// or the event dumps of Linux's arm-smmu-v3 kernel log.
    Decode {
        #[command(subcommand)]
        what: DecodeWhat,
    },
    /// Say whether an STE, CD or command is legal for an SMMU and, if not,
    /// which rule it breaks (exit status 1 when illegal, 2 for bad input).
    Check {
        /// The SMMU to check against.
        #[arg(long, value_enum, default_value = "default", global = true)]
        preset: check::Preset,
        #[command(subcommand)]
        what: CheckWhat,
    },
}

#[derive(Subcommand)]
enum CheckWhat {
    /// Stream table entry: up to 8 64-bit words (the rest read as 0).
    Ste {
        /// Hex words.
        #[arg(required = true)]
        words: Vec<String>,
    },
    /// Context descriptor: up to 8 64-bit words (the rest read as 0).
    Cd {
        /// The STE it hangs under (default: a plain stage-1 STE): one
        /// value, its words separated by commas (`--ste 0x8000000b,0,0`),
        /// so it may come before or after the CD's words.
        #[arg(long, value_delimiter = ',')]
        ste: Vec<String>,
        /// Hex words.
        #[arg(required = true)]
        words: Vec<String>,
    },
    /// Command-queue entry: up to 2 64-bit words (the rest read as 0).
    Cmd {
        /// Hex words.
        #[arg(required = true)]
        words: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DecodeWhat {
    /// Stream table entry: up to 8 64-bit words, word 0 first (the rest
    /// read as 0).
    Ste {
        /// Hex words.
        #[arg(required = true)]
        words: Vec<String>,
    },
    /// Context descriptor: up to 8 64-bit words (the rest read as 0).
    Cd {
        /// Hex words.
        #[arg(required = true)]
        words: Vec<String>,
    },
    /// Command-queue entry: up to 2 64-bit words (the rest read as 0).
    Cmd {
        /// Hex words.
        #[arg(required = true)]
        words: Vec<String>,
    },
    /// Event record: up to 4 64-bit words (the rest read as 0), or pasted
    /// arm-smmu-v3 kernel log lines (read from standard input when no
    /// argument is given; a dump must have all four).
    Event {
        /// Hex words or log text.
        words: Vec<String>,
    },
    /// Every event dump in an arm-smmu-v3 kernel log (a file, or standard
    /// input when absent or `-`).
    Log {
        /// Log file.
        file: Option<std::path::PathBuf>,
    },
    /// VMSAv8-64 page-table descriptor: 1 word.
    Pte {
        /// Translation stage.
        #[arg(long, value_enum, default_value = "s1")]
        stage: decode::Stage,
        /// Level of the table holding it (0..=3).
        #[arg(long, default_value_t = 3)]
        level: u8,
        /// Granule in bytes (4096, 16384, 65536).
        #[arg(long, default_value_t = 4096)]
        granule: u64,
        /// Hex word.
        #[arg(required = true)]
        words: Vec<String>,
    },
}

/// Returns a log's text; bytes that are not UTF-8 (line noise on a
/// serial console) become U+FFFD, so they spoil their own line only.
fn log_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn stdin_text() -> Result<String, String> {
    let mut t = Vec::new();
    std::io::stdin()
        .read_to_end(&mut t)
        .map_err(|e| format!("reading standard input: {e}"))?;
    Ok(log_text(&t))
}

fn json_text(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn run_decode(what: DecodeWhat, json: bool) -> Result<(), String> {
    let e = |e: decode::DecodeError| e.to_string();
    let text = match what {
        DecodeWhat::Ste { words } if json => json_text(&decode::ste_json(&words).map_err(e)?),
        DecodeWhat::Ste { words } => decode::ste_words(&words).map_err(e)?,
        DecodeWhat::Cd { words } if json => json_text(&decode::cd_json(&words).map_err(e)?),
        DecodeWhat::Cd { words } => decode::cd_words(&words).map_err(e)?,
        DecodeWhat::Cmd { words } if json => json_text(&decode::command_json(&words).map_err(e)?),
        DecodeWhat::Cmd { words } => decode::command_words(&words).map_err(e)?,
        DecodeWhat::Event { words } => {
            let joined = words.join(" ");
            if words.is_empty() {
                decode::log(&stdin_text()?, json).map_err(e)?
            } else if klog::looks_like_log(&joined) {
                decode::log(&words.join("\n"), json).map_err(e)?
            } else if json {
                json_text(&decode::event_json(&words).map_err(e)?)
            } else {
                decode::event_words(&words).map_err(e)?
            }
        }
        DecodeWhat::Log { file } => {
            let text = match file {
                Some(f) if f.as_os_str() != "-" => {
                    log_text(&std::fs::read(&f).map_err(|err| format!("{}: {err}", f.display()))?)
                }
                _ => stdin_text()?,
            };
            decode::log(&text, json).map_err(e)?
        }
        DecodeWhat::Pte {
            stage,
            level,
            granule,
            words,
        } if json => json_text(&decode::pte_json(&words, stage, level, granule).map_err(e)?),
        DecodeWhat::Pte {
            stage,
            level,
            granule,
            words,
        } => decode::pte(&words, stage, level, granule).map_err(e)?,
    };
    emit(format_args!("{text}"));
    if !text.ends_with('\n') {
        say!();
    }
    Ok(())
}

/// Returns Ok(true) when legal.
fn run_check(what: CheckWhat, preset: check::Preset, json: bool) -> Result<bool, String> {
    let v = match what {
        CheckWhat::Ste { words } => check::ste(&words, preset),
        CheckWhat::Cd { words, ste } => check::cd(&words, &ste, preset),
        CheckWhat::Cmd { words } => check::cmd(&words, preset),
    }
    .map_err(|e| e.to_string())?;
    if json {
        say!("{}", json_text(&v.json()));
    } else {
        say!("{}", v.text());
    }
    Ok(v.legal())
}

/// Returns the exit status of `result`, `status` for an error (after
/// printing it on standard error).
fn exit(result: Result<(), String>, status: u8) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(status)
        }
    }
}

fn main() -> ExitCode {
    let status = run(Cli::parse());
    if STDOUT_FAILED.load(std::sync::atomic::Ordering::Relaxed) {
        return ExitCode::from(BAD_INPUT);
    }
    status
}

/// Returns the exit status of the command line's command.
fn run(cli: Cli) -> ExitCode {
    let json = cli.json;
    match cli.cmd.unwrap_or(Cmd::Demo {
        ops: 2000,
        coherent: false,
        seed: 0x5eed,
    }) {
        Cmd::Demo {
            ops,
            coherent,
            seed,
        } => exit(demo(ops, coherent, seed), FAILED),
        Cmd::Pgtable => exit(pgtable(), FAILED),
        Cmd::Decode { what } => exit(run_decode(what, json), BAD_INPUT),
        Cmd::Check { preset, what } => match run_check(what, preset, json) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(FAILED),
            Err(e) => exit(Err(e), BAD_INPUT),
        },
    }
}

fn pgtable() -> Result<(), String> {
    say!("io-pgtable: scatter-gather map, stage 1, 4K granule, non-coherent walker, deferred sync");
    let sg = pgtable_demo::sample_sg_list();
    let report = pgtable_demo::run(&sg, 0x1_0000_0000)?;
    say!("{report}");
    if report.device_mismatches != 0 {
        return Err("the walker does not see what the CPU wrote".into());
    }
    Ok(())
}

fn demo(ops: u64, coherent: bool, seed: u64) -> Result<(), String> {
    pgtable()?;
    say!();
    say!("smmuv3: the driver on the software SMMU, end to end");
    let opts = system_demo::DemoOptions {
        ops,
        coherency: if coherent {
            sim_memory::Coherency::Coherent
        } else {
            sim_memory::Coherency::NonCoherent
        },
        seed,
        ..Default::default()
    };
    let report = system_demo::run(opts)?;
    say!("{}", system_demo::render(&report));
    if report.ok() {
        Ok(())
    } else {
        Err("the demo saw wrong data, a stale translation or an unexpected fault".into())
    }
}
