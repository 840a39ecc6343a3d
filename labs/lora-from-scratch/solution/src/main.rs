fn main() {
    labkit::harness::main::<lora_from_scratch_solution::LoraLinear>(
        lora_from_scratch_solution::FINE_TUNE,
    )
}
