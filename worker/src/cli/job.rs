//! `ova job …`: packing and inspecting job bundles, and jobs on the network (see
//! [`super::submit`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use ova_jobs::{Bundle, Determinism};

use super::format;
use super::submit::{self, LocalArgs, ResultsArgs, StatusArgs, SubmitArgs};

/// Job bundle commands.
#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Pack a job directory (an `ova.toml`, the module and input files) into one bundle file.
    ///
    /// Every blob is content-addressed (BLAKE3) and the job id is the hash of the manifest, so
    /// packing the same directory twice gives the same job id.
    Pack {
        /// Directory holding `ova.toml`.
        dir: PathBuf,
        /// Where to write the bundle [default: NAME.ova in the current directory].
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Show what a bundle holds: ids, sizes, replication policy and limits.
    ///
    /// Every hash in the bundle is checked first; a damaged bundle is reported, not shown.
    Inspect {
        /// The bundle file.
        bundle: PathBuf,
        /// Also list every unit (id, input size, arguments).
        #[arg(long)]
        units: bool,
    },
    /// Submit a bundle to the network: peers run, replicate and verify its units.
    ///
    /// Without `--wait`, returns once a worker has fetched the bundle; the job goes on
    /// without this machine, and `status` / `results` pick it up later.
    Submit(SubmitArgs),
    /// How far a submitted job has got.
    Status(StatusArgs),
    /// Fetch a job's verified results into a directory.
    Results(ResultsArgs),
    /// Re-check a job from the signed records held here: every signature, that a quorum of
    /// distinct peers agree on each result, and that each result held hashes to it. Exits
    /// non-zero on any problem.
    Verify {
        /// The job id, or a unique prefix of it.
        job: submit::JobArg,
        #[command(flatten)]
        local: LocalArgs,
    },
    /// The jobs submitted from this machine.
    List(LocalArgs),
}

/// Runs a `job` subcommand.
pub fn run(cmd: JobCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        JobCommand::Pack { dir, output } => {
            let bundle =
                ova_jobs::pack_dir(&dir).with_context(|| format!("packing {}", dir.display()))?;
            let out =
                output.unwrap_or_else(|| PathBuf::from(format!("{}.ova", bundle.manifest().name)));
            bundle.write_file(&out)?;
            let m = bundle.manifest();
            println!(
                "packed {} → {} ({}, {} units)\njob id: {}",
                dir.display(),
                out.display(),
                format::bytes(std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0)),
                m.units.len(),
                bundle.job_id()
            );
        }
        JobCommand::Inspect { bundle: path, units } => {
            let bundle = Bundle::read_file(&path)?;
            print!("{}", describe(&bundle, units));
        }
        JobCommand::Submit(args) => return submit::submit(args),
        JobCommand::Status(args) => return submit::status(args),
        JobCommand::Results(args) => return submit::results(args),
        JobCommand::Verify { job, local } => return submit::verify(job, local),
        JobCommand::List(args) => return submit::list(args),
    }
    Ok(ExitCode::SUCCESS)
}

/// The human-readable description `ova job inspect` prints.
fn describe(bundle: &Bundle, with_units: bool) -> String {
    use std::fmt::Write;
    let m = bundle.manifest();
    let r = &m.replication;
    let l = &m.limits;
    let inputs: u64 =
        m.units.iter().map(|u| bundle.blob(&u.input).map_or(0, |b| b.len() as u64)).sum();
    let mut s = String::new();
    let _ = writeln!(s, "job:          {}", m.name);
    let _ = writeln!(s, "job id:       {}", bundle.job_id());
    let _ =
        writeln!(s, "module:       {} ({})", m.module, format::bytes(bundle.module().len() as u64));
    let _ = writeln!(
        s,
        "units:        {} ({} of input, {} distinct blobs)",
        m.units.len(),
        format::bytes(inputs),
        m.blob_ids().len() - 1
    );
    let _ = writeln!(
        s,
        "replication:  quorum {} of at most {} replicas; results kept on {} extra peer(s)",
        r.quorum, r.max_replicas, r.result_copies
    );
    let _ = writeln!(
        s,
        "determinism:  {}",
        match m.determinism {
            Determinism::SameArch => "same-arch (replicas compared within one CPU architecture)",
            Determinism::Strict => "strict (NaN-canonical; any architecture may replicate)",
        }
    );
    let _ = writeln!(
        s,
        "limits:       memory {}, deadline {}, fuel {}, output {}, stderr {}",
        format::bytes(l.memory_bytes),
        format::millis(l.deadline_ms),
        l.fuel.map_or("unmetered".to_string(), |f| f.to_string()),
        format::bytes(l.max_output_bytes),
        format::bytes(l.max_stderr_bytes)
    );
    let _ = writeln!(s, "priority:     {}", m.priority);
    let _ = writeln!(s, "bundle size:  {} of blobs", format::bytes(bundle.blob_bytes()));
    if with_units {
        let _ = writeln!(s, "\n{:>6}  {:<16}  {:>10}  args", "unit", "unit id", "input");
        for (i, u) in m.units.iter().enumerate() {
            let len = bundle.blob(&u.input).map_or(0, |b| b.len() as u64);
            let _ = writeln!(
                s,
                "{i:>6}  {:<16}  {:>10}  {}",
                m.unit_id(i).short(),
                format::bytes(len),
                u.args.join(" ")
            );
        }
    }
    s
}
