//! Images on the node: references, the content-addressed store, layers.

mod layer;
pub mod reference;
mod store;

pub use reference::{InvalidImageName, Reference};
pub use store::{ImageError, ImageRecord, ImageStore, Removal, platform_architecture};
