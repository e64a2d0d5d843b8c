//! Invicta's cross-service tests, as one test binary: they run the real `invicta` binary as a
//! child process and talk to it over HTTP on loopback.

mod cli;
mod clients;
mod cluster;
mod compat;
mod config;
mod control;
mod crash;
mod divergence;
mod failover;
mod files;
mod guests;
mod hostapi;
mod hostile;
mod http;
mod languages;
mod limits;
mod metering;
mod openapi;
mod quickstart;
mod resources;
mod routes;
mod schedules;
mod server;
mod snapshots;
mod tail;
mod tenancy;
mod tiers;
mod topology;
mod traces;
mod waits;
mod workers;

/// The server binary cargo built for these tests.
pub const INVICTA: &str = env!("CARGO_BIN_EXE_invicta");
