//! The client-facing surface: etcd's v3 protos and their generated types (`pb`), gRPC over
//! HTTP/2 (`grpc`), the HTTP/1.1 JSON gateway (`gateway`), and etcd's client-visible errors
//! with their gRPC codes (`errors`, the one place those strings live), and the Prometheus
//! exposition of `GET /metrics` (`metrics`).
//!
//! Depends only on a handle to `server`; it never touches the store directly.

pub mod errors;
pub mod gateway;
pub mod grpc;
pub mod listener;
pub mod metrics;
pub mod pb;
pub mod service;
