//! Project automation for mcpwatch, run as `cargo xtask <command>`.
//!
//! It exists so that a fresh machine with only the Rust toolchain can get to a green
//! test run with one command: `setup` installs the real MCP peers the integration tests
//! drive (Python and Node SDKs, the rmcp server) and the system packages; `test` runs
//! setup, builds every binary and runs the whole test suite; `bench` measures the
//! proxy's overhead against a real MCP server; `demo` shows mcpwatchd intercepting,
//! governing and auditing a real MCP session; `fuzz` runs the cargo-fuzz targets
//! (docs/fuzzing.md), briefly as part of `test`.

mod bench;
mod cgroup;
mod daemon;
mod demo;
mod fuzz;
mod package;
mod procs;
mod setup;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "mcpwatch project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install test peers and system packages (idempotent; fast when already done).
    Setup(setup::SetupArgs),
    /// Setup, then `cargo build --workspace --bins`, then `cargo test --workspace [ARGS]`,
    /// then every fuzz target briefly (skipped only when nightly Rust is missing).
    Test {
        #[command(flatten)]
        setup: setup::SetupArgs,
        /// Skip the fuzz targets (for quick local runs; CI runs them).
        #[arg(long, env = "MCPWATCH_NO_FUZZ")]
        no_fuzz: bool,
        /// Seconds each fuzz target runs after the tests.
        #[arg(long, default_value_t = 10)]
        fuzz_seconds: u64,
        /// Passed verbatim to `cargo test --workspace`, e.g. `-p mcpwatch-tests -- --nocapture`
        /// (a leading `--` is eaten: `cargo xtask test -- -- --nocapture` reaches the test binaries).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure latency and throughput of MCP tools/call: direct vs nginx vs mcpwatchd.
    Bench(bench::BenchArgs),
    /// One load-generator cell of `bench`, run as its own process (internal).
    #[command(hide = true)]
    BenchWorker(bench::WorkerArgs),
    /// `bench`'s hyper-floor target: mcpwatchd's HTTP plumbing alone (internal).
    #[command(hide = true)]
    BenchFloor(bench::FloorArgs),
    /// Setup, build, then watch a real MCP client and server through mcpwatchd (needs root).
    Demo(demo::DemoArgs),
    /// Run the cargo-fuzz targets (nightly), each for --seconds; nonzero exit on a crash.
    Fuzz(fuzz::FuzzArgs),
    /// Build the Debian package (binaries, unit, sysusers/tmpfiles, config, docs, completions).
    Deb(package::DebArgs),
    /// Install on a host without dpkg (binaries under /usr/local); idempotent, enables nothing.
    Install(package::InstallArgs),
    /// Remove what `install` put in place (`--purge`: config and state too).
    Uninstall(package::UninstallArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup(args) => setup::run(&args).map(|()| ExitCode::SUCCESS),
        Cmd::Test { setup, no_fuzz, fuzz_seconds, args } => {
            test(&setup, &args, (!no_fuzz).then_some(fuzz_seconds))
        }
        Cmd::Bench(args) => {
            if cfg!(debug_assertions) && std::env::var_os(RELEASE_MARK).is_none() {
                // Ctrl-C reaches the optimized child too: wait for it to clean up.
                procs::catch_interrupts();
                rerun_optimized()
            } else {
                bench::run(&args).map(|()| ExitCode::SUCCESS)
            }
        }
        Cmd::BenchWorker(args) => bench::run_worker(&args).map(|()| ExitCode::SUCCESS),
        Cmd::BenchFloor(args) => bench::run_floor(&args).map(|()| ExitCode::SUCCESS),
        Cmd::Demo(args) => demo::run(&args),
        Cmd::Fuzz(args) => fuzz::run(&args).map(|outcome| match outcome {
            fuzz::Outcome::Passed | fuzz::Outcome::Skipped(_) => ExitCode::SUCCESS,
            fuzz::Outcome::Failed => ExitCode::FAILURE,
        }),
        Cmd::Deb(args) => package::deb(&args).map(|_| ExitCode::SUCCESS),
        Cmd::Install(args) => package::install(&args).map(|()| ExitCode::SUCCESS),
        Cmd::Uninstall(args) => package::uninstall(&args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Set on the optimized re-run of xtask so it does not re-run itself again.
const RELEASE_MARK: &str = "MCPWATCH_XTASK_OPTIMIZED";

/// `cargo xtask` builds xtask unoptimized; a debug-build load generator would measure
/// itself. Builds xtask with `--release` and runs the same command line with it.
fn rerun_optimized() -> anyhow::Result<ExitCode> {
    util::section("building an optimized xtask for the load generator");
    util::run(util::cargo().args(["build", "--release", "-p", "xtask"]))?;
    let exe = util::target_dir().join("release").join("xtask");
    let status = util::run_status(
        std::process::Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .env(RELEASE_MARK, "1"),
    )?;
    let code = status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(1);
    Ok(ExitCode::from(code))
}

/// `cargo xtask test`: the README's single test command. `fuzz_seconds`: run every fuzz
/// target that long after the tests (even when they failed, so one run shows both).
fn test(setup_args: &setup::SetupArgs, args: &[String], fuzz_seconds: Option<u64>) -> anyhow::Result<ExitCode> {
    setup::run(setup_args)?;
    util::section("cargo build --workspace --bins");
    util::run(util::cargo().args(["build", "--workspace", "--bins"]))?;
    util::section("cargo test --workspace");
    let status = util::run_status(util::cargo().args(["test", "--workspace"]).args(args))?;
    util::section(if status.success() {
        "tests passed"
    } else {
        "tests FAILED"
    });
    let fuzz = match fuzz_seconds {
        Some(seconds) => fuzz::run(&fuzz::FuzzArgs { seconds, targets: Vec::new() })?,
        None => fuzz::Outcome::Skipped("--no-fuzz or MCPWATCH_NO_FUZZ".into()),
    };
    if let fuzz::Outcome::Skipped(why) = &fuzz {
        util::section(&format!("fuzz targets skipped: {why}"));
    }
    // Propagate cargo test's exit code exactly (101 for test failures).
    let code = status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(1);
    if code == 0 && matches!(fuzz, fuzz::Outcome::Failed) {
        util::section("tests passed, fuzzing FAILED");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::from(code))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn test_args(argv: &[&str]) -> Vec<String> {
        match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Cmd::Test { args, .. }) => args,
            other => panic!("{argv:?} parsed as {other:?}"),
        }
    }

    /// The daemon's module graph has no import cycle, among its top-level modules or
    /// inside `proxy` (ARCHITECTURE.md's invariant; `xtask/modgraph.py` reads the `use`s).
    #[test]
    fn daemon_modules_import_one_way() {
        for extra in [&[][..], &["--sub", "proxy"][..]] {
            let out = std::process::Command::new("python3")
                .arg(util::repo_root().join("xtask").join("modgraph.py"))
                .args(["daemon/src", "mcpwatchd"])
                .args(extra)
                .current_dir(util::repo_root())
                .output()
                .expect("python3 runs");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "import cycle in daemon/src {extra:?}:\n{text}{}", String::from_utf8_lossy(&out.stderr));
            assert!(text.contains("non-test code:") && text.contains(" 0 cyclic"), "unexpected report:\n{text}");
        }
    }

    #[test]
    fn test_fuzz_flags_and_fuzz_command() {
        match Cli::try_parse_from(["xtask", "test", "--no-fuzz", "--fuzz-seconds", "3", "-p", "x"]).map(|c| c.command) {
            Ok(Cmd::Test { no_fuzz: true, fuzz_seconds: 3, args, .. }) => assert_eq!(args, ["-p", "x"]),
            other => panic!("parsed as {other:?}"),
        }
        match Cli::try_parse_from(["xtask", "fuzz", "--seconds", "5", "sse_chunks", "jsonrpc"]).map(|c| c.command) {
            Ok(Cmd::Fuzz(a)) => {
                assert_eq!(a.seconds, 5);
                assert_eq!(a.targets, ["sse_chunks", "jsonrpc"]);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["xtask", "fuzz", "nosuchtarget"]).is_err());
    }

    #[test]
    fn test_passes_cargo_test_arguments_through() {
        assert_eq!(test_args(&["xtask", "test"]), Vec::<String>::new());
        assert_eq!(
            test_args(&["xtask", "test", "-p", "mcpwatch-tests", "--", "--nocapture"]),
            ["-p", "mcpwatch-tests", "--", "--nocapture"]
        );
        assert_eq!(
            test_args(&["xtask", "test", "--no-apt", "peers"]),
            ["peers"]
        );
        assert_eq!(
            test_args(&["xtask", "test", "--", "--nocapture"]),
            ["--nocapture"]
        );
    }
}
