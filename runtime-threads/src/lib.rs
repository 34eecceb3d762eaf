//! The thread-per-connection runtime.
