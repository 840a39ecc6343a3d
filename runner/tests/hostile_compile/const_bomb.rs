// A constant that never finishes evaluating, with rustc's own guard (the
// `long_running_const_eval` lint) switched off: only the time limit stops it.
#![allow(long_running_const_eval)]

pub const SPIN: u64 = {
    let mut i = 0u64;
    let mut x = 0u64;
    while i < u64::MAX {
        x = x.wrapping_mul(31).wrapping_add(i);
        i += 1;
    }
    x
};
