//! The whole system, every service on its own role and schema (or its own
//! database), talking only through RabbitMQ, driven over gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test code: a panic is a failed test; some tests report figures

mod flow;
mod replicas;
mod reporting;
mod saga;
mod support;
mod watch;
