// Doubles its input at every expansion: exponential memory before the
// recursion limit. Must end at the memory or time limit, not hang.
macro_rules! bomb {
    ($($t:tt)*) => { bomb!($($t)* $($t)*); };
}
bomb!(x);
