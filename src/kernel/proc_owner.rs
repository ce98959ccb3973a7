//! Which process owns a socket, from its inode: `poll.process_lookup` in netlink and procfs
//! modes (eBPF mode learns the process at `connect()` instead).
//!
//! Every open file of a process is a link in `/proc/PID/fd`; a socket's reads `socket:[INODE]`
//! (`sock_d_dname` in net/socket.c), the inode that sock_diag reports as `idiag_inode` and
//! `/proc/net/tcp` in its inode column. So the owner of a socket is found by walking every
//! process's fd links: a cost that grows with the host's open files, not with the sessions
//! watched. Hence the rules: a scan only when a session with an unknown inode appears, one
//! scan per poll for all of them, ending as soon as every inode asked for is found; what it
//! found is kept with the session (by the poll loop) for the session's life.
//!
//! A socket shared by several processes (inherited across `fork`) is given to the first in
//! `/proc`'s order (ascending pid: the parent, as a rule). Processes that end during a scan and
//! links that change under it are skipped without an error: the scan is a best effort at one
//! moment. What a scan cannot read is counted: without `CAP_SYS_PTRACE` and
//! `CAP_DAC_READ_SEARCH` (or root), other users' `/proc/PID/fd` is closed to us
//! (`proc_fd_permission`, `proc_fd_access_allowed` in fs/proc), and the sessions of those
//! processes are left without a process rather than given a wrong one.
//!
//! The root is a parameter so that the parser is tested on a fake `/proc` tree.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use super::Process;

/// What one scan saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Processes whose fd links were read.
    pub processes: u64,
    /// Processes whose fd links could not be read for want of permission.
    pub unreadable: u64,
    /// fd links read.
    pub links: u64,
}

/// Finds the processes owning sockets, by inode, under a `/proc` root.
#[derive(Debug)]
pub struct ProcOwners {
    root: PathBuf,
    /// Scans so far.
    pub scans: u64,
    /// The last scan's counts.
    pub last: ScanStats,
    /// Whether the lack of privilege was told (the caller's flag: told once).
    pub warned: bool,
}

impl ProcOwners {
    /// Looks under the real `/proc`.
    pub fn new() -> ProcOwners {
        ProcOwners::at("/proc")
    }

    /// Looks under `root` (a fake tree in tests).
    pub fn at(root: impl Into<PathBuf>) -> ProcOwners {
        ProcOwners {
            root: root.into(),
            scans: 0,
            last: ScanStats::default(),
            warned: false,
        }
    }

    /// The owners of those of `inodes` that some process holds, in one walk of `/proc` that
    /// stops once all are found. Inode 0 (no socket yet) is never looked for.
    pub fn find(&mut self, inodes: &HashSet<u64>) -> HashMap<u64, Process> {
        let mut found = HashMap::new();
        let mut stats = ScanStats::default();
        let wanted = inodes.iter().filter(|i| **i != 0).count();
        if wanted == 0 {
            return found;
        }
        self.scans += 1;
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            self.last = stats;
            return found;
        };
        let mut link = Vec::new();
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let pid_dir = entry.path();
            let mine = match std::fs::read_dir(pid_dir.join("fd")) {
                Ok(fds) => {
                    stats.processes += 1;
                    let mut mine = Vec::new();
                    for fd in fds.flatten() {
                        match read_link(&fd.path(), &mut link) {
                            Ok(()) => {
                                stats.links += 1;
                                if let Some(inode) = socket_inode(&link) {
                                    if inodes.contains(&inode) && !found.contains_key(&inode) {
                                        mine.push(inode);
                                    }
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                                stats.unreadable += 1;
                                break;
                            }
                            // Closed since the listing, or the process ended: skip it.
                            Err(_) => {}
                        }
                    }
                    mine
                }
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    stats.unreadable += 1;
                    continue;
                }
                // The process ended since the listing (or is a zombie): nothing to read.
                Err(_) => continue,
            };
            if mine.is_empty() {
                continue;
            }
            // The command at this moment; a process gone by now owns nothing any more.
            let Some(comm) = comm(&pid_dir) else { continue };
            let comm: std::sync::Arc<str> = comm.into();
            for inode in mine {
                found.insert(
                    inode,
                    Process {
                        pid,
                        comm: comm.clone(),
                    },
                );
            }
            if found.len() == wanted {
                break;
            }
        }
        self.last = stats;
        found
    }
}

impl Default for ProcOwners {
    fn default() -> Self {
        ProcOwners::new()
    }
}

fn read_link(path: &Path, out: &mut Vec<u8>) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::fs::read_link(path)?;
    out.clear();
    out.extend_from_slice(target.as_os_str().as_bytes());
    Ok(())
}

/// `/proc/PID/comm` without its newline (the thread-group leader's name, at most 15 bytes).
fn comm(pid_dir: &Path) -> Option<String> {
    let text = std::fs::read(pid_dir.join("comm")).ok()?;
    let text = text.strip_suffix(b"\n").unwrap_or(&text);
    Some(String::from_utf8_lossy(text).into_owned())
}

