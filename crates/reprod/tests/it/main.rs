//! End-to-end tests of the `reprod` binary: real processes, real sockets, real SQLite and (with
//! `DATABASE_URL`) real PostgreSQL, through the command-line contract only.

mod support;

mod cli;
mod database;
mod examples;
mod explain;
mod gallery;
mod isolate;
mod lifecycle;
mod logs;
mod otlp;
mod outputs;
mod overlap;
mod reset;
mod runs;
mod setup;
mod verdicts;
