//! Dropping privileges: chroot, user switch and, for nftables, CAP_NET_ADMIN alone;
//! closing inherited descriptors; refusing to "drop" to uid 0.
//!
//! The original chroots to `/var/empty` and becomes `_ftp_proxy` once the listener
//! and `/dev/pf` are open; pf keeps accepting ioctls on the already open descriptor.
//! Linux netlink is different (measured; docs/linux.md, "Privileges"): the kernel checks
//! CAP_NET_ADMIN of the *sending* process too, so an nftables socket opened as root
//! fails with EPERM after a plain user switch. For that backend the switch keeps
//! exactly CAP_NET_ADMIN: `PR_SET_KEEPCAPS` before `setresuid`, then `capset` to
//! CAP_NET_ADMIN in the permitted and effective sets only.
//!
//! Whatever the backend, the capability sets end as small as it allows (docs/linux.md,
//! "Privileges"): the bounding set keeps only what the backend needs (CAP_NET_ADMIN for
//! nftables, nothing otherwise), the inheritable and ambient sets are emptied, and
//! `PR_SET_NO_NEW_PRIVS` is set, so no exec can ever widen them again. A daemon started
//! without root gets the same treatment of the capabilities it was handed (an ambient
//! CAP_NET_ADMIN from systemd or `setpriv`), except that without CAP_SETPCAP it cannot
//! shrink its bounding set.

use std::fmt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::{chdir, chroot, setgroups, setresgid, setresuid, Gid, Uid, User};

/// The unprivileged identity to switch to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The user name, for messages.
    pub name: String,
    /// Its uid.
    pub uid: Uid,
    /// Its primary gid, which also becomes the only supplementary group.
    pub gid: Gid,
}

/// What [`drop_privileges`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DropPlan {
    /// The user to become.
    pub identity: Identity,
    /// The directory to chroot into (then `chdir("/")`); `None` skips the chroot.
    pub chroot: Option<PathBuf>,
    /// Keep CAP_NET_ADMIN (and nothing else) across the switch (Linux only).
    pub keep_net_admin: bool,
}

/// Why starting as root could not end unprivileged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PrivError {
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
    /// `--user` names an account with uid 0: switching to it drops nothing.
    RootUser(String),
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
            PrivError::RootUser(u) => write!(
                f,
                "refusing to run as user {u}: it has uid 0, which drops no privileges; \
                 name an unprivileged account with --user"
            ),
        }
    }
}

impl std::error::Error for PrivError {}

/// Looks up `name` in the user database (`getpwnam`). An account with uid 0 (`root`,
/// `toor`, ...) is refused: the daemon would keep every privilege it meant to drop.
pub(crate) fn lookup_user(name: &str) -> Result<Identity, PrivError> {
    match User::from_name(name) {
        Ok(Some(u)) if u.uid.is_root() => Err(PrivError::RootUser(name.to_owned())),
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
pub(crate) fn check_chroot_dir(dir: &Path) -> Result<(), PrivError> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(PrivError::ChrootMissing(dir.to_owned()))
    }
}

/// Closes every descriptor above 2 that the process inherited (a caller's open files
/// and sockets must not leak into the daemon). Call first thing in `main`, before
/// anything of our own is open. `close_range(2)` (Linux 5.9), else one `close` per
/// entry of `/proc/self/fd` (or of 3..1024 without `/proc`).
pub(crate) fn close_inherited_fds() {
    #[cfg(target_os = "linux")]
    {
        if crate::sys::close_range_from(3) {
            return;
        }
    }
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd > 2)
            .collect(),
        Err(_) => (3..1024).collect(),
    };
    for fd in fds {
        // Descriptors inherited from the caller; the directory handle used to list
        // them is already closed (EBADF for it is harmless).
        let _ = nix::unistd::close(fd);
    }
}

