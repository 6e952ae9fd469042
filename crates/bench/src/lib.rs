//! Benchmarks behind `kubox bench`. Each prints a Markdown table ready for
//! BENCHMARKS.md; where a real upstream component can run here (etcd), it is
//! measured side by side in the same run.

pub mod api;
pub mod controllers;
pub mod dns;
pub mod failover;
pub mod ingress;
mod load;
pub mod metrics;
pub mod net;
pub mod pods;
pub mod report;
pub mod rollout;
pub mod scheduler;
pub mod store;
pub mod streams;
