//! Dropping privileges: chroot, user switch and, for nftables, CAP_NET_ADMIN alone.
//!
//! The original chroots to `/var/empty` and becomes `_ftp_proxy` once the listener
//! and `/dev/pf` are open; pf keeps accepting ioctls on the already open descriptor.
//! Linux netlink is different (measured, linux-netfilter.md §5): the kernel checks
//! CAP_NET_ADMIN of the *sending* process too, so an nftables socket opened as root
//! fails with EPERM after a plain user switch. For that backend the switch keeps
//! exactly CAP_NET_ADMIN: `PR_SET_KEEPCAPS` before `setresuid`, then `capset` to
//! CAP_NET_ADMIN in the permitted and effective sets only, and `PR_SET_NO_NEW_PRIVS`
//! so no exec can ever widen that again.

use std::fmt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::{chdir, chroot, setgroups, setresgid, setresuid, Gid, Uid, User};

/// The unprivileged identity to switch to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name, for messages.
    pub name: String,
    /// Its uid.
    pub uid: Uid,
    /// Its primary gid, which also becomes the only supplementary group.
    pub gid: Gid,
}

/// What [`drop_privileges`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropPlan {
    /// The user to become.
    pub identity: Identity,
    /// The directory to chroot into (then `chdir("/")`); `None` skips the chroot.
    pub chroot: Option<PathBuf>,
    /// Keep CAP_NET_ADMIN (and nothing else) across the switch (Linux only).
    pub keep_net_admin: bool,
}

/// Why starting as root could not end unprivileged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrivError {
    /// The user does not exist.
    UnknownUser(String),
    /// The user database could not be read.
    UserLookup(String, Errno),
    /// The chroot directory does not exist (or is not a directory).
    ChrootMissing(PathBuf),
    /// A step of the switch failed: the step's name and its errno.
    Drop(&'static str, Errno),
    /// CAP_NET_ADMIN was requested on a system without Linux capabilities.
    CapsUnsupported,
}

impl fmt::Display for PrivError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivError::UnknownUser(u) => write!(f, "unknown user {u}"),
            PrivError::UserLookup(u, e) => write!(f, "cannot look up user {u}: {}", e.desc()),
            PrivError::ChrootMissing(d) => write!(f, "chroot directory {} missing", d.display()),
            PrivError::Drop(step, e) => write!(f, "cannot drop privileges: {step}: {}", e.desc()),
            PrivError::CapsUnsupported => {
                f.write_str("cannot drop privileges: keeping CAP_NET_ADMIN needs Linux")
            }
        }
    }
}

impl std::error::Error for PrivError {}

/// Looks up `name` in the user database (`getpwnam`).
pub fn lookup_user(name: &str) -> Result<Identity, PrivError> {
    match User::from_name(name) {
        Ok(Some(u)) => Ok(Identity {
            name: name.to_owned(),
            uid: u.uid,
            gid: u.gid,
        }),
        Ok(None) => Err(PrivError::UnknownUser(name.to_owned())),
        Err(e) => Err(PrivError::UserLookup(name.to_owned(), e)),
    }
}

/// Checks that the chroot directory exists before anything is opened, so a
/// missing `/var/empty` is reported clearly and early.
pub fn check_chroot_dir(dir: &Path) -> Result<(), PrivError> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(PrivError::ChrootMissing(dir.to_owned()))
    }
}

