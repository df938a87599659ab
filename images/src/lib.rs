//! OCI images for rt: a content-addressed store (`store`), getting images
//! into it (`import`, `pull`), turning one into a bundle (`unpack`,
//! `bundle`).

pub mod bundle;
pub mod digest;
pub mod import;
pub mod overlay;
pub mod pull;
pub mod reference;
pub mod store;
pub mod types;
pub mod unpack;
