//! `fleet-worker`: joins an agentfleet head and runs agent tasks (see `fleet_worker::cli`).

fn main() {
    std::process::exit(fleet_worker::cli::main(std::env::args_os()));
}
