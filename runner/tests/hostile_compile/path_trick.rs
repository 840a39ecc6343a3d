// Includes a host file as a module: the sandbox has no /etc/passwd.
#[path = "/etc/passwd"]
mod x;
