//! `make bench-e2e` (placeholder until the load benchmark lands in this file).
fn main() {}
