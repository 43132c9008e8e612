//! Compiles the non-well-known protobuf messages in `proto/` with prost.
//! Well-known types (Struct, Any, Value) come from `prost-types`.

fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc for this host");
    let include = protoc_bin_vendored::include_path().expect("vendored protobuf include path");
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let protos = ["proto/envoy/config/core/v3/metadata.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    prost_build::Config::new()
        .compile_protos(&protos, &[std::path::PathBuf::from("proto"), include])
        .expect("compile proto/");
}
