//! The `tenfold` binary as tests drive it: a server process that prints the address it bound, and a
//! command run to completion.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A server process (killed with SIGKILL and reaped when dropped) and its base URL.
pub struct Served {
    /// The process.
    pub child: Child,
    /// `http://` and the address it printed.
    pub base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` (stdout piped, stderr discarded) and reads the address it prints as its first line
/// (`tenfold app --listen 127.0.0.1:0`).
pub fn serve_printing_addr(cmd: &mut Command) -> Served {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the address line");
    let addr = line.trim();
    assert!(
        addr.parse::<std::net::SocketAddr>().is_ok(),
        "the first stdout line is the bound address: {line:?}"
    );
    let base = format!("http://{addr}");
    Served { child, base }
}

/// Runs `cmd` to completion, asserts it succeeded (showing its stderr if not) and returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run the command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
