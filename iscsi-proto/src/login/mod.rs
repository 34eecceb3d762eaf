//! Login: stages, negotiation and CHAP.
