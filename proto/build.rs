//! Compiles the package-less protos with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["client.proto", "agent.proto", "quic.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The generated `connect` constructor would clash with the `Connect` RPC method.
        .build_transport(false)
        // DATA payloads as `Bytes`: decoding slices tonic's receive buffer instead of copying
        // every payload into a fresh Vec.
        .bytes(".Data.data")
        .compile_fds(fds)?;
    Ok(())
}
