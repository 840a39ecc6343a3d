// Training allocates and frees a buffer per tensor op; glibc's allocator
// returns large blocks to the kernel and faults them in again on every step.
// mimalloc keeps them (see PERFORMANCE.md: memory churn in the backward pass).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    sanhak::cli::main()
}
