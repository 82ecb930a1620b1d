//! A gRPC service with one bidirectional-streaming method of `Packet`s, served as a raw HTTP/2
//! handler instead of through tonic's generated server, so packets are framed by
//! [`konnectivity_tunnel::grpc`] (DATA payloads never copied through a codec buffer, and no
//! per-stream codec buffers held by idle tunnels). On the wire it is the same method: path,
//! `application/grpc` content type, OK-status trailers, and trailers-only error responses.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use konnectivity_proto::Packet;
use konnectivity_tunnel::grpc::PacketBody;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::Status;

/// The one method a [`RawService`] serves.
pub trait StreamingMethod: Clone + Send + Sync + 'static {
    /// The package-less service name, e.g. `AgentService` (what tonic's router routes on).
    const SERVICE: &'static str;
    /// The method's path, e.g. `/AgentService/Connect`.
    const PATH: &'static str;

    /// Accepts one call; `Err` becomes a trailers-only response with that status.
    fn call(&self, request: tonic::Request<Body>) -> Result<http::Response<Body>, Status>;
}

/// Adapts a [`StreamingMethod`] to tonic's router.
#[derive(Debug, Clone)]
pub struct RawService<M>(pub M);

impl<M: StreamingMethod> NamedService for RawService<M> {
    const NAME: &'static str = M::SERVICE;
}

impl<M: StreamingMethod> tower::Service<http::Request<Body>> for RawService<M> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let response = if request.uri().path() == M::PATH {
            self.0
                .call(tonic::Request::from_http(request))
                .unwrap_or_else(Status::into_http)
        } else {
            Status::unimplemented(format!("unknown method {}", request.uri().path())).into_http()
        };
        Box::pin(std::future::ready(Ok(response)))
    }
}

/// The streaming response: `metadata` as headers, then `packets` as gRPC messages, then an OK
/// status when `packets` ends.
pub fn response<S>(metadata: MetadataMap, packets: S) -> http::Response<Body>
where
    S: Stream<Item = Packet> + Send + 'static,
{
    let packets: Pin<Box<dyn Stream<Item = Packet> + Send>> = Box::pin(packets);
    let mut response = http::Response::new(Body::new(PacketBody::response(packets)));
    let headers = response.headers_mut();
    *headers = metadata.into_headers();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[derive(Clone)]
    struct Echo;

    impl StreamingMethod for Echo {
        const SERVICE: &'static str = "Echo";
        const PATH: &'static str = "/Echo/Stream";
        fn call(&self, request: tonic::Request<Body>) -> Result<http::Response<Body>, Status> {
            if request.metadata().get("refuse").is_some() {
                return Err(Status::permission_denied("refused"));
            }
            Ok(response(MetadataMap::new(), futures::stream::empty()))
        }
    }

    fn request(path: &str) -> http::Request<Body> {
        http::Request::builder()
            .uri(path)
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn routes_only_its_path_and_renders_errors_as_trailers_only_responses() {
        let ok = RawService(Echo)
            .oneshot(request("/Echo/Stream"))
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.headers()["content-type"], "application/grpc");

        let other = RawService(Echo)
            .oneshot(request("/Echo/Other"))
            .await
            .unwrap();
        assert_eq!(
            Status::from_header_map(other.headers()).unwrap().code(),
            tonic::Code::Unimplemented
        );

        let mut refused = request("/Echo/Stream");
        refused
            .headers_mut()
            .insert("refuse", http::HeaderValue::from_static("1"));
        let refused = RawService(Echo).oneshot(refused).await.unwrap();
        assert_eq!(
            Status::from_header_map(refused.headers()).unwrap().code(),
            tonic::Code::PermissionDenied
        );
    }
}
