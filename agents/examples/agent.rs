//! Development stand-in for `minke-init agent …`: runs one agent from the command line
//! (`agent control --port 1024`), for smoke tests in a guest booted from a shell /init.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(minke_agents::agent_main(&args));
}
