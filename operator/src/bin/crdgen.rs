//! crdgen: writes the ChatCluster CRD. `crdgen` prints it; `crdgen PATH` writes PATH.

use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = match chatcluster_operator::crd_yaml() {
        Ok(y) => y,
        Err(e) => {
            eprintln!("crdgen: cannot serialize the CRD: {e}");
            return ExitCode::FAILURE;
        }
    };
    match std::env::args().nth(1) {
        None => print!("{yaml}"),
        Some(path) => {
            if let Err(e) = std::fs::write(&path, yaml) {
                eprintln!("crdgen: cannot write {path}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
