//! The `kvfs` command: act on a store directly.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
