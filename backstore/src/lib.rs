//! Backing stores: rdwr, aio, memory and null engines.
