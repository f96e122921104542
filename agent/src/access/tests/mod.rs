//! Tests of the access module that need more than one of its files.

mod gate;
mod pki;
mod tls;
