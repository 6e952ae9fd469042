//! Images on the node: references, the content-addressed store, layers.

mod build;
mod layer;
mod pull;
pub mod reference;
mod store;

pub use build::BuildSpec;
pub use pull::{PullError, auth_for, pull};
pub use reference::{InvalidImageName, Reference};
pub use store::{ImageError, ImageRecord, ImageStore, Removal, platform_architecture};