/// The inode of an fd link that names a socket: `socket:[12345]` -> 12345; None for anything
/// else (files, pipes, `anon_inode:...`, malformed numbers).
pub fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn socket_links_parse_and_nothing_else_does() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"socket:[4294967295]"), Some(4294967295));
        for other in [
            &b"/dev/null"[..],
            b"pipe:[123]",
            b"anon_inode:[eventpoll]",
            b"socket:[]",
            b"socket:[12a]",
            b"socket:[-1]",
            b"socket:[99999999999999999999999]",
            b"socket:[12",
            b"socket:12]",
            b"",
        ] {
            assert_eq!(
                socket_inode(other),
                None,
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }

    /// One entry of a fake `/proc`: its name, its comm (none: missing), its fd links (none: no
    /// fd directory).
    type FakeProc<'a> = (&'a str, Option<&'a str>, Option<&'a [&'a str]>);

    /// A fake `/proc`.
    fn fake(procs: &[FakeProc]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (pid, comm, fds) in procs {
            let dir = root.path().join(pid);
            std::fs::create_dir(&dir).unwrap();
            if let Some(c) = comm {
                std::fs::write(dir.join("comm"), format!("{c}\n")).unwrap();
            }
            if let Some(fds) = fds {
                std::fs::create_dir(dir.join("fd")).unwrap();
                for (i, target) in fds.iter().enumerate() {
                    symlink(target, dir.join("fd").join(i.to_string())).unwrap();
                }
            }
        }
        root
    }

    fn set(inodes: &[u64]) -> HashSet<u64> {
        inodes.iter().copied().collect()
    }

    #[test]
    fn owners_are_found_by_inode_and_the_odd_entries_are_skipped() {
        let root = fake(&[
            ("net", None, None),
            ("self", None, None),
            ("1", Some("init"), Some(&["/dev/null", "socket:[10]"])),
            (
                "100",
                Some("fix-gateway"),
                Some(&["pipe:[5]", "socket:[1234]"]),
            ),
            // A process that ended between the listing and its fd dir.
            ("150", Some("gone"), None),
            // Ended between its fd links and its comm: owns nothing.
            ("160", None, Some(&["socket:[777]"])),
            (
                "200",
                Some("worker"),
                Some(&["socket:[5678]", "socket:[oops]"]),
            ),
        ]);
        let mut owners = ProcOwners::at(root.path());
        let found = owners.find(&set(&[1234, 5678, 777, 4242]));
        let got: Vec<(u64, u32, &str)> = {
            let mut v: Vec<_> = found.iter().map(|(i, p)| (*i, p.pid, &*p.comm)).collect();
            v.sort();
            v
        };
        assert_eq!(got, [(1234, 100, "fix-gateway"), (5678, 200, "worker")]);
        assert_eq!(owners.scans, 1);
        assert_eq!(
            owners.last,
            ScanStats {
                processes: 4,
                unreadable: 0,
                links: 7
            }
        );
        // Nothing asked for, no scan.
        assert!(owners.find(&set(&[])).is_empty());
        assert!(owners.find(&set(&[0])).is_empty());
        assert_eq!(owners.scans, 1);
    }

    #[test]
    fn a_shared_socket_goes_to_the_first_process_and_the_walk_stops_when_all_are_found() {
        let root = fake(&[
            ("300", Some("parent"), Some(&["socket:[42]"])),
            ("301", Some("child"), Some(&["socket:[42]"])),
            ("302", Some("later"), Some(&["socket:[43]"])),
        ]);
        let mut owners = ProcOwners::at(root.path());
        let found = owners.find(&set(&[42]));
        let p = &found[&42];
        // read_dir's order is the file system's: the first process listed wins, and the walk
        // ends with it.
        assert!(p.pid == 300 || p.pid == 301, "{p:?}");
        assert_eq!(&*p.comm, if p.pid == 300 { "parent" } else { "child" });
        assert!(owners.last.processes < 3, "{:?}", owners.last);
    }

    #[test]
    fn a_missing_root_finds_nothing_without_an_error() {
        let mut owners = ProcOwners::at("/nonexistent/fix-monitor-test-proc");
        assert!(owners.find(&set(&[1])).is_empty());
        assert_eq!(owners.last, ScanStats::default());
    }

    /// The real `/proc`: a socket this process holds is found, with this process's pid and
    /// command.
    #[test]
    fn the_real_proc_names_this_process_for_its_own_socket() {
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap();
        use std::os::unix::ffi::OsStrExt;
        let inode = socket_inode(link.as_os_str().as_bytes()).unwrap();
        let mut owners = ProcOwners::new();
        let found = owners.find(&set(&[inode]));
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(
            found.get(&inode),
            Some(&Process {
                pid: std::process::id(),
                comm: comm.trim_end().into()
            })
        );
    }
}
