//! `streamline-scram`: salted SCRAM credentials for the broker's users file
//! (`--sasl-users`), so that the file need not hold the password.
//!
//! ```text
//! printf '%s' "$PASSWORD" | streamline-scram alice > alice.json
//! ```
//!
//! reads the password from standard input (up to the first newline) and prints
//! `{"alice": {"SCRAM-SHA-256": {...}, "SCRAM-SHA-512": {...}}}`: merge it into
//! the users file. Such a user authenticates with SCRAM and with PLAIN.

use std::{collections::BTreeMap, io::Read, process::ExitCode};

use clap::Parser;
use streamline::server::sasl::{salted_credential, Mechanism, ITERATIONS, ITERATIONS_RANGE};

#[derive(Parser)]
#[command(
    name = "streamline-scram",
    version,
    about = "Print salted SCRAM credentials for the broker's --sasl-users file; the password is read from standard input"
)]
struct Cli {
    /// The user name.
    user: String,
    /// Mechanisms to make credentials for (repeat or comma-separate).
    #[arg(
        long = "mechanism",
        value_delimiter = ',',
        default_value = "SCRAM-SHA-256,SCRAM-SHA-512",
        value_parser = clap::builder::PossibleValuesParser::new(["SCRAM-SHA-256", "SCRAM-SHA-512"])
    )]
    mechanisms: Vec<String>,
    /// PBKDF2 iterations (4096-16384, as Kafka accepts).
    #[arg(long, default_value_t = ITERATIONS, value_parser = clap::value_parser!(u32).range(i64::from(*ITERATIONS_RANGE.start())..=i64::from(*ITERATIONS_RANGE.end())))]
    iterations: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("streamline-scram: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> Result<String, String> {
    if cli.user.is_empty() {
        return Err("the user name must not be empty".into());
    }
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("reading the password from standard input: {e}"))?;
    let password = input.split(['\n', '\r']).next().unwrap_or("");
    if password.is_empty() {
        return Err("no password on standard input".into());
    }
    let mut creds = BTreeMap::new();
    for name in &cli.mechanisms {
        let m = Mechanism::parse(name)
            .ok_or_else(|| format!("unknown mechanism {name:?} (SCRAM-SHA-256, SCRAM-SHA-512)"))?;
        let c =
            salted_credential(m, password.as_bytes(), cli.iterations).map_err(|e| e.to_string())?;
        creds.insert(m.name(), c);
    }
    let user = BTreeMap::from([(cli.user.as_str(), creds)]);
    serde_json::to_string_pretty(&user).map_err(|e| e.to_string())
}
