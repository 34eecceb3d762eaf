//! Connection and session state machines.
