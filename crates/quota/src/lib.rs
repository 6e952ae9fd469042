//! Resource quantities with upstream's exact arithmetic and printing, and
//! the usage objects charge against a ResourceQuota (upstream's quota
//! evaluators). The API server's ResourceQuota and LimitRanger admission
//! and the quota controller share them, so what admission charges and what
//! the controller recounts agree.

pub mod quantity;
pub mod usage;

pub use quantity::Quantity;
pub use usage::{ResourceList, pretty, usage};
