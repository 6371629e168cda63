//! `smmu`: runs a simulated SMMUv3 system end to end and decodes SMMUv3
//! structures.

use clap::{Parser, Subcommand};

use smmu_cli::{decode, pgtable_demo, system_demo};

#[derive(Parser)]
#[command(
    name = "smmu",
    version,
    about = "Arm SMMUv3 stack: simulation and decoders"
)]
struct Cli {
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
    /// Decode hex words of an SMMUv3 structure or a page-table descriptor.
    Decode {
        #[command(subcommand)]
        what: DecodeWhat,
    },
}

#[derive(Subcommand)]
enum DecodeWhat {
    /// Stream table entry: up to 8 64-bit words, word 0 first.
    Ste {
        /// Hex words.
        #[arg(required = true)]
        words: Vec<String>,
    },
    /// Context descriptor: up to 8 64-bit words.
    Cd {
        /// Hex words.
        #[arg(required = true)]
        words: Vec<String>,
    },
    /// Command-queue entry: 2 64-bit words.
    Cmd {
        /// Hex words.
        #[arg(required = true)]
        words: Vec<String>,
    },
    /// Event record: 4 64-bit words.
    Event {
        /// Hex words.
        #[arg(required = true)]
        words: Vec<String>,
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

fn run_decode(what: DecodeWhat) -> Result<(), String> {
    let text = match what {
        DecodeWhat::Ste { words } => decode::ste_words(&words),
        DecodeWhat::Cd { words } => decode::cd_words(&words),
        DecodeWhat::Cmd { words } => decode::command_words(&words),
        DecodeWhat::Event { words } => decode::event_words(&words),
        DecodeWhat::Pte {
            stage,
            level,
            granule,
            words,
        } => decode::pte(&words, stage, level, granule),
    }
    .map_err(|e| e.to_string())?;
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd.unwrap_or(Cmd::Demo {
        ops: 2000,
        coherent: false,
        seed: 0x5eed,
    }) {
        Cmd::Demo {
            ops,
            coherent,
            seed,
        } => demo(ops, coherent, seed),
        Cmd::Pgtable => pgtable(),
        Cmd::Decode { what } => run_decode(what),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn pgtable() -> Result<(), String> {
    println!(
        "io-pgtable: scatter-gather map, stage 1, 4K granule, non-coherent walker, deferred sync"
    );
    let sg = pgtable_demo::sample_sg_list();
    let report = pgtable_demo::run(&sg, 0x1_0000_0000)?;
    println!("{report}");
    if report.device_mismatches != 0 {
        return Err("the walker does not see what the CPU wrote".into());
    }
    Ok(())
}

fn demo(ops: u64, coherent: bool, seed: u64) -> Result<(), String> {
    pgtable()?;
    println!();
    println!("smmuv3: the driver on the software SMMU, end to end");
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
    println!("{}", system_demo::render(&report));
    if report.ok() {
        Ok(())
    } else {
        Err("the demo saw wrong data, a stale translation or an unexpected fault".into())
    }
}
