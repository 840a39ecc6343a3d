// Reads the lab's hidden labels by their absolute host path (the test puts
// the path in place of HIDDEN_PATH): the sandbox has none of the host's
// folders, and its /work is the job's own.
pub const LABELS: &str = include_str!("HIDDEN_PATH");
