// Reads a host file at compile time: the sandbox has no /etc/passwd.
pub const PASSWD: &[u8] = include_bytes!("/etc/passwd");
