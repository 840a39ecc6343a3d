// Reads the runner's secrets from the compiler's environment: the sandbox
// clears it, so these do not compile.
pub const DATABASE_URL: &str = env!("DATABASE_URL");
pub const CANARY: &str = env!("SANHAK_TEST_CANARY_SECRET");
