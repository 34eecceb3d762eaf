//! CRC32C header and data digests.
