//! Text segments: `key=value\0` pairs.