/// Performs the switch, in the original's order: chroot, `chdir("/")`, one
/// supplementary group, `setresgid`, `setresuid`; then the capability steps when
/// `keep_net_admin` is set.
pub fn drop_privileges(plan: &DropPlan) -> Result<(), PrivError> {
    let step = |name: &'static str| move |e: Errno| PrivError::Drop(name, e);
    if let Some(dir) = &plan.chroot {
        chroot(dir.as_path()).map_err(step("chroot"))?;
        chdir("/").map_err(step("chdir"))?;
    }
    let Identity { uid, gid, .. } = plan.identity;
    setgroups(&[gid]).map_err(step("setgroups"))?;
    setresgid(gid, gid, gid).map_err(step("setresgid"))?;
    if plan.keep_net_admin {
        caps::set_keepcaps(true).map_err(step("prctl(PR_SET_KEEPCAPS)"))?;
    }
    setresuid(uid, uid, uid).map_err(step("setresuid"))?;
    if plan.keep_net_admin {
        caps::only_net_admin().map_err(step("capset"))?;
        caps::set_keepcaps(false).map_err(step("prctl(PR_SET_KEEPCAPS)"))?;
        caps::set_no_new_privs().map_err(step("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    }
    Ok(())
}

#[cfg(target_os = "linux")]
mod caps {
    //! The two prctls and `capset(2)` with the version-3 header, through `libc`
    //! (the kernel ABI is three small structs; no crate is needed for it).

    use nix::errno::Errno;

    /// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
    const CAP_VERSION_3: u32 = 0x2008_0522;
    /// `CAP_NET_ADMIN` is capability 12.
    pub(super) const CAP_NET_ADMIN_BIT: u32 = 1 << 12;

    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }

    pub(super) fn set_keepcaps(on: bool) -> Result<(), Errno> {
        // SAFETY: PR_SET_KEEPCAPS takes one integer argument.
        let rc = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, libc::c_ulong::from(on), 0, 0, 0) };
        Errno::result(rc).map(drop)
    }

    pub(super) fn set_no_new_privs() -> Result<(), Errno> {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes 1 and three zeros.
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) };
        Errno::result(rc).map(drop)
    }

    /// Permitted = effective = {CAP_NET_ADMIN}, inheritable = {} for this thread,
    /// which is the whole process: the daemon is single-threaded.
    pub(super) fn only_net_admin() -> Result<(), Errno> {
        let header = CapHeader {
            version: CAP_VERSION_3,
            pid: 0,
        };
        let data = [
            CapData {
                effective: CAP_NET_ADMIN_BIT,
                permitted: CAP_NET_ADMIN_BIT,
                inheritable: 0,
            },
            CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
        ];
        // SAFETY: header and a two-element data array are what capset(2) reads for
        // version 3; both live across the call.
        let rc =
            unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
        Errno::result(rc).map(drop)
    }
}

#[cfg(not(target_os = "linux"))]
mod caps {
    use nix::errno::Errno;

    pub(super) fn set_keepcaps(_on: bool) -> Result<(), Errno> {
        Err(Errno::ENOSYS)
    }
    pub(super) fn set_no_new_privs() -> Result<(), Errno> {
        Err(Errno::ENOSYS)
    }
    pub(super) fn only_net_admin() -> Result<(), Errno> {
        Err(Errno::ENOSYS)
    }
}

