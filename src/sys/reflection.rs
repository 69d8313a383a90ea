//! gRPC server reflection, so `grpcurl` and other tools can list and call
//! weir's services without the proto file. Real network only: the
//! simulator's transport has nothing to reflect for.

use tonic::transport::server::Router;

#[cfg(not(madsim))]
pub fn with_reflection(router: Router) -> Router {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("weir's own descriptor set is valid");
    router.add_service(reflection)
}

#[cfg(madsim)]
pub fn with_reflection(router: Router) -> Router {
    router
}
