//! Mounting: checking the mount point, starting a FUSE session for a [`KvfsFuse`],
//! serving it until it is unmounted, and unmounting on request.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};

use super::adapter::{KvfsFuse, ShutdownHandle};
use crate::fs::FsError;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Mount read-only (the namespace should be on a read-only engine).
    pub read_only: bool,
    /// Let users other than the one mounting use the file system.
    pub allow_other: bool,
    /// Threads reading kernel requests (handlers do not block them).
    pub threads: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: false,
            allow_other: false,
            threads: 4,
        }
    }
}

/// Why mounting or serving failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount point {0} does not exist")]
    MissingMountPoint(PathBuf),
    #[error("mount point {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("mount point {path}: {source}{hint}", hint = stale_hint(source))]
    MountPoint { path: PathBuf, source: io::Error },
    #[error("cannot mount at {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("the FUSE session at {path} failed: {source}")]
    Session { path: PathBuf, source: io::Error },
    #[error("could not flush the store: {0}")]
    Flush(FsError),
    #[error("could not flush the store: the async runtime stopped first")]
    RuntimeStopped,
}

fn stale_hint(e: &io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::ENOTCONN) {
        " (a previous mount died; unmount it with `fusermount3 -u`)"
    } else {
        ""
    }
}

/// A mounted, not yet served file system.
pub struct Mounted {
    session: Session<KvfsFuse>,
    shutdown: ShutdownHandle,
    mountpoint: PathBuf,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted")
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

/// Check `mountpoint` and mount `fs` there. Blocks for the `mount` system call and the
/// kernel handshake; once it returns, the mount is visible and requests queue until
/// [`Mounted::run`]. On failure `fs` has not been shut down: the caller closes the
/// engine.
pub fn mount(fs: KvfsFuse, mountpoint: &Path, opts: &MountOptions) -> Result<Mounted, MountError> {
    let path = mountpoint.to_path_buf();
    match std::fs::metadata(mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(MountError::NotADirectory(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(MountError::MissingMountPoint(path))
        }
        Err(source) => return Err(MountError::MountPoint { path, source }),
    }
    let path = mountpoint
        .canonicalize()
        .map_err(|source| MountError::MountPoint { path, source })?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("kvfs".to_string()),
        MountOption::Subtype("kvfs".to_string()),
        MountOption::DefaultPermissions,
        if opts.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(opts.threads.max(1));
    let shutdown = fs.shutdown_handle();
    let notifier = fs.notifier_slot();
    let session = Session::new(fs, &path, &config).map_err(|source| MountError::Mount {
        path: path.clone(),
        source,
    })?;
    let _ = notifier.set(session.notifier());
    log::info!("mounted at {}", path.display());
    Ok(Mounted {
        session,
        shutdown,
        mountpoint: path,
    })
}

impl Mounted {
    /// The canonical mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Something that sends cache invalidations to the kernel for this mount.
    pub fn notifier(&self) -> fuser::Notifier {
        self.session.notifier()
    }

    /// Something that unmounts this file system from another thread.
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter {
            inner: Mutex::new(self.session.unmount_callable()),
            mountpoint: self.mountpoint.clone(),
        }
    }

    /// Serve requests until the file system is unmounted, then shut the namespace
    /// down (commit, sync, close the engine). Blocks; call it outside the runtime's
    /// worker threads.
    pub fn run(self) -> Result<(), MountError> {
        let Mounted {
            session,
            shutdown,
            mountpoint,
        } = self;
        let served = session.run();
        log::info!("unmounted {}", mountpoint.display());
        // `destroy` has normally run the shutdown already; this returns its result.
        let flushed = match shutdown.shutdown_blocking() {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(MountError::Flush(e)),
            None => Err(MountError::RuntimeStopped),
        };
        served.map_err(|source| MountError::Session {
            path: mountpoint,
            source,
        })?;
        flushed
    }
}

/// How [`Unmounter::unmount`] left the mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmounted {
    /// Unmounted; the session ends now.
    Clean,
    /// Files were open: the mount is detached from the tree, and the session ends
    /// when the last of them is closed.
    Detached,
}

/// Unmounts a [`Mounted`] file system from any thread.
pub struct Unmounter {
    inner: Mutex<SessionUnmounter>,
    mountpoint: PathBuf,
}

impl std::fmt::Debug for Unmounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unmounter")
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

impl Unmounter {
    /// Unmount; if the file system is busy, detach it instead (lazy unmount).
    /// Blocks for the system call.
    pub fn unmount(&self) -> io::Result<Unmounted> {
        let result = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unmount();
        match result {
            Ok(()) => Ok(Unmounted::Clean),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                detach(&self.mountpoint)?;
                Ok(Unmounted::Detached)
            }
            Err(e) => Err(e),
        }
    }
}

/// Lazy unmount: directly when allowed, else through the setuid helper.
fn detach(mountpoint: &Path) -> io::Result<()> {
    let c = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in mount point"))?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    for helper in ["fusermount3", "fusermount"] {
        let status = Command::new(helper)
            .args(["-u", "-z", "--"])
            .arg(mountpoint)
            .stdin(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => return Ok(()),
            Ok(s) => return Err(io::Error::other(format!("{helper} -u -z failed: {s}"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Err(err)
}
