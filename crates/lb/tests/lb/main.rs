//! The balancer in front of real HTTP servers on loopback.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod distribution;
mod failures;
mod helpers;
mod wire;
