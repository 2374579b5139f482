//! What every ests server shares, so that each component wires it once instead of writing
//! it again:
//!
//! - [`tls`]: HTTPS on rustls with a certificate reloaded from disk (the webhook and the
//!   scheduler extender);
//! - [`http`]: typed JSON answers ([`Answer`]) and counting them in a component's metrics.
#![forbid(unsafe_code)]

pub mod http;
pub mod tls;

pub use http::Answer;
