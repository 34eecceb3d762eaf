//! RFC 1982 serial number arithmetic.