/// Performs the switch, in the original's order: chroot, `chdir("/")`, one
/// supplementary group, `setresgid`, `setresuid`; around it the capability steps:
/// the bounding set is cut down while still root (that needs CAP_SETPCAP), the
/// ambient set cleared, CAP_NET_ADMIN carried through the uid change when
/// `keep_net_admin` is set, and `PR_SET_NO_NEW_PRIVS` set in any case.
///
/// Returns whether the bounding set was cut down: a root start whose service manager
/// already withheld CAP_SETPCAP (systemd's `CapabilityBoundingSet=`) cannot, and
/// need not: its bounding set is the manager's, and with no capabilities left after
/// the switch and NoNewPrivs set nothing can be regained from it.
pub(crate) fn drop_privileges(plan: &DropPlan) -> Result<bool, PrivError> {
    let step = |name: &'static str| move |e: Errno| PrivError::Drop(name, e);
    let keep = keep_mask(plan.keep_net_admin);
    let (effective, _) = caps::get_caps().map_err(step("capget"))?;
    let bounding_limited = effective & caps::CAP_SETPCAP_BIT != 0;
    if let Some(dir) = &plan.chroot {
        chroot(dir.as_path()).map_err(step("chroot"))?;
        chdir("/").map_err(step("chdir"))?;
    }
    let Identity { uid, gid, .. } = plan.identity;
    setgroups(&[gid]).map_err(step("setgroups"))?;
    setresgid(gid, gid, gid).map_err(step("setresgid"))?;
    if bounding_limited {
        caps::limit_bounding_set(keep).map_err(step("prctl(PR_CAPBSET_DROP)"))?;
    }
    caps::clear_ambient().map_err(step("prctl(PR_CAP_AMBIENT_CLEAR_ALL)"))?;
    if keep != 0 {
        caps::set_keepcaps(true).map_err(step("prctl(PR_SET_KEEPCAPS)"))?;
    }
    setresuid(uid, uid, uid).map_err(step("setresuid"))?;
    if keep != 0 {
        caps::set_keepcaps(false).map_err(step("prctl(PR_SET_KEEPCAPS)"))?;
    }
    caps::set_caps(keep).map_err(step("capset"))?;
    caps::set_no_new_privs().map_err(step("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    Ok(bounding_limited)
}

/// What a start without root could do about its capabilities; the caller logs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Restricted {
    /// The bounding set could be cut down (the process had CAP_SETPCAP).
    pub bounding_limited: bool,
    /// The capabilities kept in the permitted and effective sets.
    pub kept: u64,
}

/// For a daemon started without root: empties the inheritable and ambient sets,
/// keeps in the permitted and effective sets only what the backend needs (and the
/// process has), cuts down the bounding set if it may, and sets
/// `PR_SET_NO_NEW_PRIVS`.
pub(crate) fn restrict_unprivileged(keep_net_admin: bool) -> Result<Restricted, PrivError> {
    let step = |name: &'static str| move |e: Errno| PrivError::Drop(name, e);
    let (effective, permitted) = caps::get_caps().map_err(step("capget"))?;
    let keep = keep_mask(keep_net_admin) & permitted;
    let bounding_limited = effective & caps::CAP_SETPCAP_BIT != 0;
    if bounding_limited {
        caps::limit_bounding_set(keep).map_err(step("prctl(PR_CAPBSET_DROP)"))?;
    }
    caps::clear_ambient().map_err(step("prctl(PR_CAP_AMBIENT_CLEAR_ALL)"))?;
    caps::set_caps(keep).map_err(step("capset"))?;
    caps::set_no_new_privs().map_err(step("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    Ok(Restricted {
        bounding_limited,
        kept: keep,
    })
}

/// The capability mask the backend needs after the drop.
fn keep_mask(keep_net_admin: bool) -> u64 {
    if keep_net_admin {
        caps::CAP_NET_ADMIN_BIT
    } else {
        0
    }
}

#[cfg(target_os = "linux")]
use crate::sys::caps;

#[cfg(not(target_os = "linux"))]
mod caps {
    //! Without Linux capabilities there is nothing to keep or clear; keeping
    //! CAP_NET_ADMIN is refused earlier by `check_caps_supported`.
    use nix::errno::Errno;

    pub(super) const CAP_NET_ADMIN_BIT: u64 = 1 << 12;
    pub(super) const CAP_SETPCAP_BIT: u64 = 1 << 8;

    pub(super) fn set_keepcaps(_on: bool) -> Result<(), Errno> {
        Err(Errno::ENOSYS)
    }
    pub(super) fn set_no_new_privs() -> Result<(), Errno> {
        Ok(())
    }
    pub(super) fn clear_ambient() -> Result<(), Errno> {
        Ok(())
    }
    pub(super) fn limit_bounding_set(_keep: u64) -> Result<(), Errno> {
        Ok(())
    }
    pub(super) fn get_caps() -> Result<(u64, u64), Errno> {
        Ok((0, 0))
    }
    pub(super) fn set_caps(_keep: u64) -> Result<(), Errno> {
        Ok(())
    }
}

/// Fails early on systems without capabilities when CAP_NET_ADMIN must be kept.
pub(crate) fn check_caps_supported(keep_net_admin: bool) -> Result<(), PrivError> {
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
        cap_bnd: String,
        cap_amb: String,
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
            cap_bnd: field("CapBnd:"),
            cap_amb: field("CapAmb:"),
            no_new_privs: field("NoNewPrivs:"),
            so_mark: field("SoMark:"),
        }
    }

    /// Forks; the child drops with `plan`, writes its /proc status (or the error)
    /// into a pipe and exits. Returns what the child wrote.
    fn drop_in_child(plan: &DropPlan) -> Result<String, String> {
        use nix::sys::wait::{waitpid, WaitStatus};
        use nix::unistd::{pipe, ForkResult};

        let (rd, wr) = pipe().expect("pipe");
        // The child only runs the drop, reads one file, writes to a pipe and calls
        // _exit; it never returns into the test harness.
        match crate::sys::fork_in_test().expect("fork") {
            ForkResult::Child => {
                drop(rd);
                // Opened by the child (so "self" is the child) before the chroot hides
                // /proc; the content is produced by the first read, after the drop.
                let out = match std::fs::File::open("/proc/self/status") {
                    Err(e) => format!("err\nopen /proc/self/status: {e}"),
                    Ok(mut status_file) => match drop_privileges(plan) {
                        Ok(_) => {
                            let mut s = String::new();
                            let _ = status_file.seek(SeekFrom::Start(0));
                            let _ = status_file.read_to_string(&mut s);
                            format!("ok\nSoMark:\t{}\n{s}", so_mark_probe())
                        }
                        Err(e) => format!("err\n{e}"),
                    },
                };
                let bytes = out.as_bytes();
                let _ = nix::unistd::write(&wr, bytes);
                crate::sys::exit_now(0)
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
        assert_eq!(st.cap_bnd, "0000000000001000", "{st:?}");
        assert_eq!(st.cap_amb, "0000000000000000", "{st:?}");
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
        assert_eq!(st.cap_bnd, "0000000000000000", "{st:?}");
        assert_eq!(st.cap_amb, "0000000000000000", "{st:?}");
        assert_eq!(st.no_new_privs, "1", "{st:?}");
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
    fn uid_zero_accounts_are_refused() {
        assert_eq!(lookup_user("root"), Err(PrivError::RootUser("root".into())));
        assert_eq!(
            PrivError::RootUser("root".into()).to_string(),
            "refusing to run as user root: it has uid 0, which drops no privileges; \
             name an unprivileged account with --user"
        );
        assert!(lookup_user("nobody").is_ok());
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
