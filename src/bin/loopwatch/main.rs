//! `loopwatch`: read stall reports, one or a fleet's.
//!
//! ```text
//! loopwatch list [DIR|FILE…]          one line per report, oldest first
//! loopwatch show REPORT               the report as text (colour on a terminal)
//! loopwatch summary DIR|FILE…         by verdict, top culprits, per build id
//! loopwatch symbolize REPORT (--debug-file F | --debug-dir D) [-o OUT]
//! loopwatch flamegraph DIR|FILE… -o stalls.svg
//! ```
//!
//! This file owns the command line (clap), running the chosen command and
//! the exit code. Each command is a module of its own; finding and reading
//! reports, and saying which inputs were bad, is [`inputs`]'.
//!
//! Exit codes: 0 when every input was processed, 1 when some inputs were
//! bad (each said on stderr, naming the file) but others were processed, 2
//! for a usage error or when nothing could be processed.
//!
//! Built with the `cli` feature: `cargo install loopwatch --features cli`.

mod facts;
mod flamegraph;
mod inputs;
mod list;
mod output;
mod show;
mod summary;
mod symbolize;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use inputs::Problems;

const EXIT_CODES: &str = "\
Exit codes:
  0  every input was processed
  1  some inputs were bad (each is named on stderr) but others were processed
  2  usage error, or nothing could be processed

Reports are the stall-<id>.json files loopwatch writes to its report
directory ($STATE_DIRECTORY/loopwatch under systemd). A directory is
searched through its subdirectories (e.g. one per host); hidden files and
the stall-<id>.txt twins are passed over, any other file is named as not a
report.";

/// Read loopwatch's stall reports: list, show, summarise and draw the
/// stalls of one host or a fleet.
#[derive(Parser)]
#[command(name = "loopwatch", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One line per report, oldest first: detection time, host, runtime,
    /// verdict, culprit, how long the loop was stalled, and how the stall
    /// ended (recovered; killed: systemd's watchdog deadline passed without
    /// recovery; stuck: not recovered when last written).
    #[command(after_help = EXIT_CODES)]
    List {
        /// Report directories or files [default: the current directory].
        paths: Vec<PathBuf>,
    },
    /// A JSON report as the text a human reads (the same as its .txt twin),
    /// coloured on a terminal.
    #[command(after_help = EXIT_CODES)]
    Show {
        /// The report (stall-<id>.json).
        report: PathBuf,
        /// When to colour the verdict and the culprit.
        #[arg(long, value_enum, default_value = "auto")]
        color: show::ColorChoice,
    },
    /// Many reports from many hosts on one page: stalls by verdict, the top
    /// culprits by count and by total stalled time, first and last seen,
    /// and the same per binary build id.
    #[command(after_help = EXIT_CODES)]
    Summary {
        /// Report directories or files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// How many culprits each table shows.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Names the frames of a report from a stripped binary, from the
    /// binary's debug file (matched by GNU build id), and writes the
    /// symbolized report and its .txt: in place, or to --output.
    #[command(after_help = EXIT_CODES)]
    Symbolize {
        /// The report (stall-<id>.json).
        report: PathBuf,
        #[command(flatten)]
        debug: DebugArgs,
        /// Where to write the symbolized report (its .txt goes beside it;
        /// `-` for the JSON on standard output) [default: the report itself].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// One SVG flame graph of the stuck event-loop stacks of all the given
    /// reports, so a fleet's stalls are seen at a glance.
    #[command(after_help = EXIT_CODES)]
    Flamegraph {
        /// Report directories or files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Where to write the SVG (`-` for standard output).
        #[arg(short, long)]
        output: PathBuf,
        /// What a stack's width stands for.
        #[arg(long, value_enum, default_value = "stalls")]
        weight: flamegraph::Weight,
        /// The graph's title.
        #[arg(long)]
        title: Option<String>,
    },
}

/// Where `symbolize` finds debug information.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct DebugArgs {
    /// The debug file of the binary that wrote the report (`objcopy
    /// --only-keep-debug`), or the unstripped binary.
    #[arg(long, value_name = "FILE")]
    debug_file: Option<PathBuf>,
    /// A directory of debug files: DIR/.build-id/xx/rest.debug (GDB's
    /// layout, as in /usr/lib/debug), DIR/<module>.debug or DIR/<module>;
    /// one per build on the report's frames, each checked by build id.
    #[arg(long, value_name = "DIR")]
    debug_dir: Option<PathBuf>,
}

