//! SPIFFE certificates for mutual TLS, made on the spot with the `openssl` command.

#![forbid(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// SPIFFE identity of the client certificate (Bookinfo's ratings-v2).
pub const CLIENT_SPIFFE: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-ratings-v2";
/// SPIFFE identity of the server certificate (Bookinfo's mongodb).
pub const SERVER_SPIFFE: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-mongodb";

/// PEM files made by [`make_mtls_certs`].
#[derive(Debug, Clone)]
pub struct MtlsCerts {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// Makes, in `dir`, with the `openssl` command (`make tools` installs it): a CA, a client
/// certificate with URI SAN [`CLIENT_SPIFFE`] and a server certificate with URI SAN
/// [`SERVER_SPIFFE`] and DNS SAN `localhost`. EC P-256 keys, valid for a day.
pub fn make_mtls_certs(dir: &Path) -> MtlsCerts {
    fs::create_dir_all(dir).expect("cert dir");
    let p = |f: &str| dir.join(f);
    let certs = MtlsCerts {
        ca_cert: p("ca.pem"),
        ca_key: p("ca-key.pem"),
        client_cert: p("client.pem"),
        client_key: p("client-key.pem"),
        server_cert: p("server.pem"),
        server_key: p("server-key.pem"),
    };
    let s = |path: &PathBuf| path.display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &["-days", "1", "-subj", "/O=cluster.local/CN=Test CA"],
        ]
        .concat(),
        &[
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &s(&certs.ca_key),
            "-out",
            &s(&certs.ca_cert),
        ],
    );
    let leaves = [
        (
            "client",
            &certs.client_cert,
            &certs.client_key,
            format!("URI:{CLIENT_SPIFFE}"),
        ),
        (
            "server",
            &certs.server_cert,
            &certs.server_key,
            format!("URI:{SERVER_SPIFFE},DNS:localhost"),
        ),
    ];
    for (name, cert, key, san) in leaves {
        let csr = p(&format!("{name}.csr"));
        let ext = p(&format!("{name}.ext"));
        fs::write(
            &ext,
            format!(
                "basicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth,clientAuth\n\
                 subjectAltName=critical,{san}\n"
            ),
        )
        .expect("write ext file");
        openssl(
            &[&["req"], &ec[..], &["-subj", "/O=cluster.local"]].concat(),
            &["-keyout", &s(key), "-out", &s(&csr)],
        );
        openssl(
            &["x509", "-req", "-days", "1", "-set_serial", &serial(name)],
            &[
                "-in",
                &s(&csr),
                "-CA",
                &s(&certs.ca_cert),
                "-CAkey",
                &s(&certs.ca_key),
                "-extfile",
                &s(&ext),
                "-out",
                &s(cert),
            ],
        );
    }
    certs
}

/// A serial number that differs between runs and between the two leaves.
fn serial(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}",
        (nanos % 1_000_000_000_000) * 2 + u128::from(name == "server")
    )
}

fn openssl(args: &[&str], more: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .args(more)
        .output()
        .unwrap_or_else(|e| panic!("run openssl (install it: `make tools`): {e}"));
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
