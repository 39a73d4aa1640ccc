//! The `nanachat` binary: parses the command line, sets up logging and signals, and calls the
//! library. Exit codes ([`Error::exit_code`]): 0 done, 1 failed while running (e.g. cannot
//! connect), 2 bad usage or configuration, 3 refused by the server (nick taken, closed for a
//! policy violation).

use std::io::IsTerminal;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use nanachat::cli::{Cli, Command, DemoSide};
use nanachat::client::Exit;
use nanachat::demo::{DemoClient, DemoServer};
use nanachat::dial::Target;
use nanachat::echo::Echo;
use nanachat::server::{self, Listen};
use nanachat::settings::LogFormat;
use nanachat::{Error, Result};

fn main() -> ExitCode {
    // Every usage error of clap's is one line and exit 2, here; --help and --version print
    // as clap has them.
    let cli = match Cli::parse_args() {
        Ok(cli) => cli,
        Err(err) => match nanachat::cli::usage_error(&err, &args()) {
            Some(usage) => return fail(&usage),
            None => err.exit(),
        },
    };
    let (command, log_format) = match cli.resolve() {
        Ok(resolved) => resolved,
        Err(err) => return fail(&err),
    };
    init_logging(log_format);
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

/// The command line, without the program, as text (for naming the command in a usage error).
fn args() -> Vec<String> {
    std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// One line on stderr, and the exit code the error stands for.
fn fail(err: &Error) -> ExitCode {
    eprintln!("nanachat: {err}");
    ExitCode::from(err.exit_code())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// Names each `NANACHAT_*` variable that looks like a misspelt setting (see
/// [`nanachat::cli::stray_variables`]): in the log of a server, in a line of its own for a
/// client (whose screen is not a log).
fn warn_stray_variables(logged: bool) {
    let vars = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok());
    for line in nanachat::cli::stray_variables(vars) {
        if logged {
            tracing::warn!("{line}");
        } else {
            eprintln!("nanachat: {line}");
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve(args) => {
            warn_stray_variables(true);
            let plan = args.plan()?;
            if args.check_config {
                print!("{}", args.effective());
                return Ok(());
            }
            on_threads(|shutdown| nanachat::chat::serve(plan, shutdown))
        }
        Command::Connect(args) => {
            warn_stray_variables(false);
            let (opts, speech) = args.plan()?;
            if args.check_config {
                print!("{}", args.effective());
                return Ok(());
            }
            match nanachat::client::connect(opts, speech)? {
                Exit::Done => Ok(()),
                Exit::Refused(why) => Err(Error::Refused(why)),
            }
        }
        Command::Token(args) => {
            println!("{}", args.mint()?);
            Ok(())
        }
        #[cfg(feature = "bench")]
        Command::Bench(args) => nanachat::cli::bench(*args),
        #[cfg(feature = "bench")]
        Command::BenchWorker => nanachat::bench::worker_main(),
        Command::Echo {
            addr,
            server,
            connection,
        } => {
            let config = server.config(connection.config()?)?;
            on_threads(|shutdown| async move {
                server::serve(&Listen::on(addr), config, async || Ok(Echo), shutdown).await
            })
        }
        Command::Demo {
            side:
                DemoSide::Server {
                    addr,
                    every,
                    server,
                    connection,
                },
        } => {
            let config = server.config(connection.config()?)?;
            let demo = async || Ok(DemoServer { every });
            on_threads(|shutdown| async move {
                server::serve(&Listen::on(addr), config, demo, shutdown).await
            })
        }
        Command::Demo {
            side:
                DemoSide::Client {
                    url,
                    every,
                    tick,
                    count,
                    connection,
                },
        } => {
            let target = Target::parse(&url)?;
            let config = connection.config()?;
            if every.is_zero() {
                return Err(Error::Config("--every must be above 0".into()));
            }
            let client = DemoClient { every, tick, count };
            // One event loop, one thread: the seed's point is that the three tasks interleave.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(cancel_on_signal(shutdown.clone()));
                client.run(&target, &config, shutdown).await
            })
        }
    }
}

/// Runs a server on a multi-threaded runtime until SIGINT or SIGTERM cancels its token.
fn on_threads<F: Future<Output = Result<()>>>(
    serve: impl FnOnce(CancellationToken) -> F,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        serve(shutdown).await
    })
}

/// Cancels `token` on the first SIGINT (Ctrl-C) or SIGTERM.
async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    token.cancel();
}
