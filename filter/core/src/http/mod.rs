//! The request as the core sees it and what goes upstream.
//!
//! - [`request`]: the host boundary, [`request::RequestView`].
//! - [`header_map`]: a whole header map as proxy-wasm hosts encode it, read in place.
//! - [`claim_headers`]: the claims a verified token adds to (or removes from) the request.

pub(crate) mod claim_headers;
pub mod header_map;
pub mod request;
