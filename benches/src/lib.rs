//! Benchmark helpers (load generator).
