//! What every ests component shares, so that each wires it once instead of writing it
//! again:
//!
//! - [`watch`]: one watch per kind per process ([`Reflectors`]), its cache shared by every
//!   controller and index of the process, and waiting for caches to list ([`Listed`]);
//! - [`tls`]: HTTPS on rustls with a certificate reloaded from disk (the webhook and the
//!   scheduler extender);
//! - [`server`]: serving an app over HTTPS or HTTP, and stopping without failing a caller
//!   (a drain in which every answer closes its connection, then graceful ends);
//! - [`conditions`]: status conditions whose transition time moves only with their status;
//! - [`error`]: a failed Kubernetes API call with what it was for and a metric label
//!   ([`KubeError`]);
//! - [`finalizers`]: the finalizer writes kube-runtime's `finalizer` helper cannot make;
//! - [`http`]: typed JSON answers ([`Answer`]) and counting them in a component's metrics;
//! - [`api_requests`]: a Kubernetes client that counts its own requests (watch, read,
//!   write), so a component can show what it costs the API server.
#![forbid(unsafe_code)]

pub mod api_requests;
pub mod conditions;
pub mod error;
pub mod finalizers;
pub mod http;
pub mod server;
pub mod tls;
pub mod watch;

pub use error::{KubeError, ReconcileError};
pub use http::Answer;
pub use watch::{Listed, Reflectors};
