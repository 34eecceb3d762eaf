//! The wire layer: BHS view, PDU reprs, AHS and framing.
