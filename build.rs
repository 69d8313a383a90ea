//! Compiles proto/weir.proto for both builds: madsim-tonic-build emits the real
//! tonic code and the simulator's, and `tonic::include_proto!` picks one.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // A fresh machine may have no protoc; the vendored one keeps
        // `cargo run` a single command.
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        std::env::set_var("PROTOC", protoc);
    }
    println!("cargo:rerun-if-changed=proto/weir.proto");
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("weir_descriptor.bin");
    tonic_build::configure()
        .file_descriptor_set_path(descriptors)
        // Record batches travel as `Bytes`: a batch is handed from the
        // client's builder to the wire, and from the wire to the log, by
        // reference rather than copied into a `Vec` at each step.
        .bytes([".weir.v1.ProduceRequest.batch", ".weir.v1.FetchResponse.batches"])
        .compile_protos(&["proto/weir.proto"], &["proto"])?;
    Ok(())
}
