//! Helpers shared by the integration tests: the test kit's fixtures, and mounts of
//! the `kvfs` binary built for these tests.
#![allow(dead_code)]

pub use kvfs_testkit::fixtures::*;

pub mod mount {
    use std::path::Path;
    use std::process::ExitStatus;

    #[allow(unused_imports)]
    pub use kvfs_testkit::mount::{force_unmount, is_mounted};

    /// The `kvfs` binary of this package.
    pub const KVFS: &str = env!("CARGO_BIN_EXE_kvfs");

    /// A running `kvfs mount --foreground` child, unmounted on drop.
    pub struct Mount(kvfs_testkit::mount::Mount);

    impl Mount {
        /// Mount `store` at `point` (created if missing) with the extra arguments
        /// `extra` and variables `env`; panics unless it mounts.
        pub fn start(store: &str, point: &Path, extra: &[&str], env: &[(&str, String)]) -> Mount {
            match kvfs_testkit::mount::Mount::start(Path::new(KVFS), store, point, extra, env) {
                Ok(m) => Mount(m),
                Err(e) => panic!("kvfs mount {store}: {e}"),
            }
        }

        /// The canonical mount point.
        pub fn point(&self) -> &Path {
            &self.0.point
        }

        pub fn log_text(&self) -> String {
            self.0.log_text()
        }

        pub fn pid(&self) -> u32 {
            self.0.pid()
        }

        /// Unmount cleanly and wait for the daemon to flush and exit; panics if that
        /// fails.
        pub fn unmount(self) -> ExitStatus {
            self.0.unmount().unwrap_or_else(|e| panic!("{e}"))
        }

        /// Unmount cleanly and require exit status 0.
        pub fn finish(self) {
            let log = self.0.log.clone();
            let status = self.unmount();
            let log = log.and_then(|l| std::fs::read_to_string(l).ok());
            assert!(
                status.success(),
                "daemon exited with {status}: {}",
                log.unwrap_or_default()
            );
        }

        /// Kill the daemon with SIGKILL (a crash) and clean up the dead mount.
        pub fn kill(self) {
            self.0.kill()
        }
    }
}