/// Why a command stopped before it was done.
enum Failure {
    /// Said on stderr already; nothing could be processed.
    Said,
    /// Standard output is closed (`loopwatch list | head`): not an error.
    ClosedOutput,
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            return Failure::ClosedOutput;
        }
        eprintln!("loopwatch: cannot write the output: {e}");
        Failure::Said
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut problems = Problems::default();
    let processed = match run(cli.command, &mut problems) {
        Ok(n) => n,
        Err(Failure::ClosedOutput) => 1,
        Err(Failure::Said) => return ExitCode::from(2),
    };
    match (problems.bad, processed) {
        (0, _) => ExitCode::SUCCESS,
        (_, 0) => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

/// Runs `command`; returns how many reports it processed.
fn run(command: Command, problems: &mut Problems) -> Result<usize, Failure> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let processed = match command {
        Command::List { paths } => {
            let paths = if paths.is_empty() {
                vec![PathBuf::from(".")]
            } else {
                paths
            };
            let reports = inputs::load_all(&paths, problems);
            list::write(&reports, &mut out)?;
            reports.len()
        }
        Command::Show { report, color } => {
            let loaded = inputs::load(&report).map_err(|why| {
                problems.bad(&report, why);
                Failure::Said
            })?;
            show::write(&loaded, color.on_stdout(), &mut out)?;
            1
        }
        Command::Summary { paths, top } => {
            let reports = inputs::load_all(&paths, problems);
            summary::write(&reports, top, &mut out)?;
            reports.len()
        }
        Command::Symbolize {
            report,
            debug,
            output,
        } => {
            let source = match (debug.debug_file, debug.debug_dir) {
                (Some(file), _) => symbolize::DebugSource::File(file),
                (None, Some(dir)) => symbolize::DebugSource::Dir(dir),
                (None, None) => {
                    eprintln!("loopwatch: symbolize needs --debug-file or --debug-dir");
                    return Err(Failure::Said);
                }
            };
            out.flush()?;
            let done = symbolize::run(&report, &source, output.as_deref()).map_err(|e| {
                eprintln!("loopwatch: {e}");
                Failure::Said
            })?;
            let Some(done) = done else {
                return Ok(1);
            };
            let files: Vec<String> = done
                .debug_files
                .iter()
                .map(|f| f.display().to_string())
                .collect();
            eprintln!(
                "loopwatch: {}: {} frame(s) named from {}; culprit {}",
                done.output,
                done.named,
                files.join(", "),
                done.culprit.as_deref().unwrap_or("none found")
            );
            1
        }
        Command::Flamegraph {
            paths,
            output,
            weight,
            title,
        } => {
            let reports = inputs::load_all(&paths, problems);
            if reports.is_empty() {
                eprintln!("loopwatch: no reports to draw; no flame graph written");
                return Err(Failure::Said);
            }
            let draw = |w: &mut dyn Write| flamegraph::write(&reports, weight, title.as_deref(), w);
            if output == Path::new("-") {
                draw(&mut out)?;
            } else {
                output::write_whole(&output, None, draw).map_err(|e| {
                    eprintln!("loopwatch: {e}");
                    Failure::Said
                })?;
                eprintln!(
                    "loopwatch: {}: flame graph of {} reports written",
                    output.display(),
                    reports.len()
                );
            }
            reports.len()
        }
    };
    out.flush()?;
    Ok(processed)
}
