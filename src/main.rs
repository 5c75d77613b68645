//! The `ml-dash` command line. See `cli/` for the commands and README.md for the contract.

mod cli;

fn main() {
    std::process::exit(cli::run());
}
