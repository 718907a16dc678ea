//! minke-init: PID1 of a minke guest and, under the `agent` subcommand, each in-guest agent.

fn main() {}
