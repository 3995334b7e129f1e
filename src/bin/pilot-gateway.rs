//! `pilot-gateway`: remote agents at local IPv4 addresses through a TUN
//! device (see [`pilot::gateway`]); this main only maps the result to an
//! exit status.

fn main() {
    std::process::exit(pilot::cli::gateway::gateway_main())
}
