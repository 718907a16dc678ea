//! minke's in-guest agents: the control agent (exec, files, forward, info, power over vsock),
//! the time sync agent and the binfmt_misc agent. They are linked into the one in-guest binary
//! (`minke-init`) and run as processes supervised by PID1.