/// Fails early on systems without capabilities when CAP_NET_ADMIN must be kept.
pub fn check_caps_supported(keep_net_admin: bool) -> Result<(), PrivError> {
    if keep_net_admin && !cfg!(target_os = "linux") {
        return Err(PrivError::CapsUnsupported);
    }
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    //! The switch itself runs in a forked child, so the test process keeps root.

    use super::*;
    use std::io::{Read, Seek, SeekFrom};

    /// Values from /proc/self/status, read through a descriptor opened before the
    /// chroot (the file's content is produced at read time).
    #[derive(Debug)]
    struct Status {
        uid: String,
        gid: String,
        groups: String,
        cap_eff: String,
        cap_prm: String,
        cap_inh: String,
        no_new_privs: String,
        so_mark: String,
    }

    fn parse_status(text: &str) -> Status {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                .unwrap_or_default()
        };
        Status {
            uid: field("Uid:"),
            gid: field("Gid:"),
            groups: field("Groups:"),
            cap_eff: field("CapEff:"),
            cap_prm: field("CapPrm:"),
            cap_inh: field("CapInh:"),
            no_new_privs: field("NoNewPrivs:"),
            so_mark: field("SoMark:"),
        }
    }

    /// Forks; the child drops with `plan`, writes its /proc status (or the error)
    /// into a pipe and exits. Returns what the child wrote.
    fn drop_in_child(plan: &DropPlan) -> Result<String, String> {
        use nix::sys::wait::{waitpid, WaitStatus};
        use nix::unistd::{fork, pipe, ForkResult};
        use std::os::fd::AsRawFd;

        let (rd, wr) = pipe().expect("pipe");
        // SAFETY: the child only runs the drop, reads one file, writes to a pipe and
        // calls _exit; it never returns into the test harness.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                drop(rd);
                // Opened by the child (so "self" is the child) before the chroot hides
                // /proc; the content is produced by the first read, after the drop.
                let out = match std::fs::File::open("/proc/self/status") {
                    Err(e) => format!("err\nopen /proc/self/status: {e}"),
                    Ok(mut status_file) => match drop_privileges(plan) {
                        Ok(()) => {
                            let mut s = String::new();
                            let _ = status_file.seek(SeekFrom::Start(0));
                            let _ = status_file.read_to_string(&mut s);
                            format!("ok\nSoMark:\t{}\n{s}", so_mark_probe())
                        }
                        Err(e) => format!("err\n{e}"),
                    },
                };
                let bytes = out.as_bytes();
                // SAFETY: writing a valid buffer to our own pipe end, then _exit.
                unsafe {
                    libc::write(wr.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
                    libc::_exit(0);
                }
            }
            ForkResult::Parent { child } => {
                drop(wr);
                let mut text = String::new();
                std::fs::File::from(rd)
                    .read_to_string(&mut text)
                    .expect("read pipe");
                let st = waitpid(child, None).expect("waitpid");
                assert_eq!(st, WaitStatus::Exited(child, 0));
                match text.split_once('\n') {
                    Some(("ok", rest)) => Ok(rest.to_owned()),
                    Some((_, rest)) => Err(rest.to_owned()),
                    None => Err(format!("child wrote {text:?}")),
                }
            }
        }
    }

    /// Whether the effective capabilities really include CAP_NET_ADMIN: setting
    /// `SO_MARK` needs it. Returns "ok" or the errno name.
    fn so_mark_probe() -> String {
        use nix::sys::socket::{setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType};
        let sock = match socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::empty(),
            None,
        ) {
            Ok(s) => s,
            Err(e) => return format!("socket {e}"),
        };
        match setsockopt(&sock, sockopt::Mark, &1) {
            Ok(()) => "ok".into(),
            Err(e) => format!("{e:?}"),
        }
    }

    fn require_root() -> bool {
        if !Uid::effective().is_root() {
            eprintln!("not root: privilege-drop test not run");
            return false;
        }
        true
    }

    fn nobody() -> Identity {
        lookup_user("nobody").expect("user nobody must exist")
    }

    #[test]
    fn keeps_exactly_cap_net_admin() {
        if !require_root() {
            return;
        }
        let id = nobody();
        let dir = std::env::temp_dir().join(format!("ftp-proxy-chroot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plan = DropPlan {
            identity: id.clone(),
            chroot: Some(dir.clone()),
            keep_net_admin: true,
        };
        let res = drop_in_child(&plan);
        let _ = std::fs::remove_dir(&dir);
        let st = parse_status(&res.expect("drop failed"));
        let uid = id.uid.to_string();
        let gid = id.gid.to_string();
        assert_eq!(
            st.uid.split_whitespace().collect::<Vec<_>>(),
            [&*uid; 4],
            "{st:?}"
        );
        assert_eq!(
            st.gid.split_whitespace().collect::<Vec<_>>(),
            [&*gid; 4],
            "{st:?}"
        );
        assert_eq!(st.groups, gid, "{st:?}");
        assert_eq!(st.cap_eff, "0000000000001000", "{st:?}");
        assert_eq!(st.cap_prm, "0000000000001000", "{st:?}");
        assert_eq!(st.cap_inh, "0000000000000000", "{st:?}");
        assert_eq!(st.no_new_privs, "1", "{st:?}");
        assert_eq!(st.so_mark, "ok", "{st:?}");
    }

    #[test]
    fn plain_drop_keeps_no_capability() {
        if !require_root() {
            return;
        }
        let id = nobody();
        let plan = DropPlan {
            identity: id.clone(),
            chroot: None,
            keep_net_admin: false,
        };
        let st = parse_status(&drop_in_child(&plan).expect("drop failed"));
        assert_eq!(
            st.uid.split_whitespace().next(),
            Some(&*id.uid.to_string()),
            "{st:?}"
        );
        assert_eq!(st.cap_eff, "0000000000000000", "{st:?}");
        assert_eq!(st.cap_prm, "0000000000000000", "{st:?}");
        assert_eq!(st.so_mark, "EPERM", "{st:?}");
    }

    #[test]
    fn missing_chroot_fails_the_drop() {
        if !require_root() {
            return;
        }
        let plan = DropPlan {
            identity: nobody(),
            chroot: Some(PathBuf::from("/nonexistent/ftp-proxy-chroot")),
            keep_net_admin: false,
        };
        let err = drop_in_child(&plan).unwrap_err();
        assert_eq!(
            err,
            "cannot drop privileges: chroot: No such file or directory"
        );
    }

    #[test]
    fn unknown_user_and_missing_chroot_messages() {
        assert_eq!(
            lookup_user("no-such-user-ftpproxy")
                .unwrap_err()
                .to_string(),
            "unknown user no-such-user-ftpproxy"
        );
        assert_eq!(
            check_chroot_dir(Path::new("/nonexistent/empty"))
                .unwrap_err()
                .to_string(),
            "chroot directory /nonexistent/empty missing"
        );
        assert!(check_chroot_dir(Path::new("/")).is_ok());
    }
}
