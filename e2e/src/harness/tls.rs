//! A private certificate authority for tests: a CA and a server certificate for
//! 127.0.0.1 signed by it, made with `openssl` in a scratch directory.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::process::ScratchDir;

pub struct TestCa {
    /// The CA's certificate: what a client trusts (`--redis-ca-file`).
    pub ca: PathBuf,
    /// The server's certificate and key, for `IP:127.0.0.1`.
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: ScratchDir,
}

impl TestCa {
    pub fn create() -> Result<TestCa> {
        let dir = ScratchDir::new("tls")?;
        let path = |name: &str| dir.0.join(name);
        let (ca, ca_key, cert, key) = (
            path("ca.pem"),
            path("ca.key"),
            path("cert.pem"),
            path("key.pem"),
        );
        let (csr, ext) = (path("server.csr"), path("ext.cnf"));
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n",
        )?;
        let openssl = |args: &[&std::ffi::OsStr]| -> Result<()> {
            let ok = Command::new("openssl")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("openssl (apt-get install openssl)")?
                .success();
            if !ok {
                bail!("openssl {:?} failed", args);
            }
            Ok(())
        };
        let s = |v: &'static str| std::ffi::OsStr::new(v);
        openssl(&[
            s("req"),
            s("-x509"),
            s("-newkey"),
            s("rsa:2048"),
            s("-nodes"),
            s("-days"),
            s("1"),
            s("-subj"),
            s("/CN=chatcluster-test-ca"),
            s("-keyout"),
            ca_key.as_os_str(),
            s("-out"),
            ca.as_os_str(),
        ])?;
        openssl(&[
            s("req"),
            s("-newkey"),
            s("rsa:2048"),
            s("-nodes"),
            s("-subj"),
            s("/CN=127.0.0.1"),
            s("-keyout"),
            key.as_os_str(),
            s("-out"),
            csr.as_os_str(),
        ])?;
        openssl(&[
            s("x509"),
            s("-req"),
            s("-in"),
            csr.as_os_str(),
            s("-CA"),
            ca.as_os_str(),
            s("-CAkey"),
            ca_key.as_os_str(),
            s("-CAcreateserial"),
            s("-days"),
            s("1"),
            s("-extfile"),
            ext.as_os_str(),
            s("-out"),
            cert.as_os_str(),
        ])?;
        Ok(TestCa {
            ca,
            cert,
            key,
            _dir: dir,
        })
    }
}
