//! `fleet-head`: runs the head node of an agentfleet cluster (see `fleet_head::cli`).

fn main() {
    std::process::exit(fleet_head::cli::main(std::env::args_os()));
}
