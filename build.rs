//! Generates the etcd v3 API types (prost) and their protobuf-JSON mapping (pbjson) from our
//! own .proto files in proto/. protoc comes from the protoc-bin-vendored crate, so a fresh
//! machine needs no system protoc.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("etcd_descriptor.bin");
    let protos =
        ["proto/kv.proto", "proto/auth.proto", "proto/rpc.proto", "proto/v3lock.proto", "proto/v3election.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    prost_build::Config::new()
        .file_descriptor_set_path(&descriptor_path)
        .compile_well_known_types()
        .compile_protos(&protos, &["proto"])?;
    let descriptors = std::fs::read(&descriptor_path)?;
    // etcd's gateway (grpc-gateway with OrigName) writes the .proto field names, 64-bit
    // integers as strings, bytes as base64, and leaves out fields at their default.
    pbjson_build::Builder::new().register_descriptors(&descriptors)?.preserve_proto_field_names().build(&[
        ".etcdserverpb",
        ".mvccpb",
        ".authpb",
        ".v3lockpb",
        ".v3electionpb",
    ])?;
    Ok(())
}
