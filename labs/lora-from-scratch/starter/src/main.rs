fn main() {
    labkit::harness::main::<lora_from_scratch_starter::LoraLinear>(
        lora_from_scratch_starter::FINE_TUNE,
    )
}
