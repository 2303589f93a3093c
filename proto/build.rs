//! Generates the `vigie.v1` messages and services with a vendored `protoc` (no system protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    println!("cargo:rerun-if-changed=vigie/v1/vigie.proto");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    config.enable_type_names();
    let descriptors =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("vigie_descriptor.bin");
    tonic_prost_build::configure()
        // For gRPC server reflection (`grpcurl list` without the .proto).
        .file_descriptor_set_path(descriptors)
        // Decode errors become INVALID_ARGUMENT instead of tonic-prost's INTERNAL.
        .codec_path("crate::codec::VigieCodec")
        .compile_with_config(
            config,
            &["vigie/v1/vigie.proto".into()],
            &[std::path::PathBuf::from("."), include],
        )?;
    Ok(())
}
