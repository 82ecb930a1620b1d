//! The frontends kube-apiserver talks to: gRPC `ProxyService` and HTTP CONNECT.

pub mod grpc;
pub mod http_connect;
