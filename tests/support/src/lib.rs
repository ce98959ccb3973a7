//! What both test tiers share (`tests/integration`, the first; `tests/system`, the second):
//! - [`harness`]: running the real binary ([`harness::Sidecar`], [`harness::bin`]), downstream
//!   listeners and clients whose numbers are the tests' ground truth, ports, config files, and
//!   a parser for the Prometheus text format;
//! - [`otlp_receiver`]: a real OTLP metrics receiver (gRPC and HTTP, optionally TLS) built on
//!   the `opentelemetry-proto` definitions.
//!
//! A crate of its own so that each tier links it once, instead of the second tier compiling
//! the first tier's files again through `#[path]`.

pub mod harness;
pub mod otlp_receiver;
