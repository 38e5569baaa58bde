//! Integration tests of `invoice-service`, driving the real binary over real sockets against real
//! SQLite and, when `DATABASE_URL` points at one, real PostgreSQL.

mod support;

mod dependencies;
mod idempotency;
mod input;
mod outbox;
mod race;
mod startup;
