//! gRPC server reflection, so `grpcurl` and other tools can list and call
//! weir's services without the proto file. Real network only: the
//! simulator's transport has nothing to reflect for.

/// Both versions of the reflection service: `grpc.reflection.v1`, and
/// `v1alpha`, which many clients (Python's grpcio-reflection, older
/// grpcurl) still speak.
#[cfg(not(madsim))]
pub fn with_reflection(router: super::listener::LayeredRouter) -> super::listener::LayeredRouter {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder().build_v1().expect("weir's own descriptor set is valid");
    let v1alpha = builder().build_v1alpha().expect("weir's own descriptor set is valid");
    router.add_service(v1).add_service(v1alpha)
}

#[cfg(madsim)]
pub fn with_reflection<L>(router: tonic::transport::server::Router<L>) -> tonic::transport::server::Router<L> {
    router
}
