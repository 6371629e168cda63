//! `smmu`: runs a simulated SMMUv3 system end to end and decodes SMMUv3
//! structures.

use clap::{Parser, Subcommand};

use smmu_cli::pgtable_demo;

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
    /// Run the end-to-end demonstration (the default).
    Demo,
    /// Map a scatter-gather list on a non-coherent walker and report the cost.
    Pgtable,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd.unwrap_or(Cmd::Demo) {
        Cmd::Demo | Cmd::Pgtable => pgtable(),
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
    if report.device_mismatches != 0 || report.redundant_lines != 0 {
        return Err("the walker does not see what the CPU wrote".into());
    }
    Ok(())
}
